//! Store record decoders (`store::record`, `store::history`, `store::outage`, `store::alerts`):
//! arbitrary bytes never panic, and every record round-trips through its encoding.

use hookrelay::store::alerts::{
    AlertQueueRecord, AlertQueueV1, AlertRecord, AlertV1, DeadTallyRecord, DeadTallyV1,
};
use hookrelay::store::history::{self, Attempt, HistoryV1};
use hookrelay::store::outage::{MAX_PAST_OUTAGES, OutageRecord, OutageV1};
use hookrelay::store::record::{
    ChangesV1, Counters, DeadRecord, DeadV1, EventKind, EventRecord, EventV1, NotificationRecord,
};
use proptest::prelude::*;

fn event() -> impl Strategy<Value = EventV1> {
    (
        ".{0,40}",
        prop_oneof![Just(EventKind::Notify), Just(EventKind::Unknown)],
        proptest::option::of("[0-9A-Z]{26}"),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
        any::<bool>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(".{0,60}"),
        any::<u64>(),
        proptest::option::of(".{0,120}"),
        proptest::option::of((".{0,40}", ".{0,40}", proptest::option::of(any::<u64>()))),
    )
        .prop_map(
            |(
                account,
                kind,
                notification,
                (date_ms, age_base_ms, attempts, due_ms),
                refused_only,
                last_status,
                last_error,
                bytes,
                raw,
                changes,
            )| EventV1 {
                account,
                kind,
                notification,
                date_ms,
                age_base_ms,
                attempts,
                due_ms,
                refused_only,
                last_status,
                last_error,
                bytes,
                changes: changes.map(|(events, raw, seq)| ChangesV1 { events, raw, seq }),
                raw,
            },
        )
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (
        any::<u64>(),
        any::<u32>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(".{0,60}"),
    )
        .prop_map(|(at_ms, duration_ms, status, error)| Attempt {
            at_ms,
            duration_ms,
            status,
            error,
        })
}

fn history_record() -> impl Strategy<Value = HistoryV1> {
    (
        ".{0,40}",
        prop_oneof![
            Just(EventKind::Notify),
            Just(EventKind::Unknown),
            Just(EventKind::Changes)
        ],
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(attempt(), 0..25),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(account, kind, date_ms, delivered_ms, attempts, envelope)| {
                let mut kept = Vec::new();
                for attempt in attempts {
                    history::push_attempt(&mut kept, attempt);
                }
                HistoryV1 {
                    account,
                    kind,
                    date_ms,
                    delivered_ms,
                    attempts: kept,
                    envelope,
                }
            },
        )
}

fn outage() -> impl Strategy<Value = OutageV1> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(".{0,60}"),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..40),
    )
        .prop_map(|(since_ms, last_error, past)| OutageV1 {
            since_ms,
            last_error,
            past,
        })
}

/// Bytes that look a little like records: JSON-ish text or a version byte and a header.
fn record_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        r#"\{"v":"[0-9]",[a-z_":,0-9\{\}\[\] ]{0,80}"#.prop_map(String::into_bytes),
        (1u8..=3, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(v, mut rest)| {
            rest.insert(0, v);
            rest
        }),
    ]
}

proptest! {
    #![proptest_config(crate::cases(512, 50_000))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in record_like()) {
        let _ = EventRecord::decode(&bytes);
        let _ = DeadRecord::decode(&bytes);
        let _ = OutageRecord::decode(&bytes);
        let notification = NotificationRecord::decode(&bytes);
        prop_assert_eq!(notification.is_ok(), bytes.len() >= 13 && bytes[0] == 1);
        let counters = Counters::decode(&bytes);
        prop_assert_eq!(
            counters.is_ok(),
            (bytes.len() == 33 && bytes[0] == 1)
                || (bytes.len() == 41 && bytes[0] == 2)
                || (bytes.len() == 57 && bytes[0] == 3)
        );
        let _ = HistoryV1::decode(&bytes);
        let _ = history::decode_attempts(&bytes);
    }

    #[test]
    fn records_round_trip(
        event in event(),
        dead_at_ms in any::<u64>(),
        reason in ".{0,40}",
        accepted_ms in any::<u64>(),
        refs in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        counters in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
    ) {
        let encoded = EventRecord::encode(&event);
        prop_assert_eq!(EventRecord::decode(&encoded).ok(), Some(event.clone()));
        let dead = DeadV1 {
            event,
            dead_at_ms,
            reason,
            quarantined: None,
        };
        prop_assert_eq!(DeadRecord::decode(&DeadRecord::encode(&dead)).ok(), Some(dead));
        let n = NotificationRecord { accepted_ms, refs, body };
        prop_assert_eq!(NotificationRecord::decode(&n.encode()).ok(), Some(n));
        let c = Counters {
            pending_events: counters.0,
            pending_bytes: counters.1,
            dead_events: counters.2,
            dead_bytes: counters.3,
            other_bytes: counters.0 ^ counters.3,
            history_events: counters.1 ^ counters.2,
            history_bytes: counters.2 ^ counters.3,
        };
        prop_assert_eq!(Counters::decode(&c.encode()).ok(), Some(c));
    }

    #[test]
    fn outage_records_round_trip_and_stay_bounded(
        stored in outage(),
        end in any::<u64>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = OutageRecord::encode(&stored);
        prop_assert_eq!(OutageRecord::decode(&bytes).ok(), Some(stored.clone()));
        let cut = cut.index(bytes.len());
        if cut < bytes.len() {
            prop_assert!(OutageRecord::decode(&bytes[..cut]).is_err());
        }
        // Ending an outage keeps the past outages bounded, whatever was stored; without one
        // to end, nothing changes.
        let mut ended = stored.clone();
        let lasted = ended.end(end);
        prop_assert_eq!(lasted.is_some(), stored.since_ms.is_some());
        prop_assert!(!ended.active());
        match lasted {
            Some(_) => prop_assert!(ended.past.len() <= MAX_PAST_OUTAGES),
            None => prop_assert_eq!(&ended.past, &stored.past),
        }
    }

    #[test]
    fn history_and_attempts_round_trip_and_never_panic_when_cut_or_flipped(
        kept in history_record(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = kept.encode();
        prop_assert_eq!(HistoryV1::decode(&bytes).ok(), Some(kept.clone()));
        let attempts = history::encode_attempts(&kept.attempts);
        prop_assert_eq!(history::decode_attempts(&attempts).ok(), Some(kept.attempts.clone()));
        prop_assert!(kept.attempts.len() <= history::ATTEMPTS_KEPT);
        for record in [&bytes, &attempts] {
            let mut flipped = record.clone();
            let at = flip.index(flipped.len());
            flipped[at] = byte;
            let _ = HistoryV1::decode(&flipped);
            let _ = history::decode_attempts(&flipped);
        }
        let _ = HistoryV1::decode(&bytes[..cut.index(bytes.len())]);
        // An attempts record cut short is an error, never a shorter list.
        prop_assert!(history::decode_attempts(&attempts[..cut.index(attempts.len())]).is_err());
    }
}

fn alert() -> impl Strategy<Value = AlertV1> {
    (
        "[a-z_]{0,20}",
        proptest::option::of(".{0,40}"),
        (any::<u64>(), any::<u32>(), any::<u64>()),
        ".{0,120}",
        ".{0,120}",
        proptest::option::of(".{0,60}"),
    )
        .prop_map(
            |(kind, instance, (at_ms, attempts, due_ms), summary, detail, last_error)| AlertV1 {
                kind,
                instance,
                at_ms,
                summary,
                detail,
                attempts,
                due_ms,
                last_error,
            },
        )
}

fn tally() -> impl Strategy<Value = DeadTallyV1> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (".{0,30}", ".{0,40}", ".{0,40}"),
        proptest::option::of(any::<u16>()),
        proptest::option::of(".{0,60}"),
    )
        .prop_map(
            |(
                (count, first_ms, last_alert_ms),
                (last_event, account, reason),
                last_status,
                last_error,
            )| {
                DeadTallyV1 {
                    count,
                    first_ms,
                    last_event,
                    account,
                    last_status,
                    last_error,
                    reason,
                    last_alert_ms,
                }
            },
        )
}

proptest! {
    #![proptest_config(crate::cases(512, 50_000))]

    #[test]
    fn alert_decoders_never_panic_on_arbitrary_bytes(bytes in record_like()) {
        let _ = AlertRecord::decode(&bytes);
        let _ = AlertQueueRecord::decode(&bytes);
        let _ = DeadTallyRecord::decode(&bytes);
    }

    #[test]
    fn alert_records_round_trip(
        alert in alert(),
        tally in tally(),
        queue in (any::<u64>(), any::<u64>()),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = AlertRecord::encode(&alert);
        prop_assert_eq!(AlertRecord::decode(&encoded).ok(), Some(alert));
        let _ = AlertRecord::decode(&encoded[..cut.index(encoded.len())]);
        let encoded = DeadTallyRecord::encode(&tally);
        prop_assert_eq!(DeadTallyRecord::decode(&encoded).ok(), Some(tally));
        let _ = DeadTallyRecord::decode(&encoded[..cut.index(encoded.len())]);
        let queue = AlertQueueV1 { count: queue.0, bytes: queue.1 };
        prop_assert_eq!(AlertQueueRecord::decode(&AlertQueueRecord::encode(&queue)).ok(), Some(queue));
    }
}
