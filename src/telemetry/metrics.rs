//! Prometheus metrics (docs/metrics.md), in base units. Counters and histograms are updated where
//! things happen; queue gauges are read from the store's counters when scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_text::CONTENT_TYPE;

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

/// Per-instance queue figures, set just before each scrape.
#[derive(Debug, Clone, Default)]
pub struct QueueFigures {
    pub instance: String,
    pub queued: u64,
    pub dead: u64,
    pub oldest_pending_age_seconds: f64,
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
    quarantined: Family<InstanceLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultInstanceLabel {
    pub instance_name: String,
    pub result: &'static str,
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
            quarantined: Family::default(),
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
            "hookrelay_quarantined",
            "Events whose stored record could not be read, dead-lettered as `corrupt`, by instance",
            metrics.quarantined.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn ingest_request(&self, result: &'static str) {
        self.ingest_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn event_accepted(&self, instance: &str) {
        self.events_accepted
            .get_or_create(&InstanceLabel {
                instance_name: instance.to_owned(),
            })
            .inc();
    }

    pub fn delivery(&self, instance: &str, outcome: &'static str, duration: Duration) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                instance_name: instance.to_owned(),
                outcome,
            })
            .inc();
        self.delivery_duration
            .get_or_create(&InstanceLabel {
                instance_name: instance.to_owned(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A TLS handshake on the Dropbox listener that failed (`"error"`) or timed out (`"timeout"`).
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A change-events walk ended (`done`, `reset`, `needs_authorize`, `error`).
    pub fn changes_walk(&self, instance: &str, result: &'static str) {
        self.changes_walks
            .get_or_create(&ResultInstanceLabel {
                instance_name: instance.to_owned(),
                result,
            })
            .inc();
    }

    pub fn changes_token_refresh(&self, instance: &str) {
        self.changes_token_refreshes
            .get_or_create(&InstanceLabel {
                instance_name: instance.to_owned(),
            })
            .inc();
    }

    pub fn set_changes_needs_authorize(&self, instance: &str, needs: bool) {
        self.changes_needs_authorize
            .get_or_create(&InstanceLabel {
                instance_name: instance.to_owned(),
            })
            .set(i64::from(needs));
    }

    /// An event whose stored record could not be read was dead-lettered as `corrupt`.
    pub fn quarantined(&self, instance: &str) {
        self.quarantined
            .get_or_create(&InstanceLabel {
                instance_name: instance.to_owned(),
            })
            .inc();
    }

    pub fn set_config_generation(&self, generation: u64) {
        self.config_generation.set(generation as i64);
    }

    /// Renders the text exposition, after setting the scrape-time gauges.
    pub fn render(&self, queues: &[QueueFigures], store_bytes: u64, disk_bytes: u64) -> String {
        self.store_bytes.set(store_bytes as i64);
        self.store_disk_bytes.set(disk_bytes as i64);
        for figures in queues {
            let label = InstanceLabel {
                instance_name: figures.instance.clone(),
            };
            self.queue_depth
                .get_or_create(&label)
                .set(figures.queued as i64);
            self.dead_letters
                .get_or_create(&label)
                .set(figures.dead as i64);
            self.oldest_pending_age
                .get_or_create(&label)
                .set(figures.oldest_pending_age_seconds);
            // Present at 0 from the first scrape.
            drop(self.quarantined.get_or_create(&InstanceLabel {
                instance_name: figures.instance.clone(),
            }));
        }
        let mut out = String::new();
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
