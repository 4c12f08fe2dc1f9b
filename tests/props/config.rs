//! `Config::from_toml_str`: never panics — on arbitrary text, on TOML-ish text, and on valid
//! configs mutated line by line (deleted, doubled, values swapped for hostile ones, keys added,
//! characters replaced, truncated) — and every error names at least one problem with a
//! non-empty key (what `check` prints as `file: key: rule`).

use std::sync::OnceLock;

use hookrelay::config::{Config, ConfigError, LoadContext};
use proptest::prelude::*;

/// A valid file using most of the grammar: file references, quoted and dotted configuration
/// keys, per-instance overrides, a key rotation, two apps.
const BASE: &str = r#"[server]
listen = "127.0.0.1:18080"
max_body_bytes = "64KiB"
shutdown_timeout = "10s"

[admin]
listen = "127.0.0.1:19464"
token = { file = "admin-token" }

[storage]
path = "./data"
max_bytes = "10GiB"
cache_bytes = "32MiB"

[delivery]
timeout = "10s"
rate_limit = "100/s"
rate_limit_burst = 10
concurrency = 32
retry_initial = "4s"
retry_multiplier = 4.0
retry_max_interval = "24h"
max_attempts = 10
max_age = "73h"
dead_letter_ttl = "30d"
max_queued_bytes = "1GiB"
coalesce = true
allow_private_destinations = false
paused = false

[dropbox]
api_url = "https://api.dropboxapi.com"
content_url = "https://content.dropboxapi.com"
notify_url = "https://notify.dropboxapi.com"

[[instance]]
name = "acme-dropbox"
id = 4567
element = "dropbox"
tags = ["prod", "eu"]
accounts = ["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]
events = "notify"
[instance.configuration]
"oauth.api.key" = "app-key"
"oauth.api.secret" = { file = "app-secret" }
"event.notification.enabled" = true
"event.notification.callback.url" = "https://example.com/hooks/dropbox"
"event.notification.signature.key" = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"event.notification.signature.previous_key" = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[instance.delivery]
rate_limit = "5/s"
timeout = "2s"

[[instance]]
name = "beta"
id = 4568
element = "dropbox"
[instance.configuration]
oauth.api.key = "other-app"
oauth.api.secret = "other-secret"
event.notification.enabled = true
event.notification.callback.url = "http://example.org:8080/cb?x=1"
event.notification.signature.key = "plain-key"
"#;

/// Values that break grammars, types, ranges and URLs.
const HOSTILE: &[&str] = &[
    r#""""#,
    r#""0""#,
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "-0.0",
    "0.5",
    r#""0s""#,
    r#""0ms""#,
    r#""18446744073709551615d""#,
    r#""99999999999999999999h""#,
    r#""1h1h""#,
    r#""1h ""#,
    r#""0/s""#,
    r#""4294967296/s""#,
    r#""4294967295/s""#,
    r#""1/ms""#,
    r#""18446744073709551615""#,
    r#""18446744073709551615GiB""#,
    r#""17179869184GiB""#,
    r#""1EiB""#,
    "[]",
    "{}",
    "[[]]",
    "true",
    "false",
    r#"{ file = "" }"#,
    r#"{ file = "/" }"#,
    r#"{ file = "missing" }"#,
    r#"{ file = 1 }"#,
    r#"{ file = "app-secret", extra = 1 }"#,
    r#"{ path = "x" }"#,
    r#""http://[::1""#,
    r#""http://user:pw@example.com/""#,
    r#""ftp://example.com/""#,
    r#""https://""#,
    r#""http://127.0.0.1/""#,
    r#""http://[::ffff:10.0.0.1]/""#,
    r#""127.0.0.1:99999""#,
    r#""[::1]:0""#,
    r#""0.0.0.0:80""#,
    r#""localhost:80""#,
    r#""whsec_""#,
    r#""whsec_====""#,
    r#""whsec_AAAA""#,
    r#""dbid:""#,
    r#""é""#,
    r#""\u0000""#,
    "1979-05-27T07:32:00Z",
    r#"["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc", 1]"#,
    r#""changes""#,
    r#""polling""#,
    r#""webhook""#,
    "18446744073709551615",
];

/// Keys to add, known and unknown, at any table.
const KEYS: &[&str] = &[
    "listen",
    "token",
    "path",
    "max_bytes",
    "timeout",
    "rate_limit",
    "retry_multiplier",
    "max_attempts",
    "name",
    "id",
    "element",
    "events",
    "accounts",
    "tags",
    "tls_cert",
    "tls_key",
    r#""oauth.api.secret""#,
    r#""oauth.refresh_token""#,
    r#""event.vendor.type""#,
    r#""event.poller.refresh_interval""#,
    r#""oauth.callback.url""#,
    "oauth.api",
    "colour",
    r#""""#,
    "proxy",
];

const TABLES: &[&str] = &[
    "[server]",
    "[admin]",
    "[storage]",
    "[delivery]",
    "[dropbox]",
    "[[instance]]",
    "[instance.configuration]",
    "[instance.delivery]",
    "[instance]",
    "[[instance.configuration]]",
    "[colour]",
    "[instance.configuration.oauth]",
];

fn context() -> &'static (tempfile::TempDir, LoadContext) {
    static CONTEXT: OnceLock<(tempfile::TempDir, LoadContext)> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        for (name, value) in [("admin-token", "t0ken\n"), ("app-secret", "s3cret\n")] {
            std::fs::write(dir.path().join(name), value).expect("a secret file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join(name),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        let ctx = LoadContext {
            file: dir.path().join("config.toml"),
            base_dir: dir.path().to_path_buf(),
            credentials_dir: None,
        };
        (dir, ctx)
    })
}

/// Loads `text`; on an error, checks that it names a problem by a non-empty key.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml_str(text, &context().1) {
        Ok(loaded) => {
            // A valid result is consistent: unique names and ids, callbacks where enabled.
            let config = loaded.config;
            let mut names: Vec<&str> = config.instances.iter().map(|i| i.name.as_str()).collect();
            names.sort();
            names.dedup();
            prop_assert_eq!(names.len(), config.instances.len());
            for i in &config.instances {
                prop_assert!(!i.enabled || i.callback_url.is_some());
                prop_assert!(i.id > 0);
            }
            Ok(())
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            prop_assert!(
                !problems.is_empty(),
                "an error without problems for\n{}",
                text
            );
            prop_assert!(
                problems.iter().any(|p| !p.key.is_empty()),
                "no problem names a key: {:?}\n{}",
                problems,
                text
            );
            Ok(())
        }
        Err(ConfigError::Read { .. }) => Err(TestCaseError::fail("a Read error from text")),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(prop::sample::Index),
    Double(prop::sample::Index),
    SetValue(prop::sample::Index, &'static str),
    AddKey(prop::sample::Index, &'static str, &'static str),
    AddTable(prop::sample::Index, &'static str),
    ReplaceChar(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        2 => index.clone().prop_map(Mutation::Delete),
        1 => index.clone().prop_map(Mutation::Double),
        6 => (index.clone(), proptest::sample::select(HOSTILE)).prop_map(|(i, v)| Mutation::SetValue(i, v)),
        2 => (index.clone(), proptest::sample::select(KEYS), proptest::sample::select(HOSTILE))
            .prop_map(|(i, k, v)| Mutation::AddKey(i, k, v)),
        1 => (index.clone(), proptest::sample::select(TABLES)).prop_map(|(i, t)| Mutation::AddTable(i, t)),
        2 => (index.clone(), prop_oneof![
            Just('"'), Just('['), Just(']'), Just('='), Just('\n'), Just('{'), Just('}'),
            Just('.'), Just('\\'), Just('ü'), Just('\0'), Just('#'), Just(' '), Just('x'), Just('1'),
        ]).prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
        1 => index.prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    match m {
        Mutation::Delete(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
        }
        Mutation::Double(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at].clone());
        }
        Mutation::SetValue(i, value) => {
            let with_values: Vec<usize> = (0..lines.len())
                .filter(|n| lines[*n].contains(" = "))
                .collect();
            if !with_values.is_empty() {
                let at = with_values[i.index(with_values.len())];
                let key = lines[at].split(" = ").next().unwrap_or_default().to_owned();
                lines[at] = format!("{key} = {value}");
            }
        }
        Mutation::AddKey(i, key, value) => {
            let at = i.index(lines.len() + 1);
            lines.insert(at, format!("{key} = {value}"));
        }
        Mutation::AddTable(i, table) => {
            let at = i.index(lines.len() + 1);
            lines.insert(at, (*table).to_owned());
        }
        Mutation::ReplaceChar(i, c) => {
            let mut chars: Vec<char> = lines.join("\n").chars().collect();
            if !chars.is_empty() {
                let at = i.index(chars.len());
                chars[at] = *c;
            }
            return chars.into_iter().collect();
        }
        Mutation::Truncate(i) => {
            let chars: Vec<char> = lines.join("\n").chars().collect();
            return chars[..i.index(chars.len() + 1)].iter().collect();
        }
        _ => {}
    }
    lines.join("\n")
}

#[test]
fn the_base_config_is_valid() {
    match Config::from_toml_str(BASE, &context().1) {
        Ok(loaded) => assert_eq!(loaded.config.instances.len(), 2),
        Err(err) => panic!("{err}"),
    }
}

proptest! {
    #![proptest_config(crate::cases(256, 20_000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        check(&text)?;
    }

    #[test]
    fn toml_ish_text_never_panics(text in r#"(\[{1,2}[a-z.]{0,12}\]{1,2}\n|[a-z_."]{1,12} = ("[^"\n]{0,12}"|[0-9.e+-]{1,8}|\[\]|\{ file = "[a-z]{0,5}" \}|true)\n){0,12}"#) {
        check(&text)?;
    }

    #[test]
    fn mutated_valid_configs_never_panic_and_errors_name_keys(
        mutations in proptest::collection::vec(mutation(), 1..5)
    ) {
        let mut text = BASE.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&text)?;
    }
}
