//! The command line (docs/operations.md): parsing, and each command's entry point. Exit codes
//! follow sysexits: 0 ok, 1 failure, 2 usage, 69 daemon unreachable, 77 token rejected, 78 config.
//!
//! - `run` and `check` are here;
//! - `status` ([`status`]), `dead …` ([`dead`]), `events …` ([`events`]) and `retry`
//!   ([`retry`]) reach the daemon through its admin API, or the store directly when the daemon
//!   is stopped ([`access`]);
//! - `authorize` ([`authorize`]) the same way, or on a store it creates;
//! - `import-instance` ([`import`]) needs no configuration at all;
//! - `doctor` ([`doctor`]) checks an installation; `send-test` ([`send_test`]) pushes one
//!   signed notification through the running daemon;
//! - the hidden `generate` ([`generate`]) writes the man pages and shell completions.

mod access;
mod authorize;
mod dead;
mod doctor;
mod events;
pub mod generate;
mod import;
mod retry;
mod send_test;
mod status;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ulid::Ulid;

use crate::config::{Config, ConfigError};
use crate::daemon::{self, DaemonError};
use crate::telemetry::logging::{self, LogFormat};
use crate::time;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// EX_UNAVAILABLE: the daemon is needed but does not answer.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// EX_NOPERM: the admin API rejected the token.
pub const EXIT_NOPERM: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;

/// Self-hosted relay for Dropbox webhooks: verifies, queues durably, delivers re-signed events.
#[derive(Debug, Parser)]
#[command(
    name = "hookrelay",
    version = crate::telemetry::metrics::LONG_VERSION,
    about,
    propagate_version = true
)]
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
    /// Per instance: state, queued, in retry, dead-lettered, oldest pending age, last success,
    /// last error (from the daemon, or from the store when it is stopped)
    Status {
        /// One JSON document for scripts instead of the table
        #[arg(long)]
        json: bool,
    },
    /// List, replay or purge dead-lettered events
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Make events waiting for a retry due now; their attempt counts stay as they are
    Retry(RetryArgs),
    /// See events in any state (pending, retrying, held, dead, delivered), one event's
    /// attempts and envelope, and send delivered events again
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Turn a Cloud Elements instance JSON into an [[instance]] block on stdout
    ImportInstance {
        /// The instance JSON (as POSTed to /elements/api-v2/instances)
        #[arg(value_name = "FILE.json")]
        file: PathBuf,
        /// The instance id (the envelope's instanceId) when the JSON has no "id"
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        id: Option<u64>,
        /// Write secrets inline instead of { file = "…" } references
        #[arg(long)]
        include_secrets: bool,
    },
    /// Complete Dropbox OAuth for a change-events instance: exchange the code Dropbox showed
    /// after the authorization URL, keep the refresh token in the store, take the cursor
    Authorize {
        /// The instance (events = "changes")
        #[arg(long, value_name = "NAME")]
        instance: String,
        /// The code; `-` reads it from stdin
        #[arg(long, value_name = "CODE")]
        code: String,
    },
    /// Check the installation: config, store folder, disk, admin listener, daemon,
    /// certificate, callbacks, authorizations; one line per check, exit 1 if any failed
    Doctor {
        /// JSON for scripts instead of the lines
        #[arg(long)]
        json: bool,
    },
    /// Sign a test notification with an instance's app secret and send it through the running
    /// daemon's own listener; prints the event id the consumer will receive
    SendTest {
        /// The instance to notify
        #[arg(long, value_name = "NAME")]
        instance: String,
        /// The Dropbox account to notify about [default: the instance's first account]
        #[arg(long, value_name = "ACCOUNT")]
        account: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Dead-lettered events, oldest first
    List {
        /// Only this instance's
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        #[command(flatten)]
        window: WindowArgs,
        /// JSON for scripts instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the queue with a fresh attempt count and age
    Replay(SelectArgs),
    /// Delete dead letters (and, with --instance of a removed instance, its held events)
    Purge(SelectArgs),
}

/// Which dead letters: by id, by instance, or all; within an optional window.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["ids", "instance", "all"])))]
pub struct SelectArgs {
    /// These events (repeat --id, or give several ids after it)
    #[arg(long = "id", value_name = "ID", num_args = 1.., value_parser = event_id)]
    pub ids: Vec<Ulid>,
    /// Every dead letter of this instance
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Every dead letter
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub window: WindowArgs,
}

/// Which waiting events `retry` makes due now: by id, by instance, or all.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["ids", "instance", "all"])))]
pub struct RetryArgs {
    /// These events (repeat --id, or give several ids after it)
    #[arg(long = "id", value_name = "ID", num_args = 1.., value_parser = event_id)]
    pub ids: Vec<Ulid>,
    /// Every waiting event of this instance
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Every waiting event
    #[arg(long)]
    pub all: bool,
}

/// `--since` / `--until`: when the events were dead-lettered.
#[derive(Debug, Clone, Copy, Args)]
pub struct WindowArgs {
    /// Dead-lettered at or after TIME: RFC 3339 (UTC) or an age such as 2h (two hours ago)
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<u64>,
    /// Dead-lettered before TIME: RFC 3339 (UTC) or an age such as 30m
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<u64>,
}

fn time_arg(text: &str) -> Result<u64, String> {
    crate::ops::dead::parse_time(text, time::now_ms())
}

fn event_id(text: &str) -> Result<Ulid, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an event id (26 characters, as `dead list` shows)"))
}

/// Why a command failed: the message for stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The command line as users see it, without the hidden `generate`: what `--help`, the man
/// pages and the completions describe.
pub fn command() -> clap::Command {
    Cli::command()
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    /// One of the commands users see.
    Cli(Cli),
    /// The hidden `generate`.
    Hidden(generate::Hidden),
}

/// Parses the process's arguments: [`command`] plus the hidden `generate`. Exits with a usage
/// message (code 2) when they do not parse, as clap does.
pub fn parse() -> Invocation {
    let mut cmd = generate::Hidden::augment_subcommands(command());
    let matches = cmd.get_matches_mut();
    let parsed = match matches.subcommand_name() {
        Some(name) if generate::Hidden::has_subcommand(name) => {
            generate::Hidden::from_arg_matches(&matches).map(Invocation::Hidden)
        }
        _ => Cli::from_arg_matches(&matches).map(Invocation::Cli),
    };
    parsed.unwrap_or_else(|err| err.format(&mut cmd).exit())
}

impl Cli {
    fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/hookrelay/config.toml"))
    }
}

/// Runs what [`parse`] returned and returns the process exit code.
pub fn dispatch(invocation: Invocation) -> ExitCode {
    match invocation {
        Invocation::Cli(cli) => main(cli),
        Invocation::Hidden(hidden) => generate::main(hidden),
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let path = cli.config_path();
    match cli.command {
        Command::Run { log_format } => run(&path, log_format),
        Command::Check => check(&path),
        Command::Status { json } => {
            with_config(
                &path,
                |config| async move { status::run(&config, json).await },
            )
        }
        Command::Dead { command } => with_config(&path, |config| async move {
            match command {
                DeadCommand::List {
                    instance,
                    window,
                    json,
                } => dead::list(&config, instance, window, json).await,
                DeadCommand::Replay(select) => dead::replay(&config, select).await,
                DeadCommand::Purge(select) => dead::purge(&config, select).await,
            }
        }),
        Command::Retry(args) => {
            with_config(
                &path,
                |config| async move { retry::run(&config, args).await },
            )
        }
        Command::Events { command } => with_config(&path, |config| async move {
            events::main(&config, command).await
        }),
        Command::ImportInstance {
            file,
            id,
            include_secrets,
        } => exit(import::run(&file, id, include_secrets)),
        Command::Authorize { instance, code } => with_config(&path, |config| async move {
            authorize::run(&config, &instance, &code).await
        }),
        Command::Doctor { json } => doctor(&path, json),
        Command::SendTest { instance, account } => with_config(&path, |config| async move {
            send_test::run(&config, &instance, account.as_deref()).await
        }),
    }
}

/// `doctor` loads the config itself: an invalid one is a failed check, not exit 78.
fn doctor(path: &Path, json: bool) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => ExitCode::from(runtime.block_on(doctor::run(path, json))),
        Err(err) => {
            eprintln!("hookrelay: cannot start the runtime: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("hookrelay: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Loads the config (78 if it is invalid), then runs `command` on a small runtime.
fn with_config<F, Fut>(path: &Path, command: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let config = match Config::load(path) {
        Ok(loaded) => loaded.config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    private_files();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hookrelay: cannot start the runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    exit(runtime.block_on(command(config)))
}

fn run(path: &Path, log_format: LogFormat) -> ExitCode {
    private_files();
    let stderr = logging::init(log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            stderr.error(&format!("hookrelay: cannot start the runtime: {err}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(daemon::run(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::Config(err)) => {
            stderr.error(&format!("hookrelay: {err}"));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!("{err}");
            stderr.error(&format!("hookrelay: {err}"));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Makes every file and folder this process creates from now on private to its user (umask
/// 0077): the store holds refresh tokens and notification bodies, and sled creates files in it
/// while it runs (blob files, snapshots). An open also sets the modes of what is already there.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

fn check(path: &Path) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["hookrelay"], args].concat())
    }

    #[test]
    fn dead_replay_needs_exactly_one_selector() {
        let id = Ulid::from_parts(1, 1).to_string();
        for ok in [
            vec!["dead", "replay", "--all"],
            vec!["dead", "replay", "--instance", "acme", "--since", "2h"],
            vec!["dead", "purge", "--id", &id, "--id", &id],
            vec![
                "dead",
                "purge",
                "--id",
                &id,
                &id,
                "--until",
                "2026-01-01T00:00:00Z",
            ],
        ] {
            assert!(parse(&ok).is_ok(), "{ok:?}: {:?}", parse(&ok).err());
        }
        for bad in [
            vec!["dead", "replay"],
            vec!["dead", "replay", "--all", "--instance", "acme"],
            vec!["dead", "purge", "--id", "not-an-id"],
            vec!["dead", "purge", "--all", "--since", "yesterday"],
        ] {
            let err = parse(&bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
    }

    #[test]
    fn ages_become_times_in_the_past() {
        let Ok(cli) = parse(&["dead", "list", "--since", "2h", "--json"]) else {
            panic!("parses")
        };
        let Command::Dead {
            command: DeadCommand::List { window, json, .. },
        } = cli.command
        else {
            panic!("dead list")
        };
        assert!(json);
        let since = window.since.unwrap_or_default();
        let two_hours_ago = time::now_ms() - 7_200_000;
        assert!(since.abs_diff(two_hours_ago) < 60_000, "{since}");
    }

    #[test]
    fn import_instance_ids_are_positive() {
        assert!(parse(&["import-instance", "x.json", "--id", "7"]).is_ok());
        assert!(parse(&["import-instance", "x.json", "--id", "0"]).is_err());
        assert!(parse(&["--config", "c.toml", "status", "--json"]).is_ok());
        assert!(parse(&["status", "--config", "c.toml"]).is_ok());
    }
}
