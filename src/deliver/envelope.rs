//! The consumer-facing body (docs/protocol.md): a Cloud Elements event notification, one instance
//! and one stored event per body. Built once per attempt; the exact bytes built are the bytes
//! signed.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Instance;
use crate::store::{Event, EventKind};
use crate::time::rfc3339;

#[derive(Serialize)]
struct Envelope<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    element_key: &'a str,
    event_id: String,
    instance_id: u64,
    instance_name: &'a str,
    instance_tags: &'a [String],
    account_id: &'a str,
    raw: &'a RawValue,
    events: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectEvent<'a> {
    element_key: &'a str,
    event_type: &'static str,
    object_type: &'static str,
    object_id: &'a str,
    date: String,
}

/// The `raw` of a catch-up event, which has no Dropbox notification behind it.
const CATCH_UP_RAW: &str = r#"{"hookrelay": {"reason": "changes may have been missed"}}"#;

/// Serialises the envelope of `event` for `instance`.
///
/// Notify and catch-up events carry one account-level event; a change envelope carries the
/// per-object events and the Dropbox entries (`{"entries": [...]}`) stored with it.
pub fn build(event: &Event, instance: &Instance) -> Vec<u8> {
    let raw_text = match (&event.raw, event.kind) {
        (Some(raw), EventKind::Notify | EventKind::Changes) => {
            std::str::from_utf8(raw).unwrap_or("null")
        }
        _ => CATCH_UP_RAW,
    };
    let raw: Box<RawValue> =
        RawValue::from_string(raw_text.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned());
    let events_text = match (&event.objects, event.kind) {
        (Some(objects), EventKind::Changes) => {
            std::str::from_utf8(objects).unwrap_or("[]").to_owned()
        }
        _ => {
            let event_type = match event.kind {
                EventKind::Notify | EventKind::Changes => "UPDATED",
                EventKind::Unknown => "UNKNOWN",
            };
            let one = [ObjectEvent {
                element_key: &instance.element,
                event_type,
                object_type: "account",
                object_id: &event.account,
                date: rfc3339(event.date_ms),
            }];
            serde_json::to_string(&one).unwrap_or_else(|_| "[]".into())
        }
    };
    let events: Box<RawValue> =
        RawValue::from_string(events_text).unwrap_or_else(|_| RawValue::NULL.to_owned());
    let envelope = Envelope {
        message: Message {
            element_key: &instance.element,
            event_id: event.id.to_string(),
            instance_id: instance.id,
            instance_name: &instance.name,
            instance_tags: &instance.tags,
            account_id: &event.account,
            raw: &raw,
            events: &events,
        },
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ulid::Ulid;

    fn instance() -> Instance {
        let text = include_str!("../../config.example.toml");
        let ctx = crate::config::LoadContext {
            file: "/etc/hookrelay/config.toml".into(),
            base_dir: "/etc/hookrelay".into(),
            credentials_dir: None,
        };
        match crate::config::Config::from_toml_str(text, &ctx) {
            Ok(loaded) => loaded.config.instances[0].clone(),
            Err(e) => panic!("example config: {e}"),
        }
    }

    #[test]
    fn notify_envelope_embeds_the_raw_body_verbatim() {
        let raw = r#"{"list_folder": {"accounts": ["dbid:a"]}, "delta": {"users": [1]}}"#;
        let event = Event {
            id: Ulid::from_parts(1_764_349_200_000, 1),
            instance: "acme-dropbox".into(),
            account: "dbid:a".into(),
            kind: EventKind::Notify,
            raw: Some(Bytes::from(raw)),
            objects: None,
            date_ms: 1_764_349_200_000,
            age_base_ms: 0,
            attempts: 0,
            due_ms: 0,
            refused_only: true,
        };
        let instance = instance();
        let body = String::from_utf8(build(&event, &instance)).unwrap_or_default();
        assert!(body.contains(&format!(r#""raw":{raw}"#)), "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let message = &value["message"];
        assert_eq!(message["eventId"], event.id.to_string());
        assert_eq!(message["instanceId"], instance.id);
        assert_eq!(message["instanceName"], instance.name);
        assert_eq!(message["accountId"], "dbid:a");
        assert_eq!(message["events"][0]["eventType"], "UPDATED");
        assert_eq!(message["events"][0]["objectType"], "account");
        assert_eq!(message["events"][0]["date"], "2025-11-28T17:00:00Z");
    }

    #[test]
    fn changes_envelope_carries_the_stored_events_and_entries() {
        let raw =
            r#"{"entries":[{".tag":"file","id":"id:1","path_lower":"/a","path_display":"/A"}]}"#;
        let objects = r#"[{"elementKey":"dropbox","eventType":"CREATED","objectType":"file","objectId":"id:1","date":"2025-11-28T17:00:00Z","path":"/A"}]"#;
        let event = Event {
            id: Ulid::from_parts(1_764_349_200_000, 2),
            instance: "acme-dropbox".into(),
            account: "dbid:a".into(),
            kind: EventKind::Changes,
            raw: Some(Bytes::from(raw)),
            objects: Some(Bytes::from(objects)),
            date_ms: 1_764_349_200_000,
            age_base_ms: 0,
            attempts: 0,
            due_ms: 0,
            refused_only: true,
        };
        let body = String::from_utf8(build(&event, &instance())).unwrap_or_default();
        assert!(body.contains(&format!(r#""raw":{raw}"#)), "{body}");
        assert!(body.contains(&format!(r#""events":{objects}"#)), "{body}");
    }
}
