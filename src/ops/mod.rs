//! Running the service: its configuration, logs and metrics, and the private
//! PostgreSQL it starts when no database is given.

pub mod config;
pub mod embedded;
pub mod metrics;
pub mod telemetry;
