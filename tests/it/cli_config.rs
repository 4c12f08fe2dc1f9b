//! The command line (docs/operations.md) and config validation (docs/configuration.md): `check`,
//! exit codes, `--config` placement, `--help`.

use std::time::Duration;

use crate::support::cli::{run, run_in, write_config};
use crate::support::config::TestConfig;
use crate::support::dropbox::account_id;
use crate::support::http::is_listening;
use crate::support::{App, InstanceConfig};

const EX_CONFIG: i32 = 78;
const EX_USAGE: i32 = 2;

fn valid_config() -> TestConfig {
    let app = App::new("app-key");
    TestConfig::new().instance(
        InstanceConfig::new("acme", 4567, &app)
            .tags(&["prod"])
            .accounts(&[&account_id()])
            .callback("http://127.0.0.1:9/hooks")
            .signature_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
    )
}

fn check(dir: &std::path::Path, args: &[&str]) -> crate::support::cli::CliOutput {
    run_in(dir, args, &[], Duration::from_secs(30))
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &valid_config().to_toml());
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "check failed: {out:?}");
}

#[test]
fn check_accepts_dotted_configuration_keys() {
    // `event.notification.enabled = true` (TOML dotted keys) is accepted like the quoted form.
    let app = App::new("dotted-app-key");
    let text = valid_config().to_toml()
        + &format!(
            r#"
[[instance]]
name = "dotted"
id = 2
element = "dropbox"
[instance.configuration]
oauth.api.key = "{}"
oauth.api.secret = "{}"
event.notification.enabled = true
event.notification.callback.url = "http://127.0.0.1:9/other"
"#,
            app.key, app.secret
        );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "check failed: {out:?}");
}

#[test]
fn config_is_accepted_before_or_after_the_command_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &valid_config().to_toml());
    let p = path.to_str().unwrap();
    let after = check(dir.path(), &["check", "--config", p]);
    assert_eq!(after.code(), Some(0), "check --config: {after:?}");
    let before = check(dir.path(), &["--config", p, "check"]);
    assert_eq!(before.code(), Some(0), "--config … check: {before:?}");
    let env = run_in(
        dir.path(),
        &["check"],
        &[("HOOKRELAY_CONFIG", p)],
        Duration::from_secs(30),
    );
    assert_eq!(env.code(), Some(0), "HOOKRELAY_CONFIG … check: {env:?}");
}

/// A config with one problem of each kind, each in its own place.
fn config_with_problems() -> String {
    let app = App::new("app-key");
    let good = account_id();
    let instance = |name: &str, id: u64| {
        InstanceConfig::new(name, id, &app)
            .accounts(&[&good])
            .callback("http://127.0.0.1:9/hooks")
    };
    TestConfig::new()
        // Unknown key.
        .server("bogus_key", 1_i64)
        // Bad duration.
        .delivery("timeout", "10 parsecs")
        .instance(instance("dup", 1))
        // Duplicate instance name.
        .instance(instance("dup", 2))
        // Enabled, no callback URL.
        .instance(InstanceConfig::new("no-callback", 3, &app))
        // Bad account id.
        .instance(instance("bad-account", 4).accounts(&["dbid:short"]))
        .to_toml()
}

#[test]
fn check_reports_every_problem_by_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_with_problems());
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(EX_CONFIG), "{out:?}");
    for key in [
        "server.bogus_key",
        "delivery.timeout",
        "instance[1].name",
        "instance[2].configuration.\"event.notification.callback.url\"",
        "instance[3].accounts",
    ] {
        assert!(
            out.stderr.contains(key),
            "stderr does not name {key}:\n{}",
            out.stderr
        );
    }
    // Each problem names the file, on a line of its own.
    let lines_with_file = out
        .stderr
        .lines()
        .filter(|l| l.contains("config.toml"))
        .count();
    assert!(
        lines_with_file >= 5,
        "expected ≥ 5 problem lines naming the file:\n{}",
        out.stderr
    );
    // The bad values are shown.
    assert!(out.stderr.contains("10 parsecs"), "{}", out.stderr);
    assert!(out.stderr.contains("dbid:short"), "{}", out.stderr);
}

/// Durations are capped at 365 days and sizes at 1 TiB: anything bigger is refused by name,
/// with 78, rather than left to overflow later (a polling interval of 3×10¹⁷ minutes used to pass
/// `check` and panic the poll loop). The caps themselves pass.
#[test]
fn check_rejects_huge_durations_and_sizes_naming_each_key() {
    let app = App::new("app-key");
    let poller = |minutes: i64| {
        InstanceConfig::new("poller", 1, &app)
            .raw("events = \"changes\"")
            .accounts(&[&account_id()])
            .callback("http://127.0.0.1:9/hooks")
            .configuration("oauth.refresh_token", "a-refresh-token")
            .configuration("event.vendor.type", "polling")
            .configuration("event.poller.refresh_interval", minutes)
    };
    let huge = TestConfig::new()
        .shutdown_timeout("366d")
        .storage("max_bytes", "1025GiB")
        .delivery("max_age", "8761h")
        .delivery("retry_max_interval", "18446744073709551615ms")
        .instance(poller(300_000_000_000_000_000))
        .instance(
            InstanceConfig::new("slow", 2, &app)
                .callback("http://127.0.0.1:9/hooks")
                .delivery("timeout", "9000000h")
                .delivery("dead_letter_ttl", "365d1ms"),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &huge.to_toml());
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(EX_CONFIG), "{out:?}");
    for key in [
        "server.shutdown_timeout",
        "storage.max_bytes",
        "delivery.max_age",
        "delivery.retry_max_interval",
        "instance[0].configuration.\"event.poller.refresh_interval\"",
        "instance[1].delivery.timeout",
        "instance[1].delivery.dead_letter_ttl",
    ] {
        let line = out.stderr.lines().find(|line| line.contains(key));
        assert!(
            line.is_some_and(|line| line.contains("config.toml")),
            "no line naming the file and {key}:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("300000000000000000"), "{}", out.stderr);

    let at_the_caps = TestConfig::new()
        .shutdown_timeout("365d")
        .storage("max_bytes", "1024GiB")
        .delivery("max_age", "8760h")
        .delivery("retry_max_interval", "31536000000ms")
        .instance(poller(525_600));
    let path = write_config(dir.path(), &at_the_caps.to_toml());
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn check_rejects_unparsable_toml_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[server\nlisten = ");
    let out = check(dir.path(), &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(EX_CONFIG), "{out:?}");
    assert!(!out.stderr.trim().is_empty());
}

#[test]
fn check_rejects_a_missing_file_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = check(
        dir.path(),
        &["check", "--config", missing.to_str().unwrap()],
    );
    assert_eq!(out.code(), Some(EX_CONFIG), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_config_exits_78_and_listens_nowhere() {
    let cfg = TestConfig::new()
        .delivery("timeout", "soon")
        .instance(InstanceConfig::new("x", 1, &App::new("k")).callback("http://127.0.0.1:9/"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg.to_toml());
    let p = path.to_str().unwrap().to_owned();
    let d = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run_in(&d, &["run", "--config", &p], &[], Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(out.code(), Some(EX_CONFIG), "{out:?}");
    assert!(out.stderr.contains("delivery.timeout"), "{}", out.stderr);
    assert!(!is_listening(cfg.server_listen).await);
    assert!(!is_listening(cfg.admin_listen).await);
}

#[test]
fn help_works_for_every_command() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["status", "--help"],
        &["dead", "--help"],
        &["dead", "list", "--help"],
        &["dead", "replay", "--help"],
        &["dead", "purge", "--help"],
        &["import-instance", "--help"],
        &["authorize", "--help"],
        &["doctor", "--help"],
        &["send-test", "--help"],
    ] {
        let out = run(args);
        assert_eq!(out.code(), Some(0), "hookrelay {}: {out:?}", args.join(" "));
        assert!(
            out.stdout.to_lowercase().contains("usage"),
            "hookrelay {}: no usage on stdout: {out:?}",
            args.join(" ")
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["check", "--no-such-flag"],
        &["run", "--log-format", "xml"],
        &["dead", "replay"],
    ] {
        let out = run(args);
        assert_eq!(
            out.code(),
            Some(EX_USAGE),
            "hookrelay {}: {out:?}",
            args.join(" ")
        );
    }
}
