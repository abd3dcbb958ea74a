//! Application state, router assembly, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::db::{DbPool, StatementCounter};
use crate::error::ApiError;
use crate::{graphql, rest};

/// What every handler shares.
pub struct App {
    pub pool: DbPool,
    /// Counts the statements `pool`'s connections send.
    pub statements: StatementCounter,
    pub config: Config,
}

/// Cheap to clone handle on [`App`], given to axum as state.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(pool: DbPool, statements: StatementCounter, config: Config) -> Self {
        Self(Arc::new(App {
            pool,
            statements,
            config,
        }))
    }
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    Router::new()
        .route("/identify", post(rest::identify::identify))
        .route("/healthz", get(rest::health::healthz))
        .route("/readyz", get(rest::health::readyz))
        .with_state(state.clone())
        .merge(graphql::router(state))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            tracing::error!("request handler panicked");
            ApiError::Internal.into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// Binds the listener; port 0 picks a free port, reported by the returned address.
pub async fn bind(config: &Config) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((config.host, config.port)).await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// Serves until `shutdown` resolves, then stops accepting and lets requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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
