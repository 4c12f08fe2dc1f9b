//! `hookrelay run`: wires the stages together and runs the control loop.
//!
//! Order at start: validate the config (before anything binds), open and recover the store,
//! bind both listeners, start lanes, queue catch-up events if the last stop was unclean or
//! long ago, then READY. Order at stop: STOPPING, stop accepting, finish in-flight attempts
//! within `shutdown_timeout`, close the store (marking a clean stop), exit.
//!
//! The process plumbing only `run` uses lives beside it: Unix [`signals`], the systemd notify
//! protocol ([`sd_notify`]) and the [`watchdog`] check.

pub mod sd_notify;
pub mod signals;
pub mod watchdog;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::alerts::{self, Alert};
use crate::changes::Walker;
use crate::config::{self, Config, ConfigError, EventsMode, Live, LiveConfig};
use crate::deliver::{Dispatcher, OutageListener, OutageNotice};
use crate::http::{self, Limits};
use crate::ingest::Ingest;
use crate::ops::admin::Admin;
use crate::store::{self, OpenMode, PreviousRun, Store, StoreOptions};
use crate::telemetry::metrics::{InstanceSeries, Metrics, ReloadResult};
use crate::time;

use sd_notify::Notifier;
use signals::{Control, Signals};
use watchdog::Pulse;

/// Down for longer than this (or stopped uncleanly), every known pair gets a catch-up event.
pub const CATCH_UP_AFTER: Duration = Duration::from_secs(5 * 60);
/// Test-only override of [`CATCH_UP_AFTER`] (a duration such as `2s`); not for production.
pub const CATCH_UP_AFTER_ENV: &str = "HOOKRELAY_TEST_CATCH_UP_AFTER";
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const INGEST_LIMITS: Limits = Limits {
    max_connections: 1024,
    header_read_timeout: Duration::from_secs(5),
};
const ADMIN_LIMITS: Limits = Limits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(5),
};
/// With `server.tls_cert`/`tls_key`: how long a client may take over the TLS handshake, before
/// the header-read timeout starts.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the store failed ({0}); stopped so that the service manager restarts hookrelay")]
    StoreFailed(String),
}

/// Runs the daemon until SIGTERM/SIGINT (Ok) or a store failure (Err).
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let loaded = Config::load(config_path)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let config = loaded.config;
    let notifier = Notifier::from_env();
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let (store, previous) = open_store(&config).await?;
    let ingest_listener = bind("server.listen", config.server.listen).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let shutdown_timeout = config.server.shutdown_timeout;
    let live = config::new_live(config);
    let metrics = Arc::new(Metrics::new());
    metrics.set_config_generation(1);
    metrics.configure(&instance_series(&live.load().config));
    let (alerts, alert_tasks) = alerts::start(store.clone(), live.clone());
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        live.clone(),
        metrics.clone(),
        outage_alerts(alerts.clone()),
    )?);
    catch_up_if_needed(&store, &live, &dispatcher, previous).await?;
    let walker = Arc::new(Walker::new(
        store.clone(),
        live.clone(),
        dispatcher.clone(),
        metrics.clone(),
        alerts.clone(),
    )?);
    walker.start();

    let (stop_ingest, ingest_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let ingest = Arc::new(Ingest {
        live: live.clone(),
        alerts: alerts.clone(),
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        walker: walker.clone(),
        metrics: metrics.clone(),
    });
    let admin = Arc::new(Admin {
        live: live.clone(),
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        metrics: metrics.clone(),
        walker: walker.clone(),
        ready: Default::default(),
    });
    let ingest_task = tokio::spawn(http::serve_with_tls(
        ingest_listener,
        move |request| ingest.clone().handle(request),
        INGEST_LIMITS,
        Some(ingest_tls(&live, &metrics)),
        ingest_stopped,
    ));
    let admin_for_server = admin.clone();
    let admin_task = tokio::spawn(http::serve(
        admin_listener,
        move |request| admin_for_server.clone().handle(request),
        ADMIN_LIMITS,
        admin_stopped,
    ));
    let pulse = Arc::new(Pulse::new());
    let background =
        spawn_housekeeping(store.clone(), live.clone(), notifier.clone(), pulse.clone());

    admin.ready.store(true, Ordering::Release);
    notifier.ready();
    notifier.status(&status_line("ready", &live, &store));
    info!(listen = %live.load().config.server.listen, tls = live.load().config.server.tls.is_some(), admin = %live.load().config.admin.listen, "hookrelay ready");

    let controls = Controls {
        config_path,
        live: &live,
        dispatcher: &dispatcher,
        walker: &walker,
        metrics: &metrics,
        store: &store,
        notifier: &notifier,
        pulse: &pulse,
    };
    let outcome = control_loop(&mut signals, &controls).await;

    notifier.stopping();
    notifier.status("stopping: finishing in-flight deliveries");
    admin.ready.store(false, Ordering::Release);
    info!("stopping: no new notifications, finishing in-flight deliveries");
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    let _ = stop_ingest.send(true);
    walker.stop();
    // Ingest connections close and in-flight deliveries finish side by side, each within the
    // whole budget: a client sending its body slowly takes no time from the deliveries, and
    // the stop does not wait for it past the deadline.
    tokio::join!(
        close_by(ingest_task, deadline),
        dispatcher.drain(shutdown_timeout)
    );
    background.abort();
    // Queued alerts stay in the store; one in flight now is sent again after the next start.
    alert_tasks.stop().await;
    if let Err(err) = store.close().await {
        warn!(error = %err, "store did not close cleanly");
    }
    let _ = stop_admin.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    info!("stopped");
    outcome
}

/// Waits until `deadline` for the ingest listener to close its connections gracefully, then
/// ends those still open (a body still arriving, say): their requests get no answer, so
/// Dropbox retries them, and nothing they brought was acknowledged.
async fn close_by(mut ingest: tokio::task::JoinHandle<()>, deadline: tokio::time::Instant) {
    if tokio::time::timeout_at(deadline, &mut ingest)
        .await
        .is_err()
    {
        warn!("ingest requests still open at shutdown_timeout were ended without an answer");
        ingest.abort();
        let _ = ingest.await;
    }
}

async fn open_store(config: &Config) -> Result<(Store, PreviousRun), DaemonError> {
    let options = StoreOptions {
        path: config.storage.path.clone(),
        cache_bytes: config.storage.cache_bytes,
        mode: OpenMode::Daemon,
        journal_bytes: store::DEFAULT_JOURNAL_BYTES,
    };
    let opened = tokio::task::spawn_blocking(move || Store::open(&options, store::fdatasync()))
        .await
        .map_err(|e| store::Error::Failed(e.to_string()))??;
    Ok(opened)
}

/// TLS on the Dropbox listener, read per accepted connection from the configuration in force,
/// so a reload with a renewed certificate (or with TLS switched on or off) applies to every
/// connection accepted after it.
fn ingest_tls(live: &LiveConfig, metrics: &Arc<Metrics>) -> http::Tls {
    let live = live.clone();
    let metrics = metrics.clone();
    http::Tls {
        source: Arc::new(move || {
            let live = live.load();
            live.config
                .server
                .tls
                .as_ref()
                .map(|tls| tls.server_config())
        }),
        handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        on_failure: Arc::new(move |failure| metrics.tls_handshake_failure(failure.as_str())),
    }
}

/// The lanes' outage notices, raised as operator alerts (`outage`, `recovered`).
fn outage_alerts(alerts: alerts::Alerts) -> OutageListener {
    Arc::new(move |notice| {
        alerts.raise(match notice {
            OutageNotice::Began {
                instance,
                since_ms,
                last_error,
            } => Alert::Outage {
                instance,
                since_ms,
                last_error,
            },
            OutageNotice::Ended {
                instance,
                since_ms,
                last_error,
            } => Alert::Recovered {
                instance,
                since_ms,
                last_error,
            },
        })
    })
}

async fn bind(key: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { key, addr, source })
}

/// Catch-up: after an unclean stop or a long outage, every (instance, account) seen before
/// gets one `UNKNOWN` event, since Dropbox gave up retrying after about ten minutes.
async fn catch_up_if_needed(
    store: &Store,
    live: &LiveConfig,
    dispatcher: &Dispatcher,
    previous: PreviousRun,
) -> Result<(), DaemonError> {
    let threshold = std::env::var(CATCH_UP_AFTER_ENV)
        .ok()
        .and_then(|v| config::parse_duration(&v).ok())
        .unwrap_or(CATCH_UP_AFTER);
    let down_ms = previous
        .last_alive_ms
        .map(|alive| time::now_ms().saturating_sub(alive));
    let long_down = down_ms.is_some_and(|ms| ms > threshold.as_millis() as u64);
    let first_start = previous.last_alive_ms.is_none();
    if first_start || (previous.clean_stop && !long_down) {
        return Ok(());
    }
    let instances: Vec<String> = live
        .load()
        .config
        .instances
        .iter()
        .filter(|i| i.enabled && i.events == config::EventsMode::Notify)
        .map(|i| i.name.clone())
        .collect();
    // Change-events instances walk their cursors instead: every known account owes a walk.
    let mut walks = Vec::new();
    for instance in live.load().config.instances.iter() {
        if instance.enabled && instance.events == config::EventsMode::Changes {
            for account in store.cursor_accounts(&instance.name)? {
                walks.push((instance.name.clone(), account));
            }
        }
    }
    if !walks.is_empty() {
        info!(
            walks = walks.len(),
            "catch-up: change-events accounts walk their cursors"
        );
        store.mark_walk(walks).await?;
    }
    let events = store.catch_up(instances).await?;
    info!(
        events = events.len(),
        clean_stop = previous.clean_stop,
        down_seconds = down_ms.map(|ms| ms / 1000),
        "queued catch-up events: changes may have been missed while hookrelay was down"
    );
    for event in events {
        dispatcher.offer(event);
    }
    Ok(())
}

/// Heartbeat (for "down since") with a `STATUS=` line, dead-letter retention, and the
/// watchdog: `WATCHDOG=1` only while the control loop turns and the store committer answers.
fn spawn_housekeeping(
    store: Store,
    live: LiveConfig,
    notifier: Notifier,
    pulse: Arc<Pulse>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        let watchdog_every = sd_notify::watchdog_interval().filter(|_| notifier.is_enabled());
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let _ = store.heartbeat().await;
                    notifier.status(&status_line("ready", &live, &store));
                }
                _ = retention.tick() => {
                    expire_dead_letters(&store, &live).await;
                    expire_history(&store, &live).await;
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    // Half the ping interval for the check, so a slow answer still leaves
                    // the next ping inside WatchdogSec.
                    let within = watchdog_every.unwrap_or_default() / 2;
                    match watchdog::runtime_answers(&store, &pulse, within).await {
                        Ok(()) => notifier.watchdog(),
                        Err(reason) => warn!(reason, "not answering the systemd watchdog"),
                    }
                }
            }
        }
    })
}

/// The one-line `STATUS=`: state, instances, queue and dead-letter totals, config generation.
fn status_line(state: &str, live: &LiveConfig, store: &Store) -> String {
    let live = live.load();
    let counters = store.counters();
    let queued: u64 = counters.values().map(|c| c.pending_events).sum();
    let dead: u64 = counters.values().map(|c| c.dead_events).sum();
    format!(
        "{state}; {} instance(s), {queued} queued, {dead} dead-lettered; config generation {}",
        live.config.instances.len(),
        live.generation
    )
}

/// Deletes dead letters older than their instance's `dead_letter_ttl`; held instances keep
/// theirs for the longest configured ttl.
async fn expire_dead_letters(store: &Store, live: &LiveConfig) {
    let now = time::now_ms();
    let cutoff = |ttl: Duration| now.saturating_sub(ttl.as_millis() as u64);
    let live = live.load();
    let instances = &live.config.instances;
    let longest = instances.iter().map(|i| i.delivery.dead_letter_ttl).max();
    let cutoffs = store::Cutoffs {
        by_instance: instances
            .iter()
            .map(|i| (i.name.clone(), cutoff(i.delivery.dead_letter_ttl)))
            .collect(),
        otherwise: cutoff(longest.unwrap_or(Duration::from_secs(30 * 86_400))),
    };
    match store.expire_dead(cutoffs).await {
        Ok(0) => {}
        Ok(count) => info!(count, "deleted dead letters past dead_letter_ttl"),
        Err(err) => warn!(error = %err, "dead-letter retention failed"),
    }
}

/// Deletes delivered history accepted longer ago than its instance's `history` (all of it for
/// `history = "0s"`); a removed instance's is kept for the longest configured `history`, until
/// `dead purge --instance` forgets it.
async fn expire_history(store: &Store, live: &LiveConfig) {
    let now = time::now_ms();
    let cutoff = |kept: Duration| now.saturating_sub(kept.as_millis() as u64);
    let live = live.load();
    let instances = &live.config.instances;
    let longest = instances.iter().map(|i| i.delivery.history).max();
    let cutoffs = store::Cutoffs {
        by_instance: instances
            .iter()
            .map(|i| (i.name.clone(), cutoff(i.delivery.history)))
            .collect(),
        otherwise: cutoff(longest.unwrap_or(Duration::from_secs(7 * 86_400))),
    };
    let with_history: Vec<String> = store
        .counters()
        .iter()
        .filter(|(_, counters)| counters.history_events > 0)
        .map(|(name, _)| name.clone())
        .collect();
    if with_history.is_empty() {
        return;
    }
    match store.expire_history(cutoffs, with_history).await {
        Ok(0) => {}
        Ok(count) => info!(count, "deleted delivered history past history"),
        Err(err) => warn!(error = %err, "history retention failed"),
    }
}

/// What the control loop acts on.
struct Controls<'a> {
    config_path: &'a Path,
    live: &'a LiveConfig,
    dispatcher: &'a Dispatcher,
    walker: &'a Walker,
    metrics: &'a Metrics,
    store: &'a Store,
    notifier: &'a Notifier,
    /// Beats on every turn, for the watchdog.
    pulse: &'a Pulse,
}

async fn control_loop(signals: &mut Signals, c: &Controls<'_>) -> Result<(), DaemonError> {
    let (live, store, notifier) = (c.live, c.store, c.notifier);
    let mut store_check = tokio::time::interval(Duration::from_millis(250));
    loop {
        c.pulse.beat();
        tokio::select! {
            control = signals.next() => match control {
                Control::Shutdown => return Ok(()),
                Control::Reload => {
                    // Valid or not, a reload ends in READY=1 (the old config keeps serving).
                    notifier.reloading();
                    notifier.status("reloading");
                    let applied = reload(c.config_path, live, c.dispatcher, c.metrics);
                    if applied {
                        c.walker.reconfigured();
                    }
                    notifier.ready();
                    let state = if applied { "ready (reloaded)" } else { "ready (reload rejected, old config kept)" };
                    notifier.status(&status_line(state, live, store));
                }
            },
            _ = store_check.tick() => {
                if let Some(failure) = store.failure() {
                    error!(error = failure, "the store failed; stopping");
                    notifier.status("store failed");
                    return Err(DaemonError::StoreFailed(failure.to_owned()));
                }
            }
        }
    }
}

/// The configured instances, as the metrics need them.
fn instance_series(config: &Config) -> Vec<InstanceSeries> {
    config
        .instances
        .iter()
        .map(|i| InstanceSeries {
            name: i.name.clone(),
            changes: i.events == EventsMode::Changes,
        })
        .collect()
}

/// Re-reads the file through the same path as start-up; on any problem the old config stays.
/// Returns whether the new one was applied.
fn reload(
    config_path: &Path,
    live: &LiveConfig,
    dispatcher: &Dispatcher,
    metrics: &Metrics,
) -> bool {
    let current = live.load_full();
    let result = Config::load(config_path)
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            for warning in &loaded.warnings {
                warn!("{warning}");
            }
            let blockers = current.config.reload_blockers(&loaded.config);
            if blockers.is_empty() {
                Ok(loaded.config)
            } else {
                Err(format!(
                    "{}: {} cannot change on reload (restart hookrelay to change it); keeping the running configuration",
                    config_path.display(),
                    blockers.join(", ")
                ))
            }
        });
    let config = match result {
        Ok(config) => config,
        Err(problems) => {
            error!("reload rejected: {problems}");
            metrics.config_reload(ReloadResult::Error);
            return false;
        }
    };
    let clients = match dispatcher.prepare(&config) {
        Ok(clients) => clients,
        Err(err) => {
            error!(error = %err, "reload rejected: cannot build HTTP clients");
            metrics.config_reload(ReloadResult::Error);
            return false;
        }
    };
    let generation = current.generation + 1;
    if current.config.server.tls != config.server.tls {
        match &config.server.tls {
            Some(tls) => {
                info!(cert = %tls.cert_path().display(), key = %tls.key_path().display(), "TLS certificate loaded; new connections use it")
            }
            None => info!("TLS switched off; new connections are served plain HTTP"),
        }
    }
    // Before the swap: an instance the new config adds has its series when it is first used.
    metrics.configure(&instance_series(&config));
    live.store(Arc::new(Live { config, generation }));
    dispatcher.apply_config(&live.load().config, clients);
    metrics.config_reload(ReloadResult::Ok);
    metrics.set_config_generation(generation);
    info!(generation, "configuration reloaded");
    true
}
