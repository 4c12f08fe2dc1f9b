//! Unit tests of the configuration module, by topic; the helpers below build configs as text.

mod alerts;
mod callbacks;
mod configuration;
mod files;
mod filters;
mod grammar;
mod instances;
mod load;
mod rules;
mod tls;

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, LoadContext, Loaded, Problem};

/// The three required keys and nothing else.
const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9464"
[storage]
path = "./data"
"#;

/// A context for a config in `dir`, without a credentials directory.
fn context_in(dir: &Path) -> LoadContext {
    LoadContext {
        file: dir.join("config.toml"),
        base_dir: dir.to_path_buf(),
        credentials_dir: None,
    }
}

/// A context for a config that references no files.
fn context() -> LoadContext {
    context_in(&PathBuf::from("/etc/hookrelay"))
}

fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_toml_str(text, &context())
}

/// Loads `text`, which must be valid, and returns the config.
fn valid(text: &str) -> Config {
    match load(text) {
        Ok(loaded) => loaded.config,
        Err(err) => panic!("expected a valid config, got:\n{err}"),
    }
}

/// Loads `text`, which must be invalid, and returns its problems.
fn problems_in(text: &str, ctx: &LoadContext) -> Vec<Problem> {
    match Config::from_toml_str(text, ctx) {
        Ok(loaded) => panic!("expected problems, got a valid config: {:?}", loaded.config),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(err) => panic!("expected ConfigError::Invalid, got {err}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    problems_in(text, &context())
}

/// The key paths of `text`'s problems, in order.
fn problem_keys(text: &str) -> Vec<String> {
    problems(text)
        .into_iter()
        .map(|problem| problem.key)
        .collect()
}

/// The one problem of `text`.
fn only_problem(text: &str) -> Problem {
    let mut found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    found.remove(0)
}

/// An `[[instance]]` block: `own` goes among the instance's keys, `configuration` after the
/// two required configuration keys.
fn instance_with(name: &str, id: i64, own: &str, configuration: &str) -> String {
    format!(
        r#"
[[instance]]
name = "{name}"
id = {id}
element = "dropbox"
{own}
[instance.configuration]
"oauth.api.key" = "app-key"
"oauth.api.secret" = "app-secret"
{configuration}
"#
    )
}

fn instance(name: &str, id: i64) -> String {
    instance_with(name, id, "", "")
}

/// `text` loaded in `ctx`, which must be valid.
fn load_in(text: &str, ctx: &LoadContext) -> Loaded {
    Config::from_toml_str(text, ctx).unwrap_or_else(|err| panic!("expected a valid config:\n{err}"))
}

/// A self-signed certificate and its key, in PEM.
struct Pair {
    cert_pem: String,
    key_pem: String,
}

fn pair() -> Pair {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes `contents` to `dir/name` with `mode`.
fn write(dir: &Path, name: &str, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("chmod test file");
}
