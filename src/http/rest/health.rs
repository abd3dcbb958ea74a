//! Liveness and readiness for load balancers and orchestrators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::db;
use crate::http::state::AppState;

/// Alive: the process answers HTTP. Says nothing about the database.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready to serve", body = Object),
    (status = 503, description = "Database unreachable or migrations pending", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let check = async {
        let mut connection = state.pool.get().await.map_err(|err| err.to_string())?;
        db::migrations_applied(&mut connection)
            .await
            .map_err(|err| err.to_string())
    };
    match check.await {
        Ok(true) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "migrations pending"})),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready", "reason": "database unavailable"})),
            )
        }
    }
}
