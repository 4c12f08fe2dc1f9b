//! The records of what happened to an event: its attempts while it waits or lies dead
//! (`y/<instance>\0<id>`), and, once delivered, its history record (`h/<instance>\0<id>`)
//! with the envelope exactly as sent, indexed by account (`g/<instance>\0<account>\0<id>`).
//!
//! Both records are binary, with a version byte first; decoding never panics (a short or
//! malformed record is [`Error::Corrupt`]).

use ulid::Ulid;

use super::Error;
use super::keys;
use super::record::{self, EventKind, Reader};

/// Attempts an event keeps: the last ones, oldest first.
pub const ATTEMPTS_KEPT: usize = 20;
/// An attempt's error text is cut to this many bytes (at a character boundary).
pub const ERROR_BYTES: usize = 200;

const ATTEMPTS_V1: u8 = 1;
const HISTORY_V1: u8 = 1;

/// One delivery attempt: when it started, how long it took, and what came back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// When the request started, Unix ms.
    pub at_ms: u64,
    /// How long it took until the answer (or the failure), in ms.
    pub duration_ms: u32,
    /// The HTTP status, when the consumer answered.
    pub status: Option<u16>,
    /// Why it failed, when it did without a 2xx (a transport error, or the status's meaning).
    pub error: Option<String>,
}

/// A delivered event as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryV1 {
    pub account: String,
    pub kind: EventKind,
    /// The envelope's `date` (the newest notification merged into the event).
    pub date_ms: u64,
    /// When the consumer's 2xx was committed.
    pub delivered_ms: u64,
    /// The last [`ATTEMPTS_KEPT`] attempts, the delivering one last.
    pub attempts: Vec<Attempt>,
    /// The envelope exactly as it was sent (and signed).
    pub envelope: Vec<u8>,
}

/// Bytes a history record is charged against `history_max_bytes` and `storage.max_bytes`:
/// its `h/` key and value and its `g/` index key.
pub fn charged_bytes(instance: &str, account: &str, id: Ulid, value_len: usize) -> u64 {
    let h = keys::history(instance, id).len();
    let g = keys::history_by_account(instance, account, id).len();
    (h + g + value_len) as u64
}

/// Appends `attempt` to `attempts`, keeping the last [`ATTEMPTS_KEPT`].
pub fn push_attempt(attempts: &mut Vec<Attempt>, mut attempt: Attempt) {
    if let Some(error) = attempt.error.as_mut()
        && error.len() > ERROR_BYTES
    {
        let mut cut = ERROR_BYTES;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    attempts.push(attempt);
    if attempts.len() > ATTEMPTS_KEPT {
        let extra = attempts.len() - ATTEMPTS_KEPT;
        attempts.drain(..extra);
    }
}

/// `y/` value: version byte, a count, then each attempt.
pub fn encode_attempts(attempts: &[Attempt]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + attempts.len() * 24);
    out.push(ATTEMPTS_V1);
    put_attempts(&mut out, attempts);
    out
}

pub fn decode_attempts(bytes: &[u8]) -> Result<Vec<Attempt>, Error> {
    let corrupt = || Error::Corrupt("attempts record: truncated or malformed".into());
    let mut r = Reader(bytes);
    if r.u8() != Some(ATTEMPTS_V1) {
        return Err(corrupt());
    }
    let attempts = read_attempts(&mut r).ok_or_else(corrupt)?;
    if !r.0.is_empty() {
        return Err(corrupt());
    }
    Ok(attempts)
}

/// Flags of an attempt, after its time and duration.
const HAS_STATUS: u8 = 1;
const HAS_ERROR: u8 = 1 << 1;

fn put_attempts(out: &mut Vec<u8>, attempts: &[Attempt]) {
    let kept = &attempts[attempts.len().saturating_sub(ATTEMPTS_KEPT)..];
    out.push(kept.len() as u8);
    for attempt in kept {
        out.extend_from_slice(&attempt.at_ms.to_be_bytes());
        out.extend_from_slice(&attempt.duration_ms.to_be_bytes());
        let flags = u8::from(attempt.status.is_some()) * HAS_STATUS
            + u8::from(attempt.error.is_some()) * HAS_ERROR;
        out.push(flags);
        if let Some(status) = attempt.status {
            out.extend_from_slice(&status.to_be_bytes());
        }
        if let Some(error) = &attempt.error {
            put_short_str(out, error);
        }
    }
}

fn read_attempts(r: &mut Reader<'_>) -> Option<Vec<Attempt>> {
    let count = r.u8()?;
    let mut attempts = Vec::with_capacity(usize::from(count).min(ATTEMPTS_KEPT));
    for _ in 0..count {
        let at_ms = r.u64()?;
        let duration_ms = r.u32()?;
        let flags = r.u8()?;
        let status = if flags & HAS_STATUS != 0 {
            Some(r.u16()?)
        } else {
            None
        };
        let error = if flags & HAS_ERROR != 0 {
            Some(r.short_str()?)
        } else {
            None
        };
        attempts.push(Attempt {
            at_ms,
            duration_ms,
            status,
            error,
        });
    }
    Some(attempts)
}

impl HistoryV1 {
    /// Version byte, kind, `date_ms`, `delivered_ms` (u64 BE), the account (u16 BE length and
    /// UTF-8), the attempts (as in `y/`), then the envelope to the end.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.account.len() + self.envelope.len());
        out.push(HISTORY_V1);
        out.push(record::kind_byte(self.kind));
        out.extend_from_slice(&self.date_ms.to_be_bytes());
        out.extend_from_slice(&self.delivered_ms.to_be_bytes());
        put_short_str(&mut out, &self.account);
        put_attempts(&mut out, &self.attempts);
        out.extend_from_slice(&self.envelope);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<HistoryV1, Error> {
        decode_history(bytes)
            .ok_or_else(|| Error::Corrupt("history record: truncated or malformed".into()))
    }
}

fn decode_history(bytes: &[u8]) -> Option<HistoryV1> {
    let mut r = Reader(bytes);
    if r.u8()? != HISTORY_V1 {
        return None;
    }
    let kind = record::kind_of(r.u8()?)?;
    let date_ms = r.u64()?;
    let delivered_ms = r.u64()?;
    let account = r.short_str()?;
    let attempts = read_attempts(&mut r)?;
    Some(HistoryV1 {
        account,
        kind,
        date_ms,
        delivered_ms,
        attempts,
        envelope: r.0.to_vec(),
    })
}

/// A string of at most 64 KiB: a u16 BE length and UTF-8 bytes (cut at a character
/// boundary if longer; accounts and cut error texts are far shorter).
fn put_short_str(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u64) -> Attempt {
        Attempt {
            at_ms: n,
            duration_ms: 7,
            status: n.is_multiple_of(2).then_some(503),
            error: n.is_multiple_of(3).then(|| format!("error {n}")),
        }
    }

    #[test]
    fn attempts_keep_the_last_twenty_and_round_trip() {
        let mut attempts = Vec::new();
        for n in 0..25 {
            push_attempt(&mut attempts, attempt(n));
        }
        assert_eq!(attempts.len(), ATTEMPTS_KEPT);
        assert_eq!(attempts[0].at_ms, 5);
        let bytes = encode_attempts(&attempts);
        assert_eq!(decode_attempts(&bytes).ok(), Some(attempts));
        for cut in 0..bytes.len() {
            assert!(decode_attempts(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let mut attempts = Vec::new();
        let mut long = attempt(1);
        long.error = Some("é".repeat(ERROR_BYTES));
        push_attempt(&mut attempts, long);
        let error = attempts[0].error.clone().unwrap_or_default();
        assert!(error.len() <= ERROR_BYTES && !error.is_empty());
    }

    #[test]
    fn history_round_trips_and_short_records_are_errors() {
        let history = HistoryV1 {
            account: "dbid:a".into(),
            kind: EventKind::Changes,
            date_ms: 1,
            delivered_ms: 2,
            attempts: vec![attempt(3), attempt(4)],
            envelope: br#"{"message":{}}"#.to_vec(),
        };
        let bytes = history.encode();
        assert_eq!(HistoryV1::decode(&bytes).ok(), Some(history));
        let header = 1 + 1 + 8 + 8 + 2 + 6 + 1;
        for cut in 0..header {
            assert!(HistoryV1::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(HistoryV1::decode(b"\x09").is_err());
    }
}
