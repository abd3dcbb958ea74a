//! Tracing subscriber setup: `RUST_LOG` filters, `LOG_FORMAT=json` for log shippers.
//! Emails and phone numbers are personal data and are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::ops::config::LogFormat;

/// Installs the global subscriber; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    // Colour codes only for a person at a terminal, never in a file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
