//! Authentication of every request that may touch contact data: its outcome (a
//! principal, or why there is none) rides in the request's extensions for the
//! handlers and GraphQL guards to check their scope against. Probes, the OpenAPI
//! document and the GraphiQL page stay open.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Authentication;
use crate::http::state::AppState;

/// Paths that never need a credential; `/metrics` has a token of its own.
fn is_open(method: &Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || (method == Method::GET && (path == "/graphql" || path.starts_with("/graphql/assets/")))
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let client = super::rate_limit::client_address(&request, state.config.trust_forwarded_for);
    let authentication = state.auth.authenticate(authorization, client).await;
    if let Authentication::Failed(failure) = &authentication {
        state.metrics.observe_auth_failure(*failure);
    }
    tracing::Span::current().record("principal", authentication.name());
    request.extensions_mut().insert(authentication);
    next.run(request).await
}
