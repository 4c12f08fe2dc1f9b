//! The `hookrelay` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    hookrelay::cli::dispatch(hookrelay::cli::parse())
}
