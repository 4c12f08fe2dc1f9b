//! The HTTP/1 serving loop both listeners share: a cap on concurrent connections, a
//! header-read timeout (slowloris), and graceful close of every connection on shutdown.
//! Optionally TLS: each connection's handshake runs in that connection's own task (under the
//! connection cap, bounded by a handshake timeout), with the server config current at accept.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

pub type HttpResponse = Response<Full<Bytes>>;

/// Bounds on one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer sent something that is not TLS (plain HTTP, say), or TLS that failed.
    Error,
    /// The handshake took longer than [`Tls::handshake_timeout`].
    Timeout,
}

impl HandshakeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Error => "error",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// The server config for the next accepted connection; `None` serves it plain HTTP.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// TLS on a listener.
#[derive(Clone)]
pub struct Tls {
    /// Asked once per accepted connection, so a reload that swaps the config applies to every
    /// connection accepted after it; established connections keep theirs.
    pub source: TlsSource,
    pub handshake_timeout: Duration,
    /// Told of every failed or timed-out handshake (metrics).
    pub on_failure: Arc<dyn Fn(HandshakeFailure) + Send + Sync>,
}

/// A response with a static body.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Serves `listener` over plain HTTP until `shutdown` turns true, then closes connections
/// gracefully and returns when they are gone (callers bound that wait).
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    serve_with_tls(listener, handler, limits, None, shutdown).await;
}

/// Like [`serve`], with TLS on every connection for which `tls.source` gives a server config
/// (plain HTTP for the others, or for all when `tls` is `None`).
pub async fn serve_with_tls<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls
                .as_ref()
                .and_then(|tls| (tls.source)().map(|config| (tls, config)))
            {
                None => serve_connection(stream, handler, limits, stop).await,
                Some((tls, config)) => {
                    if let Some(stream) = handshake(stream, tls, config, stop.clone()).await {
                        serve_connection(stream, handler, limits, stop).await;
                    }
                }
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The server side of a TLS handshake, bounded by the handshake timeout and cut short by
/// shutdown; `None` (after telling `on_failure`, except at shutdown) when it did not complete.
async fn handshake<S>(
    stream: S,
    tls: &Tls,
    config: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accept = tokio::time::timeout(
        tls.handshake_timeout,
        TlsAcceptor::from(config).accept(stream),
    );
    let failure = tokio::select! {
        accepted = accept => match accepted {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(err)) => {
                debug!(error = %err, "TLS handshake failed");
                HandshakeFailure::Error
            }
            Err(_) => {
                debug!(timeout = ?tls.handshake_timeout, "TLS handshake timed out");
                HandshakeFailure::Timeout
            }
        },
        _ = stop.wait_for(|stopping| *stopping) => return None,
    };
    (tls.on_failure)(failure);
    None
}

/// Serves HTTP/1 on one connection until it ends, or gracefully closes it at shutdown.
async fn serve_connection<S, H, F>(
    stream: S,
    handler: H,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = async { let _stopped = stop.wait_for(|stopping| *stopping).await.is_ok(); } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
