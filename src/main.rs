//! Entry point: parse the configuration, find or start the database, run the command.

use std::process::ExitCode;

use clap::Parser;
use identity_reconciliation::app::{identify as service, import};
use identity_reconciliation::auth::{self, AuthMode, Scope};
use identity_reconciliation::db;
use identity_reconciliation::domain::{Email, Phone};
use identity_reconciliation::http::router as app;
use identity_reconciliation::http::{graphql, openapi};
use identity_reconciliation::ops::config::{
    Cli, Command, Config, ImportArgs, ImportFormat, KeysCommand, Secret, ServerArgs, Switch,
    settings_markdown,
};
use identity_reconciliation::ops::embedded::{EmbeddedOptions, EmbeddedPostgres};
use identity_reconciliation::ops::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServerArgs));
    match command {
        Command::PrintSchema => {
            print!("{}", graphql::sdl());
            return ExitCode::SUCCESS;
        }
        Command::PrintOpenapi => {
            println!("{}", openapi::json());
            return ExitCode::SUCCESS;
        }
        Command::PrintConfigDocs => {
            print!("{}", settings_markdown());
            return ExitCode::SUCCESS;
        }
        Command::Serve(_)
        | Command::Migrate
        | Command::Check { .. }
        | Command::Erase { .. }
        | Command::Import(_)
        | Command::Keys { .. } => {}
    }
    telemetry::init(cli.config.log_format);
    match run(command, cli.config) {
        Ok(code) => code,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, mut config: Config) -> Result<ExitCode, String> {
    // Started on the main thread, before the runtime: the private server is tied to
    // this thread's life (see `ops::embedded`), so it goes down with the process.
    let mut embedded = None;
    if config.database_url.is_none() {
        let server = start_private_postgres(&config)?;
        config.database_url = Some(Secret::new(server.url("postgres")));
        embedded = Some(server);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let result = runtime.block_on(run_async(command, config));
    drop(runtime);
    if let Some(mut server) = embedded
        && server.owns_server()
    {
        server.stop();
        tracing::info!("private PostgreSQL stopped");
    }
    result
}

fn start_private_postgres(config: &Config) -> Result<EmbeddedPostgres, String> {
    let data_dir = std::path::absolute(&config.data_dir).map_err(|err| err.to_string())?;
    std::fs::create_dir_all(&data_dir).map_err(|err| format!("{}: {err}", data_dir.display()))?;
    let server = EmbeddedPostgres::start(&EmbeddedOptions {
        data_dir: data_dir.join("postgres"),
        log_file: data_dir.join("postgres.log"),
        durable: true,
        bin_dir: None,
        port: None,
    })
    .map_err(|err| err.to_string())?;
    if server.owns_server() {
        tracing::info!(
            data_dir = %server.data_dir().display(),
            port = server.port(),
            password_file = %identity_reconciliation::ops::embedded::password_file(server.data_dir()).display(),
            "started private PostgreSQL on 127.0.0.1 (DATABASE_URL is not set); \
             connecting needs the user postgres and the password in password_file"
        );
    } else {
        tracing::info!(
            data_dir = %server.data_dir().display(),
            port = server.port(),
            "using the private PostgreSQL that another process of this service runs on \
             this data folder; it stops when that process stops"
        );
    }
    Ok(server)
}

async fn run_async(command: Command, config: Config) -> Result<ExitCode, String> {
    let database_url = config.database_url.clone().expect("resolved by the caller");
    let statements = db::StatementCounter::default();
    let pool = db::pool(
        database_url.expose(),
        &config.pool_settings(),
        statements.clone(),
    )?;
    if let Command::Check { deep } = command {
        return check(&pool, deep).await;
    }
    let applied = db::run_migrations(&pool)
        .await
        .map_err(|err| err.to_string())?;
    if applied > 0 {
        tracing::info!(
            applied,
            "applied {applied} migration(s); the database schema is up to date"
        );
    } else {
        tracing::info!("the database schema is up to date (no migration to apply)");
    }
    match command {
        Command::Migrate => return Ok(ExitCode::SUCCESS),
        Command::Keys { action } => return keys(&pool, &config, action).await,
        Command::Erase {
            email,
            phone,
            primary_contact_id,
        } => return erase(&pool, email, phone, primary_contact_id).await,
        Command::Import(args) => {
            if config.db_prepared_statements == Switch::On {
                return import(&pool, &config, args).await;
            }
            // The import holds a session advisory lock on its input for its whole
            // run; a transaction pooler would leave it on some server connection.
            let Some(direct) = &config.database_direct_url else {
                return Err("import holds a session on the database, which a \
                            transaction pooler cannot give (DB_PREPARED_STATEMENTS=off): \
                            set DATABASE_DIRECT_URL to PostgreSQL itself"
                    .to_owned());
            };
            let settings = db::PoolSettings {
                prepared_statements: true,
                ..config.pool_settings()
            };
            let direct_pool = db::pool(direct.expose(), &settings, statements)?;
            return import(&direct_pool, &config, args).await;
        }
        _ => {}
    }
    config.validate()?;
    let state = app::AppState::new(pool.clone(), statements, config.clone());
    if let Some(jwt) = state.auth.jwt() {
        jwt.preload()
            .await
            .map_err(|err| format!("could not read the JWT keys: {err}"))?;
    }
    announce_access(&state, &config).await?;
    if config.event_retention_days > 0 {
        tokio::spawn(prune_changes(pool.clone(), config.event_retention_days));
    }
    let (listener, address) = app::bind(&config)
        .await
        .map_err(|err| format!("could not listen on {}:{}: {err}", config.host, config.port))?;
    tracing::info!(%address, "listening: POST http://{address}/identify, GraphiQL at http://{address}/graphql");
    app::serve(listener, state, app::shutdown_signal())
        .await
        .map_err(|err| err.to_string())?;
    pool.close();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Says who may call, and refuses to serve everyone on a non-loopback address when
/// nothing protects the data (docs/SPEC.md §9).
async fn announce_access(state: &app::AppState, config: &Config) -> Result<(), String> {
    let anonymous_allowed = config.host.is_loopback() || config.allow_anonymous;
    let credentials_exist = state.auth.jwt().is_some() || state.auth.keys_exist().await;
    match state.auth.mode() {
        AuthMode::Off => tracing::warn!(
            "authentication is off (AUTH_MODE=off): every caller may read and write all contact data"
        ),
        AuthMode::Auto if !credentials_exist && !anonymous_allowed => {
            // Nobody could call a server that requires credentials none exist for,
            // and serving everyone must be asked for: say both ways out.
            return Err(format!(
                "refusing to serve on {}: no API key exists and no JWT is configured. Create \
                 a key (`{} keys create --name NAME --scopes identify,read`), configure \
                 JWTs, or pass --allow-anonymous (ALLOW_ANONYMOUS=true) to serve everyone",
                config.host,
                invocation()
            ));
        }
        AuthMode::Auto if !credentials_exist => tracing::info!(
            "no API key exists: anonymous callers get every scope (create one with \
             `{} keys create --name NAME --scopes identify,read`)",
            invocation()
        ),
        AuthMode::Auto | AuthMode::Required => tracing::info!(
            mode = %state.auth.mode(),
            jwt = state.auth.jwt().is_some(),
            "authentication required: callers send Authorization: Bearer <API key or JWT>"
        ),
    }
    Ok(())
}

/// How the user runs this program, for hints that name a subcommand: a binary that
/// cargo built is run as the README runs it, any other by its file name.
fn invocation() -> String {
    let program = std::path::PathBuf::from(std::env::args_os().next().unwrap_or_default());
    let profile = program
        .parent()
        .and_then(|folder| folder.file_name())
        .and_then(|name| name.to_str());
    // target/PROFILE/, or target/TRIPLE/PROFILE/ when cross-compiled.
    let built_by_cargo = program
        .ancestors()
        .skip(2)
        .take(2)
        .any(|folder| folder.file_name() == Some(std::ffi::OsStr::new("target")));
    match profile {
        Some("release") if built_by_cargo => "cargo run --release --".to_owned(),
        Some("debug") if built_by_cargo => "cargo run --".to_owned(),
        _ => program.file_name().map_or_else(
            || "identity-reconciliation".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        ),
    }
}

/// `import FILE` or `import --from-postgres URL` (docs/SPEC.md §13.1, §13.2).
async fn import(pool: &db::DbPool, config: &Config, args: ImportArgs) -> Result<ExitCode, String> {
    let rules = config.block_rules().map_err(|err| err.to_string())?;
    let policy = service::Policy {
        rules: std::sync::Arc::new(rules),
        limits: config.identity_limits(),
    };
    if let Some(url) = &args.from_postgres {
        let report = import::nest::migrate(pool, url.expose(), &args.table, &policy).await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|err| err.to_string())?
            );
        } else {
            print!("{}", report.human());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let options = import::Options {
        source: args.file.unwrap_or_else(|| "-".to_owned()),
        format: args.format.map(|format| match format {
            ImportFormat::Ndjson => import::source::Format::Ndjson,
            ImportFormat::Csv => import::source::Format::Csv,
        }),
        resume: args.resume,
        force: args.force,
        chunk_size: args.chunk_size as usize,
        rejects: args.rejects,
    };
    let summary = import::run(pool, &policy, &options).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|err| err.to_string())?
        );
    } else {
        print!("{}", summary.human());
    }
    // Orders read and none applied is a failure a script must see, even though
    // every line was accounted for (in the rejects file).
    if summary.read > 0 && summary.applied == 0 {
        tracing::error!(
            rejected = summary.rejected,
            rejects = summary.rejects_file.as_deref().unwrap_or("-"),
            "no order was applied: every line read was rejected"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `keys create | list | revoke`.
async fn keys(pool: &db::DbPool, config: &Config, action: KeysCommand) -> Result<ExitCode, String> {
    let mut conn = pool.get().await.map_err(|err| err.to_string())?;
    match action {
        KeysCommand::Create { name, scopes } => {
            let scopes: Vec<Scope> = scopes
                .iter()
                .map(|name| {
                    Scope::parse(name.trim()).ok_or_else(|| {
                        format!(
                            "unknown scope `{name}`: use identify, identify:masked, read or admin"
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            // Under AUTH_MODE=auto the first active key is what turns authentication on
            // (with no JWTs), for callers who may not know a key was ever made.
            let jwt_configured = config.jwt_secret.is_some()
                || config.jwt_jwks_file.is_some()
                || config.jwt_jwks_url.is_some();
            let turns_authentication_on = config.auth_mode == AuthMode::Auto
                && !jwt_configured
                && !db::api_keys::any_active(&mut conn)
                    .await
                    .map_err(|err| err.to_string())?;
            let (id, token) = auth::create_key(&mut conn, &name, &scopes).await?;
            println!("created key {id} ({name}); it is shown once, here, and stored only hashed:");
            println!("{token}");
            if turns_authentication_on {
                // On standard error, so the key stays the last line of standard output.
                eprintln!(
                    "note: this is the first active key, so with AUTH_MODE=auto every caller now \
                     needs a key or a JWT: anonymous ones (the README's curl examples too) get \
                     401 within AUTH_CACHE_SECS. See docs/security.md, \"Auth modes\"."
                );
            }
        }
        KeysCommand::List => {
            let keys = db::api_keys::list(&mut conn)
                .await
                .map_err(|err| err.to_string())?;
            if keys.is_empty() {
                println!("no keys");
            }
            for key in &keys {
                println!("{}", auth::describe(key));
            }
        }
        KeysCommand::Revoke { id } => {
            let found = db::api_keys::revoke(&mut conn, &id)
                .await
                .map_err(|err| err.to_string())?;
            if !found {
                return Err(format!("no key {id}"));
            }
            println!(
                "revoked key {id}: refused everywhere within the cache time (AUTH_CACHE_SECS)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prunes the change-event outbox past its retention, a minute after start and then
/// every ten minutes; every process does it, which is harmless (the deletes are
/// idempotent) and needs no leader.
async fn prune_changes(pool: db::DbPool, days: u32) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(600),
    );
    loop {
        ticker.tick().await;
        let pruned = match pool.get().await {
            Ok(mut conn) => db::changes::prune(&mut conn, days)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match pruned {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, days, "pruned change events past retention"),
            Err(error) => tracing::warn!(%error, "could not prune change events"),
        }
    }
}

/// `erase`: prints what was erased as JSON; exit status 2 when nothing matched.
async fn erase(
    pool: &db::DbPool,
    email: Option<Email>,
    phone: Option<Phone>,
    primary_contact_id: Option<i32>,
) -> Result<ExitCode, String> {
    use identity_reconciliation::app::error::ServiceError;
    use identity_reconciliation::app::repair::{self, Actor, ErasureTarget};
    use identity_reconciliation::domain::ContactValue;

    // clap has checked that exactly one is given, before anything was started.
    let target = match (email, phone, primary_contact_id) {
        (Some(email), None, None) => ErasureTarget::Value(ContactValue::Email(email)),
        (None, Some(phone), None) => ErasureTarget::Value(ContactValue::Phone(phone)),
        (None, None, Some(id)) => ErasureTarget::Primary(id),
        _ => return Err("give exactly one of --email, --phone and --primary-contact-id".into()),
    };
    let actor = Actor {
        principal: "cli",
        request_id: None,
    };
    match repair::erase(pool, target, actor).await {
        Ok(erased) => {
            // Subscribers hear of it now rather than at their next fallback poll.
            if let Err(error) = identity_reconciliation::app::changefeed::announce(pool).await {
                tracing::debug!(%error, "could not announce the erasure to running servers");
            }
            println!(
                "{}",
                serde_json::to_string(&erased).map_err(|err| err.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ServiceError::NotFound(message)) => {
            eprintln!("nothing erased: {message}");
            Ok(ExitCode::from(2))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// Prints one line per invariant; fails when any is violated.
async fn check(pool: &db::DbPool, deep: bool) -> Result<ExitCode, String> {
    let mut connection = pool.get().await.map_err(|err| err.to_string())?;
    let started = std::time::Instant::now();
    let mut reports = db::invariants::check(&mut connection)
        .await
        .map_err(|err| err.to_string())?;
    if deep {
        reports.push(
            db::invariants::check_evidence(&mut connection)
                .await
                .map_err(|err| err.to_string())?,
        );
    }
    let mut violations = 0;
    for report in &reports {
        violations += report.violations;
        let verdict = if report.violations == 0 {
            "ok"
        } else {
            "VIOLATED"
        };
        println!(
            "{verdict:>8}  {}: {} violation(s)",
            report.invariant, report.violations
        );
        for example in &report.examples {
            println!("          e.g. {example}");
        }
    }
    println!(
        "checked in {:.2}s: {violations} violation(s) in total",
        started.elapsed().as_secs_f64()
    );
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
