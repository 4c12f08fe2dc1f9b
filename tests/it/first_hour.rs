//! The operator's first hour: `send-test` pushes a signed notification through the running
//! daemon to the consumer, and `doctor` tells a healthy install from a broken one.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::support::callback::verify_signatures;
use crate::support::cli::{run_in, write_config};
use crate::support::dropbox::{account_id, notification_body, post_raw, sign};
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// One instance delivering to `callback` for two listed accounts; a small store quota, so the
/// disk check passes on any test machine.
fn config(callback: &FakeCallback, app: &App, accounts: &[&str]) -> TestConfig {
    TestConfig::new().storage("max_bytes", "64MiB").instance(
        InstanceConfig::new("acme", 7, app)
            .callback(&callback.url())
            .signature_key(WHSEC)
            .accounts(accounts),
    )
}

/// The report's lines as (verdict, check, message).
fn lines(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .map(|line| {
            let (verdict, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (check, message) = rest.split_once(": ").unwrap_or((rest, ""));
            (verdict.to_owned(), check.to_owned(), message.to_owned())
        })
        .collect()
}

fn find<'l>(
    lines: &'l [(String, String, String)],
    check: &str,
) -> Vec<&'l (String, String, String)> {
    lines.iter().filter(|(_, c, _)| c == check).collect()
}

#[tokio::test]
async fn send_test_delivers_a_signed_event_whose_id_it_printed() {
    let callback = FakeCallback::ok().await;
    let app = App::new("app-key");
    let (first, second) = (account_id(), account_id());
    let mut d = Daemon::start(&config(&callback, &app, &[&first, &second])).await;

    let out = d.cli(&["send-test", "--instance", "acme"]).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let printed = out.stdout.trim().to_owned();
    assert_eq!(printed.len(), 26, "stdout is the event id alone: {out:?}");
    assert!(out.stderr.contains(&printed), "{out:?}");

    let got = callback.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event_id(), printed);
    assert_eq!(
        got[0].account(),
        first,
        "the instance's first account by default"
    );
    verify_signatures(&got[0], WHSEC).expect("the consumer can verify the event");

    let out = d
        .cli(&["send-test", "--instance", "acme", "--account", &second])
        .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let got = callback.wait_for(2, Duration::from_secs(20)).await;
    let last = got
        .iter()
        .find(|r| r.account() == second)
        .expect("second account");
    assert_eq!(last.event_id(), out.stdout.trim());

    let unknown = d.cli(&["send-test", "--instance", "nope"]).await;
    assert_eq!(unknown.code(), Some(2), "{unknown:?}");
    assert!(
        unknown.stderr.contains("acme"),
        "names the instances: {unknown:?}"
    );
    let unlisted = d
        .cli(&["send-test", "--instance", "acme", "--account", "dbid:other"])
        .await;
    assert_eq!(unlisted.code(), Some(2), "{unlisted:?}");

    d.stop().await;
    let stopped = d.cli(&["send-test", "--instance", "acme"]).await;
    assert_eq!(stopped.code(), Some(69), "{stopped:?}");
    assert!(stopped.stderr.contains("server.listen"), "{stopped:?}");
}

#[tokio::test]
async fn the_200_names_the_stored_events_only_when_asked() {
    let callback = FakeCallback::ok().await;
    let app = App::new("app-key");
    let (first, second) = (account_id(), account_id());
    let mut d = Daemon::start(&config(&callback, &app, &[&first, &second])).await;
    let body = notification_body(&[&first, &second]);
    let signature = sign(&app.secret, body.as_bytes());
    let signed = [
        ("Content-Type", "application/json"),
        ("X-Dropbox-Signature", signature.as_str()),
    ];

    let plain = post_raw(&d.ingest_url(), &signed, body.clone().into_bytes())
        .await
        .expect("POST");
    assert_eq!(plain.status, 200);
    assert!(
        plain
            .headers
            .get_all("hookrelay-event")
            .iter()
            .next()
            .is_none(),
        "Dropbox's answers carry nothing more: {:?}",
        plain.headers
    );

    let asked = [signed[0], signed[1], ("Hookrelay-Report", "events")];
    let reply = post_raw(&d.ingest_url(), &asked, body.into_bytes())
        .await
        .expect("POST");
    assert_eq!(reply.status, 200);
    let named: Vec<String> = reply
        .headers
        .get_all("hookrelay-event")
        .iter()
        .map(|v| v.to_str().expect("ASCII").to_owned())
        .collect();
    assert_eq!(named.len(), 2, "{named:?}");
    let got = callback.wait_for(4, Duration::from_secs(20)).await;
    for (value, account) in named.iter().zip([&first, &second]) {
        let parts: Vec<&str> = value.split(' ').collect();
        assert_eq!(parts[..2], ["acme", account.as_str()], "{value}");
        assert!(
            got.iter()
                .any(|r| r.event_id() == parts[2] && &r.account() == account),
            "the consumer got the event {value} names: {got:?}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn send_test_needs_an_account_for_an_instance_that_lists_none() {
    let callback = FakeCallback::ok().await;
    let app = App::new("app-key");
    let cfg =
        TestConfig::new().instance(InstanceConfig::new("all", 1, &app).callback(&callback.url()));
    let mut d = Daemon::start(&cfg).await;
    let out = d.cli(&["send-test", "--instance", "all"]).await;
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--account"), "{out:?}");
    let account = account_id();
    let out = d
        .cli(&["send-test", "--instance", "all", "--account", &account])
        .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let got = callback.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event_id(), out.stdout.trim());
    d.stop().await;
}

#[tokio::test]
async fn doctor_passes_a_healthy_install_and_fails_a_store_others_can_read() {
    let callback = FakeCallback::ok().await;
    let app = App::new("app-key");
    let account = account_id();
    let mut d = Daemon::start(&config(&callback, &app, &[&account])).await;

    let out = d.cli(&["doctor"]).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let report = lines(&out.stdout);
    for check in [
        "config",
        "store",
        "disk",
        "admin",
        "daemon",
        "certificate",
        "callback acme",
    ] {
        let found = find(&report, check);
        assert!(!found.is_empty(), "no {check} line: {out:?}");
        assert!(found.iter().all(|(v, _, _)| v == "ok"), "{check}: {out:?}");
    }
    assert!(
        report.iter().all(|(v, _, m)| v == "ok" && !m.is_empty()),
        "every line ok, with what it found: {out:?}"
    );

    let json = d.cli(&["doctor", "--json"]).await;
    assert_eq!(json.code(), Some(0), "{json:?}");
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("doctor --json");
    assert_eq!(parsed.as_array().map(Vec::len), Some(report.len()));

    let store = d.store_path();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = d.cli(&["doctor"]).await;
    assert_eq!(out.code(), Some(1), "{out:?}");
    let report = lines(&out.stdout);
    let store_lines = find(&report, "store");
    assert!(
        store_lines
            .iter()
            .any(|(v, _, m)| v == "fail" && m.contains("0755") && m.contains("chmod 0700")),
        "says what is wrong and what to do: {out:?}"
    );
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    d.stop().await;
    let out = d.cli(&["doctor"]).await;
    assert_eq!(out.code(), Some(1), "{out:?}");
    let report = lines(&out.stdout);
    let daemon = find(&report, "daemon");
    assert!(
        daemon
            .iter()
            .any(|(v, _, m)| v == "fail" && m.contains("systemctl start hookrelay")),
        "{out:?}"
    );
}

#[tokio::test]
async fn doctor_fails_on_an_unreadable_file_value_naming_key_and_file() {
    let app = App::new("app-key");
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 7, &app)
            .callback("http://127.0.0.1:9/hook")
            .signature_key("SIGNATURE-KEY-MARKER"),
    );
    let text = cfg
        .to_toml()
        .replace("\"SIGNATURE-KEY-MARKER\"", "{ file = \"no-such-key\" }");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &text);
    let path = path.display().to_string();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            run_in(
                &dir,
                &["doctor", "--config", &path],
                &[],
                Duration::from_secs(30),
            )
        }
    })
    .await
    .expect("doctor thread");
    assert_eq!(out.code(), Some(1), "{out:?}");
    let report = lines(&out.stdout);
    let config = find(&report, "config");
    assert!(
        config.iter().any(|(v, _, m)| v == "fail"
            && m.contains("event.notification.signature.key")
            && m.contains("no-such-key")),
        "names the key and the file: {out:?}"
    );
    assert!(
        report.iter().all(|(_, c, _)| c == "config"),
        "nothing else is checked on an invalid config: {out:?}"
    );
}

#[tokio::test]
async fn doctor_warns_on_a_certificate_that_expires_within_two_weeks() {
    let callback = FakeCallback::ok().await;
    let app = App::new("app-key");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    // Valid until midnight (UTC) 8 days from today: between 7 and 8 days from now.
    write_self_signed(
        &cert,
        &key,
        SystemTime::now() + Duration::from_secs(8 * 86_400),
    );
    let cfg = config(&callback, &app, &[&account_id()])
        .server("tls_cert", cert.display().to_string())
        .server("tls_key", key.display().to_string());
    let mut d = Daemon::start(&cfg).await;

    let out = d.cli(&["doctor"]).await;
    assert_eq!(out.code(), Some(0), "a warning is not a failure: {out:?}");
    let report = lines(&out.stdout);
    let certificate = find(&report, "certificate");
    assert!(
        certificate.iter().any(|(v, _, m)| v == "warn"
            && m.contains("expires in 7 day(s)")
            && m.contains("systemctl reload hookrelay")),
        "{out:?}"
    );
    d.stop().await;
}

/// A self-signed certificate for `127.0.0.1` valid until `not_after`, and its key, as PEM.
fn write_self_signed(cert: &std::path::Path, key: &std::path::Path, not_after: SystemTime) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "doctor test");
    let days = not_after
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let pair = KeyPair::generate().expect("key");
    let certificate = params.self_signed(&pair).expect("certificate");
    std::fs::write(cert, certificate.pem()).expect("write cert");
    std::fs::write(key, pair.serialize_pem()).expect("write key");
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// The civil date (UTC) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

#[test]
fn civil_dates_are_right() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(20_793), (2026, 12, 6));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
}
