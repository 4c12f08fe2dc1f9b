//! A delivery table's `headers`, `client_cert`/`client_key` and `ca_file`: names and values
//! checked by key, secrets never shown, TLS files read and checked at load, and how an
//! instance's table overrides the shared one.

use super::{MINIMAL, context_in, instance, load_in, pair, problems, problems_in, valid, write};
use crate::config::Problem;

fn with_delivery(lines: &str) -> String {
    format!("{MINIMAL}\n[delivery]\n{lines}\n")
}

/// One instance whose `[instance.delivery]` holds `lines`, under a `[delivery]` of `shared`.
fn with_instance_delivery(shared: &str, lines: &str) -> String {
    format!(
        "{MINIMAL}\n[delivery]\n{shared}\n{}[instance.delivery]\n{lines}\n{}",
        instance("acme", 1),
        instance("other", 2)
    )
}

fn keys(found: &[Problem]) -> Vec<&str> {
    found.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn headers_are_built_once_lower_cased_sensitive_and_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "api-key", "key-from-a-file-4711\n", 0o600);
    let text = with_delivery(
        r#"headers = { "X-Api-Key" = { file = "api-key" }, "X-Tenant" = "tenant-inline-0815" }"#,
    );
    let loaded = load_in(&text, &context_in(dir.path()));
    let text = format!("{text}\n{}", instance("acme", 1));
    let config = load_in(&text, &context_in(dir.path())).config;
    let headers = config.instances[0].delivery.headers.map();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers["x-api-key"], "key-from-a-file-4711");
    assert_eq!(headers["x-tenant"], "tenant-inline-0815");
    assert!(headers.values().all(|value| value.is_sensitive()));
    let shown = format!("{loaded:?} {config:?}");
    assert!(shown.contains("x-api-key"), "{shown}");
    for secret in ["key-from-a-file-4711", "tenant-inline-0815"] {
        assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
    }
}

#[test]
fn reserved_and_hop_by_hop_names_are_refused_whatever_their_case() {
    let found = problems(&with_delivery(
        r#"headers = { "Host" = "a", "content-type" = "b", "WEBHOOK-Signature" = "c", "Elements-Webhook-Id" = "d", "Connection" = "e", "transfer-encoding" = "f", "User-Agent" = "g" }"#,
    ));
    let mut found_keys = keys(&found);
    found_keys.sort_unstable();
    assert_eq!(
        found_keys,
        [
            "delivery.headers.\"Connection\"",
            "delivery.headers.\"Elements-Webhook-Id\"",
            "delivery.headers.\"Host\"",
            "delivery.headers.\"User-Agent\"",
            "delivery.headers.\"WEBHOOK-Signature\"",
            "delivery.headers.\"content-type\"",
            "delivery.headers.\"transfer-encoding\"",
        ],
        "{found:#?}"
    );
    let rule = |key: &str| {
        found
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.rule.clone())
            .unwrap_or_default()
    };
    assert!(rule("delivery.headers.\"Host\"").contains("set by hookrelay"));
    assert!(rule("delivery.headers.\"Connection\"").contains("hop-by-hop"));
}

#[test]
fn bad_names_and_values_are_refused_by_key_without_showing_the_value() {
    let found = problems(&with_delivery(
        r#"headers = { "bad name" = "fine", "X-Broken" = "line\nbreak-secret-99", "X-Empty" = "" }"#,
    ));
    assert_eq!(
        keys(&found),
        [
            "delivery.headers.\"X-Broken\"",
            "delivery.headers.\"X-Empty\"",
            "delivery.headers.\"bad name\"",
        ],
        "{found:#?}"
    );
    assert!(found[0].rule.contains("valid header value"), "{}", found[0]);
    assert!(found[1].rule.contains("must not be empty"), "{}", found[1]);
    assert!(
        found[2].rule.contains("valid HTTP header name"),
        "{}",
        found[2]
    );
    let shown = format!("{found:?}");
    assert!(!shown.contains("break-secret-99"), "{shown}");
    // A value of the wrong type in an instance's table: named, and not shown either.
    let found = problems(&with_instance_delivery(
        "",
        r#"headers = { "X-Api-Key" = 982451653 }"#,
    ));
    assert_eq!(
        keys(&found),
        ["instance[0].delivery.headers.X-Api-Key"],
        "{found:#?}"
    );
    assert!(!format!("{found:?}").contains("982451653"), "{found:?}");
}

#[test]
fn names_differing_only_in_case_are_refused() {
    let found = problems(&with_delivery(
        r#"headers = { "X-Key" = "one", "x-key" = "two" }"#,
    ));
    assert_eq!(keys(&found), ["delivery.headers.\"x-key\""], "{found:#?}");
    assert!(found[0].rule.contains("case-insensitive"), "{}", found[0]);
}

#[test]
fn an_instance_table_replaces_the_shared_headers_as_a_whole() {
    let config = valid(&with_instance_delivery(
        r#"headers = { "X-Shared" = "s" }"#,
        r#"headers = { "X-Own" = "o" }"#,
    ));
    let names = |index: usize| -> Vec<String> {
        let map = config.instances[index].delivery.headers.map();
        map.keys().map(|name| name.as_str().to_owned()).collect()
    };
    assert_eq!(names(0), ["x-own"]);
    assert_eq!(names(1), ["x-shared"]);
    // `headers = {}` clears them for one instance.
    let config = valid(&with_instance_delivery(
        r#"headers = { "X-Shared" = "s" }"#,
        "headers = {}",
    ));
    assert!(config.instances[0].delivery.headers.is_empty());
    assert!(!config.instances[1].delivery.headers.is_empty());
}

#[test]
fn a_client_certificate_needs_both_keys() {
    let found = problems(&with_delivery("client_cert = \"client.pem\""));
    assert_eq!(keys(&found), ["delivery.client_key"], "{found:#?}");
    assert!(found[0].rule.contains("is required"), "{}", found[0]);
    let found = problems(&with_instance_delivery("", "client_key = \"key.pem\""));
    assert_eq!(
        keys(&found),
        ["instance[0].delivery.client_cert"],
        "{found:#?}"
    );
}

#[test]
fn a_matching_pair_loads_from_paths_or_a_key_file_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = tempfile::tempdir().expect("credentials dir");
    let pair = pair();
    write(dir.path(), "client.pem", &pair.cert_pem, 0o644);
    write(dir.path(), "client.key", &pair.key_pem, 0o600);
    write(credentials.path(), "client-key", &pair.key_pem, 0o600);

    let by_path = with_delivery("client_cert = \"client.pem\"\nclient_key = \"client.key\"");
    let by_path = format!("{by_path}\n{}", instance("acme", 1));
    let loaded = load_in(&by_path, &context_in(dir.path()));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let identity = loaded.config.instances[0]
        .delivery
        .client_identity
        .clone()
        .expect("an identity");
    assert_eq!(identity.cert_path(), dir.path().join("client.pem"));
    assert!(String::from_utf8_lossy(identity.pem()).contains("BEGIN PRIVATE KEY"));
    let shown = format!("{:?}", loaded.config);
    assert!(!shown.contains("PRIVATE"), "{shown}");

    let by_reference =
        with_delivery("client_cert = \"client.pem\"\nclient_key = { file = \"client-key\" }");
    let by_reference = format!("{by_reference}\n{}", instance("acme", 1));
    let mut ctx = context_in(dir.path());
    ctx.credentials_dir = Some(credentials.path().to_path_buf());
    let same = load_in(&by_reference, &ctx).config.instances[0]
        .delivery
        .client_identity
        .clone()
        .expect("an identity");
    // The same material, however it was found: one HTTP client.
    assert_eq!(same.digest(), identity.digest());
}

#[test]
fn a_key_written_inline_by_mistake_is_not_echoed() {
    let pair = pair();
    let text = with_delivery(&format!(
        "client_cert = \"client.pem\"\nclient_key = {:?}",
        pair.key_pem
    ));
    let found = problems(&text);
    let key_problem = found
        .iter()
        .find(|p| p.key == "delivery.client_key")
        .unwrap_or_else(|| panic!("no client_key problem: {found:#?}"));
    assert!(key_problem.rule.contains("cannot read"), "{key_problem}");
    let shown = format!("{found:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn a_world_readable_key_file_draws_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = pair();
    write(dir.path(), "client.pem", &pair.cert_pem, 0o644);
    write(dir.path(), "client.key", &pair.key_pem, 0o644);
    let text = with_delivery("client_cert = \"client.pem\"\nclient_key = \"client.key\"");
    let loaded = load_in(&text, &context_in(dir.path()));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].starts_with("delivery.client_key"));
}

#[test]
fn bad_tls_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (pair(), pair());
    write(dir.path(), "client.pem", &one.cert_pem, 0o644);
    write(dir.path(), "other.key", &two.key_pem, 0o600);
    write(dir.path(), "garbage.pem", "not PEM at all\n", 0o644);
    let ctx = context_in(dir.path());
    let cases = [
        (
            "client_cert = \"client.pem\"\nclient_key = \"other.key\"",
            "delivery.client_key",
            "does not match",
        ),
        (
            "client_cert = \"garbage.pem\"\nclient_key = \"other.key\"",
            "delivery.client_cert",
            "no PEM certificate",
        ),
        (
            "client_cert = \"client.pem\"\nclient_key = \"client.pem\"",
            "delivery.client_key",
            "no PEM private key",
        ),
        (
            "client_cert = \"missing.pem\"\nclient_key = \"other.key\"",
            "delivery.client_cert",
            "cannot read file",
        ),
        (
            "ca_file = \"garbage.pem\"",
            "delivery.ca_file",
            "no PEM certificate",
        ),
        (
            "ca_file = \"nope.pem\"",
            "delivery.ca_file",
            "cannot read file",
        ),
    ];
    for (lines, key, rule) in cases {
        let found = problems_in(&with_delivery(lines), &ctx);
        assert_eq!(keys(&found), [key], "{lines}: {found:#?}");
        assert!(found[0].rule.contains(rule), "{lines}: {}", found[0]);
    }
}

#[test]
fn ca_file_roots_load_and_are_inherited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (pair(), pair());
    write(
        dir.path(),
        "roots.pem",
        &format!("{}{}", one.cert_pem, two.cert_pem),
        0o644,
    );
    let text = format!(
        "{}\n{}",
        with_delivery("ca_file = \"roots.pem\""),
        instance("acme", 1)
    );
    let config = load_in(&text, &context_in(dir.path())).config;
    let roots = config.instances[0]
        .delivery
        .extra_roots
        .as_ref()
        .expect("inherited roots");
    assert_eq!(roots.certificates().len(), 2);
    assert_eq!(roots.path(), dir.path().join("roots.pem"));
}
