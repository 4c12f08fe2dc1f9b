//! What an alert says: its one-line summary and its details, and the body each format sends.

use serde_json::{Value, json};

use super::Alert;
use crate::config::AlertFormat;
use crate::store::{NewAlert, QueuedAlert};
use crate::time;

/// The alert as the queue keeps it: type, instance, time, summary and details.
pub fn new_alert(alert: &Alert, at_ms: u64) -> NewAlert {
    NewAlert {
        kind: alert.kind().name().to_owned(),
        instance: alert.instance().map(str::to_owned),
        at_ms,
        summary: summary(alert),
        detail: detail(alert).to_string(),
    }
}

/// One readable line, starting with `hookrelay:`.
pub fn summary(alert: &Alert) -> String {
    match alert {
        Alert::DeadLetter {
            instance,
            count,
            last_status,
            last_error,
            reason,
            ..
        } => {
            let events = if *count == 1 { "event" } else { "events" };
            let last = last_cause(*last_status, last_error.as_deref(), reason);
            format!("hookrelay: {count} {events} of {instance} dead-lettered (last: {last})")
        }
        Alert::Outage {
            instance,
            since_ms,
            last_error,
        } => {
            let error = last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            format!(
                "hookrelay: {instance} is in an outage: no delivery succeeded since {}{error}",
                time::rfc3339(*since_ms)
            )
        }
        Alert::Recovered {
            instance, since_ms, ..
        } => format!(
            "hookrelay: {instance} recovered: deliveries succeed again after an outage since {}",
            time::rfc3339(*since_ms)
        ),
        Alert::NeedsAuthorize { instance } => format!(
            "hookrelay: {instance} needs `hookrelay authorize`: Dropbox refused its refresh token, so its changes are not read"
        ),
        Alert::StoreFull { bytes, max_bytes } => format!(
            "hookrelay: the store is full ({bytes} of {max_bytes} bytes, storage.max_bytes): Dropbox notifications are refused with 503 until it shrinks"
        ),
    }
}

/// What the last dead letter died of, in words: its HTTP status, else its error, else why.
fn last_cause(status: Option<u16>, error: Option<&str>, reason: &str) -> String {
    match (status, error) {
        (Some(status), _) => {
            let text = reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason());
            match text {
                Some(text) => format!("HTTP {status} {text}"),
                None => format!("HTTP {status}"),
            }
        }
        (None, Some(error)) if !error.is_empty() => error.to_owned(),
        _ => reason.to_owned(),
    }
}

/// The type's details, a JSON object.
pub fn detail(alert: &Alert) -> Value {
    match alert {
        Alert::DeadLetter {
            count,
            last_event,
            account,
            last_status,
            last_error,
            reason,
            ..
        } => json!({
            "count": count,
            "last_event_id": last_event,
            "account": account,
            "last_status": last_status,
            "last_error": last_error,
            "reason": reason,
        }),
        Alert::Outage {
            since_ms,
            last_error,
            ..
        }
        | Alert::Recovered {
            since_ms,
            last_error,
            ..
        } => json!({
            "since": time::rfc3339(*since_ms),
            "last_error": last_error,
        }),
        Alert::NeedsAuthorize { .. } => json!({}),
        Alert::StoreFull { bytes, max_bytes } => json!({
            "bytes": bytes,
            "max_bytes": max_bytes,
        }),
    }
}

/// The body of a queued alert in `format`.
pub fn body(queued: &QueuedAlert, format: AlertFormat) -> Vec<u8> {
    let alert = &queued.alert;
    let value = match format {
        AlertFormat::Slack => json!({ "text": alert.summary }),
        AlertFormat::Json => {
            let detail: Value = serde_json::from_str(&alert.detail).unwrap_or_else(|_| json!({}));
            json!({
                "alert": {
                    "id": queued.id.to_string(),
                    "type": alert.kind,
                    "instance": alert.instance,
                    "at": time::rfc3339(alert.at_ms),
                    "summary": alert.summary,
                    "detail": detail,
                }
            })
        }
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::alerts::AlertV1;

    fn dead(count: u64, status: Option<u16>) -> Alert {
        Alert::DeadLetter {
            instance: "acme-dropbox".into(),
            count,
            last_event: "01J".into(),
            account: "dbid:a".into(),
            last_status: status,
            last_error: Some("callback answered 500".into()),
            reason: "max_attempts reached".into(),
        }
    }

    #[test]
    fn a_dead_letter_summary_carries_the_count_and_the_last_cause() {
        assert_eq!(
            summary(&dead(3, Some(500))),
            "hookrelay: 3 events of acme-dropbox dead-lettered (last: HTTP 500 Internal Server Error)"
        );
        assert_eq!(
            summary(&dead(1, None)),
            "hookrelay: 1 event of acme-dropbox dead-lettered (last: callback answered 500)"
        );
    }

    #[test]
    fn the_json_body_has_the_alert_object_and_slack_only_the_text() {
        let alert = dead(2, Some(410));
        let new = new_alert(&alert, 1_700_000_000_000);
        let queued = QueuedAlert {
            id: ulid::Ulid::nil(),
            alert: AlertV1 {
                kind: new.kind,
                instance: new.instance,
                at_ms: new.at_ms,
                summary: new.summary.clone(),
                detail: new.detail,
                attempts: 0,
                due_ms: 0,
                last_error: None,
            },
        };
        let json: Value = serde_json::from_slice(&body(&queued, AlertFormat::Json))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["alert"]["type"], "dead_letter");
        assert_eq!(json["alert"]["instance"], "acme-dropbox");
        assert_eq!(json["alert"]["at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["alert"]["detail"]["count"], 2);
        assert_eq!(json["alert"]["detail"]["last_status"], 410);
        let slack: Value = serde_json::from_slice(&body(&queued, AlertFormat::Slack))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slack, json!({ "text": new.summary }));
    }
}
