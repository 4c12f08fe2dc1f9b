//! The Dropbox-facing listener (docs/protocol.md): the verification challenge, and notifications —
//! body read with a cap, `X-Dropbox-Signature` checked in constant time over the raw bytes, fanned
//! out to the matching instances, committed durably, then answered 200 and handed to delivery in
//! memory. Nothing rejected or unrouted is stored.

mod notification;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Method, Request, StatusCode};
use tracing::{debug, info, warn};

use crate::alerts::Alerts;
use crate::changes::Walker;
use crate::config::{Config, LiveConfig};
use crate::deliver::Dispatcher;
use crate::http::{HttpResponse, respond};
use crate::sign;
use crate::store::{IngestTarget, Placed, Store};
use crate::telemetry::metrics::{IngestResult, Metrics};
use crate::time;

pub use notification::{Accounts, parse_accounts};

/// The one path Dropbox calls.
pub const PATH: &str = "/events/dropbox";
/// Longest challenge echoed back.
const MAX_CHALLENGE_BYTES: usize = 1024;
/// Time allowed to receive a whole body once the headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// On a stored notification's 200, one per target: `<instance> <account> <event id>`, or
/// `<instance> <account> walk` for a change-events pair (docs/protocol.md); only when the
/// request asked with [`REPORT_HEADER`]` = events`, as `send-test` does. Dropbox never asks, so
/// its answers cost nothing more.
pub const EVENT_HEADER: HeaderName = HeaderName::from_static("hookrelay-event");
/// The request header that asks for the [`EVENT_HEADER`]s, with the value `events`.
pub const REPORT_HEADER: HeaderName = HeaderName::from_static("hookrelay-report");

/// Everything the handler needs, shared by all connections.
pub struct Ingest {
    pub live: LiveConfig,
    /// Raises `store_full` when `storage.max_bytes` starts refusing notifications.
    pub alerts: Alerts,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub walker: Arc<Walker>,
    pub metrics: Arc<Metrics>,
}

impl Ingest {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        let (status, result) = self.route(request).await;
        self.metrics.ingest_request(result);
        match status {
            Reply::Empty(code) => respond(code, "text/plain", Bytes::new()),
            Reply::Accepted(placed) => {
                let mut response = respond(StatusCode::OK, "text/plain", Bytes::new());
                for value in placed {
                    // Names and accounts are validated header-safe; one that is not is left out.
                    if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                        response.headers_mut().append(EVENT_HEADER, value);
                    }
                }
                response
            }
            Reply::Challenge(challenge) => {
                let mut response = respond(StatusCode::OK, "text/plain", challenge);
                response.headers_mut().insert(
                    "x-content-type-options",
                    hyper::header::HeaderValue::from_static("nosniff"),
                );
                response
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> (Reply, IngestResult) {
        if request.uri().path() != PATH {
            return (Reply::Empty(StatusCode::NOT_FOUND), IngestResult::NotFound);
        }
        match *request.method() {
            Method::GET => challenge(request.uri().query()),
            Method::POST => self.notification(request).await,
            _ => (
                Reply::Empty(StatusCode::METHOD_NOT_ALLOWED),
                IngestResult::BadMethod,
            ),
        }
    }

    async fn notification(&self, request: Request<Incoming>) -> (Reply, IngestResult) {
        let live = self.live.load_full();
        let config = &live.config;
        let max_body = config.server.max_body_bytes;
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max_body) {
            return (
                Reply::Empty(StatusCode::PAYLOAD_TOO_LARGE),
                IngestResult::TooLarge,
            );
        }
        let Some(signature) = request.headers().get("x-dropbox-signature").cloned() else {
            return (
                Reply::Empty(StatusCode::FORBIDDEN),
                IngestResult::BadSignature,
            );
        };
        let report = request
            .headers()
            .get(&REPORT_HEADER)
            .is_some_and(|value| value.as_bytes() == b"events");
        let limited = Limited::new(request.into_body(), max_body as usize);
        let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                return (
                    Reply::Empty(StatusCode::PAYLOAD_TOO_LARGE),
                    IngestResult::TooLarge,
                );
            }
            _ => return (Reply::Empty(StatusCode::BAD_REQUEST), IngestResult::BadBody),
        };
        let apps = verified_apps(config, &body, signature.as_bytes());
        if apps.is_empty() {
            debug!("notification with a wrong signature refused");
            return (
                Reply::Empty(StatusCode::FORBIDDEN),
                IngestResult::BadSignature,
            );
        }
        let accounts = match parse_accounts(&body) {
            Accounts::Listed(accounts) => accounts,
            Accounts::Team => return (Reply::Empty(StatusCode::OK), IngestResult::Unrouted),
            Accounts::Invalid => {
                return (Reply::Empty(StatusCode::BAD_REQUEST), IngestResult::BadBody);
            }
        };
        let targets = targets(config, &apps, &accounts);
        if targets.is_empty() {
            debug!(
                accounts = accounts.len(),
                "notification matches no enabled instance"
            );
            return (Reply::Empty(StatusCode::OK), IngestResult::Unrouted);
        }
        self.store_and_hand_off(config, body, targets, report).await
    }

    /// Stores the notification for `targets`, hands what it created to delivery, and answers;
    /// with `report`, the answer names the event of each target.
    async fn store_and_hand_off(
        &self,
        config: &Config,
        body: Bytes,
        targets: Vec<IngestTarget>,
        report: bool,
    ) -> (Reply, IngestResult) {
        if self.store.failure().is_some() {
            return (
                Reply::Empty(StatusCode::SERVICE_UNAVAILABLE),
                IngestResult::StoreFailed,
            );
        }
        let bytes = self.store.total_bytes();
        if bytes >= config.storage.max_bytes {
            warn!(
                limit = config.storage.max_bytes,
                "storage.max_bytes reached; answering 503 until the queue shrinks"
            );
            self.alerts.store_full(bytes, config.storage.max_bytes);
            return (
                Reply::Empty(StatusCode::SERVICE_UNAVAILABLE),
                IngestResult::StoreFull,
            );
        }
        self.alerts.store_below_limit();
        let instances: Vec<String> = targets.iter().map(|t| t.instance.clone()).collect();
        let accounts: Vec<String> = match report {
            true => targets.iter().map(|t| t.account.clone()).collect(),
            false => Vec::new(),
        };
        let placed = match self.store.ingest(body, time::now_ms(), targets).await {
            Ok(placed) => placed,
            Err(err) => {
                warn!(error = %err, "could not store a notification; answered 503");
                return (
                    Reply::Empty(StatusCode::SERVICE_UNAVAILABLE),
                    IngestResult::StoreFailed,
                );
            }
        };
        let (mut created, mut merged, mut walks) = (0, 0, 0);
        let mut events = Vec::with_capacity(accounts.len());
        for (index, (instance, place)) in instances.iter().zip(placed).enumerate() {
            self.metrics.event_accepted(instance);
            let id = match place {
                Placed::Created(event) => {
                    created += 1;
                    let id = event.id;
                    self.dispatcher.offer(event);
                    Some(id)
                }
                Placed::Parked { id } => {
                    created += 1;
                    // It waits in the store, due now: the lane is told to look there rather
                    // than find it at its next scheduled retry.
                    self.dispatcher.poke(instance);
                    Some(id)
                }
                Placed::Merged { id } => {
                    merged += 1;
                    Some(id)
                }
                Placed::WalkPending { instance, account } => {
                    walks += 1;
                    self.walker.request(&instance, &account);
                    None
                }
            };
            if let Some(account) = accounts.get(index) {
                events.push(match id {
                    Some(id) => format!("{instance} {account} {id}"),
                    None => format!("{instance} {account} walk"),
                });
            }
        }
        info!(events = created, merged, walks, instances = ?instances, "notification accepted");
        (Reply::Accepted(events), IngestResult::Accepted)
    }
}

enum Reply {
    Empty(StatusCode),
    /// 200 for a stored notification, with one [`EVENT_HEADER`] value per target when asked.
    Accepted(Vec<String>),
    Challenge(Bytes),
}

/// `GET ?challenge=X`: X echoed verbatim (≤ 1 KiB), else 400.
fn challenge(query: Option<&str>) -> (Reply, IngestResult) {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == "challenge").then_some(value)
        });
    match value.map(percent_decode) {
        Some(Some(value)) if value.len() <= MAX_CHALLENGE_BYTES => (
            Reply::Challenge(Bytes::from(value)),
            IngestResult::Challenge,
        ),
        _ => (
            Reply::Empty(StatusCode::BAD_REQUEST),
            IngestResult::BadChallenge,
        ),
    }
}

/// Decodes `%XX` and `+` of a query value; None if malformed.
fn percent_decode(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Some(out)
}

/// App keys whose secret verifies the signature (instances sharing a key share a secret).
fn verified_apps<'a>(config: &'a Config, body: &[u8], signature: &[u8]) -> Vec<&'a str> {
    let mut checked: Vec<&str> = Vec::new();
    let mut verified = Vec::new();
    for instance in &config.instances {
        let key = instance.app_key.as_str();
        if checked.contains(&key) {
            continue;
        }
        checked.push(key);
        if sign::verify_dropbox(instance.app_secret.expose().as_bytes(), body, signature) {
            verified.push(key);
        }
    }
    verified
}

/// One target per (enabled instance of a verified app, account it matches).
fn targets(config: &Config, apps: &[&str], accounts: &[String]) -> Vec<IngestTarget> {
    let mut targets = Vec::new();
    for instance in &config.instances {
        if !instance.enabled
            || instance.callback_url.is_none()
            || !apps.contains(&instance.app_key.as_str())
        {
            continue;
        }
        for account in accounts.iter().filter(|a| instance.matches_account(a)) {
            targets.push(IngestTarget {
                instance: instance.name.clone(),
                account: account.clone(),
                coalesce: instance.delivery.coalesce,
                quota_bytes: instance.delivery.max_queued_bytes,
                changes: instance.events == crate::config::EventsMode::Changes,
            });
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_is_echoed_decoded_and_capped() {
        let (reply, _) = challenge(Some("challenge=abc%20d+e&x=1"));
        assert!(matches!(reply, Reply::Challenge(ref b) if b.as_ref() == b"abc d e"));
        let (reply, _) = challenge(Some("x=1"));
        assert!(matches!(reply, Reply::Empty(StatusCode::BAD_REQUEST)));
        let long = format!("challenge={}", "a".repeat(1025));
        let (reply, _) = challenge(Some(&long));
        assert!(matches!(reply, Reply::Empty(StatusCode::BAD_REQUEST)));
        let (reply, _) = challenge(None);
        assert!(matches!(reply, Reply::Empty(StatusCode::BAD_REQUEST)));
        let (reply, _) = challenge(Some("challenge=%zz"));
        assert!(matches!(reply, Reply::Empty(StatusCode::BAD_REQUEST)));
    }
}
