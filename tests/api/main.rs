//! One integration-test binary: each test spawns the real application on a free
//! port with a fresh database on a real PostgreSQL, and drives it over HTTP.

mod abuse;
mod access;
mod batch;
mod browser;
mod cli;
mod concurrency;
mod erasure;
mod events;
mod examples;
mod generated;
mod graph;
mod graphql;
mod helpers;
mod identify;
mod import;
mod operations;
mod pooler;
mod protocol;
mod replica;
mod scenarios;
mod subscriptions;
mod validation;
