//! `hookrelay import-instance FILE.json [--id N] [--include-secrets]`: a Cloud Elements
//! instance JSON (`name`, `element.key`, `configuration{…}`, `tags`, optional `id`) → an
//! `[[instance]]` block on stdout that `hookrelay check` accepts once appended to a config.
//!
//! Without `--include-secrets`, secret values never reach stdout: each becomes a
//! `{ file = "<name>-<short key>" }` reference, and a comment says which files to create (and
//! how, with `jq`). Keys hookrelay does not use are left out, named in a comment.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value as Json;

use super::{EXIT_FAILURE, EXIT_USAGE, Failure};
use crate::config::KNOWN_CONFIGURATION_KEYS;

/// Secret configuration keys and the short names their files get.
const SECRETS: [(&str, &str); 4] = [
    ("oauth.api.secret", "app-secret"),
    ("oauth.refresh_token", "refresh-token"),
    ("event.notification.signature.key", "signature-key"),
    (
        "event.notification.signature.previous_key",
        "previous-signature-key",
    ),
];

pub fn run(file: &Path, id: Option<u64>, include_secrets: bool) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", file.display())))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: not JSON: {e}", file.display())))?;
    let block = convert(&json, &file.display().to_string(), id, include_secrets)?;
    print!("{}", block.text);
    for warning in &block.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// The `[[instance]]` text and what the operator should know about it.
#[derive(Debug)]
pub struct Block {
    pub text: String,
    pub warnings: Vec<String>,
}

/// Converts one instance JSON; `source` names it in comments and messages.
///
/// # Errors
/// No usable id (exit 2), or a JSON that is not an instance (exit 1).
pub fn convert(
    json: &Json,
    source: &str,
    id: Option<u64>,
    include_secrets: bool,
) -> Result<Block, Failure> {
    let not_instance = |what: &str| {
        Failure::new(
            EXIT_FAILURE,
            format!("{source}: not an instance JSON: {what}"),
        )
    };
    let object = json
        .as_object()
        .ok_or_else(|| not_instance("not an object"))?;
    let original_name = object
        .get("name")
        .and_then(Json::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| not_instance("no \"name\""))?;
    let id = match id.or_else(|| object.get("id").and_then(positive_id)) {
        Some(id) => id,
        None => {
            return Err(Failure::new(
                EXIT_USAGE,
                format!(
                    "{source} has no positive \"id\"; give the instance id (the envelope's \
                     instanceId your consumers know) with --id N"
                ),
            ));
        }
    };
    let configuration = match object.get("configuration") {
        Some(Json::Object(map)) => map.clone(),
        Some(_) => return Err(not_instance("\"configuration\" is not an object")),
        None => serde_json::Map::new(),
    };

    let mut warnings = Vec::new();
    let name = valid_name(original_name);
    let mut head = format!("# Imported from {source} by `hookrelay import-instance`.\n");
    if name != original_name {
        let note = format!(
            "the name {original_name:?} is not a valid hookrelay name ([A-Za-z0-9._-], 1 to 64 \
             characters); imported as {name:?}, which consumers see as instanceName"
        );
        let _ = writeln!(head, "# Note: {note}.");
        warnings.push(note);
    }
    let element = object
        .get("element")
        .and_then(|e| e.get("key"))
        .and_then(Json::as_str)
        .unwrap_or("dropbox");
    let tags: Vec<toml::Value> = object
        .get("tags")
        .and_then(Json::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(Json::as_str)
                .map(|t| toml::Value::String(t.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let polling = configuration
        .get("event.vendor.type")
        .and_then(Json::as_str)
        .is_some_and(|v| v == "polling");

    let mut lines = String::new();
    let mut files = Vec::new();
    let mut left_out = Vec::new();
    left_out.extend(
        configuration
            .keys()
            .filter(|key| !KNOWN_CONFIGURATION_KEYS.contains(&key.as_str()))
            .cloned(),
    );
    // In the order hookrelay documents them (oauth.* first), not the JSON's.
    for key in KNOWN_CONFIGURATION_KEYS {
        let Some(value) = configuration.get(key) else {
            continue;
        };
        let key = &key.to_owned();
        let Some(value) = toml_value(key, value) else {
            left_out.push(key.clone());
            continue;
        };
        let rendered = match SECRETS.iter().find(|(secret, _)| secret == key) {
            Some((_, short)) if !include_secrets => {
                let file = format!("{}-{short}", file_safe(&name));
                files.push((key.clone(), file.clone()));
                format!("{{ file = {} }}", toml::Value::String(file))
            }
            _ => value.to_string(),
        };
        let _ = writeln!(lines, "{} = {rendered}", toml::Value::String(key.clone()));
    }

    if !files.is_empty() {
        head.push_str(
            "# Secrets are file references. Create each file (mode 0600) in the config's folder,\n\
             # or load it with systemd's LoadCredential=NAME:PATH, before `hookrelay check`:\n",
        );
        for (key, file) in &files {
            let _ = writeln!(
                head,
                "#   jq -j '.configuration[\"{key}\"]' {} > {file}",
                shell_word(source)
            );
        }
    }
    if !left_out.is_empty() {
        let _ = writeln!(
            head,
            "# Left out (not used by hookrelay, or not a string, number or boolean): {}",
            left_out.join(", ")
        );
    }
    if object.get("providerData").is_some() {
        head.push_str(
            "# providerData (an OAuth code) is single-use; for change events run \
             `hookrelay authorize`.\n",
        );
    }

    let mut text = head;
    text.push_str("[[instance]]\n");
    let _ = writeln!(text, "name = {}", toml::Value::String(name.clone()));
    let _ = writeln!(text, "id = {id}");
    let _ = writeln!(
        text,
        "element = {}",
        toml::Value::String(element.to_owned())
    );
    let _ = writeln!(text, "tags = {}", toml::Value::Array(tags));
    if polling {
        text.push_str("# \"event.vendor.type\" = \"polling\" walks the account's changes.\n");
        text.push_str("events = \"changes\"\n");
    } else {
        text.push_str("events = \"notify\"\n");
    }
    text.push_str("\n[instance.configuration]\n");
    text.push_str(&lines);
    Ok(Block { text, warnings })
}

/// A JSON `id`: a positive integer, or a string of one.
fn positive_id(value: &Json) -> Option<u64> {
    let id = match value {
        Json::Number(n) => n.as_u64()?,
        Json::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (id > 0).then_some(id)
}

/// The TOML value for a known configuration key; `None` for values it cannot hold.
fn toml_value(key: &str, value: &Json) -> Option<toml::Value> {
    match key {
        "event.notification.enabled" => match value {
            Json::Bool(b) => Some(toml::Value::Boolean(*b)),
            Json::String(s) if s.eq_ignore_ascii_case("true") => Some(toml::Value::Boolean(true)),
            Json::String(s) if s.eq_ignore_ascii_case("false") => Some(toml::Value::Boolean(false)),
            _ => None,
        },
        "event.poller.refresh_interval" => match value {
            Json::Number(n) => n.as_i64().map(toml::Value::Integer),
            Json::String(s) => Some(toml::Value::String(s.clone())),
            _ => None,
        },
        _ => match value {
            Json::String(s) => Some(toml::Value::String(s.clone())),
            Json::Number(n) => Some(toml::Value::String(n.to_string())),
            Json::Bool(b) => Some(toml::Value::String(b.to_string())),
            _ => None,
        },
    }
}

/// `name` made to fit hookrelay's rule: other characters become `-`, at most 64.
fn valid_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    mapped
}

/// A file name from an instance name (which [`valid_name`] already restricted).
fn file_safe(name: &str) -> String {
    name.trim_start_matches('.').to_owned()
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Json {
        serde_json::json!({
            "element": { "key": "dropbox" },
            "providerData": { "code": "abc" },
            "configuration": {
                "oauth.api.key": "app-key",
                "oauth.api.secret": "s3cr3t-app",
                "oauth.callback.url": "https://www.mycoolapp.com/auth",
                "authentication.type": "oauth2",
                "event.notification.enabled": "true",
                "event.notification.callback.url": "https://example.com/hooks",
                "event.notification.signature.key": "sig-key-value",
                "event.poller.configuration": { "x": 1 }
            },
            "tags": ["prod", 7],
            "name": "Acme Dropbox",
            "id": 4567
        })
    }

    #[test]
    fn secrets_become_file_references_and_unknown_keys_comments() {
        let block = convert(&seed(), "acme.json", None, false).unwrap_or_else(|f| panic!("{f:?}"));
        let text = &block.text;
        assert!(
            !text.contains("s3cr3t-app") && !text.contains("sig-key-value"),
            "{text}"
        );
        assert!(
            text.contains("name = \"Acme-Dropbox\"\nid = 4567\n"),
            "{text}"
        );
        assert!(text.contains("tags = [\"prod\"]"), "{text}");
        assert!(text.contains("events = \"notify\""), "{text}");
        assert!(
            text.contains(r#""oauth.api.secret" = { file = "Acme-Dropbox-app-secret" }"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#""event.notification.signature.key" = { file = "Acme-Dropbox-signature-key" }"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""event.notification.enabled" = true"#),
            "{text}"
        );
        assert!(
            text.contains(
                "#   jq -j '.configuration[\"oauth.api.secret\"]' acme.json > Acme-Dropbox-app-secret"
            ),
            "{text}"
        );
        assert!(
            text.contains("Left out (not used by hookrelay, or not a string, number or boolean): authentication.type, event.poller.configuration"),
            "{text}"
        );
        assert_eq!(block.warnings.len(), 1, "the renamed instance is reported");
        let parsed: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(parsed.contains_key("instance"));
    }

    #[test]
    fn include_secrets_writes_them_inline_and_id_flag_wins() {
        let block =
            convert(&seed(), "acme.json", Some(9), true).unwrap_or_else(|f| panic!("{f:?}"));
        assert!(block.text.contains(r#""oauth.api.secret" = "s3cr3t-app""#));
        assert!(block.text.contains("id = 9\n"));
        assert!(!block.text.contains("jq -j"));
    }

    #[test]
    fn an_id_is_required() {
        let mut json = seed();
        json.as_object_mut().map(|o| o.remove("id"));
        let failure = convert(&json, "acme.json", None, false).err();
        assert_eq!(failure.map(|f| f.code), Some(EXIT_USAGE));
        json["id"] = serde_json::json!("12");
        let block = convert(&json, "acme.json", None, false).unwrap_or_else(|f| panic!("{f:?}"));
        assert!(block.text.contains("id = 12\n"));
        json["id"] = serde_json::json!(0);
        assert!(convert(&json, "acme.json", None, false).is_err());
    }

    #[test]
    fn polling_instances_use_change_events() {
        let json = serde_json::json!({
            "name": "poller", "id": 3, "element": {"key": "dropbox"},
            "configuration": {"event.vendor.type": "polling", "event.poller.refresh_interval": 5}
        });
        let block = convert(&json, "p.json", None, false).unwrap_or_else(|f| panic!("{f:?}"));
        assert!(
            block.text.contains("events = \"changes\""),
            "{}",
            block.text
        );
        assert!(
            block.text.contains("\"event.poller.refresh_interval\" = 5"),
            "{}",
            block.text
        );
    }

    #[test]
    fn not_an_instance() {
        for json in [serde_json::json!([1]), serde_json::json!({"id": 1})] {
            let failure = convert(&json, "x.json", None, false).err();
            assert_eq!(failure.map(|f| f.code), Some(EXIT_FAILURE));
        }
        assert_eq!(shell_word("my file.json"), "'my file.json'");
        assert_eq!(shell_word("/tmp/a.json"), "/tmp/a.json");
    }
}
