//! Identity reconciliation service: links contact records that share an email or a
//! phone number into one customer identity, and answers over REST and GraphQL.
//!
//! The folders are the layers, and imports only point down the list:
//!
//! - [`http`]: the server loop, middleware, REST and GraphQL adapters;
//! - [`ops`]: running it: configuration, telemetry, metrics, the private PostgreSQL;
//! - [`app`]: the use cases (identify, batch, repairs, erasure, change feed, import);
//! - [`auth`]: principals, API keys, JWT, scopes, masking, the request throttle;
//! - [`db`]: PostgreSQL: pool, schema, statements, the one locking protocol;
//! - [`domain`]: the rules, pure: values, decisions, the identity graph.
//!
//! `main.rs` only parses the configuration and calls into this library, so that the
//! integration tests can build the very same application on a port of their own.

pub mod app;
pub mod auth;
pub mod db;
pub mod domain;
pub mod http;
pub mod ops;
