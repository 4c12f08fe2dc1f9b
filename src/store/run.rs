//! Run records (`z/<instance>\0<first event id>`): the events one group commit created for an
//! instance, in one sled value.
//!
//! sled 0.34 pays per key: every key is a stream of tree-node rewrites, page metadata kept in
//! memory for as long as the key lives, and allocator work in `apply_batch`. A notification
//! burst of 30 events used to be 30 keys; as a run it is one. A run is written once, when its
//! batch commits, and rewritten without a member when that member leaves (delivered, retried,
//! dead-lettered, purged); the last member's departure removes it.
//!
//! **Finding a member.** The committer gives events strictly increasing ids, and a run holds only
//! ids it created in one batch, after every id of the instance's earlier runs; a run is keyed by
//! its first id, and members only ever leave. So the runs of an instance are disjoint id
//! intervals in key order, and the one run that may hold an id is the one with the greatest key
//! at or before it.
//!
//! Layout: version byte [`RUN_V1`], then per member its id (16 bytes), a u32 BE length and its
//! [`super::record::EventRecord`] bytes.
//!
//! The delivered history's pages ([`super::history`]) share this layout, with history records
//! as members, and the same rule for finding one: members in id order, pages disjoint id
//! intervals keyed at or below their first member.

use ulid::Ulid;

use super::Error;

const RUN_V1: u8 = 1;
const MEMBER_HEADER: usize = 16 + 4;

/// A run stops taking members at this size (well below sled's blob threshold, segment size / 4,
/// and small enough that rewriting it as members leave stays cheap).
pub const MAX_RUN_BYTES: usize = 16 * 1024;
/// An event record larger than this gets a record (`r/`) of its own rather than a run's slot.
pub const MAX_MEMBER_BYTES: usize = 4 * 1024;

/// Appends a member to a run's value (an empty value becomes a run).
pub fn append(run: &mut Vec<u8>, id: Ulid, record: &[u8]) {
    if run.is_empty() {
        run.push(RUN_V1);
    }
    run.extend_from_slice(&id.to_bytes());
    // Members are at most MAX_MEMBER_BYTES.
    run.extend_from_slice(&(record.len() as u32).to_be_bytes());
    run.extend_from_slice(record);
}

/// The members of a run, in id order: (id, event record bytes).
pub fn members(run: &[u8]) -> Members<'_> {
    match run.split_first() {
        Some((&RUN_V1, rest)) => Members {
            rest,
            broken: false,
        },
        _ => Members {
            rest: &[],
            broken: true,
        },
    }
}

/// The record of member `id`, if the run holds it.
pub fn find(run: &[u8], id: Ulid) -> Result<Option<&[u8]>, Error> {
    for member in members(run) {
        let (member_id, record) = member?;
        if member_id == id {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// The run with member `id`'s record replaced by `record` (`None`: removed). `None` when no
/// member is left.
pub fn replace(run: &[u8], id: Ulid, record: Option<&[u8]>) -> Result<Option<Vec<u8>>, Error> {
    let mut out = Vec::with_capacity(run.len());
    for member in members(run) {
        let (member_id, old) = member?;
        match (member_id == id, record) {
            (false, _) => append(&mut out, member_id, old),
            (true, Some(new)) => append(&mut out, member_id, new),
            (true, None) => {}
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The run with `record` as member `id`, in id order (replacing a member with that id), and
/// the record it replaced.
pub fn insert(run: &[u8], id: Ulid, record: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), Error> {
    let mut out = Vec::with_capacity(run.len() + MEMBER_HEADER + record.len());
    let (mut placed, mut replaced) = (false, None);
    let existing = match run.is_empty() {
        true => members(&[RUN_V1]),
        false => members(run),
    };
    for member in existing {
        let (member_id, old) = member?;
        if !placed && member_id >= id {
            append(&mut out, id, record);
            placed = true;
            if member_id == id {
                replaced = Some(old.to_vec());
                continue;
            }
        }
        append(&mut out, member_id, old);
    }
    if !placed {
        append(&mut out, id, record);
    }
    Ok((out, replaced))
}

/// The greatest member id of a run (`None`: empty).
pub fn last_id(run: &[u8]) -> Result<Option<Ulid>, Error> {
    let mut last = None;
    for member in members(run) {
        last = Some(member?.0);
    }
    Ok(last)
}

/// The bytes a member takes in a run beyond its record.
pub const MEMBER_BYTES: usize = MEMBER_HEADER;

/// Iterator over a run's members; yields an error once if the value is malformed.
pub struct Members<'a> {
    rest: &'a [u8],
    broken: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(Ulid, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.broken {
            self.broken = false;
            self.rest = &[];
            return Some(Err(Error::Corrupt("run record: malformed".into())));
        }
        if self.rest.is_empty() {
            return None;
        }
        let parsed = split_member(self.rest);
        match parsed {
            Some((id, record, rest)) => {
                self.rest = rest;
                Some(Ok((id, record)))
            }
            None => {
                self.rest = &[];
                Some(Err(Error::Corrupt("run record: truncated member".into())))
            }
        }
    }
}

fn split_member(bytes: &[u8]) -> Option<(Ulid, &[u8], &[u8])> {
    let id: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    let len: [u8; 4] = bytes.get(16..MEMBER_HEADER)?.try_into().ok()?;
    let end = MEMBER_HEADER.checked_add(usize::try_from(u32::from_be_bytes(len)).ok()?)?;
    let record = bytes.get(MEMBER_HEADER..end)?;
    Some((Ulid::from_bytes(id), record, &bytes[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(run: &[u8]) -> Vec<(u128, Vec<u8>)> {
        members(run)
            .map(|m| m.map(|(id, record)| (id.0, record.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn members_are_appended_found_replaced_and_removed() {
        let (a, b, c) = (Ulid(1), Ulid(2), Ulid(3));
        let mut run = Vec::new();
        append(&mut run, a, b"first");
        append(&mut run, b, b"");
        append(&mut run, c, b"third");
        assert_eq!(
            ids(&run),
            vec![
                (1, b"first".to_vec()),
                (2, Vec::new()),
                (3, b"third".to_vec())
            ]
        );
        assert_eq!(find(&run, b).ok().flatten(), Some(&b""[..]));
        assert_eq!(find(&run, Ulid(4)).ok().flatten(), None);

        let replaced = replace(&run, c, Some(b"new"))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(find(&replaced, c).ok().flatten(), Some(&b"new"[..]));
        let shorter = replace(&replaced, a, None)
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(ids(&shorter), vec![(2, Vec::new()), (3, b"new".to_vec())]);
        let one = replace(&shorter, b, None)
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(
            replace(&one, c, None).ok(),
            Some(None),
            "the last member empties it"
        );
        assert_eq!(
            replace(&one, Ulid(9), None).ok().flatten(),
            Some(one.clone()),
            "a missing member leaves it as it was"
        );
    }

    #[test]
    fn members_are_inserted_in_id_order() {
        let mut run = Vec::new();
        append(&mut run, Ulid(2), b"two");
        append(&mut run, Ulid(5), b"five");
        let (run, replaced) = insert(&run, Ulid(3), b"three").unwrap_or_default();
        assert_eq!(replaced, None);
        let (run, _) = insert(&run, Ulid(1), b"one").unwrap_or_default();
        let (run, _) = insert(&run, Ulid(9), b"nine").unwrap_or_default();
        let (run, replaced) = insert(&run, Ulid(5), b"FIVE").unwrap_or_default();
        assert_eq!(replaced.as_deref(), Some(&b"five"[..]));
        assert_eq!(
            ids(&run).into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![1, 2, 3, 5, 9]
        );
        assert_eq!(find(&run, Ulid(5)).ok().flatten(), Some(&b"FIVE"[..]));
        assert_eq!(last_id(&run).ok().flatten(), Some(Ulid(9)));
        let (fresh, _) = insert(&[], Ulid(4), b"four").unwrap_or_default();
        assert_eq!(ids(&fresh), vec![(4, b"four".to_vec())]);
    }

    #[test]
    fn malformed_runs_are_errors_not_panics() {
        let mut run = Vec::new();
        append(&mut run, Ulid(1), b"record");
        for cut in 2..run.len() {
            assert!(
                members(&run[..cut]).any(|m| m.is_err()),
                "cut at {cut} must be reported"
            );
        }
        assert!(members(b"\x09").any(|m| m.is_err()), "unknown version");
        assert!(members(b"").any(|m| m.is_err()), "empty value");
        assert!(find(&run[..5], Ulid(1)).is_err());
    }
}
