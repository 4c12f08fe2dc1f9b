//! Operator alerts (`[alerts]`, docs/operations.md): dead letters, outages and recoveries, an
//! instance that needs `authorize`, a full store, POSTed to the operator's URL.
//!
//! Whoever notices something raises an [`Alert`] through the cheap, cloneable [`Alerts`]
//! handle: it never blocks and never fails the caller (a full hand-off channel drops the alert
//! with a warning). The intake task queues each raised alert in the store, if `alerts.on`
//! wants its type, and turns the store's dead-letter tallies (written in each dead letter's own
//! batch, so none is missed across a crash) into one `dead_letter` alert per instance at most
//! once a minute, carrying the count. The sender ([`send`]) takes the queue in due order. Both
//! are tasks of their own: a slow or failing alert URL holds up nothing but alerts.

mod format;
mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::config::{AlertType, LiveConfig};
use crate::store::Store;
use crate::store::alerts::DeadTallyV1;
use crate::time;

pub use format::{detail, summary};

/// Raised alerts waiting for the intake task at most; past it a raise is dropped (logged).
const RAISED_CAPACITY: usize = 1024;
/// How often the intake task looks at the dead-letter tallies.
const TALLY_INTERVAL: Duration = Duration::from_secs(1);
/// How long the first dead letter after a quiet spell waits for others to join its alert.
pub const DEAD_LETTER_GATHER: Duration = Duration::from_secs(5);
/// An instance's `dead_letter` alerts are at least this far apart.
pub const DEAD_LETTER_INTERVAL: Duration = Duration::from_secs(60);

/// Something an operator is told about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// `count` events of `instance` were dead-lettered (or quarantined); the last one's id,
    /// account, status, error and reason.
    DeadLetter {
        instance: String,
        count: u64,
        last_event: String,
        account: String,
        last_status: Option<u16>,
        last_error: Option<String>,
        reason: String,
    },
    /// `instance` has had no 2xx since `since_ms` while attempts were made.
    Outage {
        instance: String,
        since_ms: u64,
        last_error: Option<String>,
    },
    /// `instance` answered a 2xx again, ending the outage that began at `since_ms`.
    Recovered {
        instance: String,
        since_ms: u64,
        last_error: Option<String>,
    },
    /// Dropbox refused the refresh token of change-events instance `instance`.
    NeedsAuthorize { instance: String },
    /// Ingest answers 503: the store holds `bytes`, at or over `storage.max_bytes`.
    StoreFull { bytes: u64, max_bytes: u64 },
}

impl Alert {
    pub fn kind(&self) -> AlertType {
        match self {
            Alert::DeadLetter { .. } => AlertType::DeadLetter,
            Alert::Outage { .. } => AlertType::Outage,
            Alert::Recovered { .. } => AlertType::Recovered,
            Alert::NeedsAuthorize { .. } => AlertType::NeedsAuthorize,
            Alert::StoreFull { .. } => AlertType::StoreFull,
        }
    }

    pub fn instance(&self) -> Option<&str> {
        match self {
            Alert::DeadLetter { instance, .. }
            | Alert::Outage { instance, .. }
            | Alert::Recovered { instance, .. }
            | Alert::NeedsAuthorize { instance } => Some(instance),
            Alert::StoreFull { .. } => None,
        }
    }

    fn dead_letters(instance: &str, tally: &DeadTallyV1) -> Alert {
        Alert::DeadLetter {
            instance: instance.to_owned(),
            count: tally.count,
            last_event: tally.last_event.clone(),
            account: tally.account.clone(),
            last_status: tally.last_status,
            last_error: tally.last_error.clone(),
            reason: tally.reason.clone(),
        }
    }
}

/// The handle alerts are raised through; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Handle>,
}

struct Handle {
    raised: mpsc::Sender<(Alert, u64)>,
    /// Ingest is refusing notifications for `storage.max_bytes` (one alert per episode).
    store_full: AtomicBool,
}

impl Alerts {
    /// A handle whose alerts go nowhere (for code run without the daemon's tasks).
    pub fn disconnected() -> Alerts {
        let (raised, _) = mpsc::channel(1);
        Alerts::with_sender(raised)
    }

    fn with_sender(raised: mpsc::Sender<(Alert, u64)>) -> Alerts {
        Alerts {
            inner: Arc::new(Handle {
                raised,
                store_full: AtomicBool::new(false),
            }),
        }
    }

    /// Raises `alert` now. Never blocks, never fails: if the intake task is that far behind,
    /// the alert is dropped with a warning.
    pub fn raise(&self, alert: Alert) {
        if let Err(err) = self.inner.raised.try_send((alert, time::now_ms())) {
            match err {
                mpsc::error::TrySendError::Full((alert, _)) => {
                    warn!(
                        r#type = alert.kind().name(),
                        instance = alert.instance().unwrap_or(""),
                        "too many alerts raised at once; this one is dropped"
                    );
                }
                mpsc::error::TrySendError::Closed(_) => {}
            }
        }
    }

    /// Ingest refuses a notification for `storage.max_bytes`: the first refusal of an episode
    /// raises [`Alert::StoreFull`].
    pub fn store_full(&self, bytes: u64, max_bytes: u64) {
        if !self.inner.store_full.swap(true, Ordering::AcqRel) {
            self.raise(Alert::StoreFull { bytes, max_bytes });
        }
    }

    /// The store is under `storage.max_bytes` again (ingest took a notification): the next
    /// refusal starts a new episode.
    pub fn store_below_limit(&self) {
        if self.inner.store_full.load(Ordering::Relaxed) {
            self.inner.store_full.store(false, Ordering::Release);
        }
    }
}

/// The alert tasks: intake and sender. Dropping it does not stop them; [`AlertTasks::stop`]
/// does (what is queued is sent after the next start).
pub struct AlertTasks {
    tasks: JoinSet<()>,
}

impl AlertTasks {
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the alert tasks over `store`, following the configuration in force.
pub fn start(store: Store, live: LiveConfig) -> (Alerts, AlertTasks) {
    let (raised, receiver) = mpsc::channel(RAISED_CAPACITY);
    let wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let intake = Intake {
        store: store.clone(),
        live: live.clone(),
        wake: wake.clone(),
    };
    tasks.spawn(intake.run(receiver));
    tasks.spawn(send::Sender::new(store, live, wake).run());
    (Alerts::with_sender(raised), AlertTasks { tasks })
}

/// Queues raised alerts and the dead-letter tallies' alerts.
struct Intake {
    store: Store,
    live: LiveConfig,
    /// Tells the sender an alert was queued.
    wake: Arc<Notify>,
}

impl Intake {
    async fn run(self, mut raised: mpsc::Receiver<(Alert, u64)>) {
        let mut ticks = tokio::time::interval(TALLY_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                alert = raised.recv() => match alert {
                    Some((alert, at_ms)) => self.queue(alert, at_ms).await,
                    None => return,
                },
                _ = ticks.tick() => self.tallies().await,
            }
        }
    }

    fn wanted(&self, kind: AlertType) -> bool {
        let live = self.live.load();
        live.config
            .alerts
            .as_ref()
            .is_some_and(|alerts| alerts.on.contains(&kind))
    }

    async fn queue(&self, alert: Alert, at_ms: u64) {
        if !self.wanted(alert.kind()) {
            debug!(
                r#type = alert.kind().name(),
                "alert not sent: alerts are off or not on for this type"
            );
            return;
        }
        let new = format::new_alert(&alert, at_ms);
        match self.store.enqueue_alert(new).await {
            Ok(dropped) => {
                if let Some(id) = dropped {
                    warn!(alert = %id, "the alert queue is full; its oldest alert was dropped");
                }
                self.wake.notify_one();
            }
            Err(err) => {
                warn!(r#type = alert.kind().name(), error = %err, summary = %format::summary(&alert), "could not queue an alert");
            }
        }
    }

    /// Turns each instance's dead letters not alerted yet into one alert, once they have had
    /// [`DEAD_LETTER_GATHER`] to gather and the instance's last such alert is
    /// [`DEAD_LETTER_INTERVAL`] old; with `dead_letter` alerts off, the tally is only reset.
    async fn tallies(&self) {
        let store = self.store.clone();
        let tallies = match tokio::task::spawn_blocking(move || store.dead_tallies()).await {
            Ok(Ok(tallies)) => tallies,
            Ok(Err(err)) => {
                warn!(error = %err, "cannot read the dead-letter tallies");
                return;
            }
            Err(_) => return,
        };
        for instance in tallies.unreadable {
            warn!(
                instance,
                "the tally of dead letters not alerted yet cannot be read; it starts again"
            );
            if let Err(err) = self.store.take_dead_tally(&instance, 0, None).await {
                warn!(instance, error = %err, "could not reset a dead-letter tally");
            }
        }
        let now = time::now_ms();
        let wanted = self.wanted(AlertType::DeadLetter);
        for (instance, tally) in tallies.pending {
            let gathered = tally.first_ms.saturating_add(millis(DEAD_LETTER_GATHER));
            let spaced = tally
                .last_alert_ms
                .saturating_add(millis(DEAD_LETTER_INTERVAL));
            if wanted && now < gathered.max(spaced) {
                continue;
            }
            let alert =
                wanted.then(|| format::new_alert(&Alert::dead_letters(&instance, &tally), now));
            match self
                .store
                .take_dead_tally(&instance, tally.count, alert)
                .await
            {
                Ok(true) if wanted => self.wake.notify_one(),
                Ok(_) => {}
                Err(err) => warn!(instance, error = %err, "could not queue a dead-letter alert"),
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
