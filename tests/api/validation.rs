//! Bad input (docs/SPEC.md §3, §5): a clear 4xx naming the field, and nothing written.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Asserts a JSON error body with `code`, whose message mentions `mentions`.
fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str, mentions: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.row_count().await, 0, "a refused request wrote rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_null_and_empty_values_are_refused() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"email": null}),
        json!({"phoneNumber": null}),
        json!({"email": null, "phoneNumber": null}),
        json!({"email": "", "phoneNumber": ""}),
        json!({"email": "   ", "phoneNumber": null}),
        json!({"unrelated": "field"}),
    ] {
        let (status, answer) = app.post_identify(&body).await;
        assert_error(
            status,
            &answer,
            400,
            "INVALID_INPUT",
            "email or a phoneNumber",
        );
    }
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_json_types_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"email": 42}), "email"),
        (json!({"email": true}), "email"),
        (json!({"email": ["a@x.io"]}), "email"),
        (json!({"email": {"value": "a@x.io"}}), "email"),
        (json!({"phoneNumber": false}), "phoneNumber"),
        (json!({"phoneNumber": [123456]}), "phoneNumber"),
        (json!({"phoneNumber": {"n": 1}}), "phoneNumber"),
        (json!({"phoneNumber": -5}), "phoneNumber"),
        (json!({"phoneNumber": 12.5}), "phoneNumber"),
        (
            json!({"email": "ok@x.io", "phoneNumber": true}),
            "phoneNumber",
        ),
        (json!({"email": 1, "phoneNumber": "123"}), "email"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post_identify(&body).await;
        assert_error(status, &answer, 400, "INVALID_INPUT", field);
        assert_eq!(answer["error"]["field"], field, "{body}");
    }
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused() {
    let app = spawn_app().await;
    let json = Some("application/json");
    for body in [
        "",
        "{",
        "{\"email\": \"a@x.io\"",
        "not json",
        "[]",
        "[{\"email\": \"a@x.io\"}]",
        "\"a@x.io\"",
        "123456",
        "null",
    ] {
        let (status, answer) = app.post_raw(json, body).await;
        assert_eq!(status, 400, "{body:?} -> {answer}");
        assert_eq!(answer["error"]["code"], "INVALID_INPUT");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("request body")
        );
    }
    // Bytes that are not UTF-8.
    let (status, _) = app.post_raw(json, vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(status, 400);
    // Nesting deep enough to exhaust a naive recursive parser.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let (status, _) = app.post_raw(json, deep).await;
    assert_eq!(status, 400);
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_types_get_415() {
    let app = spawn_app().await;
    let body = r#"{"email": "a@x.io"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("jsonish"),
    ] {
        let (status, answer) = app.post_raw(content_type, body).await;
        assert_error(
            status,
            &answer,
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "application/json",
        );
    }
    // Parameters and the +json family are JSON.
    let (status, _) = app
        .post_raw(Some("application/json; charset=utf-8"), body)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post_raw(Some("application/merge-patch+json"), body)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let app = spawn_app().await;
    let huge = "a".repeat(100 * 1024);
    for body in [
        json!({"email": format!("{huge}@x.io")}),
        json!({"phoneNumber": huge}),
        json!({"email": "a@x.io", "padding": huge}),
    ] {
        let (status, answer) = app.post_identify(&body).await;
        assert_error(status, &answer, 413, "PAYLOAD_TOO_LARGE", "bytes");
    }
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_and_malformed_values_get_400() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"email": format!("{}@x.io", "a".repeat(250))}),
            "email",
            "254",
        ),
        (
            json!({"email": format!("{}@x.io", "a".repeat(8000))}),
            "email",
            "254",
        ),
        (
            json!({"phoneNumber": "1".repeat(21)}),
            "phoneNumber",
            "20 digits",
        ),
        (
            json!({"phoneNumber": "9".repeat(5000)}),
            "phoneNumber",
            "20 digits",
        ),
        (
            json!({"phoneNumber": 123456789012345678901234567890u128.to_string().parse::<f64>().unwrap()}),
            "phoneNumber",
            "integer",
        ),
        (json!({"phoneNumber": "12ab"}), "phoneNumber", "digits"),
        (json!({"phoneNumber": "+"}), "phoneNumber", "digit"),
        (json!({"phoneNumber": "1\u{0}2"}), "phoneNumber", "digits"),
        (json!({"email": "plainaddress"}), "email", "@"),
        (json!({"email": "@x.io"}), "email", "before the '@'"),
        (json!({"email": "a@"}), "email", "domain"),
        (json!({"email": "a@b@c.io"}), "email", "exactly one"),
        (json!({"email": "a b@c.io"}), "email", "whitespace"),
        (json!({"email": "a\u{0}b@c.io"}), "email", "control"),
        (json!({"email": "bad", "phoneNumber": "123"}), "email", "@"),
    ];
    for (body, field, mentions) in cases {
        let (status, answer) = app.post_identify(&body).await;
        assert_error(status, &answer, 400, "INVALID_INPUT", mentions);
        assert_eq!(answer["error"]["field"], field, "{body}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field)
        );
    }
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/identify")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    let response = app.client.post(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}
