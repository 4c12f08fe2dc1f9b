//! One-shot `hookrelay` invocations (`check`, `--help`, a `run` expected to fail), bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished invocation left behind.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Writes `text` as `config.toml` in `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("writing config.toml");
    path
}

/// Runs `hookrelay ARGS…` in `dir` with `env` added, waits at most `timeout` (then kills it and
/// panics). Output goes through files so a chatty process cannot block on a full pipe.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let out_path = dir.join(format!("cli-{}.stdout", ulid::Ulid::generate()));
    let err_path = out_path.with_extension("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "hookrelay=debug")
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning hookrelay");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`hookrelay {}` still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// [`run_in`] in a fresh temp dir with a 30 s bound.
pub fn run(args: &[&str]) -> CliOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    run_in(dir.path(), args, &[], Duration::from_secs(30))
}
