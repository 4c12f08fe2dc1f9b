//! Prometheus metrics (docs/metrics.md), in base units. Counters and histograms are updated where
//! things happen; queue gauges are read from the store's counters when scraped, and the
//! `process_*` series from `/proc/self` (`process.rs`).
//!
//! Every series that can exist is there at 0 from the start: the `result` and `outcome` values
//! are closed lists (the enums below, which the recording code uses), and [`Metrics::configure`]
//! creates the series of each configured instance and removes those of an instance a reload
//! took away, so that `increase()` and `rate()` see a fresh daemon's first events.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::process::ProcessCollector;

pub use prometheus_text::CONTENT_TYPE;

/// Declares the closed list of values of one label: an enum, its text and `ALL`, from one list,
/// so that a value added for recording is also created at 0.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            /// Every value, in the order of the list.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

label_values! {
    /// `hookrelay_ingest_requests_total{result}`: how a Dropbox-facing request ended.
    IngestResult {
        Accepted => "accepted",
        Unrouted => "unrouted",
        Challenge => "challenge",
        BadSignature => "bad_signature",
        TooLarge => "too_large",
        BadBody => "bad_body",
        BadChallenge => "bad_challenge",
        BadMethod => "bad_method",
        NotFound => "not_found",
        StoreFull => "store_full",
        StoreFailed => "store_failed",
    }
}

label_values! {
    /// `hookrelay_deliveries_total{outcome}`: how a delivery attempt ended.
    DeliveryOutcome {
        Delivered => "delivered",
        Gone => "gone",
        Redirect => "redirect",
        Failed => "failed",
        Refused => "refused",
        Error => "error",
    }
}

label_values! {
    /// `hookrelay_config_reloads_total{result}`.
    ReloadResult {
        Ok => "ok",
        Error => "error",
    }
}

label_values! {
    /// `hookrelay_changes_walks_total{result}`: how a change-events walk ended.
    WalkResult {
        Done => "done",
        Reset => "reset",
        NeedsAuthorize => "needs_authorize",
        Error => "error",
    }
}

/// The build, for `hookrelay_build_info` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse --short=12 HEAD` when built (`build.rs`), or `unknown` outside a git tree.
pub const COMMIT: &str = env!("HOOKRELAY_COMMIT");
/// What `hookrelay --version` prints after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HOOKRELAY_COMMIT"),
    ")"
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The per-instance label: the instance's `name`. Not `instance`, which Prometheus sets to the
/// scrape target (and would rename ours to `exported_instance`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    pub instance_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub instance_name: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultInstanceLabel {
    pub instance_name: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
    pub commit: &'static str,
}

/// Per-instance queue figures, set just before each scrape.
#[derive(Debug, Clone, Default)]
pub struct QueueFigures {
    pub instance: String,
    pub queued: u64,
    pub dead: u64,
    pub oldest_pending_age_seconds: f64,
}

/// What [`Metrics::configure`] needs of one configured instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSeries {
    pub name: String,
    /// A change-events instance: it has the `hookrelay_changes_*` series too.
    pub changes: bool,
}

pub struct Metrics {
    registry: Registry,
    ingest_requests: Family<ResultLabel, Counter>,
    events_accepted: Family<InstanceLabel, Counter>,
    deliveries: Family<OutcomeLabel, Counter>,
    delivery_duration: Family<InstanceLabel, Histogram>,
    queue_depth: Family<InstanceLabel, Gauge>,
    dead_letters: Family<InstanceLabel, Gauge>,
    oldest_pending_age: Family<InstanceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    config_reloads: Family<ResultLabel, Counter>,
    config_generation: Gauge,
    store_bytes: Gauge,
    store_disk_bytes: Gauge,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    changes_walks: Family<ResultInstanceLabel, Counter>,
    changes_token_refreshes: Family<InstanceLabel, Counter>,
    changes_needs_authorize: Family<InstanceLabel, Gauge>,
    change_entries_filtered: Family<InstanceLabel, Counter>,
    quarantined: Family<InstanceLabel, Counter>,
    outage: Family<InstanceLabel, Gauge>,
    build_info: Family<BuildLabel, Gauge>,
    /// The configured instances (name → change events), as of the last `configure`. A
    /// per-instance series is recorded only for them, under the read lock, so that a series
    /// removed by `configure` (under the write lock) is not created again by a late recording.
    configured: RwLock<BTreeMap<String, bool>>,
    /// The instances whose queue gauges the last scrape set; held through a scrape.
    queue_gauges: Mutex<Vec<String>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            ingest_requests: Family::default(),
            events_accepted: Family::default(),
            deliveries: Family::default(),
            delivery_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            queue_depth: Family::default(),
            dead_letters: Family::default(),
            oldest_pending_age: Family::default(),
            config_reloads: Family::default(),
            config_generation: Gauge::default(),
            store_bytes: Gauge::default(),
            store_disk_bytes: Gauge::default(),
            tls_handshake_failures: Family::default(),
            changes_walks: Family::default(),
            changes_token_refreshes: Family::default(),
            changes_needs_authorize: Family::default(),
            change_entries_filtered: Family::default(),
            quarantined: Family::default(),
            outage: Family::default(),
            build_info: Family::default(),
            configured: RwLock::default(),
            queue_gauges: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "hookrelay_ingest_requests",
            "Dropbox-facing requests by result",
            metrics.ingest_requests.clone(),
        );
        registry.register(
            "hookrelay_events_accepted",
            "Events stored for delivery (or merged), by instance",
            metrics.events_accepted.clone(),
        );
        registry.register(
            "hookrelay_deliveries",
            "Delivery attempts by instance and outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "hookrelay_delivery_duration_seconds",
            "Duration of delivery attempts",
            metrics.delivery_duration.clone(),
        );
        registry.register(
            "hookrelay_queue_depth",
            "Pending events (queued, in retry or held)",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "hookrelay_dead_letters",
            "Dead-lettered events kept",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "hookrelay_oldest_pending_age_seconds",
            "Age of the oldest pending event",
            metrics.oldest_pending_age.clone(),
        );
        registry.register(
            "hookrelay_config_reloads",
            "Configuration reloads by result",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "hookrelay_config_generation",
            "Generation of the configuration in force (1 at start)",
            metrics.config_generation.clone(),
        );
        registry.register(
            "hookrelay_store_bytes",
            "Live queued bytes as counted against storage.max_bytes",
            metrics.store_bytes.clone(),
        );
        registry.register(
            "hookrelay_store_disk_bytes",
            "Bytes the store's files take on disk (sled never shrinks them)",
            metrics.store_disk_bytes.clone(),
        );
        registry.register(
            "hookrelay_tls_handshake_failures",
            "TLS handshakes on the Dropbox listener that failed (reason=\"error\", e.g. plain HTTP or an untrusted certificate) or timed out (reason=\"timeout\")",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "hookrelay_changes_walks",
            "Change-events cursor walks by instance and result (done, reset, needs_authorize, error)",
            metrics.changes_walks.clone(),
        );
        registry.register(
            "hookrelay_changes_token_refreshes",
            "Dropbox access-token refreshes by instance",
            metrics.changes_token_refreshes.clone(),
        );
        registry.register(
            "hookrelay_changes_needs_authorize",
            "1 while a change-events instance needs `authorize` (its refresh token was refused)",
            metrics.changes_needs_authorize.clone(),
        );
        registry.register(
            "hookrelay_change_entries_filtered",
            "Dropbox entries of a change-events instance that its `paths` or `event_types` kept from delivery",
            metrics.change_entries_filtered.clone(),
        );
        registry.register(
            "hookrelay_quarantined",
            "Events whose stored record could not be read, dead-lettered as `corrupt`, by instance",
            metrics.quarantined.clone(),
        );
        registry.register(
            "hookrelay_outage",
            "1 while an instance is in an outage (no 2xx for outage_after; one probe per probe_interval), else 0",
            metrics.outage.clone(),
        );
        registry.register(
            "hookrelay_build_info",
            "Always 1; the labels say which build runs",
            metrics.build_info.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        metrics
            .build_info
            .get_or_create(&BuildLabel {
                version: VERSION,
                commit: COMMIT,
            })
            .set(1);
        for result in IngestResult::ALL {
            drop(metrics.ingest_requests.get_or_create(&ResultLabel {
                result: result.as_str(),
            }));
        }
        for result in ReloadResult::ALL {
            drop(metrics.config_reloads.get_or_create(&ResultLabel {
                result: result.as_str(),
            }));
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Creates at 0 the series of each of `instances` that it lacks, and removes every series
    /// of an instance no longer among them (and the change-events series of one that is no
    /// longer a change-events instance). Called at start, and at each applied reload just before
    /// the new configuration is swapped in.
    pub fn configure(&self, instances: &[InstanceSeries]) {
        let mut configured = self
            .configured
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let wanted: BTreeMap<String, bool> = instances
            .iter()
            .map(|i| (i.name.clone(), i.changes))
            .collect();
        for (name, changes) in configured.iter() {
            match wanted.get(name) {
                None => self.remove_instance(name),
                Some(false) if *changes => self.remove_changes(name),
                Some(_) => {}
            }
        }
        for (name, changes) in &wanted {
            self.create_instance(name, *changes);
        }
        *configured = wanted;
    }

    fn create_instance(&self, name: &str, changes: bool) {
        let label = instance_label(name);
        drop(self.events_accepted.get_or_create(&label));
        for outcome in DeliveryOutcome::ALL {
            drop(
                self.deliveries
                    .get_or_create(&outcome_label(name, *outcome)),
            );
        }
        drop(self.delivery_duration.get_or_create(&label));
        drop(self.quarantined.get_or_create(&label));
        drop(self.outage.get_or_create(&label));
        if changes {
            for result in WalkResult::ALL {
                drop(self.changes_walks.get_or_create(&walk_label(name, *result)));
            }
            drop(self.changes_token_refreshes.get_or_create(&label));
            drop(self.changes_needs_authorize.get_or_create(&label));
            drop(self.change_entries_filtered.get_or_create(&label));
        }
    }

    fn remove_instance(&self, name: &str) {
        let label = instance_label(name);
        self.events_accepted.remove(&label);
        for outcome in DeliveryOutcome::ALL {
            self.deliveries.remove(&outcome_label(name, *outcome));
        }
        self.delivery_duration.remove(&label);
        self.quarantined.remove(&label);
        self.outage.remove(&label);
        // The queue gauges too; the next scrape sets them again if the store still holds the
        // instance's events (as `status` shows them).
        self.queue_depth.remove(&label);
        self.dead_letters.remove(&label);
        self.oldest_pending_age.remove(&label);
        self.remove_changes(name);
    }

    fn remove_changes(&self, name: &str) {
        let label = instance_label(name);
        for result in WalkResult::ALL {
            self.changes_walks.remove(&walk_label(name, *result));
        }
        self.changes_token_refreshes.remove(&label);
        self.changes_needs_authorize.remove(&label);
        self.change_entries_filtered.remove(&label);
    }

    /// Runs `record` if `instance` is configured, under the read lock (see `configured`).
    fn for_configured(&self, instance: &str, record: impl FnOnce()) {
        self.for_instance(instance, |_| true, record);
    }

    /// Runs `record` if `instance` is a configured change-events instance, which alone has the
    /// `hookrelay_changes_*` series.
    fn for_changes(&self, instance: &str, record: impl FnOnce()) {
        self.for_instance(instance, |changes| changes, record);
    }

    fn for_instance(
        &self,
        instance: &str,
        wanted: impl FnOnce(bool) -> bool,
        record: impl FnOnce(),
    ) {
        let configured = self
            .configured
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if configured
            .get(instance)
            .is_some_and(|changes| wanted(*changes))
        {
            record();
        }
    }

    pub fn ingest_request(&self, result: IngestResult) {
        self.ingest_requests
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn event_accepted(&self, instance: &str) {
        self.for_configured(instance, || {
            self.events_accepted
                .get_or_create(&instance_label(instance))
                .inc();
        });
    }

    pub fn delivery(&self, instance: &str, outcome: DeliveryOutcome, duration: Duration) {
        self.for_configured(instance, || {
            self.deliveries
                .get_or_create(&outcome_label(instance, outcome))
                .inc();
            self.delivery_duration
                .get_or_create(&instance_label(instance))
                .observe(duration.as_secs_f64());
        });
    }

    pub fn config_reload(&self, result: ReloadResult) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// A TLS handshake on the Dropbox listener that failed (`"error"`) or timed out (`"timeout"`).
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A change-events walk ended.
    pub fn changes_walk(&self, instance: &str, result: WalkResult) {
        self.for_changes(instance, || {
            self.changes_walks
                .get_or_create(&walk_label(instance, result))
                .inc();
        });
    }

    pub fn changes_token_refresh(&self, instance: &str) {
        self.for_changes(instance, || {
            self.changes_token_refreshes
                .get_or_create(&instance_label(instance))
                .inc();
        });
    }

    pub fn set_changes_needs_authorize(&self, instance: &str, needs: bool) {
        self.for_changes(instance, || {
            self.changes_needs_authorize
                .get_or_create(&instance_label(instance))
                .set(i64::from(needs));
        });
    }

    /// `entries` Dropbox entries of a committed walk page were kept from delivery by the
    /// instance's filter.
    pub fn change_entries_filtered(&self, instance: &str, entries: u64) {
        self.for_changes(instance, || {
            self.change_entries_filtered
                .get_or_create(&instance_label(instance))
                .inc_by(entries);
        });
    }

    /// An event whose stored record could not be read was dead-lettered as `corrupt`.
    pub fn quarantined(&self, instance: &str) {
        self.for_configured(instance, || {
            self.quarantined
                .get_or_create(&instance_label(instance))
                .inc();
        });
    }

    /// An instance entered (`true`) or left an outage.
    pub fn set_outage(&self, instance: &str, in_outage: bool) {
        self.for_configured(instance, || {
            self.outage
                .get_or_create(&instance_label(instance))
                .set(i64::from(in_outage));
        });
    }

    pub fn set_config_generation(&self, generation: u64) {
        self.config_generation.set(generation as i64);
    }

    /// Renders the text exposition, after setting the scrape-time gauges: the queue gauges of
    /// the instances in `queues` (the configured ones, and any other the store holds events
    /// of), those of an instance no longer there removed.
    pub fn render(&self, queues: &[QueueFigures], store_bytes: u64, disk_bytes: u64) -> String {
        let mut previous = self
            .queue_gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.store_bytes.set(store_bytes as i64);
        self.store_disk_bytes.set(disk_bytes as i64);
        for name in previous.iter() {
            if !queues.iter().any(|f| f.instance == *name) {
                let label = instance_label(name);
                self.queue_depth.remove(&label);
                self.dead_letters.remove(&label);
                self.oldest_pending_age.remove(&label);
            }
        }
        for figures in queues {
            let label = instance_label(&figures.instance);
            self.queue_depth
                .get_or_create(&label)
                .set(figures.queued as i64);
            self.dead_letters
                .get_or_create(&label)
                .set(figures.dead as i64);
            self.oldest_pending_age
                .get_or_create(&label)
                .set(figures.oldest_pending_age_seconds);
        }
        *previous = queues.iter().map(|f| f.instance.clone()).collect();
        let mut out = String::new();
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn instance_label(name: &str) -> InstanceLabel {
    InstanceLabel {
        instance_name: name.to_owned(),
    }
}

fn outcome_label(name: &str, outcome: DeliveryOutcome) -> OutcomeLabel {
    OutcomeLabel {
        instance_name: name.to_owned(),
        outcome: outcome.as_str(),
    }
}

fn walk_label(name: &str, result: WalkResult) -> ResultInstanceLabel {
    ResultInstanceLabel {
        instance_name: name.to_owned(),
        result: result.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, changes: bool) -> InstanceSeries {
        InstanceSeries {
            name: name.to_owned(),
            changes,
        }
    }

    fn lines_of(text: &str, instance: &str) -> Vec<String> {
        let label = format!("instance_name=\"{instance}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_value_is_there_at_zero_and_goes_with_its_instance() {
        let m = Metrics::new();
        m.configure(&[series("a", false), series("c", true)]);
        let text = m.render(&[], 0, 0);
        for result in IngestResult::ALL {
            let line = format!(
                "hookrelay_ingest_requests_total{{result=\"{}\"}} 0",
                result.as_str()
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for result in ReloadResult::ALL {
            let line = format!(
                "hookrelay_config_reloads_total{{result=\"{}\"}} 0",
                result.as_str()
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for outcome in DeliveryOutcome::ALL {
            let line = format!(
                "hookrelay_deliveries_total{{instance_name=\"a\",outcome=\"{}\"}} 0",
                outcome.as_str()
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for result in WalkResult::ALL {
            let line = format!(
                "hookrelay_changes_walks_total{{instance_name=\"c\",result=\"{}\"}} 0",
                result.as_str()
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(text.contains("hookrelay_changes_needs_authorize{instance_name=\"c\"} 0"));
        assert!(text.contains("hookrelay_change_entries_filtered_total{instance_name=\"c\"} 0"));
        assert!(!lines_of(&text, "a").iter().any(|l| l.contains("filtered")));
        assert!(!lines_of(&text, "a").iter().any(|l| l.contains("changes")));
        assert!(text.contains("hookrelay_outage{instance_name=\"a\"} 0"));
        m.set_outage("a", true);
        m.set_outage("nowhere", true);
        let text = m.render(&[], 0, 0);
        assert!(text.contains("hookrelay_outage{instance_name=\"a\"} 1"));
        assert!(!text.contains("nowhere"), "{text}");
        m.set_outage("a", false);
        assert!(text.contains(&format!(
            "hookrelay_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
        )));
        assert!(!text.contains("instance=\""), "{text}");

        m.delivery("a", DeliveryOutcome::Delivered, Duration::from_millis(3));
        m.changes_walk("c", WalkResult::Done);
        m.change_entries_filtered("c", 3);
        assert!(
            m.render(&[], 0, 0)
                .contains("hookrelay_change_entries_filtered_total{instance_name=\"c\"} 3")
        );
        // c stops being a change-events instance; a goes.
        m.configure(&[series("c", false), series("d", false)]);
        let text = m.render(&[], 0, 0);
        assert_eq!(lines_of(&text, "a"), Vec::<String>::new());
        assert!(!lines_of(&text, "c").iter().any(|l| l.contains("changes")));
        assert!(!lines_of(&text, "c").iter().any(|l| l.contains("filtered")));
        assert!(text.contains("hookrelay_events_accepted_total{instance_name=\"d\"} 0"));
        // A late recording for a removed instance creates nothing, nor a change-events one for
        // an instance that is not one.
        m.delivery("a", DeliveryOutcome::Error, Duration::from_millis(3));
        m.quarantined("a");
        m.changes_walk("c", WalkResult::Error);
        m.set_changes_needs_authorize("d", false);
        m.change_entries_filtered("c", 1);
        let text = m.render(&[], 0, 0);
        assert_eq!(lines_of(&text, "a"), Vec::<String>::new());
        for name in ["c", "d"] {
            assert!(
                !lines_of(&text, name)
                    .iter()
                    .any(|l| l.contains("changes") || l.contains("filtered")),
                "{text}"
            );
        }
    }

    #[test]
    fn queue_gauges_follow_the_figures() {
        let m = Metrics::new();
        m.configure(&[series("a", false)]);
        let figures = |name: &str, queued| QueueFigures {
            instance: name.to_owned(),
            queued,
            dead: 0,
            oldest_pending_age_seconds: 0.0,
        };
        let text = m.render(&[figures("a", 0), figures("held", 4)], 0, 0);
        assert!(
            text.contains("hookrelay_queue_depth{instance_name=\"held\"} 4"),
            "{text}"
        );
        let text = m.render(&[figures("a", 1)], 0, 0);
        assert_eq!(lines_of(&text, "held"), Vec::<String>::new());
        assert!(
            text.contains("hookrelay_queue_depth{instance_name=\"a\"} 1"),
            "{text}"
        );
    }
}
