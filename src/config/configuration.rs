//! `[instance.configuration]`: the Cloud Elements keys, read into a [`RawConfiguration`] (by
//! `document.rs`, against the names of `keys.rs`), checked into the parts of an
//! [`Instance`](super::Instance) they describe.

use std::time::Duration;

use base64::Engine as _;

use super::check::{Checker, Reported};
use super::defaults::MAX_DURATION;
use super::keys::key_path;
use super::problem::quoted;
use super::raw::{RawConfiguration, RawIntOrText, RawText};
use super::{EventsMode, Secret, Url, VendorType};

/// `oauth.*`: the Dropbox app and, for change events, how to get tokens.
pub(crate) struct Credentials {
    pub app_key: String,
    pub app_secret: Secret,
    pub oauth_callback_url: Option<Url>,
    pub refresh_token: Option<Secret>,
}

/// `event.notification.*`: whether and where events are delivered, and how they are signed.
pub(crate) struct Notification {
    pub enabled: bool,
    pub callback_url: Option<Url>,
    pub signature_key: Option<Secret>,
    pub previous_signature_key: Option<Secret>,
}

pub(crate) fn credentials(
    c: &mut Checker,
    raw: &RawConfiguration,
    path: &str,
) -> Result<Credentials, Reported> {
    let key = |name: &str| key_path(path, name);
    let app_key = c.text(raw.api_key.as_ref(), &key("oauth.api.key"));
    let app_key = c
        .required(app_key, &key("oauth.api.key"))
        .and_then(|app_key| {
            if app_key.is_empty() {
                return Err(c.report(&key("oauth.api.key"), "must not be empty", Some(quoted(""))));
            }
            Ok(app_key)
        });
    let app_secret = c.secret(raw.api_secret.as_ref(), &key("oauth.api.secret"));
    let app_secret = c.required(app_secret, &key("oauth.api.secret"));
    let oauth_callback_url = c.url(raw.oauth_callback_url.as_ref(), &key("oauth.callback.url"));
    let refresh_token = c.secret(raw.refresh_token.as_ref(), &key("oauth.refresh_token"));
    Ok(Credentials {
        app_key: app_key?,
        app_secret: app_secret?,
        oauth_callback_url: oauth_callback_url?,
        refresh_token: refresh_token?,
    })
}

pub(crate) fn notification(
    c: &mut Checker,
    raw: &RawConfiguration,
    path: &str,
) -> Result<Notification, Reported> {
    let key = |name: &str| key_path(path, name);
    let enabled = raw.enabled.unwrap_or(false);
    let callback_url = c.url(
        raw.callback_url.as_ref(),
        &key("event.notification.callback.url"),
    );
    let callback_url = match callback_url {
        Ok(None) if enabled => {
            let rule = "is required when \"event.notification.enabled\" is true";
            Err(c.report(&key("event.notification.callback.url"), rule, None))
        }
        checked => checked,
    };
    let signature_key = signature_key(
        c,
        raw.signature_key.as_ref(),
        &key("event.notification.signature.key"),
    );
    let previous_key = key("event.notification.signature.previous_key");
    let previous_signature_key = signature_key_after(c, raw, &previous_key, &signature_key);
    Ok(Notification {
        enabled,
        callback_url: callback_url?,
        signature_key: signature_key?,
        previous_signature_key: previous_signature_key?,
    })
}

/// A previous key only makes sense next to a current one.
fn signature_key_after(
    c: &mut Checker,
    raw: &RawConfiguration,
    key: &str,
    current: &Result<Option<Secret>, Reported>,
) -> Result<Option<Secret>, Reported> {
    let previous = signature_key(c, raw.previous_signature_key.as_ref(), key)?;
    if previous.is_some() && matches!(current, Ok(None)) {
        let rule = "needs \"event.notification.signature.key\" (the current key)";
        return Err(c.report(key, rule, None));
    }
    Ok(previous)
}

/// A signing key; a `whsec_` key (Standard Webhooks) must carry 1 to 64 base64 bytes.
fn signature_key(
    c: &mut Checker,
    raw: Option<&RawText>,
    key: &str,
) -> Result<Option<Secret>, Reported> {
    let Some(secret) = c.secret(raw, key)? else {
        return Ok(None);
    };
    if let Some(tail) = secret.expose().strip_prefix("whsec_") {
        let length = base64::engine::general_purpose::STANDARD
            .decode(tail)
            .map_or(0, |bytes| bytes.len());
        if !(1..=64).contains(&length) {
            let rule = "a whsec_ key must be followed by standard base64 of 1 to 64 bytes";
            return Err(c.report(key, rule, None));
        }
    }
    Ok(Some(secret))
}

/// `event.vendor.type` and, for polling, `event.poller.refresh_interval`.
pub(crate) fn vendor(
    c: &mut Checker,
    raw: &RawConfiguration,
    path: &str,
    events: EventsMode,
    instance_path: &str,
) -> Result<VendorType, Reported> {
    let type_key = key_path(path, "event.vendor.type");
    let interval_key = key_path(path, "event.poller.refresh_interval");
    let interval = refresh_interval(c, raw.refresh_interval.as_ref(), &interval_key);
    let polling = c.parsed(raw.vendor_type.as_ref(), &type_key, |text| match text {
        "webhook" | "webhooks" => Ok(false),
        "polling" => Ok(true),
        _ => Err("must be \"webhook\", \"webhooks\" or \"polling\"".to_owned()),
    })?;
    if polling != Some(true) {
        return Ok(VendorType::Webhook);
    }
    if events != EventsMode::Changes {
        let rule = "\"polling\" needs events = \"changes\"";
        let events_key = format!("{instance_path}.events");
        return Err(c.report(
            &type_key,
            format!("{rule} ({events_key})"),
            Some(quoted("polling")),
        ));
    }
    match interval? {
        Some(interval) => Ok(VendorType::Polling { interval }),
        None => {
            let rule = "is required when \"event.vendor.type\" is \"polling\"";
            Err(c.report(&interval_key, rule, None))
        }
    }
}

/// Minutes: an integer from 1 to 525600 (a year, as every duration), or a string of digits
/// (Cloud Elements writes `"5"`).
fn refresh_interval(
    c: &mut Checker,
    raw: Option<&RawIntOrText>,
    key: &str,
) -> Result<Option<Duration>, Reported> {
    const RULE: &str = "must be a whole number of minutes, from 1 to 525600 (365d)";
    let minutes = match raw {
        None => return Ok(None),
        Some(RawIntOrText::Int(minutes)) => u64::try_from(*minutes)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| c.report(key, RULE, Some(minutes.to_string())))?,
        Some(RawIntOrText::Text(text)) => {
            let parsed = c.parsed(Some(text), key, |text| {
                text.parse::<u64>()
                    .ok()
                    .filter(|m| *m >= 1 && text.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| RULE.to_owned())
            })?;
            let Some(minutes) = parsed else {
                return Ok(None);
            };
            minutes
        }
    };
    minutes
        .checked_mul(60)
        .map(Duration::from_secs)
        .filter(|interval| *interval <= MAX_DURATION)
        .map(Some)
        .ok_or_else(|| c.report(key, RULE, Some(minutes.to_string())))
}
