//! Store record decoders (`store::record`, `store::alerts`): arbitrary bytes never panic, and
//! every record round-trips through its encoding.

use hookrelay::store::alerts::{
    AlertQueueRecord, AlertQueueV1, AlertRecord, AlertV1, DeadTallyRecord, DeadTallyV1,
};
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
        let notification = NotificationRecord::decode(&bytes);
        prop_assert_eq!(notification.is_ok(), bytes.len() >= 13 && bytes[0] == 1);
        let counters = Counters::decode(&bytes);
        prop_assert_eq!(
            counters.is_ok(),
            (bytes.len() == 33 && bytes[0] == 1) || (bytes.len() == 41 && bytes[0] == 2)
        );
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
        };
        prop_assert_eq!(Counters::decode(&c.encode()).ok(), Some(c));
    }

    #[test]
    fn a_truncated_or_flipped_record_never_panics(
        event in event(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = EventRecord::encode(&event);
        let at = flip.index(bytes.len());
        bytes[at] = byte;
        let _ = EventRecord::decode(&bytes);
        let _ = DeadRecord::decode(&bytes);
        let cut = cut.index(bytes.len());
        let _ = EventRecord::decode(&bytes[..cut]);
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
