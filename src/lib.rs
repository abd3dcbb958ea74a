//! Identity reconciliation service: links contact records that share an email or a
//! phone number into one customer identity, and answers over REST and GraphQL.
//!
//! `main.rs` only parses the configuration and calls into this library, so that the
//! integration tests can build the very same application on a port of their own.

pub mod app;
pub mod auth;
pub mod batch;
pub mod changefeed;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod import;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod repair;
pub mod rest;
pub mod server;
pub mod service;
pub mod state;
pub mod strict_json;
pub mod telemetry;
