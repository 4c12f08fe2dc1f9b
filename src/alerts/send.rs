//! The sender: takes the alert queue in due order, one alert at a time at `[delivery]`
//! `rate_limit`, POSTs it to `alerts.url`, and commits the outcome: sent (removed), retried on
//! the events' schedule, or given up after `max_attempts`/`max_age` (logged at warn).
//!
//! The alert URL is written by the operator, and an internal chat server is the common case, so
//! it is not subject to the private-destination guard of callbacks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::format;
use crate::config::{self, LiveConfig, Url};
use crate::deliver::outcome::{self, Outcome};
use crate::deliver::signed_headers;
use crate::retry::{self, RetryPolicy};
use crate::store::{NextAlert, QueuedAlert, Store};
use crate::time;

/// How long the sender waits before looking at the queue again when nothing wakes it.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The sender's state: the client of the current proxy setting, and when it may send next.
pub(super) struct Sender {
    store: Store,
    live: LiveConfig,
    wake: Arc<Notify>,
    client: Option<(Option<Url>, reqwest::Client)>,
    next_send: tokio::time::Instant,
}

impl Sender {
    pub(super) fn new(store: Store, live: LiveConfig, wake: Arc<Notify>) -> Sender {
        Sender {
            store,
            live,
            wake,
            client: None,
            next_send: tokio::time::Instant::now(),
        }
    }

    /// Sends the queue until the task is aborted.
    pub(super) async fn run(mut self) {
        loop {
            let wait = self.step().await;
            if let Some(wait) = wait {
                let _ = tokio::time::timeout(wait, self.wake.notified()).await;
            }
        }
    }

    /// Handles the next alert, if one is due; answers how long to wait before the next look
    /// (`None`: look again at once).
    async fn step(&mut self) -> Option<Duration> {
        let live = self.live.load_full();
        let Some(settings) = live.config.alerts.as_ref() else {
            // Alerts are off: what is queued waits for them to be on again.
            return Some(IDLE_WAIT);
        };
        let now = time::now_ms();
        let store = self.store.clone();
        let next = tokio::task::spawn_blocking(move || store.next_alert(now)).await;
        let queued = match next {
            Ok(Ok(NextAlert::Due(queued))) => queued,
            Ok(Ok(NextAlert::Empty)) => return Some(IDLE_WAIT),
            Ok(Ok(NextAlert::At(due_ms))) => {
                return Some(Duration::from_millis(due_ms.saturating_sub(now)).min(IDLE_WAIT));
            }
            Ok(Ok(NextAlert::Unreadable { id, problem })) => {
                warn!(alert = %id, %problem, "an alert in the store cannot be read; dropped");
                self.finish(id).await;
                return None;
            }
            Ok(Err(err)) => {
                warn!(error = %err, "cannot read the alert queue");
                return Some(IDLE_WAIT);
            }
            Err(err) => {
                warn!(error = %err, "cannot read the alert queue");
                return Some(IDLE_WAIT);
            }
        };
        tokio::time::sleep_until(self.next_send).await;
        self.next_send = tokio::time::Instant::now() + interval(&settings.delivery);
        let outcome = self.send(settings, &queued).await;
        self.settle(settings, queued, outcome).await;
        None
    }

    async fn send(&mut self, settings: &config::Alerts, queued: &QueuedAlert) -> Outcome {
        let client = match self.client(settings) {
            Ok(client) => client,
            Err(err) => return failed(format!("cannot build the HTTP client: {err}")),
        };
        let body = format::body(queued, settings.format);
        let headers = headers(settings, queued, &body);
        let request = client
            .post(settings.url.clone())
            .headers(headers)
            .timeout(settings.delivery.timeout)
            .body(body);
        match request.send().await {
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                outcome::from_status(
                    response.status().as_u16(),
                    retry_after.as_deref(),
                    None,
                    SystemTime::now(),
                )
            }
            Err(err) => outcome::from_transport_error(&err),
        }
    }

    /// Commits what became of an attempt.
    async fn settle(&mut self, settings: &config::Alerts, queued: QueuedAlert, outcome: Outcome) {
        let alert = &queued.alert;
        let instance = alert.instance.as_deref().unwrap_or("");
        let attempts = alert.attempts.saturating_add(1);
        let (status, error, retry_after) = match outcome {
            Outcome::Delivered { status } => {
                info!(alert = %queued.id, r#type = %alert.kind, instance, status, attempts, "alert sent");
                self.finish(queued.id).await;
                return;
            }
            Outcome::Gone { status } => {
                let error = format!("the alert URL answered {status} Gone");
                warn!(alert = %queued.id, r#type = %alert.kind, instance, attempts, %error, "alert given up");
                self.finish(queued.id).await;
                return;
            }
            Outcome::Failed {
                status,
                error,
                retry_after,
                ..
            } => (status, error, retry_after),
        };
        let delivery = &settings.delivery;
        let age = Duration::from_millis(time::now_ms().saturating_sub(alert.at_ms));
        if retry::exhausted(attempts, delivery.max_attempts, age, delivery.max_age) {
            warn!(alert = %queued.id, r#type = %alert.kind, instance, attempts, ?status, %error, summary = %alert.summary, "alert given up: out of attempts or time");
            self.finish(queued.id).await;
            return;
        }
        let policy = RetryPolicy {
            initial: delivery.retry_initial,
            multiplier: delivery.retry_multiplier,
            max_interval: delivery.retry_max_interval,
        };
        let delay = retry::retry_delay(&policy, attempts, retry::random_jitter(), retry_after);
        let due_ms = time::now_ms().saturating_add(retry::millis(delay));
        info!(alert = %queued.id, r#type = %alert.kind, instance, attempts, ?status, %error, retry_in = ?delay, "alert not taken; will retry");
        if let Err(err) = self
            .store
            .retry_alert(queued.id, attempts, due_ms, error)
            .await
        {
            warn!(alert = %queued.id, error = %err, "could not reschedule an alert");
        }
    }

    async fn finish(&self, id: ulid::Ulid) {
        if let Err(err) = self.store.finish_alert(id).await {
            warn!(alert = %id, error = %err, "could not remove an alert from the queue");
        }
    }

    /// The client for the current proxy setting, built when it changes.
    fn client(&mut self, settings: &config::Alerts) -> Result<reqwest::Client, reqwest::Error> {
        if let Some((proxy, client)) = &self.client
            && *proxy == settings.proxy
        {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(proxy) = &settings.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy.clone())?);
        }
        let client = builder.build()?;
        self.client = Some((settings.proxy.clone(), client.clone()));
        Ok(client)
    }
}

/// The time between two sends at `rate_limit`.
fn interval(delivery: &config::Delivery) -> Duration {
    delivery.rate_limit.per / delivery.rate_limit.count.get()
}

fn failed(error: String) -> Outcome {
    Outcome::Failed {
        status: None,
        error,
        definite_refusal: true,
        retry_after: None,
    }
}

/// `Content-Type`, the alert id, the attempt's timestamp and, with `signature_key`, the
/// signatures of exactly `body`, as events carry them.
fn headers(settings: &config::Alerts, queued: &QueuedAlert, body: &[u8]) -> HeaderMap {
    signed_headers(
        HeaderMap::new(),
        &queued.id.to_string(),
        settings.signature_key.as_ref(),
        None,
        body,
    )
}
