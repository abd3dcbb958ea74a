//! Typed configuration: every option is a command-line flag that can also be set by
//! the environment variable named beside it in `--help`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | unset | PostgreSQL to use; unset runs a private server under `DATA_DIR` |
//! | `HOST` | `127.0.0.1` | address to listen on |
//! | `PORT` | `3000` | port to listen on (hosting platforms set it) |
//! | `DATA_DIR` | `.data` | where the private PostgreSQL keeps its cluster |
//! | `PG_BIN_DIR` | searched | PostgreSQL server binaries for the private server |
//! | `DB_POOL_SIZE` | `16` | connections per server process |
//! | `DB_ACQUIRE_TIMEOUT_MS` | `5000` | wait for a connection before answering 503 |
//! | `BODY_LIMIT_BYTES` | `16384` | largest request body accepted (413 beyond) |
//! | `LOG_FORMAT` | `text` | `text` or `json` |
//! | `RUST_LOG` | `info` | log filter |

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::PoolSettings;

#[derive(Debug, Parser)]
#[command(name = "identity-reconciliation", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve REST and GraphQL (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) the server serves, and exit.
    PrintSchema,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL connection URL. Unset: run a private PostgreSQL under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<Secret>,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 3000, global = true)]
    pub port: u16,

    /// Folder for the private PostgreSQL's data, kept between runs.
    #[arg(long, env = "DATA_DIR", default_value = ".data", global = true)]
    pub data_dir: PathBuf,

    /// Database connections per server process.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, global = true)]
    pub pool_size: usize,

    /// Milliseconds to wait for a database connection before answering 503.
    #[arg(
        long,
        env = "DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 16 * 1024, global = true)]
    pub body_limit_bytes: usize,

    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_size: self.pool_size,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that must never reach a log: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("postgres://user:hunter2@db/x");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
    }

    #[test]
    fn flags_parse_with_a_subcommand_in_any_position() {
        let cli = Cli::try_parse_from(["x", "migrate", "--port", "4000"]).unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.config.port, 4000);
    }
}
