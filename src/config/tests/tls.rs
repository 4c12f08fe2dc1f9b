//! `server.tls_cert` and `server.tls_key`: both or neither, paths from the config's folder, and
//! the PEM files checked at load (so `check`, start and reload all reject a bad pair).

use std::path::Path;

use super::{MINIMAL, context_in, load_in, pair, problems, problems_in, write};

fn with_server(lines: &str) -> String {
    MINIMAL.replace("[server]", &format!("[server]\n{lines}"))
}

const BOTH: &str = "tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"";

#[test]
fn without_the_keys_the_listener_is_plain_http() {
    let loaded = load_in(MINIMAL, &context_in(Path::new("/etc/hookrelay")));
    assert!(loaded.config.server.tls.is_none());
}

#[test]
fn one_key_without_the_other_is_rejected_naming_the_missing_key() {
    let only_cert = problems(&with_server("tls_cert = \"cert.pem\""));
    assert_eq!(only_cert.len(), 1, "{only_cert:#?}");
    assert_eq!(only_cert[0].key, "server.tls_key");
    assert!(
        only_cert[0].rule.contains("is required"),
        "{}",
        only_cert[0]
    );

    let only_key = problems(&with_server("tls_key = \"key.pem\""));
    assert_eq!(only_key.len(), 1, "{only_key:#?}");
    assert_eq!(only_key[0].key, "server.tls_cert");
    assert!(only_key[0].rule.contains("is required"), "{}", only_key[0]);
}

#[test]
fn empty_paths_are_rejected() {
    let found = problems(&with_server("tls_cert = \"\"\ntls_key = \"\""));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["server.tls_cert", "server.tls_key"], "{found:#?}");
    assert!(found.iter().all(|p| p.rule == "must not be empty"));
}

#[test]
fn relative_paths_resolve_from_the_config_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("tls")).expect("mkdir");
    let pair = pair();
    write(dir.path(), "tls/cert.pem", &pair.cert_pem, 0o644);
    write(dir.path(), "tls/key.pem", &pair.key_pem, 0o600);
    let loaded = load_in(&with_server(BOTH), &context_in(dir.path()));
    let tls = loaded.config.server.tls.expect("TLS configured");
    assert_eq!(tls.cert_path(), dir.path().join("tls/cert.pem"));
    assert_eq!(tls.key_path(), dir.path().join("tls/key.pem"));
    assert_eq!(tls.chain().len(), 1);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn a_missing_file_is_a_problem_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = pair();
    write(dir.path(), "key.pem", &pair.key_pem, 0o600);
    let text = with_server("tls_cert = \"missing.pem\"\ntls_key = \"key.pem\"");
    let found = problems_in(&text, &context_in(dir.path()));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "server.tls_cert");
    let missing = dir.path().join("missing.pem");
    assert!(
        found[0].rule.contains(&missing.display().to_string()),
        "{}",
        found[0]
    );
    assert_eq!(found[0].value.as_deref(), Some("\"missing.pem\""));
}

#[test]
fn a_mismatched_pair_is_a_problem_on_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (pair(), pair());
    write(dir.path(), "cert.pem", &one.cert_pem, 0o644);
    write(dir.path(), "key.pem", &two.key_pem, 0o600);
    let text = with_server("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let found = problems_in(&text, &context_in(dir.path()));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "server.tls_key");
    assert!(found[0].rule.contains("does not match"), "{}", found[0]);
    assert!(
        !found[0].to_string().contains("PRIVATE KEY-----\n"),
        "key material in a problem: {}",
        found[0]
    );
}

#[test]
fn a_certificate_file_with_no_certificate_is_a_problem_on_the_cert() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = pair();
    // Both keys point at the key file: a classic copy-paste slip.
    write(dir.path(), "key.pem", &pair.key_pem, 0o600);
    let text = with_server("tls_cert = \"key.pem\"\ntls_key = \"key.pem\"");
    let found = problems_in(&text, &context_in(dir.path()));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "server.tls_cert");
    assert!(found[0].rule.contains("no PEM certificate"), "{}", found[0]);
}

#[test]
fn a_key_file_every_user_can_read_draws_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = pair();
    write(dir.path(), "cert.pem", &pair.cert_pem, 0o644);
    write(dir.path(), "key.pem", &pair.key_pem, 0o644);
    let text = with_server("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let loaded = load_in(&text, &context_in(dir.path()));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].starts_with("server.tls_key:"),
        "{:?}",
        loaded.warnings
    );
}
