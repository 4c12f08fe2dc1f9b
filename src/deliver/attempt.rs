//! One delivery attempt: build and sign the envelope, POST it, classify the answer, and commit
//! the outcome (delivered, rescheduled or dead-lettered) before the lane forgets the event. The
//! delivery slot is freed as soon as the answer is in, so the next send does not wait for the
//! commit.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::outcome::{self, Outcome};
use super::{Context, LaneStats, envelope, ssrf};
use crate::config::{Delivery, Instance, Secret};
use crate::retry::{self, RetryPolicy};
use crate::sign::{self, WebhookSecret};
use crate::store::{Attempt, DeadLetter, DeliveredOutcome, Event, Retry};
use crate::time;

/// What the lane learns when an attempt is over and its outcome is committed.
#[derive(Debug)]
pub struct Done {
    pub id: ulid::Ulid,
    /// When the event is due again, if it was rescheduled.
    pub next_due_ms: Option<u64>,
}

/// What an attempt's answer tells the lane about its instance (outage mode, `Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A 2xx.
    Success,
    /// Anything else, with its error; `hold_until_ms`: a `Retry-After` holds the whole
    /// instance until then (Unix ms).
    Failure {
        error: String,
        hold_until_ms: Option<u64>,
    },
    /// No request went out (the event was out of time, or its instance is gone).
    Nothing,
}

/// What an attempt tells its lane, in this order.
#[derive(Debug)]
pub enum Progress {
    /// The consumer answered (or the request failed): the delivery slot is free.
    Answered(Heard),
    /// The outcome is committed: the lane may forget the id.
    Settled(Done),
}

/// An attempt's hold on its lane's delivery slot; released once, at the answer or at the end.
pub struct Slot {
    lane: mpsc::UnboundedSender<Progress>,
    released: bool,
}

impl Slot {
    pub fn new(lane: mpsc::UnboundedSender<Progress>) -> Slot {
        Slot {
            lane,
            released: false,
        }
    }

    /// Frees the delivery slot and tells the lane what was heard (the first call only).
    fn release(&mut self, heard: Heard) {
        if !self.released {
            self.released = true;
            let _ = self.lane.send(Progress::Answered(heard));
        }
    }

    /// Reports the committed outcome, freeing the slot first if that has not happened yet.
    pub fn settle(mut self, done: Done) {
        self.release(Heard::Nothing);
        let _ = self.lane.send(Progress::Settled(done));
    }
}

/// Runs one attempt of `event` for `instance` and commits its outcome. The slot is released
/// when the consumer's answer is in, before the outcome is committed.
///
/// The event's age leaves out the time its instance spent in outages; while the instance is
/// in one, neither its age nor this attempt counts (a failure reschedules it for the next
/// probe), and neither does an attempt answered with a `Retry-After` (due then instead).
pub async fn run(
    ctx: &Context,
    stats: &LaneStats,
    instance: &Instance,
    event: &Event,
    slot: &mut Slot,
) -> Option<u64> {
    let delivery = &instance.delivery;
    let now_ms = time::now_ms();
    let (age, in_outage) = {
        let outage = stats.outage.load();
        let age = retry::effective_age(event.age_base_ms, now_ms, outage.intervals(now_ms));
        (age, outage.active())
    };
    if age >= delivery.max_age && !in_outage {
        let dead = DeadLetter {
            attempts: event.attempts,
            reason: "max_age reached".into(),
            last_status: None,
            last_error: None,
        };
        return give_up(ctx, instance, event, dead, None).await;
    }
    let started = Instant::now();
    let (outcome, envelope) = send(ctx, instance, event).await;
    let hold = held_for(delivery, &outcome);
    slot.release(heard(&outcome, hold));
    let elapsed = started.elapsed();
    ctx.metrics
        .delivery(&instance.name, outcome.kind(), elapsed);
    let tried = |status: Option<u16>, error: Option<String>| Attempt {
        at_ms: now_ms,
        duration_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
        status,
        error,
    };
    let attempts = event.attempts.saturating_add(1);
    match outcome {
        Outcome::Delivered { status } => {
            debug!(instance = %instance.name, event = %event.id, status, attempts, "delivered");
            stats.record_success();
            // The history's write: in the batch that removes the event (see
            // `Store::delivered_with`).
            let delivered = DeliveredOutcome {
                delivered_ms: time::now_ms(),
                attempt: Some(tried(Some(status), None)),
                envelope,
                keep: keeps_history(delivery),
            };
            match ctx
                .store
                .delivered_with(&instance.name, event.id, delivered)
                .await
            {
                // The next change envelope of the pair is due now: the lane looks for it.
                Ok(promoted) => promoted,
                Err(err) => {
                    warn!(instance = %instance.name, event = %event.id, error = %err, "delivered, but the store could not record it");
                    None
                }
            }
        }
        Outcome::Gone { status } => {
            let dead = DeadLetter {
                attempts,
                reason: format!("callback answered {status} Gone"),
                last_status: Some(status),
                last_error: None,
            };
            // `status` shows it as the instance's last error.
            stats.record_error(&dead.reason);
            let attempt = tried(Some(status), Some(dead.reason.clone()));
            give_up(ctx, instance, event, dead, Some(attempt)).await
        }
        Outcome::Failed {
            status,
            error,
            definite_refusal,
            retry_after: _,
        } => {
            stats.record_error(&error);
            // In an outage (begun before or while this attempt ran) nothing counts.
            let in_outage = in_outage || stats.outage.load().active();
            let counts = !in_outage && hold.is_none();
            let attempts = if counts { attempts } else { event.attempts };
            debug!(instance = %instance.name, event = %event.id, ?status, %error, attempts, counts, "attempt failed");
            let attempt = tried(status, Some(error.clone()));
            if counts && retry::exhausted(attempts, delivery.max_attempts, age, delivery.max_age) {
                let reason = if attempts >= delivery.max_attempts {
                    "max_attempts reached"
                } else {
                    "max_age reached"
                };
                let dead = DeadLetter {
                    attempts,
                    reason: reason.into(),
                    last_status: status,
                    last_error: Some(error),
                };
                return give_up(ctx, instance, event, dead, Some(attempt)).await;
            }
            let delay = match hold {
                Some(wait) => wait,
                None if in_outage => delivery.probe_interval,
                None => retry_delay(delivery, attempts),
            };
            let due_ms = time::now_ms().saturating_add(retry::millis(delay));
            let retry = Retry {
                attempts,
                due_ms,
                definite_refusal,
                last_status: status,
                last_error: Some(error),
            };
            let rescheduled = ctx
                .store
                .reschedule_after(&instance.name, event.id, retry, attempt)
                .await;
            match rescheduled {
                Ok(()) => Some(due_ms),
                Err(err) => {
                    warn!(instance = %instance.name, event = %event.id, error = %err, "could not reschedule");
                    None
                }
            }
        }
    }
}

/// `Some(history_max_bytes)` when the instance keeps delivered events (`history` above 0s).
pub fn keeps_history(delivery: &Delivery) -> Option<u64> {
    (!delivery.history.is_zero()).then_some(delivery.history_max_bytes)
}

fn retry_delay(delivery: &Delivery, attempts: u32) -> Duration {
    let policy = RetryPolicy {
        initial: delivery.retry_initial,
        multiplier: delivery.retry_multiplier,
        max_interval: delivery.retry_max_interval,
    };
    retry::retry_delay(&policy, attempts, retry::random_jitter(), None)
}

/// How long a `Retry-After` (on a 429 or 503) holds the instance: capped at
/// `retry_max_interval`.
fn held_for(delivery: &Delivery, outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Failed {
            retry_after: Some(wait),
            ..
        } => Some((*wait).min(delivery.retry_max_interval)),
        _ => None,
    }
}

/// What the lane learns from `outcome`; `hold`: how long a `Retry-After` holds the instance.
fn heard(outcome: &Outcome, hold: Option<Duration>) -> Heard {
    match outcome {
        Outcome::Delivered { .. } => Heard::Success,
        Outcome::Gone { status } => Heard::Failure {
            error: format!("callback answered {status} Gone"),
            hold_until_ms: None,
        },
        Outcome::Failed { error, .. } => Heard::Failure {
            error: error.clone(),
            hold_until_ms: hold.map(|wait| time::now_ms().saturating_add(retry::millis(wait))),
        },
    }
}

/// Dead-letters `event`; returns when the next change envelope of its pair is due, if one was
/// promoted.
async fn give_up(
    ctx: &Context,
    instance: &Instance,
    event: &Event,
    dead: DeadLetter,
    attempt: Option<Attempt>,
) -> Option<u64> {
    info!(
        instance = %instance.name,
        event = %event.id,
        account = %event.account,
        attempts = dead.attempts,
        status = ?dead.last_status,
        error = dead.last_error.as_deref().unwrap_or(""),
        reason = %dead.reason,
        "dead-lettered"
    );
    let dead_lettered = ctx
        .store
        .dead_letter_after(&instance.name, event.id, dead, attempt)
        .await;
    match dead_lettered {
        Ok(promoted) => promoted,
        Err(err) => {
            warn!(instance = %instance.name, event = %event.id, error = %err, "could not dead-letter");
            None
        }
    }
}

/// Sends the signed envelope and classifies the answer; also answers the envelope, if it was
/// sent.
async fn send(ctx: &Context, instance: &Instance, event: &Event) -> (Outcome, Option<Bytes>) {
    let Some(url) = instance.callback_url.as_ref() else {
        return (refused("no callback URL configured".into()), None);
    };
    if !instance.delivery.allow_private_destinations {
        // Through a proxy the name is resolved and checked here (the proxy connects); without
        // one the client's resolver checks names at connect time.
        let checked = match &instance.delivery.proxy {
            Some(_) => ssrf::check_before_proxy(url, instance.delivery.timeout)
                .await
                .map_err(|e| e.to_string()),
            None => ssrf::check_literal(url).map_err(|e| e.to_string()),
        };
        if let Err(err) = checked {
            return (refused(err), None);
        }
    }
    let Some(client) = ctx.clients.load().get(&instance.delivery).cloned() else {
        return (
            refused("no HTTP client for this instance's settings".into()),
            None,
        );
    };
    let body = Bytes::from(envelope::build(event, instance));
    let headers = headers(instance, event, &body);
    let request = client
        .post(url.clone())
        .headers(headers)
        .timeout(instance.delivery.timeout)
        .body(body.clone());
    let outcome = match request.send().await {
        Ok(response) => {
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header(RETRY_AFTER);
            let location = header(LOCATION);
            outcome::from_status(
                response.status().as_u16(),
                retry_after.as_deref(),
                location.as_deref(),
                SystemTime::now(),
            )
        }
        Err(err) => outcome::from_transport_error(&err),
    };
    (outcome, Some(body))
}

fn refused(error: String) -> Outcome {
    Outcome::Failed {
        status: None,
        error,
        definite_refusal: true,
        retry_after: None,
    }
}

/// The delivery headers (docs/protocol.md): the instance's own (`headers`, none of which is
/// one of the following), ids, the attempt's timestamp, and the signatures of exactly `body`.
fn headers(instance: &Instance, event: &Event, body: &[u8]) -> HeaderMap {
    signed_headers(
        instance.delivery.headers.map().clone(),
        &event.id.to_string(),
        instance.signature_key.as_ref(),
        instance.previous_signature_key.as_ref(),
        body,
    )
}

/// `base` with the headers every signed POST carries (docs/protocol.md): the JSON content type,
/// `id` as `Elements-Webhook-Id` and `webhook-id`, this moment's `webhook-timestamp`, and with a
/// `key` the signatures of exactly `body` (Cloud Elements', and with a `whsec_` key the
/// Standard Webhooks one, signed with `previous` too during a rotation). Operator alerts are
/// signed the same way.
pub fn signed_headers(
    mut headers: HeaderMap,
    id: &str,
    key: Option<&Secret>,
    previous: Option<&Secret>,
    body: &[u8],
) -> HeaderMap {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("elements-webhook-id", id.to_owned());
    put("webhook-id", id.to_owned());
    put("webhook-timestamp", timestamp.to_string());
    if let Some(key) = key {
        put(
            "elements-webhook-signature",
            sign::elements_signature(key.expose().as_bytes(), body),
        );
        let current = WebhookSecret::parse(key.expose());
        let previous = previous.and_then(|k| WebhookSecret::parse(k.expose()));
        if let Some(value) = sign::standard_signature_header(
            current.as_ref(),
            previous.as_ref(),
            id,
            timestamp,
            body,
        ) {
            put("webhook-signature", value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(progress: &Progress) -> bool {
        matches!(progress, Progress::Answered(_))
    }

    #[test]
    fn a_retry_after_holds_the_instance_for_at_most_retry_max_interval() {
        let delivery = Delivery {
            retry_max_interval: Duration::from_secs(60),
            ..Delivery::default()
        };
        let failed = |retry_after| Outcome::Failed {
            status: Some(429),
            error: "HTTP 429 Too Many Requests".into(),
            definite_refusal: true,
            retry_after,
        };
        let two = failed(Some(Duration::from_secs(2)));
        assert_eq!(held_for(&delivery, &two), Some(Duration::from_secs(2)));
        let day = failed(Some(Duration::from_secs(86_400)));
        assert_eq!(held_for(&delivery, &day), Some(Duration::from_secs(60)));
        assert_eq!(held_for(&delivery, &failed(None)), None);

        let before = time::now_ms();
        let Heard::Failure {
            error,
            hold_until_ms: Some(until),
        } = heard(&day, held_for(&delivery, &day))
        else {
            panic!("a held failure");
        };
        assert_eq!(error, "HTTP 429 Too Many Requests");
        assert!((before + 60_000..=time::now_ms() + 60_000).contains(&until));
        assert_eq!(
            heard(&Outcome::Delivered { status: 204 }, None),
            Heard::Success
        );
        assert_eq!(
            heard(&Outcome::Gone { status: 410 }, None),
            Heard::Failure {
                error: "callback answered 410 Gone".into(),
                hold_until_ms: None
            }
        );
    }

    #[test]
    fn a_slot_is_released_once_and_before_the_outcome_is_settled() {
        let (lane, mut heard) = mpsc::unbounded_channel();
        let mut slot = Slot::new(lane.clone());
        slot.release(Heard::Success);
        slot.release(Heard::Nothing);
        slot.settle(Done {
            id: ulid::Ulid::nil(),
            next_due_ms: None,
        });
        // An attempt that never sent (max_age) frees its slot when it settles.
        Slot::new(lane).settle(Done {
            id: ulid::Ulid::nil(),
            next_due_ms: None,
        });
        let mut order = Vec::new();
        while let Ok(progress) = heard.try_recv() {
            order.push(answered(&progress));
        }
        assert_eq!(order, vec![true, false, true, false]);
    }
}
