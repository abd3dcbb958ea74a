//! The GraphQL API (docs/SPEC.md §6): `POST /graphql` executes, `GET /graphql` serves
//! GraphiQL from assets compiled into the binary. Resolvers are thin adapters over
//! the service layer and the same input parsing REST uses.

mod complete;
mod error;
mod graphiql;
pub mod limits;
mod loaders;
mod mutation;
pub mod query;
mod subscription;
mod types;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Schema, SchemaBuilder, ServerError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

pub use error::Code;
pub use limits::{MAX_COMPLEXITY, MAX_DEPTH};
pub use loaders::{ContactLoader, MembersLoader};
pub use mutation::MutationRoot;
pub use query::QueryRoot;

use crate::auth::{AuthFailure, Authentication, Masking, Scope};
use crate::domain::json as strict_json;
use crate::http::error::ApiError;
use crate::http::middleware::{RateLimitClient, RequestId, Unpaid, charge_units, rate_limited};
use crate::http::state::AppState;
use crate::ops::config::Switch;

pub use subscription::{MAX_SUBSCRIPTIONS_PER_CONNECTION, SubscriptionRoot};

/// Where this operation's reads go: the read replica's pool for a document of
/// queries only (while the replica is usable), else the primary's, so a mutation's
/// answer and everything nested in it reads what the mutation wrote.
struct ReadPool(crate::db::DbPool);

/// The pool for reads in this operation (the primary outside `execute`, e.g. in a
/// subscription's payloads).
fn read_pool<'a>(ctx: &'a async_graphql::Context<'_>) -> &'a crate::db::DbPool {
    match ctx.data_opt::<ReadPool>() {
        Some(ReadPool(pool)) => pool,
        None => &ctx.data_unchecked::<AppState>().pool,
    }
}

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

fn builder() -> SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .extension(limits::Bounds)
        .limit_directives(limits::MAX_DIRECTIVES_PER_FIELD)
}

/// The schema served, with the application state its resolvers use.
pub fn schema(state: AppState) -> AppSchema {
    let builder = if state.config.introspection == Switch::Off {
        builder().disable_introspection()
    } else {
        builder()
    };
    builder.data(state).finish()
}

/// The schema in SDL, exactly as served: `schema.graphql` is this text.
pub fn sdl() -> String {
    sdl_schema().sdl()
}

/// The schema with its limits and no state: what the SDL and tests of the limits see.
fn sdl_schema() -> AppSchema {
    builder().finish()
}

/// `/graphql` (executing over POST, subscribing over a WebSocket handshake, else
/// GraphiQL) and GraphiQL's assets.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.graphql_body_limit_bytes;
    Router::new()
        .route("/graphql", get(subscription::page_or_socket).post(execute))
        .layer(DefaultBodyLimit::max(body_limit))
        .route("/graphql/assets/{file}", get(graphiql::asset))
        .with_state(schema(state))
}

/// The content types a GraphQL request may be sent as. Only JSON: a browser sends
/// `text/plain`, form and multipart bodies cross-origin without asking (no CORS
/// preflight), so accepting them would let any web page run mutations.
fn is_graphql_json(headers: &HeaderMap) -> bool {
    matches!(
        crate::http::middleware::media_type(headers).as_deref(),
        Some("application/json" | "application/graphql-response+json")
    )
}

/// `POST /graphql`: one operation in a JSON body (GraphQL over HTTP). GET serves
/// GraphiQL and never executes anything.
async fn execute(
    State(schema): State<AppSchema>,
    client: Option<Extension<RateLimitClient>>,
    authentication: Option<Extension<Authentication>>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let state = schema
        .data::<AppState>()
        .expect("schema carries the app state")
        .clone();
    let request = match read_request(&state, &headers, body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_graphql_response(),
    };
    let checked = match check_document(&state, request) {
        Ok(checked) => checked,
        Err(errors) => return refused(errors),
    };
    let client_for_batch = client.clone();
    if let Some(response) = charge_rate_limit(&state, client, checked.summary.identify_count) {
        return response;
    }

    // Loaders cache per request, so a fresh pair for each: `Contact.identity` and
    // `Identity.contacts` then share one fetch of the members.
    let authentication = authentication
        .map(|Extension(authentication)| authentication)
        .unwrap_or(Authentication::Failed(AuthFailure::Missing));
    let mut request = checked.request;
    if !authentication.is_authenticated() {
        // The schema is no secret worth a credential to anyone who has one, and no
        // map for anyone who has not. Asked for anyway, it is refused with a reason
        // (GraphiQL shows it), not answered with a silent `null`.
        if asks_for_introspection(&checked.document) {
            return refused(vec![error::coded(
                ServerError::new(
                    "introspection needs a credential: send `Authorization: Bearer <key>` \
                     (in GraphiQL, the Headers tab)",
                    None,
                ),
                Code::Unauthenticated,
            )]);
        }
        request = request.disable_introspection();
    }
    let masked = matches!(authentication.identify_access(), Ok(Masking::Values))
        && authentication.require(Scope::Read).is_err();
    if masked {
        request = request.data(error::MaskValues);
    }
    if let Some(Extension(client)) = &client_for_batch {
        request = request.data(client.clone());
    }
    let principal = authentication.name().to_owned();
    let reads = std::sync::Arc::new(query::ReadAudit::default());
    let queries_only = checked.document.operations.iter().all(|(_, operation)| {
        operation.node.ty == async_graphql::parser::types::OperationType::Query
    });
    let pool = if queries_only {
        state.read_pool().clone()
    } else {
        state.pool.clone()
    };
    let request = request
        .data(reads.clone())
        .data(authentication)
        .data(request_id.map(|Extension(id)| id).unwrap_or_default())
        .data(loader(ContactLoader::new(pool.clone())))
        .data(loader(MembersLoader::new(pool.clone())))
        .data(ReadPool(pool));
    let mut response = schema.execute(request).await;
    reads.log(&principal);
    error::log_failures(&response.errors);
    error::code_uncoded(&mut response.errors);
    limits::cap_errors(&mut response.errors);
    // Refused by validation, nothing ran: no `data` at all (GraphQL over HTTP), as
    // for the documents refused before execution.
    let ran = !(response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty()));
    if !ran {
        return refused(response.errors);
    }
    response.data = complete::complete(
        std::mem::take(&mut response.data),
        &checked.document,
        checked.operation_name.as_deref(),
        &checked.variables,
    );
    answer(&state, &response)
}

/// Whether an operation of `document` selects `__schema` or `__type` at its root
/// (directly or through fragments).
fn asks_for_introspection(document: &ExecutableDocument) -> bool {
    fn selects(document: &ExecutableDocument, set: &SelectionSet, nesting: usize) -> bool {
        nesting < 16
            && set.items.iter().any(|item| match &item.node {
                Selection::Field(field) => {
                    matches!(field.node.name.node.as_str(), "__schema" | "__type")
                }
                Selection::InlineFragment(fragment) => {
                    selects(document, &fragment.node.selection_set.node, nesting + 1)
                }
                Selection::FragmentSpread(spread) => document
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .is_some_and(|fragment| {
                        selects(document, &fragment.node.selection_set.node, nesting + 1)
                    }),
            })
    }
    document
        .operations
        .iter()
        .any(|(_, operation)| selects(document, &operation.node.selection_set.node, 0))
}

/// The request, if it is one this server executes: JSON, within the body limit,
/// one operation.
fn read_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<async_graphql::Request, ApiError> {
    if !is_graphql_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.graphql_body_limit_bytes,
            }
        } else {
            ApiError::BadRequest(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))
        }
    })?;
    parse_request(&body)
}

/// A request whose document parsed and passed [`limits::check`], with what the
/// answer's completion needs once the request itself has been handed over.
struct CheckedRequest {
    request: async_graphql::Request,
    summary: limits::DocumentSummary,
    document: async_graphql::parser::types::ExecutableDocument,
    operation_name: Option<String>,
    variables: async_graphql::Variables,
}

fn check_document(
    state: &AppState,
    mut request: async_graphql::Request,
) -> Result<CheckedRequest, Vec<ServerError>> {
    let limits = limits::DocumentLimits {
        max_fields: state.config.graphql_max_fields,
        max_aliases: state.config.graphql_max_aliases,
        max_identify: state.config.graphql_max_identify_per_request,
    };
    let variables = request.variables.clone();
    let operation_name = request.operation_name.clone();
    let document = request
        .parsed_query()
        .map_err(|err| vec![error::coded(err, Code::GraphqlParseFailed)])?;
    let summary = limits::check(document, &variables, &limits)?;
    let document = document.clone();
    Ok(CheckedRequest {
        request,
        summary,
        document,
        operation_name,
        variables,
    })
}

/// The answer as JSON, or an error in its place when it is over the size limit.
fn answer(state: &AppState, response: &async_graphql::Response) -> Response {
    let body = match serde_json::to_vec(response) {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "could not serialise a GraphQL answer");
            return ApiError::Internal.into_graphql_response();
        }
    };
    let max = state.config.graphql_max_response_bytes;
    if body.len() <= max {
        return json_response(StatusCode::OK, body);
    }
    tracing::warn!(
        bytes = body.len(),
        "GraphQL answer over the response cap; replaced by an error"
    );
    let error = serde_json::json!({
        "data": null,
        "errors": [{
            "message": format!(
                "the answer would be {} bytes, over the limit of {max}; ask for fewer \
                 fields or smaller pages",
                body.len()
            ),
            "extensions": {"code": crate::http::error::Code::ResponseTooLarge.graphql()},
        }],
    });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&error).unwrap_or_default(),
    )
}

/// Parses the JSON envelope: one object with `query`, and optionally
/// `operationName`, `variables` and `extensions`. Repeated keys are refused.
fn parse_request(body: &[u8]) -> Result<async_graphql::Request, ApiError> {
    let value = strict_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("request body is not valid JSON: {err}")))?;
    if value.is_array() {
        return Err(ApiError::BadRequest(
            "batched requests are not supported; send one operation per request".into(),
        ));
    }
    if !value.get("query").is_some_and(|query| query.is_string()) {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object with a `query` string".into(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|err| ApiError::BadRequest(format!("not a GraphQL request: {err}")))
}

/// A document refused before it ran: `data` is absent (GraphQL over HTTP), not null.
fn refused(mut errors: Vec<ServerError>) -> Response {
    error::code_uncoded(&mut errors);
    limits::cap_errors(&mut errors);
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&serde_json::json!({ "errors": errors })).unwrap_or_default(),
    )
}

/// An `identifyBatch` of `orders` costs one rate-limit token per order; the document
/// paid one for it before it ran.
fn charge_batch(ctx: &async_graphql::Context<'_>, orders: usize) -> async_graphql::Result<()> {
    let state = ctx.data_unchecked::<AppState>();
    charge_units(state, ctx.data_opt::<RateLimitClient>(), orders).map_err(|unpaid| match unpaid {
        Unpaid::OverBurst { burst } => Code::InvalidInput.argument_error(
            "inputs",
            format!(
                "the batch holds {orders} orders, more than the rate limit's burst of {burst} \
                 allows at once; send smaller batches"
            ),
        ),
        Unpaid::Limited(retry_after) => Code::RateLimited.error(format!(
            "too many orders; retry after {} s",
            retry_after.as_secs().max(1)
        )),
    })
}

/// Each `identify` in the document costs one rate-limit token; the request itself
/// paid one in the middleware. `Some` is the refusal to send.
fn charge_rate_limit(
    state: &AppState,
    client: Option<Extension<RateLimitClient>>,
    identify_count: usize,
) -> Option<Response> {
    let client = client.map(|Extension(client)| client);
    match charge_units(state, client.as_ref(), identify_count) {
        Ok(()) => None,
        Err(Unpaid::OverBurst { burst }) => Some(refused(vec![limits::limit_error(format!(
            "the document runs identify {identify_count} times, more than the rate \
             limit's burst of {burst} allows at once; send fewer per request"
        ))])),
        Err(Unpaid::Limited(retry_after)) => {
            Some(rate_limited(retry_after).into_graphql_response())
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn loader<K, L>(loader: L) -> DataLoader<L, HashMapCache>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
    L: Loader<K>,
{
    DataLoader::with_cache(loader, tokio::spawn, HashMapCache::default())
}
