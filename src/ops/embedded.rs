//! A private PostgreSQL server run from the locally installed server binaries, for
//! the zero-setup run mode and for the test suite.
//!
//! The server listens on 127.0.0.1 only and lets nobody in without a password: the
//! superuser's password is generated at `initdb`, kept beside the cluster in a file
//! only its owner can read (`<data dir>.password`, mode 0600), and checked with
//! `scram-sha-256` for every connection, TCP or socket. A local user who finds the
//! port cannot connect; a cluster made by an older build, which trusted every local
//! connection, is given a password the first time it is started.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
//! user (or `nobody`) through `setpriv`. `setpriv --pdeathsig` also ties the server
//! to the thread that started it: if that process dies, even by SIGKILL, PostgreSQL
//! gets SIGINT and shuts down instead of lingering.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser `initdb` creates; the server only listens on loopback.
const SUPERUSER: &str = "postgres";
/// Who may connect, and how: everyone with the password, nobody without.
const PG_HBA: &str = "# Written by identity-reconciliation: password (SCRAM) for every connection,
# replication (a standby of this cluster) included.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
host  replication all 127.0.0.1/32 scram-sha-256
";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and postgres in {searched}). \
         Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`), point PG_BIN_DIR \
         at its bin directory, or set DATABASE_URL to an existing database"
    )]
    BinariesNotFound { searched: String },
    #[error(
        "running as root, and there is no unprivileged `postgres` or `nobody` user to run \
         PostgreSQL as (it refuses to run as root); create one or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
    #[error("could not give the private PostgreSQL a password: {0}")]
    Password(String),
}

fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// Where the server keeps its files and how careful it is with them.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// Where the server's own log goes.
    pub log_file: PathBuf,
    /// `false` turns off fsync and friends: for throwaway test clusters only.
    pub durable: bool,
    /// A bin directory to use instead of searching for one.
    pub bin_dir: Option<PathBuf>,
    /// A fixed port (to restart a server where clients expect it); `None` picks a free one.
    pub port: Option<u16>,
}

/// A running private PostgreSQL server; stopped (fast shutdown) on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    password: String,
}

/// The unprivileged account to run PostgreSQL as, when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Initialises `data_dir` if it holds no cluster yet, then starts the server on a
    /// free loopback port and waits until it accepts connections.
    pub fn start(options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = match &options.bin_dir {
            Some(dir) => dir.clone(),
            None => find_bin_dir()?,
        };
        let run_as = if effective_uid_is_root() {
            Some(unprivileged_user().ok_or(EmbeddedError::NoUnprivilegedUser)?)
        } else {
            None
        };
        if let Some(running) = Self::already_running(options)? {
            return Ok(running);
        }
        let password = cluster_password(&bin_dir, options, run_as)?;
        write_hba(&options.data_dir, run_as)?;

        let mut last_error = String::new();
        // A free port can be taken between our probe and the server's bind; try again.
        for _ in 0..3 {
            let port = match options.port {
                Some(port) => port,
                None => free_port().map_err(io_context("could not find a free port"))?,
            };
            // Only what this start appends to the log is worth showing on failure.
            let log_start = fs::metadata(&options.log_file).map_or(0, |meta| meta.len());
            let child = spawn_postgres(&bin_dir, options, run_as, port)?;
            let mut server = Self {
                child: Some(child),
                port,
                data_dir: options.data_dir.clone(),
                password: password.clone(),
            };
            match server.wait_until_ready(&bin_dir, &options.log_file, log_start) {
                Ok(()) => return Ok(server),
                Err(err) => {
                    last_error = err;
                    server.stop();
                    if !last_error.contains("could not bind") && !last_error.contains("in use") {
                        break;
                    }
                }
            }
        }
        Err(EmbeddedError::Start(last_error))
    }

    /// The server another process of ours already runs on this cluster (a server
    /// in one terminal, `check` in another), found through its `postmaster.pid`.
    /// It is used as it is and left running; it stops with the process that owns it.
    fn already_running(options: &EmbeddedOptions) -> Result<Option<Self>, EmbeddedError> {
        let Ok(pid_file) = fs::read_to_string(options.data_dir.join("postmaster.pid")) else {
            return Ok(None);
        };
        let lines: Vec<&str> = pid_file.lines().collect();
        let (Some(pid), Some(port)) = (
            lines.first().and_then(|pid| pid.trim().parse::<i32>().ok()),
            lines
                .get(3)
                .and_then(|port| port.trim().parse::<u16>().ok()),
        ) else {
            return Ok(None);
        };
        // Signal 0 only asks whether the process exists; a stale file is left to
        // PostgreSQL, which removes it on start.
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            return Ok(None);
        }
        let password_file = password_file(&options.data_dir);
        let password = fs::read_to_string(&password_file)
            .map_err(io_context(format!(
                "PostgreSQL (pid {pid}) already runs on {} but {} cannot be read",
                options.data_dir.display(),
                password_file.display()
            )))?
            .trim()
            .to_owned();
        Ok(Some(Self {
            child: None,
            port,
            data_dir: options.data_dir.clone(),
            password,
        }))
    }

    /// Whether this handle started the server (and so stops it), or borrows one
    /// that another process runs.
    pub fn owns_server(&self) -> bool {
        self.child.is_some()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A connection URL for `database` on this server, password included: keep it
    /// out of logs.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    fn wait_until_ready(
        &mut self,
        bin_dir: &Path,
        log_file: &Path,
        log_start: u64,
    ) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let child = self.child.as_mut().expect("server is running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "postgres exited ({status}); its log:\n{}",
                    log_since(log_file, log_start)
                ));
            }
            let ready = Command::new(bin_dir.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not accepting connections after {}s; its log:\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    log_since(log_file, log_start)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown: open sessions are closed, the data is left consistent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `Child::kill` would send SIGKILL; SIGINT is PostgreSQL's fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The superuser's password: made with a new cluster, read from its file, or, for a
/// cluster an older build made without one, made and set now.
fn cluster_password(
    bin_dir: &Path,
    options: &EmbeddedOptions,
    run_as: Option<RunAs>,
) -> Result<String, EmbeddedError> {
    let password_file = password_file(&options.data_dir);
    if !options.data_dir.join("PG_VERSION").exists() {
        let password = new_password()?;
        initdb(
            bin_dir,
            &options.data_dir,
            run_as,
            options.durable,
            &password,
        )?;
        write_password_file(&password_file, &password)?;
        return Ok(password);
    }
    if let Ok(password) = fs::read_to_string(&password_file) {
        return Ok(password.trim().to_owned());
    }
    let password = new_password()?;
    set_password(bin_dir, &options.data_dir, run_as, &password)?;
    write_password_file(&password_file, &password)?;
    Ok(password)
}

/// Starts `postgres` on `port`, loopback only, logging to the options' log file.
fn spawn_postgres(
    bin_dir: &Path,
    options: &EmbeddedOptions,
    run_as: Option<RunAs>,
    port: u16,
) -> Result<Child, EmbeddedError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.log_file)
        .map_err(io_context(format!(
            "could not open {}",
            options.log_file.display()
        )))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(io_context("could not clone log handle"))?;
    let mut command = privileged_command(run_as, &bin_dir.join("postgres"), true);
    command
        .arg("-D")
        .arg(&options.data_dir)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .args(["-c", "max_connections=300"])
        // A batch identify takes an advisory lock per value (up to 2 000): the lock
        // table (this times max_connections) must hold a few batches at once.
        .args(["-c", "max_locks_per_transaction=256"]);
    if !options.durable {
        for setting in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            command.args(["-c", setting]);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .spawn()
        .map_err(io_context("could not start postgres"))
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the superuser's password of the cluster in `data_dir` is kept.
pub fn password_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".password");
    data_dir.with_file_name(name)
}

/// 32 random bytes as hex: 256 bits, and nothing a URL needs to escape.
fn new_password() -> Result<String, EmbeddedError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| EmbeddedError::Password(err.to_string()))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn write_password_file(path: &Path, password: &str) -> Result<(), EmbeddedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_context(format!("could not create {}", path.display())))?;
    writeln!(file, "{password}").map_err(io_context(format!("could not write {}", path.display())))
}

/// A file only the server's user can read, holding `contents`; removed on drop.
struct PrivateFile(PathBuf);

impl PrivateFile {
    fn create(path: PathBuf, contents: &str, run_as: Option<RunAs>) -> Result<Self, EmbeddedError> {
        write_password_file(&path, contents)?;
        let file = Self(path);
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&file.0, Some(user.uid), Some(user.gid)).map_err(
                io_context(format!(
                    "could not hand {} to the postgres user",
                    file.0.display()
                )),
            )?;
        }
        Ok(file)
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Replaces the cluster's client authentication with password-only rules.
fn write_hba(data_dir: &Path, run_as: Option<RunAs>) -> Result<(), EmbeddedError> {
    let path = data_dir.join("pg_hba.conf");
    if fs::read_to_string(&path).is_ok_and(|current| current == PG_HBA) {
        return Ok(());
    }
    fs::write(&path, PG_HBA).map_err(io_context(format!("could not write {}", path.display())))?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(io_context(
            format!("could not hand {} to the postgres user", path.display()),
        ))?;
    }
    Ok(())
}

/// Sets the superuser's password of a stopped cluster, in single-user mode.
fn set_password(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
    password: &str,
) -> Result<(), EmbeddedError> {
    use std::io::Write;
    let mut command = privileged_command(run_as, &bin_dir.join("postgres"), false);
    let mut child = command
        .arg("--single")
        .arg("-D")
        .arg(data_dir)
        .arg("-c")
        .arg("password_encryption=scram-sha-256")
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_context("could not run postgres --single"))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "ALTER ROLE {SUPERUSER} PASSWORD '{password}'")
            .map_err(io_context("could not talk to postgres --single"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(io_context("could not run postgres --single"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("ERROR") {
        return Err(EmbeddedError::Password(format!(
            "{}{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )));
    }
    Ok(())
}

fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
    durable: bool,
    password: &str,
) -> Result<(), EmbeddedError> {
    fs::create_dir_all(data_dir).map_err(io_context(format!(
        "could not create {}",
        data_dir.display()
    )))?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(data_dir, Some(user.uid), Some(user.gid)).map_err(io_context(
            format!("could not hand {} to the postgres user", data_dir.display()),
        ))?;
        // The server's user must be able to pass through the folder holding its data
        // (a `mktemp -d` folder is 0700): grant "search" only, not listing.
        if let Some(parent) = data_dir.parent() {
            use std::os::unix::fs::PermissionsExt;
            let mut permissions = fs::metadata(parent)
                .map_err(io_context(format!("could not read {}", parent.display())))?
                .permissions();
            if permissions.mode() & 0o001 == 0 {
                permissions.set_mode(permissions.mode() | 0o001);
                fs::set_permissions(parent, permissions).map_err(io_context(format!(
                    "could not open {} to the postgres user",
                    parent.display()
                )))?;
            }
        }
    }
    // initdb reads the password from a file; it lives only while initdb runs, and
    // beside the cluster rather than in a shared temporary folder.
    let password_input = PrivateFile::create(
        data_dir.with_file_name(format!(
            "{}.initdb-password",
            data_dir.file_name().unwrap_or_default().to_string_lossy()
        )),
        password,
        run_as,
    )?;
    let mut command = privileged_command(run_as, &bin_dir.join("initdb"), false);
    command
        .arg("-D")
        .arg(data_dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
        ])
        .arg(format!("--pwfile={}", password_input.0.display()));
    if !durable {
        command.arg("--no-sync");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io_context("could not run initdb"))?;
    if !output.status.success() {
        return Err(EmbeddedError::Initdb(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// `program` as a command, run as `run_as` when given; `die_with_parent` makes it
/// receive SIGINT when the thread that spawned it exits.
fn privileged_command(run_as: Option<RunAs>, program: &Path, die_with_parent: bool) -> Command {
    if run_as.is_none() && !die_with_parent {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    if let Some(user) = run_as {
        command.args([
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--clear-groups".to_owned(),
        ]);
    }
    if die_with_parent {
        command.args(["--pdeathsig", "SIGINT"]);
    }
    command.arg("--").arg(program);
    command
}

/// Finds a directory holding `initdb` and `postgres`: `PG_BIN_DIR`, then Debian's
/// versioned directories (newest first), then `PATH`.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versioned: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .cloned()
        .ok_or_else(|| EmbeddedError::BinariesNotFound {
            searched: candidates
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn effective_uid_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn unprivileged_user() -> Option<RunAs> {
    ["postgres", "nobody"].iter().find_map(|name| {
        let user = nix::unistd::User::from_name(name).ok()??;
        Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What `log_file` gained after `start` bytes: this start's lines, not the
/// history of every run before it (the last 20 lines of them at most).
fn log_since(log_file: &Path, start: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(log_file) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
