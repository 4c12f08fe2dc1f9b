//! Key encoding of the one sled tree the store uses. Every key starts with a one-byte family
//! and a `/`; instance names (validated to `[A-Za-z0-9._-]`) are followed by a NUL, so one
//! instance's keys form a contiguous, ordered range. Numbers are big-endian so that byte order
//! is numeric order.

use ulid::Ulid;

/// `m/<name>`: store metadata (schema version, clean-stop marker, heartbeat).
pub const META: &[u8] = b"m/";
/// `n/<notification id>`: a Dropbox notification's raw body, shared by its events.
pub const NOTIFICATION: &[u8] = b"n/";
/// `r/<instance>\0<event id>`: a pending event that is due now, in arrival order (ULIDs sort by
/// creation time): a new event, a catch-up event, a replayed dead letter, a change envelope at
/// its queue's head. It has no due-index entry: one key per event on the common path.
pub const READY: &[u8] = b"r/";
/// `z/<instance>\0<first event id>`: a run ([`super::run`]): the events due now that one group
/// commit created for the instance, in one record. Last in key order on purpose: new runs are
/// the tree's busiest leaves, and no other key written at every commit (the `c/` counters) may
/// share them, or sled rewrites those leaves, runs and all, for that key's changes too (about
/// 40 % more bytes written per event with `b/`, measured).
pub const RUN: &[u8] = b"z/";
/// `e/<instance>\0<event id>`: a pending event that waits: for a retry's due time (with its
/// `d/` entry), or behind its queue's head (a change envelope, no `d/` entry).
pub const EVENT: &[u8] = b"e/";
/// `d/<instance>\0<due ms><event id>`: the due-time index of the waiting (`e/`) events.
pub const DUE: &[u8] = b"d/";
/// `p/<instance>\0<account>`: the event a notification for this pair may merge into.
pub const PAIR: &[u8] = b"p/";
/// `x/<instance>\0<event id>`: a dead letter.
pub const DEAD: &[u8] = b"x/";
/// `t/<dead at ms><instance>\0<event id>`: dead letters by age, for retention.
pub const DEAD_BY_TIME: &[u8] = b"t/";
/// `c/<instance>`: counters of pending and dead events and bytes.
pub const COUNTERS: &[u8] = b"c/";
/// `s/<instance>\0<account>`: pairs seen before, for catch-up after an outage.
pub const SEEN: &[u8] = b"s/";

/// `w/<instance>\0<account>`: a walk of the pair's cursor is owed (change events); the value
/// is a token that changes with every new request, so a walk clears only what it covered.
pub const WALK: &[u8] = b"w/";
/// `k/<instance>\0<account>`: the pair's Dropbox `list_folder` cursor.
pub const CURSOR: &[u8] = b"k/";
/// `o/<instance>\0<account>\0i<id>` and `…\0p<path_lower>`: the object maps of change events.
pub const OBJECT: &[u8] = b"o/";
/// `q/<instance>\0<account>\0<seq u64>`: the pair's FIFO of change envelopes (value: event
/// id); `q/<instance>\0<account>` holds the next seq.
pub const QUEUE: &[u8] = b"q/";
/// `a/<instance>`: the change-events credentials `authorize` obtained
/// ([`super::record::AuthorizationV1`]).
pub const AUTHORIZATION: &[u8] = b"a/";
/// `u/<instance>`: the instance's outage state ([`super::outage::OutageV1`]).
pub const OUTAGE: &[u8] = b"u/";

/// `y/<instance>\0<event id>`: the last attempts of a pending event or a dead letter
/// ([`super::history`]); absent before the first failed attempt.
pub const ATTEMPTS: &[u8] = b"y/";
/// `h/<instance>\0<event id>`: a page of delivered events kept for `events`, keyed at or
/// below its first ([`super::history`]).
pub const HISTORY: &[u8] = b"h/";
/// `g/<instance>\0<account>\0<second>`: the history holds events of the account accepted in
/// that second (empty values; [`super::history`]).
pub const HISTORY_BY_ACCOUNT: &[u8] = b"g/";
/// `f/<instance>\0<second><account>`: the same markers by second, for removing those of the
/// seconds the history no longer holds (empty values).
pub const HISTORY_BY_SECOND: &[u8] = b"f/";

pub fn attempts(instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(ATTEMPTS, instance);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn history(instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(HISTORY, instance);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The prefix of one account's history markers: `g/<instance>\0<account>\0`.
pub fn history_account_prefix(instance: &str, account: &str) -> Vec<u8> {
    let mut key = pair(HISTORY_BY_ACCOUNT, instance, account);
    key.push(0);
    key
}

pub fn history_by_account(instance: &str, account: &str, id: Ulid) -> Vec<u8> {
    let mut key = history_account_prefix(instance, account);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn history_by_second(instance: &str, second: Ulid, account: &str) -> Vec<u8> {
    let mut key = history_second_prefix(instance, second);
    key.extend_from_slice(account.as_bytes());
    key
}

/// `f/<instance>\0<second>`: where the markers of that second start.
pub fn history_second_prefix(instance: &str, second: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(HISTORY_BY_SECOND, instance);
    key.extend_from_slice(&second.to_bytes());
    key
}

/// The second and account of an `f/` key.
pub fn parse_history_by_second<'k>(instance: &str, key: &'k [u8]) -> Option<(Ulid, &'k str)> {
    let rest = key.strip_prefix(instance_prefix(HISTORY_BY_SECOND, instance).as_slice())?;
    let second: [u8; 16] = rest.get(..16)?.try_into().ok()?;
    let account = std::str::from_utf8(&rest[16..]).ok()?;
    Some((Ulid::from_bytes(second), account))
}

pub fn meta(name: &str) -> Vec<u8> {
    [META, name.as_bytes()].concat()
}

pub fn authorization(instance: &str) -> Vec<u8> {
    [AUTHORIZATION, instance.as_bytes()].concat()
}

pub fn outage(instance: &str) -> Vec<u8> {
    [OUTAGE, instance.as_bytes()].concat()
}

pub fn notification(id: Ulid) -> Vec<u8> {
    [NOTIFICATION, &id.to_bytes()[..]].concat()
}

/// The first key after every key of `family` (`z/` → `z0`).
pub fn family_end(family: &[u8]) -> Vec<u8> {
    let mut end = family.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The prefix of one instance's keys in a family: `<family><instance>\0`.
pub fn instance_prefix(family: &[u8], instance: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(family.len() + instance.len() + 1);
    key.extend_from_slice(family);
    key.extend_from_slice(instance.as_bytes());
    key.push(0);
    key
}

pub fn ready(instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(READY, instance);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn run(instance: &str, first: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(RUN, instance);
    key.extend_from_slice(&first.to_bytes());
    key
}

pub fn event(instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(EVENT, instance);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn due(instance: &str, due_ms: u64, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(DUE, instance);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The first due-index key of `instance` at or after `due_ms`.
pub fn due_from(instance: &str, due_ms: u64) -> Vec<u8> {
    let mut key = instance_prefix(DUE, instance);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key
}

/// Splits a due-index key of a known instance prefix into (due ms, event id).
pub fn parse_due(prefix_len: usize, key: &[u8]) -> Option<(u64, Ulid)> {
    let rest = key.get(prefix_len..)?;
    let due: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let id: [u8; 16] = rest.get(8..24)?.try_into().ok()?;
    Some((u64::from_be_bytes(due), Ulid::from_bytes(id)))
}

pub fn pair(family: &[u8], instance: &str, account: &str) -> Vec<u8> {
    let mut key = instance_prefix(family, instance);
    key.extend_from_slice(account.as_bytes());
    key
}

/// The prefix of one pair's queue entries: `q/<instance>\0<account>\0`.
pub fn queue_prefix(instance: &str, account: &str) -> Vec<u8> {
    let mut key = pair(QUEUE, instance, account);
    key.push(0);
    key
}

pub fn queue(instance: &str, account: &str, seq: u64) -> Vec<u8> {
    let mut key = queue_prefix(instance, account);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `o/<instance>\0<account>\0i<id>`.
pub fn object_id(instance: &str, account: &str, id: &str) -> Vec<u8> {
    let mut key = pair(OBJECT, instance, account);
    key.push(0);
    key.push(b'i');
    key.extend_from_slice(id.as_bytes());
    key
}

/// `o/<instance>\0<account>\0p<path_lower>`.
pub fn object_path(instance: &str, account: &str, path_lower: &str) -> Vec<u8> {
    let mut key = pair(OBJECT, instance, account);
    key.push(0);
    key.push(b'p');
    key.extend_from_slice(path_lower.as_bytes());
    key
}

/// Splits a `<family><instance>\0<account>` key.
pub fn parse_pair(family: &[u8], key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(family)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let instance = std::str::from_utf8(&rest[..nul]).ok()?.to_owned();
    let account = std::str::from_utf8(&rest[nul + 1..]).ok()?.to_owned();
    Some((instance, account))
}

pub fn dead(instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = instance_prefix(DEAD, instance);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn dead_by_time(dead_at_ms: u64, instance: &str, id: Ulid) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 8 + instance.len() + 17);
    key.extend_from_slice(DEAD_BY_TIME);
    key.extend_from_slice(&dead_at_ms.to_be_bytes());
    key.extend_from_slice(instance.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// Splits a `t/` key into (dead at ms, instance, event id).
pub fn parse_dead_by_time(key: &[u8]) -> Option<(u64, String, Ulid)> {
    let rest = key.strip_prefix(DEAD_BY_TIME)?;
    let at: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let rest = &rest[8..];
    let nul = rest.iter().position(|b| *b == 0)?;
    let instance = std::str::from_utf8(&rest[..nul]).ok()?.to_owned();
    let id: [u8; 16] = rest.get(nul + 1..nul + 17)?.try_into().ok()?;
    Some((u64::from_be_bytes(at), instance, Ulid::from_bytes(id)))
}

pub fn counters(instance: &str) -> Vec<u8> {
    [COUNTERS, instance.as_bytes()].concat()
}

/// The event id at the end of an `r/`, `e/` or `x/` key (a `z/` key: its run's first id).
pub fn trailing_id(key: &[u8]) -> Option<Ulid> {
    let start = key.len().checked_sub(16)?;
    let id: [u8; 16] = key[start..].try_into().ok()?;
    Some(Ulid::from_bytes(id))
}

/// The instance name inside an `<family><instance>\0…` key.
pub fn instance_of(family: &[u8], key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(family)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&rest[..nul]).ok().map(str::to_owned)
}

/// The families of an instance's records that are neither events nor dead letters, counted as
/// its `other_bytes` against `storage.max_bytes`: seen accounts, walk markers, cursors, object
/// maps, change queues, the attempts kept of waiting events and dead letters, and dead letters
/// not alerted yet.
pub const OTHER_FAMILIES: [&[u8]; 7] = [
    SEEN,
    WALK,
    CURSOR,
    OBJECT,
    QUEUE,
    ATTEMPTS,
    super::alerts::TALLIES,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time_within_an_instance() {
        let a = due("acme", 5, Ulid::from_parts(9, 9));
        let b = due("acme", 6, Ulid::from_parts(1, 1));
        let other = due("acme2", 1, Ulid::from_parts(1, 1));
        assert!(a < b);
        assert!(!other.starts_with(&instance_prefix(DUE, "acme")));
        let prefix = instance_prefix(DUE, "acme").len();
        assert_eq!(parse_due(prefix, &b), Some((6, Ulid::from_parts(1, 1))));
    }

    #[test]
    fn history_markers_by_second_round_trip() {
        let second = Ulid::from_parts(5_000, 0);
        let key = history_by_second("acme", second, "dbid:a");
        assert_eq!(
            parse_history_by_second("acme", &key),
            Some((second, "dbid:a"))
        );
        assert_eq!(parse_history_by_second("acm", &key), None);
        assert!(key < history_second_prefix("acme", Ulid::from_parts(5_001, 0)));
    }

    #[test]
    fn dead_by_time_round_trips() {
        let id = Ulid::from_parts(42, 7);
        let key = dead_by_time(1234, "acme", id);
        assert_eq!(parse_dead_by_time(&key), Some((1234, "acme".into(), id)));
        assert_eq!(instance_of(DEAD, &dead("acme", id)), Some("acme".into()));
        assert_eq!(trailing_id(&dead("acme", id)), Some(id));
    }
}
