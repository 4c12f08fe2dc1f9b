//! Secrets hygiene: a representative run at `RUST_LOG=trace` — ingest, deliveries signed with a
//! `whsec_` key and a previous key, a failing delivery that ends in a dead letter, a valid reload,
//! an invalid reload whose problems are on secret keys, `check` with such problems, admin-token
//! failures over HTTP and through the CLI — and not one byte of the daemon's or the CLI's
//! stdout/stderr contains a configured secret (the app secret, the signature keys whole and their
//! base64 tails, the decoded key bytes in hex, the admin token, and the bad values written in
//! secret keys). `Debug` of a loaded `Config` shows none either.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use crate::support::cli::{CliOutput, run_in};
use crate::support::daemon::ConfigArg;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::http::{client, send};
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

/// A fresh `whsec_` key: its full text, its base64 tail and its key bytes in hex.
fn whsec() -> (String, String, String) {
    let bytes: Vec<u8> = ulid::Ulid::generate()
        .to_bytes()
        .into_iter()
        .chain(ulid::Ulid::generate().to_bytes())
        .collect();
    let tail = base64::engine::general_purpose::STANDARD.encode(&bytes);
    (format!("whsec_{tail}"), tail, hex::encode(&bytes))
}

fn random_word(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

struct Secrets {
    app: App,
    key: String,
    previous: String,
    plain_key: String,
    admin_token: String,
    wrong_token: String,
    /// Bad values written into secret keys by the invalid files.
    bad_values: Vec<String>,
    /// Every string that must never be printed.
    all: Vec<(String, String)>,
}

fn secrets() -> Secrets {
    let app = App::new("app-key");
    let (key, key_tail, key_hex) = whsec();
    let (previous, previous_tail, previous_hex) = whsec();
    let plain_key = random_word("plain-signing-key-");
    let admin_token = random_word("admin-token-");
    let wrong_token = random_word("wrong-token-");
    let bad_values = vec![
        random_word("whsec_!!not-base64-"),
        format!(
            "{}",
            7_000_000_000_000_000_000u64 + u64::from(ulid::Ulid::generate().random() as u16)
        ),
        random_word("leaked-refresh-token-"),
    ];
    let mut all = vec![
        ("app secret".to_owned(), app.secret.clone()),
        ("signature key".to_owned(), key.clone()),
        ("signature key tail".to_owned(), key_tail),
        ("signature key bytes (hex)".to_owned(), key_hex),
        ("previous key".to_owned(), previous.clone()),
        ("previous key tail".to_owned(), previous_tail),
        ("previous key bytes (hex)".to_owned(), previous_hex),
        ("plain signature key".to_owned(), plain_key.clone()),
        ("admin token".to_owned(), admin_token.clone()),
        ("wrong admin token".to_owned(), wrong_token.clone()),
    ];
    for (n, v) in bad_values.iter().enumerate() {
        all.push((format!("bad secret value {n}"), v.clone()));
    }
    Secrets {
        app,
        key,
        previous,
        plain_key,
        admin_token,
        wrong_token,
        bad_values,
        all,
    }
}

/// Every secret found in `text`, by name.
fn leaks(text: &str, s: &Secrets) -> Vec<String> {
    s.all
        .iter()
        .filter(|(_, value)| text.contains(value.as_str()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `base` (its ports and defaults) with the two instances.
fn config(
    base: &TestConfig,
    s: &Secrets,
    ok: &FakeCallback,
    failing: &FakeCallback,
    tags: &[&str],
) -> TestConfig {
    let mut cfg = base.clone();
    cfg.instances.clear();
    cfg.instance(
        InstanceConfig::new("acme", 1, &s.app)
            .callback(&ok.url())
            .signature_key(&s.key)
            .previous_signature_key(&s.previous)
            .tags(tags),
    )
    .instance(
        InstanceConfig::new("failing", 2, &s.app)
            .callback(&failing.url())
            .signature_key(&s.plain_key)
            .delivery("max_attempts", 2_u32),
    )
}

/// The config text with `[admin] token = { file = "<token_file>" }`.
fn with_token(cfg: &TestConfig, token_file: &str) -> String {
    let text = cfg.to_toml();
    assert!(text.contains("\n[storage]\n"));
    text.replacen(
        "\n[storage]\n",
        &format!("token = {{ file = \"{token_file}\" }}\n\n[storage]\n"),
        1,
    )
}

/// A file whose problems are all on secret keys (bad values written in them).
fn bad_secrets_text(s: &Secrets, valid: &str) -> String {
    valid
        .replacen(
            &format!(
                "\"event.notification.signature.key\" = {}",
                serde_json::to_string(&s.key).unwrap()
            ),
            &format!(
                "\"event.notification.signature.key\" = {}",
                serde_json::to_string(&s.bad_values[0]).unwrap()
            ),
            1,
        )
        .replacen(
            &format!(
                "\"oauth.api.secret\" = {}",
                serde_json::to_string(&s.app.secret).unwrap()
            ),
            &format!("\"oauth.api.secret\" = {}", s.bad_values[1]),
            1,
        )
        .replacen(
            "[instance.configuration]\n",
            &format!(
                "[instance.configuration]\n\"oauth.refresh_token\" = [\"{}\"]\n",
                s.bad_values[2]
            ),
            1,
        )
}

fn write_secret(dir: &Path, name: &str, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("writing a secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn assert_clean(what: &str, out: &CliOutput, s: &Secrets) {
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let found = leaks(&text, s);
    assert!(found.is_empty(), "{what} printed {found:?}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_at_trace_level() {
    let s = secrets();
    let ok = FakeCallback::ok().await;
    let failing = FakeCallback::start([], Action::Status(500)).await;
    let cfg = config(&TestConfig::new(), &s, &ok, &failing, &["one"]);
    let text = with_token(&cfg, "admin-token");
    let token = s.admin_token.clone();
    let wrong = s.wrong_token.clone();
    let mut d = Daemon::start_full(
        &cfg,
        ConfigArg::AfterCommand,
        &[("RUST_LOG", "trace")],
        |dir| {
            write_secret(dir, "admin-token", &token);
            write_secret(dir, "wrong-token", &wrong);
            std::fs::write(dir.join("config.toml"), &text).expect("writing config.toml");
        },
    )
    .await;
    let dir = d.dir().to_path_buf();
    let trace = [("RUST_LOG", "trace")];
    let cli_runs = std::cell::Cell::new(0);
    let cli = |args: &[&str]| {
        cli_runs.set(cli_runs.get() + 1);
        run_in(&dir, args, &trace, Duration::from_secs(30))
    };

    // Ingest and deliveries (both signature schemes, the previous key too), a failing one.
    for _ in 0..3 {
        let body = notification_body(&[&account_id()]);
        assert_eq!(
            post_notification(&d.ingest_url(), &s.app.secret, &body).await,
            200
        );
    }
    ok.wait_for(3, Duration::from_secs(20)).await;
    failing.wait_for(6, Duration::from_secs(20)).await;
    wait_until(Duration::from_secs(20), "3 dead letters", || async {
        d.metric("hookrelay_dead_letters").await == Some(3.0)
    })
    .await;

    // A wrong signature, and admin requests with a wrong or missing token.
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &s.previous, &body).await,
        403
    );
    for auth in [Some(format!("Bearer {}", s.wrong_token)), None] {
        let mut req = client().get(format!("{}/admin/status", d.admin_url()));
        if let Some(auth) = &auth {
            req = req.header("Authorization", auth);
        }
        assert_eq!(send(req).await.unwrap().status, 401);
    }
    let mut req = client().get(format!("{}/admin/dead", d.admin_url()));
    req = req.header("Authorization", format!("Bearer {}", s.admin_token));
    assert_eq!(send(req).await.unwrap().status, 200);

    // The CLI against the running daemon: with the right token, and with a wrong one (77).
    let cfg_path = d.config_path();
    let config_arg = cfg_path.to_str().unwrap();
    let out = cli(&["status", "--config", config_arg]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_clean("status", &out, &s);
    let out = cli(&["dead", "list", "--config", config_arg]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_clean("dead list", &out, &s);
    let wrong_cfg = dir.join("wrong-token.toml");
    std::fs::write(&wrong_cfg, with_token(&cfg, "wrong-token")).unwrap();
    let out = cli(&["status", "--config", wrong_cfg.to_str().unwrap()]);
    assert_eq!(out.code(), Some(77), "{out:?}");
    assert_clean("status with a wrong token", &out, &s);

    // A valid reload, then an invalid one whose problems are on secret keys.
    let reloaded = with_token(&config(&cfg, &s, &ok, &failing, &["two"]), "admin-token");
    d.write_config_text(&reloaded);
    d.sighup();
    wait_until(Duration::from_secs(10), "generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    let bad = bad_secrets_text(&s, &reloaded);
    for value in &s.bad_values {
        assert!(bad.contains(value.as_str()), "the bad file lacks {value}");
    }
    d.write_config_text(&bad);
    d.sighup();
    wait_until(Duration::from_secs(10), "a rejected reload", || async {
        d.metric(r#"hookrelay_config_reloads_total{result="error"}"#)
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(d.generation().await, Some(2));

    // `check` on that file: problems named by key, values of secrets never shown.
    let bad_path = dir.join("bad.toml");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = cli(&["check", "--config", bad_path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(78), "{out:?}");
    for key in [
        "\"event.notification.signature.key\"",
        "\"oauth.api.secret\"",
        "\"oauth.refresh_token\"",
    ] {
        assert!(
            out.stderr.contains(key),
            "check does not name {key}:\n{}",
            out.stderr
        );
    }
    assert_clean("check", &out, &s);
    // And a missing secret file.
    let missing = reloaded.replace("{ file = \"admin-token\" }", "{ file = \"no-such-token\" }");
    let missing_path = dir.join("missing.toml");
    std::fs::write(&missing_path, missing).unwrap();
    let out = cli(&["check", "--config", missing_path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(78), "{out:?}");
    assert!(out.stderr.contains("admin.token"), "{}", out.stderr);
    assert_clean("check (missing token file)", &out, &s);

    d.write_config_text(&reloaded);
    d.stop().await;
    let logs = d.logs();
    let found = leaks(&logs, &s);
    assert!(
        found.is_empty(),
        "the daemon's output contains {found:?} (grep the logs above)"
    );
    // The scenario did what it says: the rejected reload named the secret keys (one line each).
    let at = logs
        .find("reload rejected")
        .unwrap_or_else(|| panic!("no rejected reload:\n{logs}"));
    let rejected: String = logs[at..].lines().take(5).collect::<Vec<_>>().join("\n");
    for key in [
        "\"oauth.api.secret\"",
        "\"event.notification.signature.key\"",
        "\"oauth.refresh_token\"",
    ] {
        assert!(
            rejected.contains(key),
            "the rejection does not name {key}: {rejected}"
        );
    }
    assert!(logs.contains("dead-lettered"), "no dead letter logged");
    let lines = logs.lines().count();
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "RUST_LOG=trace did not take effect"
    );
    eprintln!(
        "secrets: {} secrets × {lines} lines of daemon output at trace ({} bytes) and {} CLI runs: 0 hits",
        s.all.len(),
        logs.len(),
        cli_runs.get()
    );
}

#[test]
fn debug_of_a_loaded_config_and_of_its_errors_shows_no_secret() {
    let s = secrets();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("acme", 1, &s.app)
                .callback("https://example.com/hooks")
                .signature_key(&s.key)
                .previous_signature_key(&s.previous),
        )
        .instance(
            InstanceConfig::new("plain", 2, &s.app)
                .callback("https://example.com/hooks")
                .signature_key(&s.plain_key),
        );
    let text = cfg.to_toml().replacen(
        "\n[storage]\n",
        &format!(
            "token = {}\n\n[storage]\n",
            serde_json::to_string(&s.admin_token).unwrap()
        ),
        1,
    );
    let ctx = hookrelay::config::LoadContext {
        file: dir.path().join("config.toml"),
        base_dir: dir.path().to_path_buf(),
        credentials_dir: None,
    };
    let loaded = hookrelay::config::Config::from_toml_str(&text, &ctx)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        loaded.config.admin.token.as_ref().map(|t| t.expose()),
        Some(s.admin_token.as_str())
    );
    let debug = format!("{loaded:?} {:#?}", loaded.config);
    let found = leaks(&debug, &s);
    assert!(found.is_empty(), "Debug of Config shows {found:?}");
    assert!(debug.contains("***"), "secrets are not shown as ***");

    // The errors of a file with bad values in secret keys: Display and Debug.
    let bad = bad_secrets_text(&s, &text);
    let err = hookrelay::config::Config::from_toml_str(&bad, &ctx).expect_err("bad secrets");
    let shown = format!("{err} {err:?}");
    let found = leaks(&shown, &s);
    assert!(found.is_empty(), "a config error shows {found:?}: {shown}");
}
