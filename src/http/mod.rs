//! HTTP: the connection loop, the router and its middleware, and the REST and GraphQL
//! adapters over the use cases of [`crate::app`].

pub mod error;
pub mod graphql;
pub mod middleware;
pub mod openapi;
pub mod rest;
pub mod router;
pub mod server;
pub mod state;
