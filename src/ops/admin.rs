//! The admin listener (SPEC §7): `/healthz`, `/readyz`, `/metrics`, and `/admin/status`.
//! Bearer-token checks use a constant-time comparison.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::config::LiveConfig;
use crate::deliver::Dispatcher;
use crate::http::{HttpResponse, respond};
use crate::ops::metrics::{self, Metrics, QueueFigures};
use crate::store::{self, Store};

/// What the admin endpoints read.
pub struct Admin {
    pub live: LiveConfig,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    /// True once listeners are bound and the store recovered; false again when stopping.
    pub ready: AtomicBool,
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    config_generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// One instance's line of `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// "active", "paused", "disabled" or "held" (no longer configured).
    pub state: String,
    pub queued: u64,
    pub queued_bytes: u64,
    pub dead_lettered: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/metrics") => {
                let body = self.render_metrics();
                respond(StatusCode::OK, metrics::CONTENT_TYPE, body)
            }
            (&Method::GET, "/admin/status") => {
                if !self.authorized(&request) {
                    return unauthorized();
                }
                json(StatusCode::OK, &self.status())
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    fn readyz(&self) -> HttpResponse {
        let generation = self.live.load().generation;
        let reason = if let Some(failure) = self.store.failure() {
            Some(failure)
        } else if !self.ready.load(Ordering::Acquire) {
            Some("starting or stopping")
        } else {
            None
        };
        let status = if reason.is_none() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(
            status,
            &Readiness {
                ready: reason.is_none(),
                config_generation: generation,
                reason,
            },
        )
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let live = self.live.load();
        let Some(token) = &live.config.admin.token else {
            return true;
        };
        let presented = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
    }

    /// Per instance: configured ones first, then held ones (pending events, no config).
    pub fn status(&self) -> Vec<InstanceStatus> {
        let live = self.live.load();
        let counters = self.store.counters();
        let now = store::now_ms();
        let mut names: Vec<String> = live
            .config
            .instances
            .iter()
            .map(|i| i.name.clone())
            .collect();
        for (name, counter) in counters.iter() {
            if counter.pending_events + counter.dead_events > 0 && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
            .into_iter()
            .map(|name| {
                let counter = counters.get(&name).copied().unwrap_or_default();
                let state = match live.config.instance(&name) {
                    None => "held",
                    Some(i) if !i.enabled => "disabled",
                    Some(i) if i.delivery.paused => "paused",
                    Some(_) => "active",
                };
                let lane = self.dispatcher.stats(&name);
                let oldest = self.store.oldest_pending_ms(&name).ok().flatten();
                InstanceStatus {
                    state: state.to_owned(),
                    queued: counter.pending_events,
                    queued_bytes: counter.pending_bytes,
                    dead_lettered: counter.dead_events,
                    oldest_pending_age_seconds: oldest
                        .map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
                    last_success_ms: lane
                        .as_ref()
                        .map(|l| l.stats.last_success_ms.load(Ordering::Relaxed))
                        .filter(|ms| *ms > 0),
                    last_error: lane
                        .as_ref()
                        .and_then(|l| l.stats.last_error.load_full())
                        .map(|e| e.1.clone()),
                    instance: name,
                }
            })
            .collect()
    }

    fn render_metrics(&self) -> String {
        let figures: Vec<QueueFigures> = self
            .status()
            .into_iter()
            .map(|s| QueueFigures {
                instance: s.instance,
                queued: s.queued,
                dead: s.dead_lettered,
                oldest_pending_age_seconds: s.oldest_pending_age_seconds.unwrap_or(0.0),
            })
            .collect();
        self.metrics
            .render(&figures, self.store.total_bytes(), self.store.disk_bytes())
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(status, "application/json", Bytes::from(body))
}

fn unauthorized() -> HttpResponse {
    respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "admin token required\n",
    )
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
