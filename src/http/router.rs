//! Router assembly, and serving with graceful shutdown. The state the handlers
//! share is [`crate::http::state`].

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::http::error::ApiError;
use crate::http::middleware::{REQUEST_ID, error_for};
pub use crate::http::state::AppState;
use crate::http::{graphql, openapi, rest};
use crate::ops::config::Config;

/// Every route of the service, with the layers every request goes through.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let cors = cors(&state.config);
    Router::new()
        .route("/identify", post(rest::identify::identify))
        .route(
            rest::batch::PATH,
            post(rest::batch::identify_batch)
                .layer(DefaultBodyLimit::max(state.config.batch_body_limit_bytes)),
        )
        .route("/healthz", get(rest::health::healthz))
        .route("/readyz", get(rest::health::readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .with_state(state.clone())
        .merge(graphql::router(state.clone()))
        .fallback(|uri: Uri| async move { error_for(uri.path(), ApiError::NotFound) })
        .method_not_allowed_fallback(|uri: Uri| async move {
            error_for(uri.path(), ApiError::MethodNotAllowed)
        })
        // Listed innermost first: the last layer sees the request first.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::middleware::refuse_oversized_body,
        ))
        .layer(middleware::from_fn(crate::http::middleware::catch_panic))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::middleware::timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::middleware::rate_limit,
        ))
        // Before the rate limit, which keys on the principal when there is one.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::middleware::authenticate,
        ))
        .layer(cors)
        .layer(middleware::from_fn_with_state(
            state,
            crate::http::middleware::observe,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // JSON answers load nothing; the GraphiQL page sets a policy of its own.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
}

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        use subtle::ConstantTimeEq;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
            return ApiError::Unauthenticated(crate::auth::AuthFailure::Missing).into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(
            &state.pool,
            &state.statements,
            &state.feed.stats(),
            state.replica.as_ref().map(|replica| replica.stats()),
        ),
    )
        .into_response()
}

/// No origin is allowed unless configured: browsers then refuse cross-origin calls.
fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .cors_origins
        .iter()
        .filter(|origin| origin.as_str() != "*")
        .filter_map(|origin| HeaderValue::from_str(origin.trim()).ok())
        .collect();
    let allow_origin = if config.cors_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            REQUEST_ID.clone(),
        ])
        .expose_headers([REQUEST_ID.clone(), header::RETRY_AFTER])
}

/// Binds the listener; port 0 picks a free port, reported by the returned address.
pub async fn bind(config: &Config) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((config.host, config.port)).await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// Serves until `shutdown` resolves, then stops accepting and lets requests in
/// flight finish, for at most the configured shutdown timeout.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let deadline = state.config.shutdown_timeout();
    let limits = crate::http::server::ConnectionLimits::from_config(&state.config);
    tracing::debug!(?limits, "connection limits");
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let feed = tokio::spawn(
        state
            .feed
            .clone()
            .run(state.config.session_database_url().map(str::to_owned)),
    );
    // Stops the feed's tasks however serving ends.
    let _feed = AbortOnDrop(feed);
    let _replica = state.replica.clone().map(|replica| {
        let primary = state.pool.clone();
        AbortOnDrop(tokio::spawn(async move { replica.watch(primary).await }))
    });
    let server = crate::http::server::serve(
        listener,
        router(state.clone()),
        limits,
        state.metrics.clone(),
        signal,
    );
    let give_up = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(deadline).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = server => Ok(()),
        () = give_up => {
            tracing::warn!(
                seconds = deadline.as_secs(),
                "requests still in flight after the shutdown timeout; closing them"
            );
            Ok(())
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what orchestrators send).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}
