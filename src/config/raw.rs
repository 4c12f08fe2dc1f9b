//! Raw serde types mirroring the TOML file, before any rule is checked.
//!
//! Every table denies unknown fields and every field is optional, so that "missing" and
//! "invalid" are told apart by the validation step, which also applies the defaults. Values
//! with a grammar (durations, sizes, rates, URLs, addresses) stay text here; any text may be a
//! `{ file = "PATH" }` reference ([`RawText::File`]). Integers are `i64` (TOML's integer) so
//! that range rules produce our messages rather than serde's.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

/// The file's top level: one table per section, decoded separately (see `document.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDocument {
    pub server: Option<toml::Table>,
    pub admin: Option<toml::Table>,
    pub storage: Option<toml::Table>,
    pub delivery: Option<toml::Table>,
    pub dropbox: Option<toml::Table>,
    pub alerts: Option<toml::Table>,
    pub instance: Option<Vec<toml::Table>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<RawText>,
    pub max_body_bytes: Option<RawIntOrText>,
    pub shutdown_timeout: Option<RawText>,
    pub tls_cert: Option<RawText>,
    pub tls_key: Option<RawText>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<RawText>,
    pub token: Option<RawText>,
}

/// `[storage]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub path: Option<RawText>,
    pub max_bytes: Option<RawIntOrText>,
    pub cache_bytes: Option<RawIntOrText>,
}

/// `[delivery]`, and `[instance.delivery]` (the same keys, overriding per instance).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    pub timeout: Option<RawText>,
    pub rate_limit: Option<RawText>,
    pub rate_limit_burst: Option<i64>,
    pub concurrency: Option<i64>,
    pub retry_initial: Option<RawText>,
    pub retry_multiplier: Option<f64>,
    pub retry_max_interval: Option<RawText>,
    pub max_attempts: Option<i64>,
    pub max_age: Option<RawText>,
    pub dead_letter_ttl: Option<RawText>,
    pub max_queued_bytes: Option<RawIntOrText>,
    pub coalesce: Option<bool>,
    pub allow_private_destinations: Option<bool>,
    pub paused: Option<bool>,
    pub proxy: Option<RawText>,
    pub history: Option<RawText>,
    pub history_max_bytes: Option<RawIntOrText>,
    /// Header name → value, as written (names are checked by `headers.rs`).
    pub headers: Option<BTreeMap<String, RawText>>,
    pub client_cert: Option<RawText>,
    pub client_key: Option<RawText>,
    pub ca_file: Option<RawText>,
    pub outage_after: Option<RawText>,
    pub probe_interval: Option<RawText>,
}

/// `[dropbox]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDropbox {
    pub api_url: Option<RawText>,
    pub content_url: Option<RawText>,
    pub notify_url: Option<RawText>,
}

/// `[alerts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub url: Option<RawText>,
    pub format: Option<RawText>,
    pub signature_key: Option<RawText>,
    pub on: Option<Vec<RawText>>,
    pub proxy: Option<RawText>,
}

/// One `[[instance]]`; its two sub-tables are decoded on their own (see `document.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstance {
    pub name: Option<RawText>,
    pub id: Option<i64>,
    pub element: Option<RawText>,
    pub tags: Option<Vec<RawText>>,
    pub accounts: Option<Vec<RawText>>,
    pub events: Option<RawText>,
    pub paths: Option<Vec<RawText>>,
    pub event_types: Option<Vec<RawText>>,
    pub configuration: Option<toml::Table>,
    pub delivery: Option<toml::Table>,
}

/// `[instance.configuration]`, after dotted keys are flattened (see `document.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfiguration {
    #[serde(rename = "oauth.api.key")]
    pub api_key: Option<RawText>,
    #[serde(rename = "oauth.api.secret")]
    pub api_secret: Option<RawText>,
    #[serde(rename = "oauth.callback.url")]
    pub oauth_callback_url: Option<RawText>,
    #[serde(rename = "oauth.refresh_token")]
    pub refresh_token: Option<RawText>,
    #[serde(rename = "event.notification.enabled")]
    pub enabled: Option<bool>,
    #[serde(rename = "event.notification.callback.url")]
    pub callback_url: Option<RawText>,
    #[serde(rename = "event.notification.signature.key")]
    pub signature_key: Option<RawText>,
    #[serde(rename = "event.notification.signature.previous_key")]
    pub previous_signature_key: Option<RawText>,
    #[serde(rename = "event.vendor.type")]
    pub vendor_type: Option<RawText>,
    #[serde(rename = "event.poller.refresh_interval")]
    pub refresh_interval: Option<RawIntOrText>,
}

/// A string written inline, or `{ file = "PATH" }`: read from that file at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawText {
    Inline(String),
    File(String),
}

/// An integer, or text (a size such as `"64KiB"`, or a digit string such as `"5"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawIntOrText {
    Int(i64),
    Text(RawText),
}

impl<'de> Deserialize<'de> for RawText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for RawIntOrText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntOrTextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = RawText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or { file = \"PATH\" }")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawText, E> {
        Ok(RawText::Inline(value.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawText, A::Error> {
        file_reference(map)
    }
}

struct IntOrTextVisitor;

impl<'de> Visitor<'de> for IntOrTextVisitor {
    type Value = RawIntOrText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, a string or { file = \"PATH\" }")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawIntOrText, E> {
        Ok(RawIntOrText::Int(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawIntOrText, E> {
        i64::try_from(value)
            .map(RawIntOrText::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawIntOrText, E> {
        Ok(RawIntOrText::Text(RawText::Inline(value.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawIntOrText, A::Error> {
        file_reference(map).map(RawIntOrText::Text)
    }
}

/// Reads `{ file = "PATH" }`: exactly the one key `file`, a string.
fn file_reference<'de, A: MapAccess<'de>>(mut map: A) -> Result<RawText, A::Error> {
    let mut path: Option<String> = None;
    while let Some(key) = map.next_key::<String>()? {
        if key != "file" {
            return Err(de::Error::custom(format!(
                "unknown key `{key}` in a file reference; expected {{ file = \"PATH\" }}"
            )));
        }
        if path.is_some() {
            return Err(de::Error::duplicate_field("file"));
        }
        path = Some(map.next_value()?);
    }
    path.map(RawText::File)
        .ok_or_else(|| de::Error::custom("expected a string or { file = \"PATH\" }"))
}
