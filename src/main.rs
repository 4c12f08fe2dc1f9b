//! The `hookrelay` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hookrelay::cli::main(hookrelay::cli::Cli::parse())
}
