//! The command line (SPEC §2): parsing, and each command's entry point. Exit codes follow
//! sysexits: 0 ok, 1 failure, 2 usage, 69 daemon unreachable, 77 token rejected, 78 config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::daemon::{self, DaemonError};
use crate::ops::logging::{self, LogFormat};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 78;

/// Self-hosted relay for Dropbox webhooks: verifies, queues durably, delivers re-signed events.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: $HOOKRELAY_CONFIG, then /etc/hookrelay/config.toml]
    #[arg(long, global = true, value_name = "PATH", env = "HOOKRELAY_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd Type=notify)
    Run {
        /// Log format on stderr
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate the configuration; every problem is printed with file, key, rule and value
    Check,
}

impl Cli {
    fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/hookrelay/config.toml"))
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let path = cli.config_path();
    match cli.command {
        Command::Run { log_format } => run(&path, log_format),
        Command::Check => check(&path),
    }
}

fn run(path: &std::path::Path, log_format: LogFormat) -> ExitCode {
    logging::init(log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hookrelay: cannot start the runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(daemon::run(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::Config(err)) => {
            eprintln!("hookrelay: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("hookrelay: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} instance(s))",
                loaded.config.source.display(),
                loaded.config.instances.len()
            );
            ExitCode::SUCCESS
        }
        Err(err @ ConfigError::Read { .. }) | Err(err @ ConfigError::Invalid { .. }) => {
            eprintln!("{err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
