//! `FakeCallback`: a consumer endpoint on `127.0.0.1:0` (hyper 1, HTTP/1.1) that answers from a
//! scripted plan (a queue of actions, then a default) and records every request.
//! Signature checks for recorded requests live in `signatures.rs` (re-exported here).

use std::collections::VecDeque;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use hyper::{HeaderMap, Request, Response};

use tokio::sync::Notify;

use super::server::{TestResponse, TestServer};

pub use super::signatures::{verify_signatures, verify_standard};

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// This status, empty body.
    Status(u16),
    /// This status with these headers (e.g. `Retry-After`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Reads the request, never answers, keeps the connection open.
    Hang,
    /// This (3xx) status with `Location`.
    Redirect(u16, String),
    /// This status, empty body, after waiting this long (a slow but answering consumer).
    Delayed(Duration, u16),
}

impl Action {
    fn status(&self) -> Option<u16> {
        match self {
            Action::Status(s)
            | Action::StatusWithHeaders(s, _)
            | Action::Redirect(s, _)
            | Action::Delayed(_, s) => Some(*s),
            Action::Hang => None,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When its head arrived.
    pub at: Instant,
    /// The status it was answered with; `None` for `Hang`.
    pub answered: Option<u16>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "callback body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `message` of the envelope.
    pub fn message(&self) -> serde_json::Value {
        self.json()["message"].clone()
    }

    /// `message.eventId`.
    pub fn event_id(&self) -> String {
        self.message()["eventId"]
            .as_str()
            .expect("message.eventId is a string")
            .to_owned()
    }

    /// `message.accountId`.
    pub fn account(&self) -> String {
        self.message()["accountId"]
            .as_str()
            .expect("message.accountId is a string")
            .to_owned()
    }
}

struct Inner {
    queue: VecDeque<Action>,
    default: Action,
    requests: Vec<Recorded>,
}

struct State {
    inner: Mutex<Inner>,
    arrived: Notify,
}

/// The fake consumer. Dropping it stops it.
pub struct FakeCallback {
    state: Arc<State>,
    server: TestServer,
    /// `https` when served with TLS ([`FakeCallback::start_tls`]).
    scheme: &'static str,
}

impl FakeCallback {
    /// Answers 200 to everything.
    pub async fn ok() -> FakeCallback {
        Self::start([], Action::Status(200)).await
    }

    /// Answers with `queue` in order, then `default` forever.
    pub async fn start(queue: impl IntoIterator<Item = Action>, default: Action) -> FakeCallback {
        Self::start_with(queue, default, None).await
    }

    /// Like [`FakeCallback::start`], over HTTPS through `acceptor`; requests that never got
    /// past the handshake are not recorded (see [`FakeCallback::handshake_failures`]).
    pub async fn start_tls(
        queue: impl IntoIterator<Item = Action>,
        default: Action,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> FakeCallback {
        Self::start_with(queue, default, Some(acceptor)).await
    }

    async fn start_with(
        queue: impl IntoIterator<Item = Action>,
        default: Action,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeCallback {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                queue: queue.into_iter().collect(),
                default,
                requests: Vec::new(),
            }),
            arrived: Notify::new(),
        });
        let served = state.clone();
        let what = "the fake callback";
        let handler = move |req| handle(served.clone(), req);
        let (server, scheme) = match tls {
            None => (TestServer::start(what, handler).await, "http"),
            Some(acceptor) => (
                TestServer::start_tls(what, acceptor, handler).await,
                "https",
            ),
        };
        FakeCallback {
            state,
            server,
            scheme,
        }
    }

    /// TLS handshakes that failed (a client certificate refused, say).
    pub fn handshake_failures(&self) -> usize {
        self.server.handshake_failures()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/hooks/dropbox` (`https://…` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}/hooks/dropbox", self.scheme, self.server.addr())
    }

    /// Replaces the plan: `queue` for the next requests, then `default`.
    pub fn set_plan(&self, queue: impl IntoIterator<Item = Action>, default: Action) {
        let mut inner = self.state.inner.lock().unwrap();
        inner.queue = queue.into_iter().collect();
        inner.default = default;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.inner.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.inner.lock().unwrap().requests.len()
    }

    /// Waits until at least `n` requests arrived and returns all of them; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, &format!("{n} callback requests"), |r| r.len() >= n)
            .await
    }

    /// Waits until `cond` holds for the requests so far and returns them; panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            {
                let inner = self.state.inner.lock().unwrap();
                if cond(&inner.requests) {
                    return inner.requests.clone();
                }
                if Instant::now() >= deadline {
                    panic!(
                        "fake callback {}: timed out after {timeout:?} waiting for {what}; \
                         got {} request(s)",
                        self.server.addr(),
                        inner.requests.len()
                    );
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }

    /// Stops listening and drops every open connection (hanging ones included).
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> TestResponse {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    // A body cut short is recorded as far as it came.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let action = {
        let mut inner = state.inner.lock().unwrap();
        let action = inner
            .queue
            .pop_front()
            .unwrap_or_else(|| inner.default.clone());
        inner.requests.push(Recorded {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
            at,
            answered: action.status(),
        });
        action
    };
    state.arrived.notify_waiters();
    let mut resp = Response::new(Full::new(Bytes::new()));
    match action {
        Action::Hang => std::future::pending::<()>().await,
        Action::Status(s) => *resp.status_mut() = status(s),
        Action::Delayed(wait, s) => {
            tokio::time::sleep(wait).await;
            *resp.status_mut() = status(s);
        }
        Action::StatusWithHeaders(s, headers) => {
            *resp.status_mut() = status(s);
            for (k, v) in headers {
                resp.headers_mut().insert(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    hyper::header::HeaderValue::from_str(&v).expect("header value"),
                );
            }
        }
        Action::Redirect(s, location) => {
            *resp.status_mut() = status(s);
            resp.headers_mut().insert(
                hyper::header::LOCATION,
                hyper::header::HeaderValue::from_str(&location).expect("location"),
            );
        }
    }
    Ok(resp)
}

fn status(s: u16) -> hyper::StatusCode {
    hyper::StatusCode::from_u16(s).expect("a valid status code")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::http::{client, send};

    async fn post(url: &str, body: &str) -> (u16, Option<String>) {
        let r = send(
            client()
                .post(url)
                .header("X-Test", "1")
                .body(body.to_owned()),
        )
        .await
        .expect("posting to the fake callback");
        (r.status, r.header("location").map(str::to_owned))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_the_plan_then_the_default_and_records() {
        let cb = FakeCallback::start(
            [
                Action::Status(500),
                Action::StatusWithHeaders(429, vec![("Retry-After".into(), "2".into())]),
                Action::Redirect(301, "http://127.0.0.1:1/elsewhere".into()),
            ],
            Action::Status(204),
        )
        .await;
        assert_eq!(post(&cb.url(), "a").await.0, 500);
        let r = send(client().post(cb.url()).body("b")).await.unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(
            post(&cb.url(), "c").await,
            (301, Some("http://127.0.0.1:1/elsewhere".into()))
        );
        assert_eq!(post(&cb.url(), "d").await.0, 204);
        assert_eq!(post(&cb.url(), "e").await.0, 204);

        let reqs = cb.wait_for(5, Duration::from_secs(5)).await;
        let bodies: Vec<&[u8]> = reqs.iter().map(|r| &r.body[..]).collect();
        assert_eq!(bodies, [b"a", b"b", b"c", b"d", b"e"]);
        let answered: Vec<Option<u16>> = reqs.iter().map(|r| r.answered).collect();
        assert_eq!(
            answered,
            [Some(500), Some(429), Some(301), Some(204), Some(204)]
        );
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/hooks/dropbox");
        assert_eq!(reqs[0].header("x-test"), Some("1"));
        assert!(reqs.windows(2).all(|w| w[0].at <= w[1].at));

        cb.set_plan([Action::Status(503)], Action::Status(200));
        assert_eq!(post(&cb.url(), "f").await.0, 503);
        assert_eq!(post(&cb.url(), "g").await.0, 200);
        assert_eq!(cb.count(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hang_records_but_never_answers_and_stop_closes() {
        let cb = FakeCallback::start([Action::Hang], Action::Status(200)).await;
        let url = cb.url();
        let pending = tokio::spawn(async move {
            send(
                client()
                    .post(url)
                    .body("x")
                    .timeout(Duration::from_secs(10)),
            )
            .await
        });
        let reqs = cb.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(reqs[0].answered, None);
        assert_eq!(&reqs[0].body[..], b"x");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "a hanging request was answered");
        cb.stop().await;
        let res = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("stop() closes hanging connections")
            .unwrap();
        assert!(res.is_err(), "a hanging request got an answer: {res:?}");
        assert!(!crate::support::http::is_listening(cb.addr()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "timed out")]
    async fn wait_for_is_bounded() {
        let cb = FakeCallback::ok().await;
        cb.wait_for(1, Duration::from_millis(200)).await;
    }
}
