//! The `loadgen` command; everything is in the library so tests can run it in-process.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(loadgen::main_with_args(std::env::args_os()))
}
