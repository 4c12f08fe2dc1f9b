//! A `[delivery]` table's `headers`: extra request headers for callbacks, checked name by name
//! and built once, at load, into the [`CallbackHeaders`] every attempt starts from.
//!
//! Names must be valid HTTP names and none that hookrelay sets itself or that applies to one
//! connection only (hop-by-hop), whatever their case; values must be valid header values.
//! Values may be secrets (`{ file = … }`): no problem, warning or `Debug` output shows one.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::check::{Checker, Reported};
use super::keys::key_path;
use super::raw::RawText;

/// The headers hookrelay sets on every delivery (docs/protocol.md), lower case.
const SET_BY_HOOKRELAY: [&str; 9] = [
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "elements-webhook-id",
    "elements-webhook-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Hop-by-hop headers: they describe one connection, which the HTTP client manages.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Extra request headers, ready to send: each attempt clones them and adds its own. Every
/// value is marked sensitive (HTTP/2 never indexes it) and `Debug` shows names only.
#[derive(Clone, Default, PartialEq)]
pub struct CallbackHeaders(HeaderMap);

impl CallbackHeaders {
    /// The headers, to clone into a request.
    pub fn map(&self) -> &HeaderMap {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CallbackHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name.as_str(), "***")))
            .finish()
    }
}

/// `headers` (at key path `path`), or `inherited` when the table does not set it: a table
/// that sets `headers` replaces the inherited ones as a whole.
pub(crate) fn check(
    c: &mut Checker,
    raw: Option<&BTreeMap<String, RawText>>,
    path: &str,
    inherited: &CallbackHeaders,
) -> Result<CallbackHeaders, Reported> {
    let Some(raw) = raw else {
        return Ok(inherited.clone());
    };
    let mut map = HeaderMap::new();
    let mut failed = false;
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in raw {
        let key = key_path(path, name);
        let checked_name = header_name(c, name, &key);
        let checked_value = header_value(c, value, &key);
        let (Ok(header), Ok(value)) = (checked_name, checked_value) else {
            failed = true;
            continue;
        };
        if let Some(first) = written.get(header.as_str()) {
            let rule = format!("given twice: header names are case-insensitive (also {first:?})");
            c.report(&key, rule, None);
            failed = true;
            continue;
        }
        written.insert(header.as_str().to_owned(), name.clone());
        map.insert(header, value);
    }
    match failed {
        true => Err(Reported),
        false => Ok(CallbackHeaders(map)),
    }
}

fn header_name(c: &mut Checker, name: &str, key: &str) -> Result<HeaderName, Reported> {
    let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
        let rule = "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)";
        return Err(c.report(key, rule, None));
    };
    let lower = header.as_str();
    if SET_BY_HOOKRELAY.contains(&lower) {
        let rule = "is set by hookrelay on every delivery and cannot be configured";
        return Err(c.report(key, rule, None));
    }
    if HOP_BY_HOP.contains(&lower) {
        let rule = "is a hop-by-hop header (it describes one connection, which the HTTP client \
                    manages) and cannot be configured";
        return Err(c.report(key, rule, None));
    }
    Ok(header)
}

/// A value as a secret (never shown): not empty, and a valid header value.
fn header_value(c: &mut Checker, raw: &RawText, key: &str) -> Result<HeaderValue, Reported> {
    let secret = c.secret(Some(raw), key)?.ok_or(Reported)?;
    match HeaderValue::from_str(secret.expose()) {
        Ok(mut value) => {
            value.set_sensitive(true);
            Ok(value)
        }
        Err(_) => {
            let rule = "must be a valid header value: visible ASCII characters, spaces and tabs, \
                        no line breaks";
            Err(c.report(key, rule, None))
        }
    }
}
