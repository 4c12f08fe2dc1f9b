//! Store record decoders on arbitrary bytes: never panic; whatever decodes re-encodes to
//! something that decodes the same.
#![no_main]

use hookrelay::store::record::{Counters, DeadRecord, EventRecord, NotificationRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = EventRecord::decode(data) {
        assert_eq!(
            EventRecord::decode(&EventRecord::encode(&event)).ok(),
            Some(event)
        );
    }
    if let Ok(dead) = DeadRecord::decode(data) {
        assert_eq!(
            DeadRecord::decode(&DeadRecord::encode(&dead)).ok(),
            Some(dead)
        );
    }
    if let Ok(n) = NotificationRecord::decode(data) {
        assert_eq!(n.encode(), data);
    }
    if let Ok(c) = Counters::decode(data) {
        assert_eq!(c.encode(), data);
    }
});
