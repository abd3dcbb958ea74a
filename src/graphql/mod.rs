//! The GraphQL API (SPEC §6): `POST /graphql` executes, `GET /graphql` serves
//! GraphiQL from assets compiled into the binary. Resolvers are thin adapters over
//! the service layer and the same input parsing REST uses.

mod error;
mod graphiql;
mod loaders;
mod mutation;
mod query;
mod types;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use async_graphql::{EmptySubscription, Schema, SchemaBuilder};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::routing::get;

pub use error::ErrorCode;
pub use loaders::{ContactLoader, MembersLoader};
pub use mutation::MutationRoot;
pub use query::QueryRoot;

use crate::app::AppState;

pub type AppSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Deepest selection accepted; GraphiQL's introspection query needs 13 levels.
pub const MAX_DEPTH: usize = 15;
/// Largest total cost accepted; a list field costs its page size times its
/// selection, so one full page of contacts with their identities fits, ten do not.
pub const MAX_COMPLEXITY: usize = 2_500;

fn builder() -> SchemaBuilder<QueryRoot, MutationRoot, EmptySubscription> {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
}

/// The schema served, with the application state its resolvers use.
pub fn schema(state: AppState) -> AppSchema {
    builder().data(state).finish()
}

/// The schema in SDL, exactly as served: `schema.graphql` is this text.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// `/graphql` and GraphiQL's assets.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphiql::page).post(execute))
        .route("/graphql/assets/{file}", get(graphiql::asset))
        .with_state(schema(state))
}

async fn execute(State(schema): State<AppSchema>, request: GraphQLRequest) -> GraphQLResponse {
    let state = schema
        .data::<AppState>()
        .expect("schema carries the app state");
    // Loaders cache per request, so a fresh pair for each: `Contact.identity` and
    // `Identity.contacts` then share one fetch of the members.
    let request = request
        .into_inner()
        .data(loader(ContactLoader::new(state.pool.clone())))
        .data(loader(MembersLoader::new(state.pool.clone())));
    let mut response = schema.execute(request).await;
    // Errors raised before any resolver ran (syntax, unknown fields, wrong argument
    // types, depth and complexity limits) are the client's: give them a code too.
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", ErrorCode::BadUserInput.as_str());
        }
    }
    response.into()
}

fn loader<L>(loader: L) -> DataLoader<L, HashMapCache>
where
    L: Loader<i32>,
{
    DataLoader::with_cache(loader, tokio::spawn, HashMapCache::default())
}
