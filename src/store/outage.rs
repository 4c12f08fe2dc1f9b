//! An instance's outage state (`u/<instance>` records): the outage it is in, if any, and the
//! past outages its events' age does not count, with the read and the write request for it.
//!
//! The record is written only when the state changes (an outage begins or ends), never per
//! attempt, and it stays small: the past outages are a list of at most [`MAX_PAST_OUTAGES`]
//! intervals, the oldest merged when it would grow past that.

use serde::{Deserialize, Serialize};

use super::error::{Error, sled_error};
use super::{Store, commit, keys};

/// Past outages an instance's record keeps at most; older ones are merged together.
pub const MAX_PAST_OUTAGES: usize = 32;

/// The versioned encoding of [`OutageV1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum OutageRecord {
    #[serde(rename = "1")]
    V1(OutageV1),
}

/// An instance's outage state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageV1 {
    /// Unix ms when the current outage began; `None` when the instance is not in one.
    pub since_ms: Option<u64>,
    /// The failed attempt's error that began the current outage.
    pub last_error: Option<String>,
    /// Past outages as `[start, end)` Unix ms intervals, oldest first, disjoint.
    pub past: Vec<(u64, u64)>,
}

impl OutageRecord {
    pub fn decode(bytes: &[u8]) -> Result<OutageV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(OutageRecord::V1(outage)) => Ok(outage),
            Err(err) => Err(Error::Corrupt(format!("outage record: {err}"))),
        }
    }

    pub fn encode(outage: &OutageV1) -> Vec<u8> {
        serde_json::to_vec(&OutageRecord::V1(outage.clone())).unwrap_or_default()
    }
}

impl OutageV1 {
    /// Whether the instance is in an outage.
    pub fn active(&self) -> bool {
        self.since_ms.is_some()
    }

    /// Ends the current outage at `end_ms`, keeping it among the past ones (the oldest two
    /// merged if there are more than [`MAX_PAST_OUTAGES`]). Returns how long it lasted, or
    /// `None` if there was none.
    pub fn end(&mut self, end_ms: u64) -> Option<u64> {
        let start = self.since_ms.take()?;
        self.last_error = None;
        let end = end_ms.max(start);
        self.push_past(start, end);
        Some(end - start)
    }

    fn push_past(&mut self, start: u64, end: u64) {
        match self.past.last_mut() {
            // Overlapping or touching the last one (a clock stepped back): one interval.
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => self.past.push((start, end)),
        }
        while self.past.len() > MAX_PAST_OUTAGES {
            // The oldest two become one: their gap counts as outage too, which can only keep
            // an event longer, never dead-letter one sooner.
            let second = self.past.remove(1);
            self.past[0].1 = second.1.max(self.past[0].1);
        }
    }

    /// Every outage interval up to `now_ms`, the current one (`[since, now)`) included.
    pub fn intervals(&self, now_ms: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let current = self.since_ms.map(|since| (since, now_ms.max(since)));
        self.past.iter().copied().chain(current)
    }
}

impl Store {
    /// The outage state stored for `instance`; `None` if it never had an outage.
    pub fn outage(&self, instance: &str) -> Result<Option<OutageV1>, Error> {
        self.db
            .get(keys::outage(instance))
            .map_err(sled_error)?
            .map(|v| OutageRecord::decode(&v))
            .transpose()
    }

    /// Stores `instance`'s outage state, durably (answered after the sync).
    pub async fn set_outage(&self, instance: &str, outage: OutageV1) -> Result<(), Error> {
        self.request(commit::SetOutage {
            instance: instance.to_owned(),
            outage,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_outage_joins_the_past_ones() {
        let mut outage = OutageV1 {
            since_ms: Some(1_000),
            last_error: Some("HTTP 503".into()),
            past: Vec::new(),
        };
        assert_eq!(
            outage.intervals(1_500).collect::<Vec<_>>(),
            [(1_000, 1_500)]
        );
        assert_eq!(outage.end(4_000), Some(3_000));
        assert!(!outage.active());
        assert_eq!(outage.last_error, None);
        assert_eq!(outage.past, [(1_000, 4_000)]);
        assert_eq!(outage.end(5_000), None, "no outage to end");
        // A clock that stepped back gives no negative interval.
        outage.since_ms = Some(9_000);
        assert_eq!(outage.end(8_000), Some(0));
        assert_eq!(outage.past, [(1_000, 4_000), (9_000, 9_000)]);
    }

    #[test]
    fn past_outages_stay_bounded_by_merging_the_oldest() {
        let mut outage = OutageV1::default();
        for n in 0..(MAX_PAST_OUTAGES as u64 + 5) {
            outage.since_ms = Some(n * 100);
            outage.end(n * 100 + 10);
        }
        assert_eq!(outage.past.len(), MAX_PAST_OUTAGES);
        // The first six became one interval; the newest are untouched.
        assert_eq!(outage.past[0], (0, 510));
        assert_eq!(outage.past[1], (600, 610));
        let last = MAX_PAST_OUTAGES as u64 + 4;
        assert_eq!(outage.past.last(), Some(&(last * 100, last * 100 + 10)));
        assert!(outage.past.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let outage = OutageV1 {
            since_ms: Some(7),
            last_error: Some("timed out".into()),
            past: vec![(1, 2), (3, 5)],
        };
        let bytes = OutageRecord::encode(&outage);
        assert_eq!(OutageRecord::decode(&bytes).ok(), Some(outage));
        for garbage in [&b""[..], b"{", b"{\"v\":\"9\"}", b"\x03abc"] {
            assert!(matches!(
                OutageRecord::decode(garbage),
                Err(Error::Corrupt(_))
            ));
        }
    }
}
