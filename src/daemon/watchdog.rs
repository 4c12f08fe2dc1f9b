//! When the daemon may tell systemd `WATCHDOG=1`: only while the runtime responds.
//!
//! A ping proves more than a timer firing: the control loop (signals, store-failure checks)
//! must have turned recently ([`Pulse`]), and a no-op write through the store committer must
//! come back in time. Delivery success plays no part: a dead consumer is not a hung daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::Store;

/// The last time a loop turned, readable from another task without a lock.
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    /// Milliseconds after `origin`.
    last_ms: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse::new()
    }
}

impl Pulse {
    pub fn new() -> Pulse {
        Pulse {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last [`Pulse::beat`] (or since creation).
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Whether the daemon answers: `pulse` beat within `within`, and the store committer completes
/// a heartbeat (a tiny durable write) within `within`.
///
/// # Errors
/// What did not answer, for a log line.
pub async fn runtime_answers(store: &Store, pulse: &Pulse, within: Duration) -> Result<(), String> {
    let age = pulse.age();
    if age > within {
        return Err(format!(
            "the control loop has not run for {} ms",
            age.as_millis()
        ));
    }
    match tokio::time::timeout(within, store.heartbeat()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("the store did not take a heartbeat: {err}")),
        Err(_) => Err(format!(
            "the store committer did not answer within {} ms",
            within.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, OpenMode, StoreOptions};

    fn open(dir: &std::path::Path, sync: store::SyncFn) -> Store {
        let options = StoreOptions {
            path: dir.join("store"),
            cache_bytes: 1 << 20,
            mode: OpenMode::Daemon,
            journal_bytes: store::DEFAULT_JOURNAL_BYTES,
        };
        Store::open(&options, sync)
            .map(|(store, _)| store)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pulse_ages_until_it_beats() {
        let pulse = Pulse::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(pulse.age() >= Duration::from_millis(30));
        pulse.beat();
        assert!(pulse.age() < Duration::from_millis(30));
    }

    #[tokio::test]
    async fn answers_while_the_loop_beats_and_the_store_commits() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(dir.path(), store::fdatasync());
        let pulse = Pulse::new();
        pulse.beat();
        assert_eq!(
            runtime_answers(&store, &pulse, Duration::from_secs(5)).await,
            Ok(())
        );
        store.close().await.unwrap_or_else(|e| panic!("{e}"));
        let closed = runtime_answers(&store, &pulse, Duration::from_secs(5)).await;
        assert!(closed.is_err(), "a closed store answered");
    }

    #[tokio::test]
    async fn a_stalled_loop_or_committer_withholds_the_ping() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A sync that hangs stands for a committer stuck in the kernel.
        let store = open(
            dir.path(),
            Box::new(|_| {
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            }),
        );
        let pulse = Pulse::new();
        let slow = runtime_answers(&store, &pulse, Duration::from_millis(100)).await;
        assert!(
            slow.as_ref().is_err_and(|e| e.contains("did not answer")),
            "{slow:?}"
        );
        std::thread::sleep(Duration::from_millis(150));
        let stalled = runtime_answers(&store, &pulse, Duration::from_millis(100)).await;
        assert!(
            stalled.as_ref().is_err_and(|e| e.contains("control loop")),
            "{stalled:?}"
        );
    }
}
