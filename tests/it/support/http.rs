//! The HTTP client the tests use to talk to the daemon, and a bounded polling helper.
//!
//! One process-wide `reqwest::Client` without a connection pool: each `#[tokio::test]` has its
//! own runtime, and pooled connections would be tied to the runtime that opened them.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Per-request bound for every call the harness makes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The shared client: no proxy, no redirects followed, no pool, 15 s per request.
pub fn client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("building the test HTTP client")
        })
        .clone()
}

/// A response read whole: status, headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req`, reads the whole answer; `Err` on transport errors or after [`REQUEST_TIMEOUT`].
pub async fn send(req: reqwest::RequestBuilder) -> Result<Reply, String> {
    let fut = async {
        let resp = req.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| format!("{e:#}"))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), fut).await {
        Ok(r) => r,
        Err(_) => Err("request timed out".into()),
    }
}

/// `GET url`, panicking on transport errors.
pub async fn get(url: &str) -> Reply {
    send(client().get(url))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A condition that itself hangs counts against the same deadline.
        if let Ok(true) = tokio::time::timeout(left.max(Duration::from_millis(1)), cond()).await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether something accepts TCP connections at `addr` (bounded to 2 s).
pub async fn is_listening(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
