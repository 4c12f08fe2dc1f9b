//! `TestServer`: the loopback HTTP/1 server behind the test doubles (the fake callbacks, the
//! fake Dropbox API): every connection on `127.0.0.1:0` is served by one handler until the
//! server is stopped or dropped, which also drops open connections (hanging ones included).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
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

pub type TestResponse = Result<Response<Full<Bytes>>, Infallible>;

pub struct TestServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` (panics naming `what` if it cannot) and serves with `handle`.
    pub async fn start<H, F>(what: &str, handle: H) -> TestServer
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = TestResponse> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding {what}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, mut stop) = watch::channel(false);
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
                tokio::spawn(async move {
                    let service = service_fn(handle);
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        TestServer {
            addr,
            shutdown,
            task: Mutex::new(Some(task)),
        }
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
