//! The command line as a person meets it: each subcommand's help, arguments refused
//! before anything starts, hints that name the command the way it was run, the
//! note that the first key turns authentication on, and the settings table of
//! docs/configuration.md, generated from the flags.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use identity_reconciliation::ops::config::settings_markdown;

use crate::helpers::{CLEARED_VARIABLES, SERVER_BINARY, ServerProcess, TestDatabase};

/// The binary at `program`, with none of the settings a developer's shell may hold
/// that would change what these tests see.
fn cli(program: &Path) -> Command {
    let mut command = Command::new(program);
    for variable in CLEARED_VARIABLES {
        command.env_remove(variable);
    }
    command.env("RUST_LOG", "warn");
    command
}

fn run(args: &[&str]) -> Output {
    cli(Path::new(SERVER_BINARY)).args(args).output().unwrap()
}

fn help(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn each_subcommand_lists_only_the_options_it_takes() {
    let keys = help(&["keys", "list", "--help"]);
    assert!(keys.contains("--database-url"), "{keys}");
    assert!(!keys.contains("--port"), "{keys}");
    let lines = keys.lines().count();
    assert!(lines < 60, "`keys list --help` has {lines} lines:\n{keys}");

    let serving: [&[&str]; 2] = [&["--help"], &["serve", "--help"]];
    for args in serving {
        let text = help(args);
        assert!(
            text.contains("--port") && text.contains("--database-url"),
            "{args:?}: {text}"
        );
    }
    // A server option where nothing reads it is a mistake worth hearing about.
    let refused = run(&["keys", "list", "--port", "4000"]);
    assert!(!refused.status.success(), "{refused:?}");
}

/// `--port 0 serve --shutdown-timeout-secs 20`: server options on both sides of
/// `serve`, and the one before it is not lost to the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_the_server_options_on_either_side() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start_with(&database.url, 0, &["serve"]).await;
    assert_ne!(server.port, 3000, "--port 0 before `serve` was ignored");
}

#[test]
fn erase_refuses_bad_arguments_before_starting_anything() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let cases: [(&[&str], &str); 5] = [
        (&[], "required"),
        (
            &["--email", "a@x.io", "--phone", "5550001111"],
            "cannot be used with",
        ),
        (&["--email", "not-an-email"], "must contain an '@'"),
        (&["--phone", "call me"], "invalid value"),
        (&["--primary-contact-id", "twelve"], "invalid value"),
    ];
    for (args, says) in cases {
        let started = Instant::now();
        let output = cli(Path::new(SERVER_BINARY))
            .arg("erase")
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !data_dir.exists(),
            "{args:?} created {}",
            data_dir.display()
        );
    }
    let described = help(&["erase", "--help"]);
    for description in [
        "The customer with this email",
        "The customer with this phone number",
        "The customer whose identity this live primary contact heads",
    ] {
        assert!(described.contains(description), "{described}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_hint_names_the_command_as_it_was_run() {
    let database = TestDatabase::create().await;
    let root = tempfile::tempdir().unwrap();
    for (folder, hint) in [
        ("bin", "`identity-reconciliation keys create --name NAME"),
        (
            "target/release",
            "`cargo run --release -- keys create --name NAME",
        ),
        ("target/debug", "`cargo run -- keys create --name NAME"),
    ] {
        let folder = root.path().join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        let program = folder.join("identity-reconciliation");
        std::os::unix::fs::symlink(SERVER_BINARY, &program).unwrap();
        // Refused off loopback with no key: the refusal names the way out.
        let output = cli(&program)
            .args(["--host", "0.0.0.0", "--port", "0"])
            .env("DATABASE_URL", &database.url)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}: {log}", program.display());
        assert!(log.contains(hint), "{}: {log}", program.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_the_first_key_says_that_callers_now_need_one() {
    let database = TestDatabase::create().await;
    let create = |name: &str| {
        cli(Path::new(SERVER_BINARY))
            .args(["keys", "create", "--name", name, "--scopes", "identify"])
            .env("DATABASE_URL", &database.url)
            .output()
            .unwrap()
    };
    let first = create("first");
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8(first.stdout).unwrap();
    assert!(
        stdout
            .lines()
            .next_back()
            .unwrap_or_default()
            .starts_with("irk_"),
        "the key is still the last line of standard output: {stdout}"
    );
    let note = String::from_utf8_lossy(&first.stderr);
    assert!(
        note.contains("401") && note.contains("docs/security.md"),
        "{note}"
    );

    let second = create("second");
    assert!(second.status.success(), "{second:?}");
    let note = String::from_utf8_lossy(&second.stderr);
    assert!(
        !note.contains("401"),
        "only the first key turns it on: {note}"
    );
}

#[test]
fn the_settings_table_is_generated_from_the_flags() {
    const START: &str = "<!-- generated: settings (cargo run -- print-config-docs) -->";
    const END: &str = "<!-- end generated -->";
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let from = docs.find(START).expect("the start marker") + START.len();
    let to = from + docs[from..].find(END).expect("the end marker");
    let table = settings_markdown();
    assert_eq!(
        docs[from..to].trim_matches('\n'),
        table.trim_end_matches('\n'),
        "docs/configuration.md's settings table is out of date: run \
         `cargo run -- print-config-docs` and put its output between the markers"
    );
    assert_eq!(help(&["print-config-docs"]), table);
}
