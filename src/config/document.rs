//! TOML text → raw sections, collecting every problem serde finds.
//!
//! The text is parsed into a `toml::Table` first; then each section, each `[[instance]]` and
//! each instance's `delivery` and `configuration` table is decoded on its own, so a problem in
//! one never hides a problem in another. Within a table, serde stops at the first error: the
//! offending key is reported, removed, and the table decoded again, until it decodes.
//!
//! In `[instance.configuration]`, `"event.notification.enabled" = true` is one key with dots
//! in its name, while `event.notification.enabled = true` is TOML for nested tables. Both are
//! flattened into dotted names, which are then checked against [`KNOWN_KEYS`]: an unknown
//! name, or a name given both ways, is a problem. The known ones are decoded as a
//! [`RawConfiguration`].

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use super::keys::{KNOWN_KEYS, is_secret_path, key_path};
use super::problem::{Problem, child, segment};
use super::raw::{
    RawAdmin, RawAlerts, RawConfiguration, RawDelivery, RawDocument, RawDropbox, RawInstance,
    RawServer, RawStorage,
};

const SECRET_TYPE_RULE: &str = "invalid type; expected a string or { file = \"PATH\" }";

/// Every section of the file, decoded; a section that is absent is empty (all `None`).
#[derive(Debug, Default)]
pub(crate) struct Sections {
    pub server: RawServer,
    pub admin: RawAdmin,
    pub storage: RawStorage,
    pub delivery: RawDelivery,
    pub dropbox: RawDropbox,
    pub alerts: RawAlerts,
    pub instances: Vec<InstanceSections>,
}

/// One `[[instance]]` with its sub-tables decoded.
#[derive(Debug, Default)]
pub(crate) struct InstanceSections {
    pub main: RawInstance,
    pub configuration: RawConfiguration,
    pub delivery: RawDelivery,
}

/// Parses `text` into sections; `None` when the TOML itself is malformed (one problem, with
/// line and column).
pub(crate) fn read(text: &str, problems: &mut Vec<Problem>) -> Option<Sections> {
    let root: toml::Table = match text.parse() {
        Ok(root) => root,
        Err(err) => {
            problems.push(syntax_problem(text, &err));
            return None;
        }
    };
    let document: RawDocument = decode(root, "", problems);
    let instances = document.instance.unwrap_or_default();
    Some(Sections {
        server: decode_section(document.server, "server", problems),
        admin: decode_section(document.admin, "admin", problems),
        storage: decode_section(document.storage, "storage", problems),
        delivery: decode_section(document.delivery, "delivery", problems),
        dropbox: decode_section(document.dropbox, "dropbox", problems),
        alerts: decode_section(document.alerts, "alerts", problems),
        instances: instances
            .into_iter()
            .enumerate()
            .map(|(index, table)| read_instance(table, &format!("instance[{index}]"), problems))
            .collect(),
    })
}

fn read_instance(table: toml::Table, path: &str, problems: &mut Vec<Problem>) -> InstanceSections {
    let mut main: RawInstance = decode(table, path, problems);
    let delivery = decode_section(main.delivery.take(), &child(path, "delivery"), problems);
    let configuration = match main.configuration.take() {
        Some(table) => read_configuration(table, &child(path, "configuration"), problems),
        None => RawConfiguration::default(),
    };
    InstanceSections {
        main,
        configuration,
        delivery,
    }
}

/// Flattens `table` (at key path `path`) and decodes the known keys.
pub(crate) fn read_configuration(
    table: toml::Table,
    path: &str,
    problems: &mut Vec<Problem>,
) -> RawConfiguration {
    let mut entries = Vec::new();
    flatten("", table, &mut entries);
    let mut known = toml::Table::new();
    let mut seen = BTreeSet::new();
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            problems.push(Problem::new(
                key_path(path, &name),
                "given twice (quoted and as dotted keys)",
            ));
        } else if !KNOWN_KEYS.contains(&name.as_str()) {
            problems.push(Problem::new(
                key_path(path, &name),
                "unknown configuration key",
            ));
        } else {
            known.insert(name, value);
        }
    }
    decode(known, path, problems)
}

/// Appends `table`'s leaves as (dotted name, value); a known key's table value (a file
/// reference) is a leaf, not nested keys.
fn flatten(prefix: &str, table: toml::Table, entries: &mut Vec<(String, toml::Value)>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !KNOWN_KEYS.contains(&name.as_str()) => {
                flatten(&name, inner, entries);
            }
            value => entries.push((name, value)),
        }
    }
}

fn decode_section<T: DeserializeOwned + Default>(
    table: Option<toml::Table>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> T {
    table.map_or_else(T::default, |table| decode(table, path, problems))
}

/// Decodes `table` as `T`, reporting each failing key under `path` and retrying without it.
pub(crate) fn decode<T: DeserializeOwned + Default>(
    mut table: toml::Table,
    path: &str,
    problems: &mut Vec<Problem>,
) -> T {
    // Each retry removes one key, so this ends after at most one pass per key.
    for _ in 0..=table.len() {
        let err = match T::deserialize(toml::Value::Table(table.clone())) {
            Ok(value) => return value,
            Err(err) => err,
        };
        let location = locate(&err, &table);
        let key = if location.rendered.is_empty() {
            path.to_owned()
        } else if path.is_empty() {
            location.rendered.clone()
        } else {
            format!("{path}.{}", location.rendered)
        };
        // serde quotes the value it rejected; a secret's value is never shown.
        let rule = if is_secret_path(&key) {
            SECRET_TYPE_RULE.to_owned()
        } else {
            in_toml_words(err.message())
        };
        problems.push(Problem::new(key, rule));
        match location.table_key {
            Some(table_key) => {
                table.remove(&table_key);
            }
            None => break,
        }
    }
    T::default()
}

/// Where in a table a serde error is: the table's own key to drop, and the path to show.
struct Location {
    table_key: Option<String>,
    rendered: String,
}

fn locate(err: &toml::de::Error, table: &toml::Table) -> Location {
    let chain = key_chain(err);
    if chain.is_empty() {
        return match unknown_field(err.message()) {
            Some(name) => Location {
                rendered: segment(&name),
                table_key: Some(name),
            },
            None => Location {
                table_key: None,
                rendered: String::new(),
            },
        };
    }
    // Keys are joined with dots, and configuration keys contain dots: match the longest key.
    let table_key = table
        .keys()
        .filter(|key| chain == **key || chain.starts_with(&format!("{key}.")))
        .max_by_key(|key| key.len())
        .cloned();
    match table_key {
        Some(key) => Location {
            rendered: format!("{}{}", segment(&key), &chain[key.len()..]),
            table_key: Some(key),
        },
        None => Location {
            table_key: None,
            rendered: chain,
        },
    }
}

/// The keys the toml crate records on an error, which it shows only in its `Display` as a
/// last line "in `a.b`".
fn key_chain(err: &toml::de::Error) -> String {
    err.to_string()
        .lines()
        .rev()
        .find_map(|line| {
            line.strip_prefix("in `")?
                .strip_suffix('`')
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The name in serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.find('`').map(|end| rest[..end].to_owned())
}

fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let rule = single_line(err.message());
    match err.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            Problem::new(format!("line {line}, column {column}"), rule)
        }
        None => Problem::new("(file)", rule),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn single_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// serde's message on one line, with Rust's type names in TOML's words.
fn in_toml_words(message: &str) -> String {
    const WORDS: [(&str, &str); 4] = [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
    ];
    WORDS
        .iter()
        .fold(single_line(message), |text, (rust, toml)| {
            text.replace(rust, toml)
        })
}
