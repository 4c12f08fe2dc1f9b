//! The admin listener (docs/operations.md): `/healthz`, `/readyz` and `/metrics` for everyone, and
//! the CLI's JSON API under `/admin/`, which needs `Authorization: Bearer <admin.token>` when a
//! token is configured (compared in constant time; otherwise 401). A `POST` must also pass
//! [`cross_site::check`] (JSON content type, no `Origin`, the listener's own `Host`; else 403 or
//! 415), so that no web page can drive it:
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/status` | `[InstanceStatus…]` (see [`status`]) |
//! | `GET /admin/dead?instance=&since=&until=` | `[EventSummary…]`, oldest death first |
//! | `POST /admin/dead/replay` `{"ids": […]} \| {"instance": "x"} \| {"all": true}` (+ `since`, `until`) | `{"count": N, "not_found": […]}` |
//! | `POST /admin/dead/purge` (the same body) | `{"count": N, "held": M, "not_found": […]}` |
//! | `POST /admin/retry` `{"ids": […]} \| {"instance": "x"} \| {"all": true}` | `{"count": N, "not_found": […]}`: waiting events due now, attempt counts unchanged |
//! | `GET /admin/events?instance=&account=&state=&since=&until=&limit=&cursor=` | `{"events": [EventRow…], "next": cursor \| null}`, newest first |
//! | `GET /admin/events/{id}` | `{"event", "attempts", "envelope"}`; 404 unknown |
//! | `POST /admin/events/replay` `{"ids": […]} \| {"instance": "x"}` (+ `since`, `until`) | `{"count": N, "not_found": […]}` |
//! | `POST /admin/authorize` `{"instance": "x", "code": "…"}` | `{"instance", "account", "cursor_taken"}`; 404 unknown instance, 400 not change events or code refused, 502 Dropbox failed |
//!
//! Times are Unix ms or RFC 3339 (an age such as `2h` works too). A purge by `instance`
//! without a time window also drops the held pending events of an instance that is no longer
//! configured (`held`). After a replay or a retry the affected lanes are poked to look at the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use tracing::{info, warn};

use crate::changes::Walker;
use crate::changes::authorize::AuthorizeError;
use crate::config::LiveConfig;
use crate::deliver::Dispatcher;
use crate::http::{HttpResponse, respond};
use crate::ops::cross_site;
use crate::ops::dead::{self, Selection, SelectionBody};
use crate::ops::events;
use crate::ops::retry::{self, RetryBody};
use crate::ops::status;
use crate::store::{self, Store};
use crate::telemetry::metrics::{self, Metrics, QueueFigures};
use crate::time;

/// Largest JSON body of a replay or purge (a few thousand ids).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Time allowed to receive such a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `POST /admin/authorize`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    pub instance: String,
    /// The one-time OAuth code (a secret while it is valid; never logged).
    pub code: String,
}

/// The answer of `POST /admin/authorize` (and what the CLI prints).
#[derive(Debug, Serialize, Deserialize)]
pub struct AuthorizeAnswer {
    pub instance: String,
    pub account: String,
    /// True when the account's first cursor was taken; false when it kept its cursor.
    pub cursor_taken: bool,
}

/// What the admin endpoints read.
pub struct Admin {
    pub live: LiveConfig,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    /// Runs `authorize` for change-events instances.
    pub walker: Arc<Walker>,
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

impl Admin {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        let path = request.uri().path();
        if path == "/admin" || path.starts_with("/admin/") {
            if !self.authorized(&request) {
                return unauthorized();
            }
            if request.method() == Method::POST {
                let listen = self.live.load().config.admin.listen;
                if let Err(refusal) = cross_site::check(request.headers(), request.uri(), listen) {
                    warn!(path = %request.uri().path(), reason = %refusal, "admin request refused");
                    return error(refusal.status(), &refusal.to_string());
                }
            }
            return self.admin_api(request).await;
        }
        match (request.method(), path) {
            (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/metrics") => {
                let body = self.render_metrics();
                respond(StatusCode::OK, metrics::CONTENT_TYPE, body)
            }
            (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed(),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// `/admin/*`, after the token check.
    async fn admin_api(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/admin/status") => {
                let this = self.clone();
                blocking(move || {
                    let live = this.live.load();
                    Ok(status::instances(
                        &live.config,
                        &this.store,
                        Some(&this.dispatcher),
                    ))
                })
                .await
            }
            (&Method::GET, "/admin/dead") => {
                let query = match dead::ListQuery::parse(request.uri().query(), time::now_ms()) {
                    Ok(query) => query,
                    Err(message) => return error(StatusCode::BAD_REQUEST, &message),
                };
                let store = self.store.clone();
                blocking(move || query.read(&store)).await
            }
            (&Method::POST, "/admin/dead/replay") => {
                let selection = match read_selection(request).await {
                    Ok(selection) => selection,
                    Err(response) => return response,
                };
                match dead::replay(&self.store, &selection).await {
                    Ok(outcome) => {
                        for instance in &outcome.instances {
                            self.dispatcher.poke(instance);
                        }
                        info!(count = outcome.count, "dead letters replayed (admin API)");
                        json(StatusCode::OK, &outcome)
                    }
                    Err(err) => store_error(&err),
                }
            }
            (&Method::POST, "/admin/dead/purge") => {
                let selection = match read_selection(request).await {
                    Ok(selection) => selection,
                    Err(response) => return response,
                };
                let live = self.live.load();
                let configured = |name: &str| live.config.instance(name).is_some();
                match dead::purge(&self.store, &selection, configured).await {
                    Ok(outcome) => {
                        info!(
                            count = outcome.count,
                            held = outcome.held,
                            "dead letters purged (admin API)"
                        );
                        json(StatusCode::OK, &outcome)
                    }
                    Err(err) => store_error(&err),
                }
            }
            (&Method::POST, "/admin/retry") => self.retry(request).await,
            (&Method::POST, "/admin/authorize") => authorize(&self.walker, request).await,
            (&Method::GET, "/admin/events") => {
                let query = match events::ListQuery::parse(request.uri().query(), time::now_ms()) {
                    Ok(query) => query,
                    Err(message) => return error(StatusCode::BAD_REQUEST, &message),
                };
                let this = self.clone();
                blocking(move || events::list(&this.store, &this.live.load().config, &query)).await
            }
            (&Method::POST, "/admin/events/replay") => self.replay_events(request).await,
            (
                _,
                "/admin/status"
                | "/admin/dead"
                | "/admin/dead/replay"
                | "/admin/dead/purge"
                | "/admin/retry"
                | "/admin/authorize"
                | "/admin/events"
                | "/admin/events/replay",
            ) => method_not_allowed(),
            (&Method::GET, path) if path.starts_with("/admin/events/") => {
                let id = &path["/admin/events/".len()..];
                self.show_event(id).await
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// `POST /admin/retry`: waiting events due now, then their lanes poked.
    async fn retry(&self, request: Request<Incoming>) -> HttpResponse {
        let body: RetryBody = match read_json(request).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let target = match body.into_target() {
            Ok(target) => target,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        match retry::retry(&self.store, &target).await {
            Ok(outcome) => {
                let mut instances = outcome.instances.clone();
                if matches!(target, store::RetryTarget::All) {
                    // Every lane in an outage probes now, whatever the store's due index held.
                    let live = self.live.load();
                    instances.extend(live.config.instances.iter().map(|i| i.name.clone()));
                }
                self.poke_retried(&instances);
                info!(
                    count = outcome.count,
                    "waiting events made due now (admin API)"
                );
                json(StatusCode::OK, &outcome)
            }
            Err(err) => store_error(&err),
        }
    }

    /// `GET /admin/events/{id}`: 404 for an id the store does not hold.
    async fn show_event(self: Arc<Self>, id: &str) -> HttpResponse {
        let Ok(id) = id.parse::<ulid::Ulid>() else {
            return error(StatusCode::NOT_FOUND, &format!("{id:?} is not an event id"));
        };
        let this = self.clone();
        let shown = tokio::task::spawn_blocking(move || {
            events::show(&this.store, &this.live.load().config, id)
        })
        .await;
        match shown {
            Ok(Ok(Some(detail))) => json(StatusCode::OK, &detail),
            Ok(Ok(None)) => error(StatusCode::NOT_FOUND, &format!("no event {id}")),
            Ok(Err(err)) => store_error(&err),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        }
    }

    /// `POST /admin/events/replay`: delivered events queued again, their lanes poked.
    async fn replay_events(&self, request: Request<Incoming>) -> HttpResponse {
        let body: events::ReplayBody = match read_json(request).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let (target, window) = match body.into_target(time::now_ms()) {
            Ok(selected) => selected,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        match events::replay(&self.store, &target, window).await {
            Ok(outcome) => {
                for instance in &outcome.instances {
                    self.dispatcher.poke(instance);
                }
                info!(
                    count = outcome.count,
                    "delivered events replayed (admin API)"
                );
                json(StatusCode::OK, &outcome)
            }
            Err(err) => store_error(&err),
        }
    }

    /// What a retry wakes: the lanes of `instances` look at the store at once, instead of at
    /// their next timer, and one in an outage sends its next probe at once rather than at the
    /// end of its `probe_interval`.
    fn poke_retried(&self, instances: &std::collections::BTreeSet<String>) {
        for instance in instances {
            if let Some(lane) = self.dispatcher.stats(instance) {
                lane.probe_now();
            }
            self.dispatcher.poke(instance);
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
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
    }

    fn render_metrics(&self) -> String {
        let live = self.live.load();
        let figures: Vec<QueueFigures> =
            status::queue_figures(&live.config, &self.store, Some(&self.dispatcher))
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

fn error(status: StatusCode, message: &str) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message }))
}

fn store_error(err: &store::Error) -> HttpResponse {
    warn!(error = %err, "admin request failed in the store");
    let status = match err {
        store::Error::Failed(_) | store::Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &err.to_string())
}

fn method_not_allowed() -> HttpResponse {
    respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "method not allowed\n",
    )
}

/// Runs a store scan off the async workers and answers its result as JSON.
async fn blocking<T, F>(scan: F) -> HttpResponse
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, store::Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(scan).await {
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(err)) => store_error(&err),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// Reads and checks the JSON body of a replay or purge.
async fn read_selection(request: Request<Incoming>) -> Result<Selection, HttpResponse> {
    let body: SelectionBody = read_json(request).await?;
    body.into_selection(time::now_ms())
        .map_err(|message| error(StatusCode::BAD_REQUEST, &message))
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`].
async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, HttpResponse> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {err}"),
            ));
        }
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "the body took too long")),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

/// `POST /admin/authorize`: the code is exchanged by the running daemon.
async fn authorize(walker: &Walker, request: Request<Incoming>) -> HttpResponse {
    let body: AuthorizeRequest = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match walker.authorize(&body.instance, &body.code).await {
        Ok(authorized) => json(
            StatusCode::OK,
            &AuthorizeAnswer {
                instance: body.instance,
                account: authorized.account,
                cursor_taken: authorized.cursor_taken,
            },
        ),
        Err(err) => {
            let status = match &err {
                AuthorizeError::UnknownInstance(_) => StatusCode::NOT_FOUND,
                e if e.is_request_error() => StatusCode::BAD_REQUEST,
                AuthorizeError::Store(e) => return store_error(e),
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(instance = %body.instance, error = %err, "authorize failed (admin API)");
            error(status, &err.to_string())
        }
    }
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
