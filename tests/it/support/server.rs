//! `TestServer`: the loopback HTTP/1 server behind the test doubles (the fake callbacks, the
//! fake Dropbox API): every connection on `127.0.0.1:0` is served by one handler until the
//! server is stopped or dropped, which also drops open connections (hanging ones included).
//! [`TestServer::start_tls`] serves HTTPS instead, with the acceptor a test configures (e.g. one
//! that requires client certificates), and counts the handshakes that failed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub type TestResponse = Result<Response<Full<Bytes>>, Infallible>;

pub struct TestServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    handshake_failures: Arc<AtomicUsize>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` (panics naming `what` if it cannot) and serves with `handle`.
    pub async fn start<H, F>(what: &str, handle: H) -> TestServer
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = TestResponse> + Send + 'static,
    {
        Self::serve(what, None, handle).await
    }

    /// Like [`TestServer::start`], with TLS through `acceptor` on every connection.
    pub async fn start_tls<H, F>(what: &str, acceptor: TlsAcceptor, handle: H) -> TestServer
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = TestResponse> + Send + 'static,
    {
        Self::serve(what, Some(acceptor), handle).await
    }

    async fn serve<H, F>(what: &str, tls: Option<TlsAcceptor>, handle: H) -> TestServer
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = TestResponse> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding {what}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, mut stop) = watch::channel(false);
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let failures = handshake_failures.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let handle = handle.clone();
                let mut stop = stop.clone();
                let tls = tls.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let service = service_fn(handle);
                    let serve = async move {
                        let builder = http1::Builder::new();
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                            Some(acceptor) => {
                                let accept = acceptor.accept(stream);
                                match tokio::time::timeout(Duration::from_secs(10), accept).await {
                                    Ok(Ok(stream)) => {
                                        let _ = builder
                                            .serve_connection(TokioIo::new(stream), service)
                                            .await;
                                    }
                                    _ => {
                                        failures.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        TestServer {
            addr,
            shutdown,
            task: Mutex::new(Some(task)),
            handshake_failures,
        }
    }

    /// TLS handshakes that failed (always 0 without TLS).
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drops every open connection; waits (bounded) for the accept loop.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
