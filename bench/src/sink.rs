//! The sink: the instance's callback, a fake consumer that answers 204 and records when each
//! delivery arrived, its `webhook-id`, and the sequence number and send time in its body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::clock::now_ns;
use crate::http::serve;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) at_ns: u64,
    pub(crate) sent_ns: u64,
    pub(crate) seq: u64,
    /// The `webhook-id` ULID as a number (0 if missing).
    pub(crate) id: u128,
}

#[derive(Default)]
pub(crate) struct Sink {
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicU64,
}

impl Sink {
    fn record(&self, arrival: Arrival) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push(arrival);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Everything recorded since the last take.
    pub(crate) fn take(&self) -> Vec<Arrival> {
        let taken = match self.arrivals.lock() {
            Ok(mut arrivals) => std::mem::take(&mut *arrivals),
            Err(_) => Vec::new(),
        };
        self.count.store(0, Ordering::Relaxed);
        taken
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let id = request
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ulid::Ulid::from_string(v).ok())
            .map_or(0, |id| id.0);
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let at_ns = now_ns();
        self.record(Arrival {
            at_ns,
            sent_ns: number_after(&body, b"\"sent_ns\":").unwrap_or(at_ns),
            seq: number_after(&body, b"\"seq\":").unwrap_or(0),
            id,
        });
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    }
}

/// The digits after `key` in `body` (`"seq":` or `"sent_ns":`).
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let start = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[start..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Serves `sink` on `listener` on a thread of its own with a current-thread runtime, like a
/// small real consumer.
pub(crate) fn start_thread(
    sink: Arc<Sink>,
    listener: std::net::TcpListener,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bench-sink".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                serve(listener, move |request| sink.clone().handle(request)).await;
            });
        })
}
