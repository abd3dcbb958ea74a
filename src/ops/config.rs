//! Typed configuration: every option is a command-line flag that can also be set by
//! the environment variable named beside it (`--help` lists both). The settings
//! table of docs/configuration.md is generated from these definitions
//! ([`settings_markdown`], printed by the hidden `print-config-docs`), and a test
//! fails when the two drift.
//!
//! Only the options every subcommand reads are global, so that `keys list --help`
//! shows what `keys` takes; the others are given at the top level, or after the
//! subcommand that reads them (`serve`, `import`), or in the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

pub use crate::auth::Secret;

use crate::auth::AuthMode;
use crate::auth::jwt::{JwtSettings, KeySource};
use crate::db::PoolSettings;
use crate::domain::{BlockRules, Email, Limits, Phone};

#[derive(Debug, Parser)]
#[command(name = "identity-reconciliation", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve REST and GraphQL (the default).
    Serve(ServerArgs),
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) the server serves, and exit.
    PrintSchema,
    /// Print the OpenAPI document of the REST API, and exit.
    PrintOpenapi,
    /// Print the settings table of docs/configuration.md, generated from the options.
    #[command(hide = true)]
    PrintConfigDocs,
    /// Verify invariants I1–I3 and I6 over the whole database (`--deep`: also I7,
    /// every identity recomputed from contacts and evidence); exit 1 on any violation.
    Check {
        /// Also recompute every identity from contacts and the evidence ledger.
        #[arg(long)]
        deep: bool,
    },
    /// Forget a customer: their identity's contacts and every trace of its values
    /// (docs/SPEC.md §11); applies pending migrations first. Exactly one of the three.
    // Checked here rather than after the database is started: a typo costs nothing.
    #[command(group(
        clap::ArgGroup::new("target")
            .required(true)
            .args(["email", "phone", "primary_contact_id"])
    ))]
    Erase {
        /// The customer with this email (normalised as `POST /identify` does).
        #[arg(long, value_parser = email_arg)]
        email: Option<Email>,
        /// The customer with this phone number (normalised as `POST /identify` does).
        #[arg(long, value_parser = phone_arg)]
        phone: Option<Phone>,
        /// The customer whose identity this live primary contact heads.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i32).range(1..))]
        primary_contact_id: Option<i32>,
    },
    /// Apply a file of orders as `POST /identify` would, line by line, in chunks
    /// of one transaction (docs/SPEC.md §13.1); or, with --from-postgres, migrate
    /// the NestJS/TypeORM implementation's contact table (§13.2).
    Import(ImportArgs),
    /// Manage API keys (applies pending migrations first).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

fn email_arg(raw: &str) -> Result<Email, String> {
    match Email::parse(raw) {
        Ok(Some(email)) => Ok(email),
        Ok(None) => Err("the email is blank".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

fn phone_arg(raw: &str) -> Result<Phone, String> {
    match Phone::parse(raw) {
        Ok(Some(phone)) => Ok(phone),
        Ok(None) => Err("the phone number is blank".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ImportArgs {
    /// The orders: NDJSON lines {"email", "phoneNumber", "orderedAt"} or CSV with
    /// those columns; `-` reads standard input.
    #[arg(
        required_unless_present = "from_postgres",
        conflicts_with = "from_postgres"
    )]
    pub file: Option<String>,
    /// The input's format (default: from the extension, `.csv` or else NDJSON).
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Continue the interrupted import of this input after its last committed chunk.
    #[arg(long)]
    pub resume: bool,
    /// Import an input again although it was imported before.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Lines per chunk (one transaction each).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk_size: u32,
    /// Where rejected lines go (default: FILE.rejects, or import-ID.rejects for stdin).
    #[arg(long)]
    pub rejects: Option<std::path::PathBuf>,
    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// Migrate the contact table of the NestJS/TypeORM implementation at this
    /// PostgreSQL URL into this (empty) database.
    #[arg(long, value_name = "URL")]
    pub from_postgres: Option<Secret>,
    /// The old implementation's table (NAME or SCHEMA.NAME).
    #[arg(long, default_value = "contact", requires = "from_postgres")]
    pub table: String,
    // The identify policy the import applies, as the server does.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum KeysCommand {
    /// Make a key; prints it once, alone, as the last line of standard output.
    Create {
        /// Who or what the key is for, shown by `keys list`.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: identify, identify:masked, read, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List keys: ids, names, scopes, dates; never secrets.
    List,
    /// Revoke a key by id; every server process refuses it within the cache time.
    Revoke {
        /// The key's id (the 16 hex digits after `irk_`).
        id: String,
    },
}

/// `serve`'s options: the server's options of [`Config`] again, so that
/// `serve --port 0` works and `serve --help` lists them.
///
/// Each copy is global within `serve`, which makes clap hand its value up to the
/// top level, where [`Config`] reads it; of the two values, one given on the command
/// line beats one from the environment or a default, on either side of `serve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerArgs;

/// `import`'s copies of the identify policy's options (blocks, identity limits),
/// handed up to [`Config`] as [`ServerArgs`]' are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyArgs;

/// The options of [`Config`] the server shares with `import`.
const POLICY: [&str; 4] = [
    "block_default_values",
    "blocked_values_file",
    "max_identity_emails",
    "max_identity_phones",
];

/// Copies of [`Config`]'s top-level (not global) options that `keep` accepts by id.
fn config_copies(keep: fn(&str) -> bool) -> Vec<Arg> {
    let config = Config::augment_args(clap::Command::new("config"));
    config
        .get_arguments()
        .filter(|arg| !arg.is_global_set() && keep(arg.get_id().as_str()))
        .map(|arg| arg.clone().global(true))
        .collect()
}

fn server_option(_id: &str) -> bool {
    true
}

fn policy_option(id: &str) -> bool {
    POLICY.contains(&id)
}

// The values are read by [`Config`] at the top level: nothing to take here.
macro_rules! copied_options {
    ($name:ident, $keep:path) => {
        impl FromArgMatches for $name {
            fn from_arg_matches(_matches: &ArgMatches) -> Result<Self, clap::Error> {
                Ok(Self)
            }

            fn update_from_arg_matches(
                &mut self,
                _matches: &ArgMatches,
            ) -> Result<(), clap::Error> {
                Ok(())
            }
        }

        impl Args for $name {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd.args(config_copies($keep))
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

copied_options!(ServerArgs, server_option);
copied_options!(PolicyArgs, policy_option);

/// The settings table of docs/configuration.md: a row per option, in the order they
/// are declared, whose meaning is the help `--help` shows.
pub fn settings_markdown() -> String {
    let mut table = String::from("| variable | flag | default | meaning |\n|---|---|---|---|\n");
    for arg in Cli::command().get_arguments() {
        let Some(variable) = arg.get_env() else {
            continue;
        };
        let flag = arg
            .get_long()
            .map_or_else(String::new, |long| format!("`--{long}`"));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() {
            "unset".to_owned()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let meaning = arg
            .get_help()
            .map(|help| help.to_string())
            .unwrap_or_default();
        table.push_str(&format!(
            "| `{}` | {flag} | {default} | {} |\n",
            variable.to_string_lossy(),
            meaning.replace('|', "\\|")
        ));
    }
    table
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    // Every subcommand reads these: global, so they go anywhere on the command line.
    /// PostgreSQL connection URL; unset runs a private PostgreSQL under --data-dir.
    /// Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<Secret>,

    /// Folder for the private PostgreSQL's data, kept between runs.
    #[arg(long, env = "DATA_DIR", default_value = ".data", global = true)]
    pub data_dir: PathBuf,

    /// A session connection to the same PostgreSQL, for what a transaction pooler
    /// cannot carry: the change feed's LISTEN and the import's claim on its input.
    /// Never logged.
    #[arg(
        long,
        env = "DATABASE_DIRECT_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_direct_url: Option<Secret>,

    /// Database connections per process: a small multiple of PostgreSQL's cores
    /// across all processes (8 measured best on a 2-core database, BENCHMARKS.md,
    /// "Tuning").
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

    /// `off` when DATABASE_URL is a transaction-mode pooler (PgBouncer before 1.21):
    /// every statement is sent unnamed in one exchange, and nothing relies on a
    /// session (LISTEN moves to DATABASE_DIRECT_URL, or subscribers poll). See
    /// docs/deployment.md, "Behind PgBouncer".
    #[arg(
        long,
        env = "DB_PREPARED_STATEMENTS",
        value_enum,
        default_value_t = Switch::On,
        global = true
    )]
    pub db_prepared_statements: Switch,

    /// How concurrent writes are coordinated (docs/SPEC.md §4): advisory locks under
    /// READ COMMITTED, or SERIALIZABLE transactions retried on conflict, with no
    /// advisory locks. See docs/deployment.md, "How concurrency is handled".
    #[arg(
        long,
        env = "DB_ISOLATION",
        value_enum,
        default_value_t = Isolation::ReadCommitted,
        global = true
    )]
    pub db_isolation: Isolation,

    /// Log output format: `text`, or `json` for log shippers.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    // The identify policy: the server's and `import`'s (see `PolicyArgs`).
    /// The built-in list of junk values that never link anything (docs/SPEC.md §10.3).
    #[arg(long, env = "BLOCK_DEFAULT_VALUES", default_value_t = true, action = clap::ArgAction::Set)]
    pub block_default_values: bool,

    /// A file of more blocked values and patterns, one per line (docs/SPEC.md §10.3);
    /// a bad line stops the server at start.
    #[arg(long, env = "BLOCKED_VALUES_FILE")]
    pub blocked_values_file: Option<std::path::PathBuf>,

    /// Most emails one identity may gather by requests before a request is held for
    /// review; 0 is no limit.
    #[arg(long, env = "MAX_IDENTITY_EMAILS", default_value_t = 25)]
    pub max_identity_emails: usize,

    /// Most phone numbers one identity may gather by requests before a request is
    /// held for review; 0 is no limit.
    #[arg(long, env = "MAX_IDENTITY_PHONES", default_value_t = 25)]
    pub max_identity_phones: usize,

    // The server's alone: at the top level or after `serve` (see `ServerArgs`).
    /// Address to listen on (`0.0.0.0` in a container or behind a proxy).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (hosting platforms set PORT); 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// A streaming replica of DATABASE_URL for GraphQL reads; writes, and the answers
    /// of writes, stay on the primary. See docs/deployment.md, "Read replicas".
    /// Never logged.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<Secret>,

    /// Reads go back to the primary while the replica is further behind than this.
    #[arg(long, env = "READ_MAX_LAG_MS", default_value_t = 1000)]
    pub read_max_lag_ms: u64,

    /// Largest REST request body accepted, in bytes (413 beyond).
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: usize,

    /// Most orders one `POST /identify/batch` (or `identifyBatch`) may carry, at
    /// most 10000.
    #[arg(
        long,
        env = "BATCH_MAX_ORDERS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub batch_max_orders: u32,

    /// Batches one server process runs at once; more wait their turn. Each holds
    /// a lock per value in PostgreSQL's shared lock table until it commits.
    #[arg(
        long,
        env = "BATCH_CONCURRENCY",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub batch_concurrency: u16,

    /// Largest `POST /identify/batch` body accepted, in bytes (413 beyond): about
    /// 500 bytes an order at the default batch size.
    #[arg(long, env = "BATCH_BODY_LIMIT_BYTES", default_value_t = 512 * 1024)]
    pub batch_body_limit_bytes: usize,

    /// Largest `/graphql` request body accepted, in bytes (413 beyond). GraphiQL's
    /// schema query is about 2 KB; real operations rarely reach 10 KB.
    #[arg(long, env = "GRAPHQL_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub graphql_body_limit_bytes: usize,

    /// Most `identify` mutations one GraphQL document may run; each counts against
    /// the rate limit. Bulk writes belong in a batch API.
    #[arg(long, env = "GRAPHQL_MAX_IDENTIFY_PER_REQUEST", default_value_t = 10)]
    pub graphql_max_identify_per_request: usize,

    /// Most field selections in one GraphQL document, fragments included (GraphiQL's
    /// schema query has about 60).
    #[arg(long, env = "GRAPHQL_MAX_FIELDS", default_value_t = 300)]
    pub graphql_max_fields: usize,

    /// Most aliased fields in one GraphQL document.
    #[arg(long, env = "GRAPHQL_MAX_ALIASES", default_value_t = 30)]
    pub graphql_max_aliases: usize,

    /// Largest GraphQL answer, in bytes; a bigger one is replaced by a
    /// `RESPONSE_TOO_LARGE` error.
    #[arg(long, env = "GRAPHQL_MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub graphql_max_response_bytes: usize,

    /// Seconds a client has to send a whole request head, from its first byte.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Seconds a keep-alive connection may stay open with no request.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub http_idle_timeout_secs: u64,

    /// Most client connections open at once; lowered to fit the process's open-file
    /// limit (whose soft value is raised to the hard one at start-up).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Seconds a request may take before it is answered 503 `TIMEOUT` (its
    /// transaction still completes or rolls back on its own).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Seconds to let requests in flight finish after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    /// Requests per second allowed per principal (API key or JWT subject), or per
    /// client address for callers without one (a GraphQL document pays one per
    /// `identify`); 429 with `Retry-After` beyond. 0 turns rate limiting off.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 0.0)]
    pub rate_limit_per_second: f64,

    /// Requests a client may send in a burst above the steady rate (default: one
    /// second's worth, at least 1).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Identify clients by the last address in `X-Forwarded-For` (the one your
    /// proxy appended) instead of the peer address. Only behind a proxy you run.
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Browser origins allowed by CORS, comma-separated (`*` for any); none by default.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// When callers must authenticate: `auto` as soon as an API key exists or JWTs
    /// are configured, `required` always, `off` never (docs/security.md).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value_t = AuthMode::Auto)]
    pub auth_mode: AuthMode,

    /// Serve anonymous callers (every scope) on a non-loopback address when no key
    /// exists; without it the server refuses to start there.
    #[arg(long, env = "ALLOW_ANONYMOUS", default_value_t = false)]
    pub allow_anonymous: bool,

    /// Seconds a verified API key (or the absence of keys) is trusted before it is
    /// read again: the longest a revocation takes to reach this process (at most 30).
    #[arg(long, env = "AUTH_CACHE_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=30))]
    pub auth_cache_secs: u64,

    /// HS256 secret for JWTs signed by your sign-in service (at least 32 bytes).
    /// Never logged.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// A JWKS file with the identity provider's RS256/ES256 keys.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// The identity provider's JWKS URL, read at start and again (at most once a
    /// minute) when a token names a key it does not hold.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// The `iss` every JWT must carry (required with JWTs).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` every JWT must carry (required with JWTs).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// A bearer token `/metrics` requires (at least 16 characters); unset leaves it
    /// open. Never logged.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,

    /// GraphQL introspection: `on` (for authenticated callers when authentication
    /// is on) or `off` for everyone.
    #[arg(long, env = "INTROSPECTION", value_enum, default_value_t = Switch::On)]
    pub introspection: Switch,

    /// Days change events are kept in the outbox before they are pruned; 0 keeps them.
    #[arg(long, env = "EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub event_retention_days: u32,

    /// `identityEvents` subscriptions one server process serves at once.
    #[arg(
        long,
        env = "MAX_SUBSCRIBERS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub max_subscribers: u16,

    /// How long a subscriber's socket may refuse more data before the subscriber is
    /// dropped (it resumes from its last cursor).
    #[arg(
        long,
        env = "SUBSCRIBER_SEND_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    pub subscriber_send_timeout_ms: u64,
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The JWT settings: `None` when no key source is given; an error when they are
    /// incomplete or ambiguous, so a half-configured server does not start.
    pub fn jwt_settings(&self) -> Result<Option<JwtSettings>, String> {
        let mut sources = Vec::new();
        if let Some(secret) = &self.jwt_secret {
            if secret.expose().len() < 32 {
                return Err("JWT_SECRET must be at least 32 bytes long".to_owned());
            }
            sources.push(KeySource::Secret(secret.clone()));
        }
        if let Some(path) = &self.jwt_jwks_file {
            sources.push(KeySource::JwksFile(path.clone()));
        }
        if let Some(url) = &self.jwt_jwks_url {
            sources.push(KeySource::JwksUrl(url.clone()));
        }
        let source = match sources.len() {
            0 if self.jwt_issuer.is_some() || self.jwt_audience.is_some() => {
                return Err(
                    "JWT_ISSUER or JWT_AUDIENCE is set but no key source: give JWT_SECRET, \
                     JWT_JWKS_FILE or JWT_JWKS_URL"
                        .to_owned(),
                );
            }
            0 => return Ok(None),
            1 => sources.remove(0),
            _ => {
                return Err(
                    "give one of JWT_SECRET, JWT_JWKS_FILE and JWT_JWKS_URL, not several"
                        .to_owned(),
                );
            }
        };
        let (Some(issuer), Some(audience)) = (&self.jwt_issuer, &self.jwt_audience) else {
            return Err(
                "JWTs need JWT_ISSUER and JWT_AUDIENCE: a token for another site or \
                 service must not be accepted here"
                    .to_owned(),
            );
        };
        Ok(Some(JwtSettings {
            source,
            issuer: issuer.clone(),
            audience: audience.clone(),
        }))
    }

    /// The settings no server should start with; the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        self.jwt_settings()?;
        self.block_rules()?;
        if let Some(token) = &self.metrics_token
            && token.expose().len() < 16
        {
            return Err(
                "METRICS_TOKEN must be at least 16 characters (unset it to leave /metrics open)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The configured blocks: the built-in list (unless switched off) and the file.
    pub fn block_rules(&self) -> Result<BlockRules, String> {
        let mut rules = if self.block_default_values {
            BlockRules::defaults()
        } else {
            BlockRules::default()
        };
        if let Some(path) = &self.blocked_values_file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("BLOCKED_VALUES_FILE {}: {err}", path.display()))?;
            let file = BlockRules::parse(&text)
                .map_err(|err| format!("BLOCKED_VALUES_FILE {}: {err}", path.display()))?;
            rules.extend(file);
        }
        Ok(rules)
    }

    pub fn identity_limits(&self) -> Limits {
        Limits {
            max_emails: (self.max_identity_emails > 0).then_some(self.max_identity_emails),
            max_phones: (self.max_identity_phones > 0).then_some(self.max_identity_phones),
        }
    }

    pub fn auth_cache(&self) -> Duration {
        Duration::from_secs(self.auth_cache_secs)
    }

    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_size: self.pool_size,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            prepared_statements: self.db_prepared_statements == Switch::On,
            serializable: self.db_isolation == Isolation::Serializable,
        }
    }

    /// Where a session (LISTEN, session advisory locks) can be held: the direct URL
    /// if set; else DATABASE_URL, unless that is a transaction pooler.
    pub fn session_database_url(&self) -> Option<&str> {
        match (&self.database_direct_url, self.db_prepared_statements) {
            (Some(direct), _) => Some(direct.expose()),
            (None, Switch::On) => self.database_url.as_ref().map(Secret::expose),
            (None, Switch::Off) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    ReadCommitted,
    Serializable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shared_options_go_anywhere_and_server_options_only_where_served() {
        let cli = Cli::try_parse_from(["x", "migrate", "--pool-size", "4"]).unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.config.pool_size, 4);
        assert!(Cli::try_parse_from(["x", "keys", "list", "--port", "4000"]).is_err());
        assert!(Cli::try_parse_from(["x", "migrate", "--port", "4000"]).is_err());
    }

    #[test]
    fn server_options_go_on_either_side_of_serve() {
        let after = Cli::try_parse_from(["x", "serve", "--port", "4000"]).unwrap();
        assert_eq!(after.command, Some(Command::Serve(ServerArgs)));
        assert_eq!(after.config.port, 4000);
        let before = Cli::try_parse_from(["x", "--port", "4001", "serve"]).unwrap();
        assert_eq!(before.config.port, 4001);
        let without = Cli::try_parse_from(["x", "--port", "4002"]).unwrap();
        assert_eq!(without.command, None);
        assert_eq!(without.config.port, 4002);
    }

    #[test]
    fn import_takes_the_identify_policy() {
        let cli =
            Cli::try_parse_from(["x", "import", "orders.ndjson", "--max-identity-emails", "3"])
                .unwrap();
        assert_eq!(cli.config.max_identity_emails, 3);
        assert!(Cli::try_parse_from(["x", "import", "orders.ndjson", "--port", "1"]).is_err());
    }

    #[test]
    fn erase_takes_exactly_one_valid_target() {
        let refused: [&[&str]; 5] = [
            &["erase"],
            &["erase", "--email", "a@x.io", "--phone", "5550001111"],
            &["erase", "--email", "not-an-email"],
            &["erase", "--phone", "call me"],
            &["erase", "--primary-contact-id", "0"],
        ];
        for args in refused {
            let parsed = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()));
            assert!(parsed.is_err(), "{args:?}");
        }
        let cli = Cli::try_parse_from(["x", "erase", "--phone", "555-000-1111"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Erase {
                email: None,
                phone: Phone::parse("5550001111").unwrap(),
                primary_contact_id: None,
            })
        );
    }
}
