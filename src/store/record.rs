//! The only types the store serialises. They are compatibility contracts: every record carries
//! a version tag, and a new layout gets a new variant rather than a changed one.

use serde::{Deserialize, Serialize};

use super::Error;

/// What an event reports to the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// "This account changed" (notify mode): one `UPDATED` / `account` event.
    Notify,
    /// "Changes may have been missed" (catch-up after an outage): one `UNKNOWN` event.
    Unknown,
    /// Per-object change events (SPEC §8): one envelope of a cursor walk, delivered in order
    /// per (instance, account) through the `q/` queue; see [`ChangesV1`].
    Changes,
}

/// The stored body of a change-events envelope: the per-object events and the Dropbox entries
/// behind them, both as JSON text exactly as they go into the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesV1 {
    /// A JSON array of event objects (`elementKey`, `eventType`, `objectType`, `objectId`,
    /// `date`, `path`, `previousPath`?).
    pub events: String,
    /// The envelope's `raw`: `{"entries": [...]}`.
    pub raw: String,
    /// Position in the pair's FIFO queue (`q/<instance>\0<account>\0<seq>`); `None` once the
    /// event left that queue (a replayed dead letter).
    pub seq: Option<u64>,
}

/// What the store remembers of a Dropbox object (`o/` records), by id and by lower-case path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectV1 {
    pub id: String,
    pub path_lower: String,
    /// `path_display` as last seen (else `path_lower`).
    pub path: String,
    /// `file` or `folder`.
    pub object_type: String,
}

impl ObjectV1 {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("object record: {e}")))
    }
}

/// The credentials `hookrelay authorize` obtained for a change-events instance (`a/` records).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum AuthorizationRecord {
    #[serde(rename = "1")]
    V1(AuthorizationV1),
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationV1 {
    /// The Dropbox account the code was granted for.
    pub account: String,
    /// The long-lived refresh token (a secret: never in Debug or logs).
    pub refresh_token: String,
    pub authorized_ms: u64,
}

impl std::fmt::Debug for AuthorizationV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationV1")
            .field("account", &self.account)
            .field("refresh_token", &"***")
            .field("authorized_ms", &self.authorized_ms)
            .finish()
    }
}

impl AuthorizationRecord {
    pub fn decode(bytes: &[u8]) -> Result<AuthorizationV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(AuthorizationRecord::V1(authorization)) => Ok(authorization),
            Err(err) => Err(Error::Corrupt(format!("authorization record: {err}"))),
        }
    }

    pub fn encode(authorization: &AuthorizationV1) -> Vec<u8> {
        serde_json::to_vec(&AuthorizationRecord::V1(authorization.clone())).unwrap_or_default()
    }
}

/// A pending event (`e/` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum EventRecord {
    #[serde(rename = "1")]
    V1(EventV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventV1 {
    pub account: String,
    pub kind: EventKind,
    /// The notification (`n/`) whose body is this event's `raw`; none for catch-up events.
    pub notification: Option<String>,
    /// When the newest notification merged into this event was accepted (the envelope `date`).
    pub date_ms: u64,
    /// Where `max_age` counts from: acceptance, or the last `dead replay`.
    pub age_base_ms: u64,
    pub attempts: u32,
    pub due_ms: u64,
    /// Every attempt so far ended in a definite refusal (vacuously true before the first), so
    /// the consumer has certainly not taken this event. With a `p/` entry pointing at it (it
    /// waits in the store, not in flight), later notifications of the pair may merge into it.
    pub refused_only: bool,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Bytes this event accounts for against the quotas.
    pub bytes: u64,
    /// Change events only: the envelope's events and raw entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangesV1>,
}

/// A dead letter (`x/` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum DeadRecord {
    #[serde(rename = "1")]
    V1(DeadV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadV1 {
    pub event: EventV1,
    pub dead_at_ms: u64,
    pub reason: String,
}

impl EventRecord {
    pub fn decode(bytes: &[u8]) -> Result<EventV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(EventRecord::V1(event)) => Ok(event),
            Err(err) => Err(Error::Corrupt(format!("event record: {err}"))),
        }
    }

    pub fn encode(event: &EventV1) -> Vec<u8> {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec(&EventRecord::V1(event.clone())).unwrap_or_default()
    }
}

impl DeadRecord {
    pub fn decode(bytes: &[u8]) -> Result<DeadV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(DeadRecord::V1(dead)) => Ok(dead),
            Err(err) => Err(Error::Corrupt(format!("dead-letter record: {err}"))),
        }
    }

    pub fn encode(dead: &DeadV1) -> Vec<u8> {
        serde_json::to_vec(&DeadRecord::V1(dead.clone())).unwrap_or_default()
    }
}

/// A stored notification (`n/`): version byte, acceptance time, how many events and dead
/// letters refer to it, then the raw body exactly as Dropbox sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRecord {
    pub accepted_ms: u64,
    pub refs: u32,
    pub body: Vec<u8>,
}

const NOTIFICATION_V1: u8 = 1;
const NOTIFICATION_HEADER: usize = 1 + 8 + 4;

impl NotificationRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(NOTIFICATION_HEADER + self.body.len());
        out.push(NOTIFICATION_V1);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&self.refs.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let corrupt = || Error::Corrupt("notification record".into());
        if bytes.len() < NOTIFICATION_HEADER || bytes[0] != NOTIFICATION_V1 {
            return Err(corrupt());
        }
        let accepted: [u8; 8] = bytes[1..9].try_into().map_err(|_| corrupt())?;
        let refs: [u8; 4] = bytes[9..13].try_into().map_err(|_| corrupt())?;
        Ok(NotificationRecord {
            accepted_ms: u64::from_be_bytes(accepted),
            refs: u32::from_be_bytes(refs),
            body: bytes[NOTIFICATION_HEADER..].to_vec(),
        })
    }
}

/// Per-instance counters (`c/`), kept by the committer in the same batches as the events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub pending_events: u64,
    pub pending_bytes: u64,
    pub dead_events: u64,
    pub dead_bytes: u64,
}

impl Counters {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33);
        out.push(1);
        for value in [
            self.pending_events,
            self.pending_bytes,
            self.dead_events,
            self.dead_bytes,
        ] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 33 || bytes[0] != 1 {
            return Err(Error::Corrupt("counters record".into()));
        }
        let field = |i: usize| {
            let start = 1 + i * 8;
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[start..start + 8]);
            u64::from_be_bytes(word)
        };
        Ok(Counters {
            pending_events: field(0),
            pending_bytes: field(1),
            dead_events: field(2),
            dead_bytes: field(3),
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.pending_bytes.saturating_add(self.dead_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_carry_their_version() {
        let event = EventV1 {
            account: "dbid:x".into(),
            kind: EventKind::Notify,
            notification: Some("01J".into()),
            date_ms: 1,
            age_base_ms: 1,
            attempts: 2,
            due_ms: 3,
            refused_only: true,
            last_status: Some(500),
            last_error: None,
            bytes: 300,
            changes: None,
        };
        let bytes = EventRecord::encode(&event);
        assert!(bytes.starts_with(br#"{"v":"1""#));
        assert_eq!(EventRecord::decode(&bytes).ok(), Some(event));
        let notification = NotificationRecord {
            accepted_ms: 7,
            refs: 3,
            body: b"{}".to_vec(),
        };
        assert_eq!(
            NotificationRecord::decode(&notification.encode()).ok(),
            Some(notification)
        );
        let counters = Counters {
            pending_events: 1,
            pending_bytes: 2,
            dead_events: 3,
            dead_bytes: 4,
        };
        assert_eq!(Counters::decode(&counters.encode()).ok(), Some(counters));
        assert!(EventRecord::decode(b"{\"v\":\"9\"}").is_err());
    }
}
