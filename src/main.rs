//! Entry point: parse the configuration, find or start the database, serve.

use std::process::ExitCode;

use clap::Parser;
use identity_reconciliation::config::{Cli, Command, Secret};
use identity_reconciliation::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use identity_reconciliation::{app, db, graphql, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command == Some(Command::PrintSchema) {
        print!("{}", graphql::sdl());
        return ExitCode::SUCCESS;
    }
    telemetry::init(cli.config.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut config = cli.config;
    // Started on the main thread, before the runtime: the private server is tied to
    // this thread's life (see `db::embedded`), so it goes down with the process.
    let mut embedded = None;
    if config.database_url.is_none() {
        let data_dir = std::path::absolute(&config.data_dir).map_err(|err| err.to_string())?;
        std::fs::create_dir_all(&data_dir)
            .map_err(|err| format!("{}: {err}", data_dir.display()))?;
        let server = EmbeddedPostgres::start(&EmbeddedOptions {
            data_dir: data_dir.join("postgres"),
            log_file: data_dir.join("postgres.log"),
            durable: true,
            bin_dir: None,
        })
        .map_err(|err| err.to_string())?;
        tracing::info!(
            data_dir = %server.data_dir().display(),
            port = server.port(),
            "started private PostgreSQL (DATABASE_URL is not set)"
        );
        config.database_url = Some(Secret::new(server.url("postgres")));
        embedded = Some(server);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let result = runtime.block_on(async move {
        let database_url = config.database_url.clone().expect("set above");
        let statements = db::StatementCounter::default();
        let pool = db::pool(
            database_url.expose(),
            &config.pool_settings(),
            statements.clone(),
        )?;
        let applied = db::run_migrations(&pool)
            .await
            .map_err(|err| err.to_string())?;
        tracing::info!(applied, "migrations up to date");
        if cli.command == Some(Command::Migrate) {
            return Ok(());
        }
        let (listener, address) = app::bind(&config)
            .await
            .map_err(|err| format!("could not listen on {}:{}: {err}", config.host, config.port))?;
        tracing::info!(%address, "listening: POST http://{address}/identify");
        let state = app::AppState::new(pool.clone(), statements, config);
        app::serve(listener, state, app::shutdown_signal())
            .await
            .map_err(|err| err.to_string())?;
        pool.close();
        Ok(())
    });
    drop(runtime);
    if let Some(mut server) = embedded {
        server.stop();
        tracing::info!("private PostgreSQL stopped");
    }
    result
}
