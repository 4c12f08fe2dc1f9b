//! `{ file = "…" }` values: where they resolve, trimming, missing files, world-readable files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{MINIMAL, context_in, instance_with, problems_in};
use crate::config::{Config, LoadContext, Loaded, Secret};

fn write(dir: &Path, name: &str, contents: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("chmod test file");
}

fn load_in(text: &str, ctx: &LoadContext) -> Loaded {
    match Config::from_toml_str(text, ctx) {
        Ok(loaded) => loaded,
        Err(err) => panic!("expected a valid config, got:\n{err}"),
    }
}

fn with_token(reference: &str) -> String {
    MINIMAL.replace("[admin]", &format!("[admin]\ntoken = {reference}"))
}

#[test]
fn relative_paths_resolve_from_the_config_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "admin-token", "from-base\n", 0o600);
    let loaded = load_in(
        &with_token(r#"{ file = "admin-token" }"#),
        &context_in(dir.path()),
    );
    assert_eq!(loaded.config.admin.token, Some(Secret::new("from-base")));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn credentials_directory_comes_first_then_the_config_folder() {
    let base = tempfile::tempdir().expect("temp dir");
    let credentials = tempfile::tempdir().expect("temp dir");
    write(base.path(), "admin-token", "from-base", 0o600);
    write(credentials.path(), "admin-token", "from-credentials", 0o600);
    write(base.path(), "only-in-base", "base-only", 0o600);
    let ctx = LoadContext {
        credentials_dir: Some(credentials.path().to_path_buf()),
        ..context_in(base.path())
    };
    let loaded = load_in(&with_token(r#"{ file = "admin-token" }"#), &ctx);
    assert_eq!(
        loaded.config.admin.token,
        Some(Secret::new("from-credentials"))
    );
    let fallback = load_in(&with_token(r#"{ file = "only-in-base" }"#), &ctx);
    assert_eq!(fallback.config.admin.token, Some(Secret::new("base-only")));
}

#[test]
fn absolute_paths_and_any_string_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "listen", "127.0.0.1:7000\n", 0o644);
    let path = dir.path().join("listen");
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = {{ file = {:?} }}", path.display().to_string()),
    );
    let loaded = load_in(&text, &context_in(Path::new("/nonexistent")));
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:7000");
    assert!(
        loaded.warnings.is_empty(),
        "plain values draw no warning: {:?}",
        loaded.warnings
    );
}

#[test]
fn exactly_one_trailing_newline_is_trimmed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("lf", "secret\n", "secret"),
        ("crlf", "secret\r\n", "secret"),
        ("two", "secret\n\n", "secret\n"),
        ("none", "secret", "secret"),
    ];
    for (name, contents, expected) in cases {
        write(dir.path(), name, contents, 0o600);
        let text = with_token(&format!("{{ file = {name:?} }}"));
        let loaded = load_in(&text, &context_in(dir.path()));
        assert_eq!(
            loaded.config.admin.token,
            Some(Secret::new(expected)),
            "{name}"
        );
    }
}

#[test]
fn a_missing_file_names_the_key_and_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "", "")
            .replace("\"app-secret\"", r#"{ file = "dropbox-app-secret" }"#)
    );
    let found = problems_in(&text, &context_in(dir.path()));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].key,
        "instance[0].configuration.\"oauth.api.secret\""
    );
    let expected_path = dir.path().join("dropbox-app-secret");
    assert!(
        found[0]
            .rule
            .starts_with(&format!("cannot read file {}: ", expected_path.display())),
        "{}",
        found[0]
    );
    assert_eq!(found[0].value.as_deref(), Some("\"dropbox-app-secret\""));
}

#[test]
fn a_world_readable_secret_file_draws_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "admin-token", "hunter2-token\n", 0o644);
    let loaded = load_in(
        &with_token(r#"{ file = "admin-token" }"#),
        &context_in(dir.path()),
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert!(warning.starts_with("admin.token: "), "{warning}");
    assert!(
        warning.contains(&dir.path().join("admin-token").display().to_string()),
        "{warning}"
    );
    assert!(!warning.contains("hunter2"), "{warning}");
}

#[test]
fn file_values_of_configuration_keys_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "secret", "app-secret-from-file\n", 0o600);
    write(dir.path(), "callback", "https://example.com/hooks\n", 0o644);
    let text = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "\"event.notification.enabled\" = true\n\"event.notification.callback.url\" = { file = \"callback\" }",
        )
        .replace("\"app-secret\"", r#"{ file = "secret" }"#)
    );
    let loaded = load_in(&text, &context_in(dir.path()));
    let instance = &loaded.config.instances[0];
    assert_eq!(instance.app_secret, Secret::new("app-secret-from-file"));
    assert_eq!(
        instance.callback_url.as_ref().map(|url| url.as_str()),
        Some("https://example.com/hooks")
    );
}
