//! The names of `[instance.configuration]`'s keys: which hookrelay knows, which hold secrets,
//! and how a key's path is written in a problem.

use super::problem::quoted;

/// The configuration keys hookrelay understands (the serde names of
/// [`RawConfiguration`](super::raw::RawConfiguration)).
pub(crate) const KNOWN_KEYS: [&str; 10] = [
    "oauth.api.key",
    "oauth.api.secret",
    "oauth.callback.url",
    "oauth.refresh_token",
    "event.notification.enabled",
    "event.notification.callback.url",
    "event.notification.signature.key",
    "event.notification.signature.previous_key",
    "event.vendor.type",
    "event.poller.refresh_interval",
];

/// Configuration keys whose values are secrets: never shown in problems, warnings or `Debug`.
const SECRET_KEYS: [&str; 4] = [
    "oauth.api.secret",
    "oauth.refresh_token",
    "event.notification.signature.key",
    "event.notification.signature.previous_key",
];

/// `[delivery]` keys (shared or an instance's) whose values may be secrets: every request
/// header, and the callbacks' client key.
const SECRET_DELIVERY_KEYS: [&str; 2] = ["delivery.headers", "delivery.client_key"];

/// Whether key path `key` is a secret's (`admin.token`, a secret configuration key, a header
/// or client key of a `[delivery]` table) or inside one (`admin.token.file`).
pub(crate) fn is_secret_path(key: &str) -> bool {
    let within = |secret: &str| key == secret || key.starts_with(&format!("{secret}."));
    // `instance[N].delivery.…` is checked as `delivery.…`.
    let in_section = key
        .strip_prefix("instance[")
        .and_then(|rest| rest.split_once("]."))
        .map_or(key, |(_, rest)| rest);
    let delivery_secret = SECRET_DELIVERY_KEYS
        .iter()
        .any(|secret| in_section == *secret || in_section.starts_with(&format!("{secret}.")));
    delivery_secret
        || within("admin.token")
        || within("alerts.signature_key")
        || SECRET_KEYS.iter().any(|name| {
            let quoted_name = quoted(name);
            key.split_once(".configuration.").is_some_and(|(_, rest)| {
                rest == quoted_name || rest.starts_with(&format!("{quoted_name}."))
            })
        })
}

/// The key path of configuration key `name` under `path` (`….configuration."oauth.api.key"`).
pub(crate) fn key_path(path: &str, name: &str) -> String {
    format!("{path}.{}", quoted(name))
}
