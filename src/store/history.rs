//! The records of what happened to an event: its attempts while it waits or lies dead
//! (`y/<instance>\0<id>`), and, once delivered, its history record with the envelope exactly
//! as sent.
//!
//! **Pages.** sled pays per key written (see [`super::run`]), so the history keeps delivered
//! events in pages, `h/<instance>\0<key id>`, in the layout of runs: history records as
//! members, in id order. Pages are disjoint id intervals, each keyed at or below its first
//! member, so the one page that may hold an event is the one with the greatest key at or before
//! its id. A delivered event joins that page when its id falls inside the page's interval, or
//! when the page was written in the same group commit (extending its interval cannot cover
//! another page's key, as that page has the greatest key below the id); otherwise it starts a
//! page of its own. Deliveries come in about the order events were accepted, so a group commit
//! usually writes one page per instance for all it delivered. A page stops growing at
//! [`MAX_PAGE_BYTES`]; an event that falls inside a full page splits it at its id. A page is
//! stored compressed ([`seal_page`]): its envelopes repeat each other, so it takes several
//! times less on disk, in the journal and in sled's rewrites of its leaf.
//!
//! **Account markers.** `g/<instance>\0<account>\0<second>` (empty) says that the history may
//! hold events of that account accepted in that second ([`marker_second`]); a page by account
//! reads only the pages of the marked seconds. A marker is written, with its twin by second
//! (`f/<instance>\0<second><account>`), when the first such event is kept: one pair per
//! account and second however many events it has. When the oldest pages go (evicted or
//! expired), the markers of every second before the first event left go with them, found in
//! second order by their twins. One left behind by a replay only costs a look until then.
//!
//! Both kinds of record are binary, with a version byte first; decoding never panics (a short
//! or malformed record is [`Error::Corrupt`]).

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

/// A page of the history takes no more members once this large. sled rewrites a leaf node
/// whole (up to 17 keys) every few changes, and writes a node larger than a quarter of its
/// 512 KiB segment as a separate blob file: leaves of pages this size stay far below that.
pub const MAX_PAGE_BYTES: usize = 4 * 1024;

/// A page's stored value: this byte, the page's length (u32 BE), then the page (a run of history
/// records) as one LZ4 block. A page without it is the run itself (written in this batch).
const PAGE_LZ4: u8 = b'L';
/// A sealed page that says it opens to more than this is damaged (pages stop growing at
/// [`MAX_PAGE_BYTES`]; a single record can pass that, not by this much).
const MAX_OPEN_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// The value a page is stored as: compressed.
pub fn seal_page(page: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(page);
    let mut out = Vec::with_capacity(5 + compressed.len());
    out.push(PAGE_LZ4);
    // Pages are far below 4 GiB (MAX_PAGE_BYTES and one record).
    out.extend_from_slice(&(page.len() as u32).to_be_bytes());
    out.extend_from_slice(&compressed);
    out
}

/// Whether a page's value is sealed (compressed).
pub fn is_sealed(value: &[u8]) -> bool {
    value.first() == Some(&PAGE_LZ4)
}

/// The page (a run of history records) a stored value holds; a value that is not sealed is
/// the page itself.
pub fn open_page(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
    let corrupt = || Error::Corrupt("history page: malformed".into());
    let Some((&PAGE_LZ4, rest)) = value.split_first() else {
        return Ok(std::borrow::Cow::Borrowed(value));
    };
    let len: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_OPEN_PAGE_BYTES {
        return Err(corrupt());
    }
    let page = lz4_flex::block::decompress(&rest[4..], len).map_err(|_| corrupt())?;
    if page.len() != len {
        return Err(corrupt());
    }
    Ok(std::borrow::Cow::Owned(page))
}

/// Bytes each kept event is charged beyond its member of a page: a share of the page's key and
/// of its account's marker.
const SHARED_BYTES_CHARGED: usize = 48;

/// Bytes a history record is charged against `history_max_bytes` and `storage.max_bytes`: its
/// member of a page (id, length, record) and a share of the keys around it.
pub fn charged_bytes(record_len: usize) -> u64 {
    (super::run::MEMBER_BYTES + record_len + SHARED_BYTES_CHARGED) as u64
}

/// The second an account marker stands for: the start of the second `id` was accepted in.
pub fn marker_second(id: Ulid) -> Ulid {
    let ms = id.timestamp_ms();
    Ulid::from_parts(ms - ms % 1000, 0)
}

/// The account marker of the second `id` was accepted in.
pub fn marker(instance: &str, account: &str, id: Ulid) -> Vec<u8> {
    keys::history_by_account(instance, account, marker_second(id))
}

/// The marker's twin, by second.
pub fn marker_by_second(instance: &str, account: &str, id: Ulid) -> Vec<u8> {
    keys::history_by_second(instance, marker_second(id), account)
}

/// The account of a history record, read without decoding the rest.
pub fn account_of(record: &[u8]) -> Option<&str> {
    let mut r = Reader(record);
    if r.u8()? != HISTORY_V1 {
        return None;
    }
    r.u8()?;
    r.u64()?;
    r.u64()?;
    let len = usize::from(r.u16()?);
    std::str::from_utf8(r.0.get(..len)?).ok()
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
        assert_eq!(account_of(&bytes), Some("dbid:a"));
        assert_eq!(HistoryV1::decode(&bytes).ok(), Some(history));
        let header = 1 + 1 + 8 + 8 + 2 + 6 + 1;
        for cut in 0..header {
            assert!(HistoryV1::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(HistoryV1::decode(b"\x09").is_err());
        assert_eq!(account_of(&bytes[..header - 4]), None);
    }

    #[test]
    fn pages_are_sealed_and_opened_and_damage_is_an_error() {
        let mut page = Vec::new();
        for n in 0..8u128 {
            let envelope = format!(r#"{{"message":{{"eventId":"{n}","raw":{{"delta":[1]}}}}}}"#);
            super::super::run::append(&mut page, Ulid(n), envelope.as_bytes());
        }
        let sealed = seal_page(&page);
        assert!(
            sealed.len() < page.len() / 2,
            "{} of {}",
            sealed.len(),
            page.len()
        );
        assert_eq!(open_page(&sealed).ok().as_deref(), Some(&page[..]));
        assert_eq!(
            open_page(&page).ok().as_deref(),
            Some(&page[..]),
            "a raw page"
        );
        for cut in 1..sealed.len() {
            assert!(open_page(&sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = sealed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            open_page(&huge).is_err(),
            "a length past the bound is not allocated"
        );
        let mut flipped = sealed;
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let _ = open_page(&flipped);
    }

    #[test]
    fn markers_stand_for_the_second_of_acceptance() {
        let early = Ulid::from_parts(5_000, 1);
        let late = Ulid::from_parts(5_999, u128::MAX >> 48);
        assert_eq!(marker_second(early), marker_second(late));
        assert_eq!(marker_second(early), Ulid::from_parts(5_000, 0));
        assert_ne!(
            marker_second(Ulid::from_parts(6_000, 0)),
            marker_second(late)
        );
        assert!(marker("acme", "dbid:a", early).starts_with(b"g/acme\0dbid:a\0"));
    }
}
