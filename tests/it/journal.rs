//! Logs under systemd's journal (docs/operations.md, Logs): when `JOURNAL_STREAM` names the
//! daemon's stderr, every line starts with its priority (`<3>` error, `<4>` warning, `<6>` info,
//! `<7>` debug), in text and JSON; with another stream or none, no line has a prefix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const FAILED_RELOADS: &str = r#"hookrelay_config_reloads_total{result="error"}"#;

/// `DEV:INODE` of `path`, as systemd writes `JOURNAL_STREAM`.
fn journal_stream(path: &Path) -> String {
    let meta = std::fs::metadata(path).expect("stat of a log file");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// A daemon, not started, and its config text, which draws a warning at every start: its admin
/// token file is readable by every user.
fn prepared(cb: &FakeCallback) -> (Daemon, String) {
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &App::new("app-key"))
            .callback(&cb.url())
            .coalesce(false),
    );
    let d = Daemon::prepare(&cfg);
    let token = d.dir().join("admin-token");
    std::fs::write(&token, "a-long-enough-admin-token\n").expect("writing the token file");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = cfg.to_toml();
    assert!(text.contains("\n[storage]\n"));
    let text = text.replacen(
        "\n[storage]\n",
        "token = { file = \"admin-token\" }\n\n[storage]\n",
        1,
    );
    d.write_config_text(&text);
    (d, text)
}

/// The stderr lines of start `n` (without the harness's marker line).
fn lines_of_start(d: &Daemon, n: u32) -> Vec<String> {
    let text = std::fs::read_to_string(d.stderr_path()).expect("reading stderr");
    let marker = format!("===== start #{n} =====\n");
    let (_, after) = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {marker:?} in\n{text}"));
    after
        .lines()
        .take_while(|l| !l.starts_with("===== start #"))
        .map(str::to_owned)
        .collect()
}

fn priority(level: &str) -> &'static str {
    match level {
        "ERROR" => "<3>",
        "WARN" => "<4>",
        "INFO" => "<6>",
        "DEBUG" | "TRACE" => "<7>",
        other => panic!("unknown level {other:?}"),
    }
}

/// The level of a text line (`TIMESTAMP  LEVEL target: message`); `None` for the continuation
/// of a multi-line message.
fn text_level(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|w| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(w))
}

/// Asserts that every text line starts with the priority of its event (a continuation line with
/// that of the line before) and returns how many lines had each prefix.
fn check_text_prefixes(lines: &[String], all: &str) -> [usize; 8] {
    let mut counts = [0; 8];
    let mut current = None;
    for line in lines {
        let (prefix, rest) = line.split_at_checked(3).unwrap_or((line, ""));
        let expected = match text_level(rest) {
            Some(level) => priority(level),
            None => current.unwrap_or_else(|| panic!("{line:?} has no level\n{all}")),
        };
        current = Some(expected);
        assert_eq!(prefix, expected, "line {line:?}\n{all}");
        counts[usize::from(prefix.as_bytes()[1] - b'0')] += 1;
    }
    counts
}

/// Asserts that no line has a priority prefix.
fn check_no_prefix(lines: &[String], all: &str) {
    assert!(
        lines.iter().any(|l| text_level(l) == Some("WARN")),
        "no warning\n{all}"
    );
    for line in lines {
        assert!(
            !(line.starts_with('<') && line.as_bytes().get(2) == Some(&b'>')),
            "a prefix without the journal: {line:?}\n{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_carry_their_priority_only_when_stderr_is_the_journal() {
    let cb = FakeCallback::ok().await;
    let (mut d, config_text) = prepared(&cb);
    std::fs::File::create(d.stderr_path()).expect("creating the stderr log");
    std::fs::File::create(d.dir().join("daemon.stdout.log")).expect("creating the stdout log");
    let stream = journal_stream(&d.stderr_path());

    // 1. Text on the journal: a warning at start, an error (a reload of a file that is not
    // TOML, whose message spans lines), info and debug lines.
    d.set_env("JOURNAL_STREAM", &stream);
    d.restart().await;
    d.write_config_text("[server\nthis is not toml");
    d.sighup();
    wait_until(Duration::from_secs(10), "a failed reload", || async {
        d.metric(FAILED_RELOADS).await == Some(1.0)
    })
    .await;
    d.stop().await;
    let all = d.logs();
    let lines = lines_of_start(&d, 1);
    let counts = check_text_prefixes(&lines, &all);
    for (priority, what) in [(3, "error"), (4, "warning"), (6, "info"), (7, "debug")] {
        assert!(counts[priority] > 0, "no {what} line\n{all}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("readable by every user")),
        "{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>") && l.contains("reload rejected")),
        "{all}"
    );
    // The rejected file's problems follow on lines of their own, each with the prefix.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>") && text_level(&l[3..]).is_none()),
        "no continuation line
{all}"
    );

    // 2. JSON on the journal: the prefix, then the object.
    d.write_config_text(&config_text);
    d.set_run_args(&["--log-format", "json"]);
    d.restart().await;
    d.stop().await;
    let all = d.logs();
    let lines = lines_of_start(&d, 2);
    let mut seen = Vec::new();
    for line in &lines {
        let (prefix, rest) = line.split_at_checked(3).unwrap_or((line, ""));
        let object: serde_json::Value = serde_json::from_str(rest)
            .unwrap_or_else(|e| panic!("{line:?} is not PREFIX + JSON: {e}\n{all}"));
        let level = object["level"].as_str().expect("a level");
        assert_eq!(prefix, priority(level), "line {line:?}\n{all}");
        seen.push(prefix.to_owned());
    }
    for prefix in ["<4>", "<6>"] {
        assert!(seen.iter().any(|p| p == prefix), "no {prefix} line\n{all}");
    }

    // 3. JOURNAL_STREAM naming another file (as when stderr was redirected): no prefix.
    d.set_run_args(&[]);
    d.set_env(
        "JOURNAL_STREAM",
        &journal_stream(&d.dir().join("daemon.stdout.log")),
    );
    d.restart().await;
    d.stop().await;
    check_no_prefix(&lines_of_start(&d, 3), &d.logs());

    // 4. No JOURNAL_STREAM: no prefix.
    d.remove_env("JOURNAL_STREAM");
    d.restart().await;
    d.stop().await;
    check_no_prefix(&lines_of_start(&d, 4), &d.logs());
}
