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
    /// Per-object change events: one envelope of a cursor walk, delivered in order
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

/// A pending event (`e/` records). Written in a binary layout (version byte 3, see
/// [`EventRecord::encode`]): an event record is written and removed once per delivered event, so
/// its size is most of what the store writes. Version 1, JSON, is still read.
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
    /// The notification (`n/`) whose body is this event's `raw`, when several events share
    /// it; none for catch-up events and when the body is kept in [`EventV1::raw`].
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
    /// The notification body itself, verbatim, when this event is its only reference: one
    /// record instead of an event and an `n/` record (dead letters: version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// A dead letter (`x/` records); version 2 when its event carries [`EventV1::raw`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum DeadRecord {
    #[serde(rename = "1")]
    V1(DeadV1),
    #[serde(rename = "2")]
    V2(DeadV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadV1 {
    pub event: EventV1,
    pub dead_at_ms: u64,
    pub reason: String,
    /// Reason [`QUARANTINED`]: the bytes the store held that could not be read (the event's
    /// record, or its notification's), base64, kept for inspection until the letter is purged
    /// or expires. Such a letter is never replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

/// The reason of a dead letter whose stored record could not be read (see
/// [`DeadV1::quarantined`]).
pub const QUARANTINED: &str = "corrupt";

/// The version byte of a binary event record (a JSON record starts with `{`).
const EVENT_V3: u8 = 3;

/// Flags of a binary event record, after its kind byte.
mod event_flags {
    pub const REFUSED_ONLY: u8 = 1;
    pub const NOTIFICATION: u8 = 1 << 1;
    pub const LAST_STATUS: u8 = 1 << 2;
    pub const LAST_ERROR: u8 = 1 << 3;
    pub const CHANGES: u8 = 1 << 4;
    pub const CHANGES_SEQ: u8 = 1 << 5;
    pub const RAW: u8 = 1 << 6;
}

impl EventRecord {
    pub fn decode(bytes: &[u8]) -> Result<EventV1, Error> {
        match bytes.first() {
            Some(&EVENT_V3) => decode_event_v3(&bytes[1..])
                .ok_or_else(|| Error::Corrupt("event record: truncated or malformed".into())),
            _ => match serde_json::from_slice(bytes) {
                Ok(EventRecord::V1(event)) => Ok(event),
                Err(err) => Err(Error::Corrupt(format!("event record: {err}"))),
            },
        }
    }

    /// Version byte 3, kind, flags (which optional fields follow), `date_ms`, `age_base_ms`,
    /// `due_ms`, `bytes` (u64 BE), `attempts` (u32 BE), `account`, then the optional fields in
    /// flag order: `notification`, `last_status` (u16 BE), `last_error`, `changes` (`events`,
    /// `raw`, `seq` u64 BE if flagged) and `raw`. Strings are a u32 BE length and UTF-8 bytes.
    pub fn encode(event: &EventV1) -> Vec<u8> {
        use event_flags::*;
        let mut flags = 0;
        let mut set = |flag: u8, on: bool| {
            if on {
                flags |= flag;
            }
        };
        set(REFUSED_ONLY, event.refused_only);
        set(NOTIFICATION, event.notification.is_some());
        set(LAST_STATUS, event.last_status.is_some());
        set(LAST_ERROR, event.last_error.is_some());
        set(CHANGES, event.changes.is_some());
        set(
            CHANGES_SEQ,
            event.changes.as_ref().is_some_and(|c| c.seq.is_some()),
        );
        set(RAW, event.raw.is_some());
        let mut out = Vec::with_capacity(64 + event.raw.as_ref().map_or(0, String::len));
        out.extend_from_slice(&[EVENT_V3, kind_byte(event.kind), flags]);
        for value in [event.date_ms, event.age_base_ms, event.due_ms, event.bytes] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        out.extend_from_slice(&event.attempts.to_be_bytes());
        put_str(&mut out, &event.account);
        if let Some(notification) = &event.notification {
            put_str(&mut out, notification);
        }
        if let Some(status) = event.last_status {
            out.extend_from_slice(&status.to_be_bytes());
        }
        if let Some(error) = &event.last_error {
            put_str(&mut out, error);
        }
        if let Some(changes) = &event.changes {
            put_str(&mut out, &changes.events);
            put_str(&mut out, &changes.raw);
            if let Some(seq) = changes.seq {
                out.extend_from_slice(&seq.to_be_bytes());
            }
        }
        if let Some(raw) = &event.raw {
            put_str(&mut out, raw);
        }
        out
    }
}

/// An event kind's byte in the binary records (events, history).
pub(super) fn kind_byte(kind: EventKind) -> u8 {
    match kind {
        EventKind::Notify => 0,
        EventKind::Unknown => 1,
        EventKind::Changes => 2,
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Records are far below 4 GiB (ingest bodies are capped well under that).
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The event kind of a byte written by [`kind_byte`].
pub(super) fn kind_of(byte: u8) -> Option<EventKind> {
    match byte {
        0 => Some(EventKind::Notify),
        1 => Some(EventKind::Unknown),
        2 => Some(EventKind::Changes),
        _ => None,
    }
}

/// Reads a binary record front to back; every read fails on a short record. What is left is
/// `.0`.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(super) fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// A string written with a u16 BE length.
    pub(super) fn short_str(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_event_v3(bytes: &[u8]) -> Option<EventV1> {
    use event_flags::*;
    let mut r = Reader(bytes);
    let kind = kind_of(r.u8()?)?;
    let flags = r.u8()?;
    let has = |flag: u8| flags & flag != 0;
    let (date_ms, age_base_ms, due_ms, bytes) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let attempts = r.u32()?;
    let account = r.string()?;
    let notification = if has(NOTIFICATION) {
        Some(r.string()?)
    } else {
        None
    };
    let last_status = if has(LAST_STATUS) {
        Some(r.u16()?)
    } else {
        None
    };
    let last_error = if has(LAST_ERROR) {
        Some(r.string()?)
    } else {
        None
    };
    let changes = if has(CHANGES) {
        Some(ChangesV1 {
            events: r.string()?,
            raw: r.string()?,
            seq: if has(CHANGES_SEQ) {
                Some(r.u64()?)
            } else {
                None
            },
        })
    } else {
        None
    };
    let raw = if has(RAW) { Some(r.string()?) } else { None };
    if !r.0.is_empty() {
        return None;
    }
    Some(EventV1 {
        account,
        kind,
        notification,
        date_ms,
        age_base_ms,
        attempts,
        due_ms,
        refused_only: has(REFUSED_ONLY),
        last_status,
        last_error,
        bytes,
        changes,
        raw,
    })
}

impl DeadRecord {
    pub fn decode(bytes: &[u8]) -> Result<DeadV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(DeadRecord::V1(dead) | DeadRecord::V2(dead)) => Ok(dead),
            Err(err) => Err(Error::Corrupt(format!("dead-letter record: {err}"))),
        }
    }

    pub fn encode(dead: &DeadV1) -> Vec<u8> {
        let record = if dead.event.raw.is_some() {
            DeadRecord::V2(dead.clone())
        } else {
            DeadRecord::V1(dead.clone())
        };
        serde_json::to_vec(&record).unwrap_or_default()
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
    /// Bytes (keys and values) of the instance's records that are neither events nor dead
    /// letters: seen accounts, walk markers, cursors, object maps, change queues.
    pub other_bytes: u64,
    /// Delivered events kept in the history (`h/`), and the bytes they are charged
    /// ([`super::history::charged_bytes`]).
    pub history_events: u64,
    pub history_bytes: u64,
}

impl Counters {
    /// Version 3: the four event and dead-letter figures, `other_bytes`, then the history's
    /// events and bytes. Version 2 lacks the last two (a store before the history: read as 0),
    /// version 1 also `other_bytes`; [`Counters::decode`] reads it as 0, and the open of such
    /// a store counts those records once.
    ///
    /// Without a history the record stays version 2, which a build from before the history
    /// still reads (a rollback).
    pub fn encode(&self) -> Vec<u8> {
        let with_history = self.history_events != 0 || self.history_bytes != 0;
        let mut out = Vec::with_capacity(57);
        out.push(if with_history { 3 } else { 2 });
        let fields = [
            self.pending_events,
            self.pending_bytes,
            self.dead_events,
            self.dead_bytes,
            self.other_bytes,
            self.history_events,
            self.history_bytes,
        ];
        let count = if with_history { 7 } else { 5 };
        for value in &fields[..count] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let fields = match (bytes.first(), bytes.len()) {
            (Some(1), 33) => 4,
            (Some(2), 41) => 5,
            (Some(3), 57) => 7,
            _ => return Err(Error::Corrupt("counters record".into())),
        };
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
            other_bytes: if fields >= 5 { field(4) } else { 0 },
            history_events: if fields == 7 { field(5) } else { 0 },
            history_bytes: if fields == 7 { field(6) } else { 0 },
        })
    }

    /// What the instance takes of `storage.max_bytes`.
    pub fn total_bytes(&self) -> u64 {
        self.pending_bytes
            .saturating_add(self.dead_bytes)
            .saturating_add(self.other_bytes)
            .saturating_add(self.history_bytes)
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
            raw: None,
        };
        let bytes = EventRecord::encode(&event);
        assert_eq!(bytes[0], 3);
        assert_eq!(EventRecord::decode(&bytes).ok(), Some(event.clone()));
        // A record written by version 1 (JSON) is still read.
        let json = serde_json::to_vec(&EventRecord::V1(event.clone())).unwrap_or_default();
        assert!(json.starts_with(br#"{"v":"1""#));
        assert_eq!(EventRecord::decode(&json).ok(), Some(event.clone()));
        let inline = EventV1 {
            notification: None,
            raw: Some("{\"list_folder\": {}}".into()),
            changes: Some(ChangesV1 {
                events: "[]".into(),
                raw: "{}".into(),
                seq: Some(9),
            }),
            ..event
        };
        assert_eq!(
            EventRecord::decode(&EventRecord::encode(&inline)).ok(),
            Some(inline)
        );
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
            other_bytes: 5,
            history_events: 6,
            history_bytes: 7,
        };
        assert_eq!(Counters::decode(&counters.encode()).ok(), Some(counters));
        // A version 1 record (before `other_bytes`) still reads, with 0 there.
        let mut v1 = vec![1u8];
        for value in [1u64, 2, 3, 4] {
            v1.extend_from_slice(&value.to_be_bytes());
        }
        assert_eq!(
            Counters::decode(&v1).ok(),
            Some(Counters {
                other_bytes: 0,
                history_events: 0,
                history_bytes: 0,
                ..counters
            })
        );
        assert!(EventRecord::decode(b"{\"v\":\"9\"}").is_err());
    }
}
