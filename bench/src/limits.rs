//! The physical limits hookrelay is compared with (a plain server, the same with a group-commit
//! `fdatasync`, a plain relay), and the start of every in-process server, the sink included.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::Fallible;
use crate::http::{connect, exchange, serve};
use crate::sink::{self, Sink};

/// The physical limit: reads the body, answers 200.
async fn plain(request: Request<Incoming>) -> Response<Empty<Bytes>> {
    let _ = request.into_body().collect().await;
    Response::new(Empty::new())
}

/// The physical limit of a *durable* acknowledgement: reads the body, appends it to a file
/// and answers 200 after an `fdatasync` that covers it. One thread group-commits whatever
/// bodies wait (as hookrelay's committer does), so concurrent requests share a sync.
#[derive(Clone)]
struct DurablePlain {
    bodies: tokio::sync::mpsc::UnboundedSender<(Bytes, tokio::sync::oneshot::Sender<bool>)>,
}

impl DurablePlain {
    /// Starts the group-commit thread on a file at `path` (truncated as it passes 64 MiB).
    fn start(path: PathBuf) -> std::io::Result<DurablePlain> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let (bodies, mut waiting) =
            tokio::sync::mpsc::unbounded_channel::<(Bytes, tokio::sync::oneshot::Sender<bool>)>();
        std::thread::Builder::new()
            .name("bench-fsync".into())
            .spawn(move || {
                let mut written = 0u64;
                let mut batch = Vec::new();
                while let Some(first) = waiting.blocking_recv() {
                    batch.push(first);
                    while let Ok(next) = waiting.try_recv() {
                        batch.push(next);
                    }
                    let mut ok = true;
                    for (body, _) in &batch {
                        ok &= file.write_all(body).is_ok();
                        written += body.len() as u64;
                    }
                    ok &= file.sync_data().is_ok();
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(ok);
                    }
                    if written > 64 << 20 {
                        use std::io::Seek as _;
                        ok &= file.set_len(0).is_ok() && file.rewind().is_ok();
                        written = 0;
                    }
                    if !ok {
                        break;
                    }
                }
                let _ = std::fs::remove_file(&path);
            })?;
        Ok(DurablePlain { bodies })
    }

    async fn handle(self, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let stored = match request.into_body().collect().await {
            Ok(body) => {
                let (reply, stored) = tokio::sync::oneshot::channel();
                let _ = self.bodies.send((body.to_bytes(), reply));
                stored.await.unwrap_or(false)
            }
            Err(_) => false,
        };
        let mut response = Response::new(Empty::new());
        if !stored {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }
}

/// The physical limit of relaying: reads the body, POSTs it to the sink on a kept-alive
/// connection and answers 200 once the sink answered (no storage, no signing). One request
/// in and one out per event, as hookrelay's ingest and delivery together.
#[derive(Clone)]
struct PlainRelay {
    sink: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl PlainRelay {
    async fn handle(self, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let mut response = Response::new(Empty::new());
        if self.forward(request).await.is_err() {
            *response.status_mut() = StatusCode::BAD_GATEWAY;
        }
        response
    }

    async fn forward(&self, request: Request<Incoming>) -> Fallible<()> {
        let body = request
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut sender = match pooled {
            Some(sender) => sender,
            None => connect::<Full<Bytes>>(self.sink).await?,
        };
        let outgoing = Request::post("/")
            .header(HOST, self.sink.to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let status = exchange(&mut sender, outgoing)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        match status {
            200..=299 => Ok(()),
            other => Err(format!("sink answered {other}")),
        }
    }
}

/// The in-process servers, listening on loopback ports.
pub(crate) struct Servers {
    pub(crate) sink: Arc<Sink>,
    pub(crate) sink_addr: SocketAddr,
    pub(crate) plain_addr: SocketAddr,
    pub(crate) durable_plain_addr: SocketAddr,
    pub(crate) relay_addr: SocketAddr,
    /// The limit servers' runtime.
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl Servers {
    /// Binds the four listeners and starts the sink (its own thread) and the limit servers
    /// (their own runtime); the fsync server's file goes in `work_dir`.
    pub(crate) fn start(work_dir: &Path) -> Fallible<Servers> {
        let sink = Arc::new(Sink::default());
        let bind = || -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            Ok((listener, addr))
        };
        let (
            Ok((sink_listener, sink_addr)),
            Ok((plain_listener, plain_addr)),
            Ok((durable_listener, durable_plain_addr)),
            Ok((relay_listener, relay_addr)),
        ) = (bind(), bind(), bind(), bind())
        else {
            return Err("cannot bind four listeners on 127.0.0.1".into());
        };
        let durable_file = work_dir.join(format!(
            "hookrelay-bench-{}-durable-plain.log",
            std::process::id()
        ));
        let durable_plain = DurablePlain::start(durable_file)
            .map_err(|e| format!("cannot start the durable plain server: {e}"))?;
        let sink_thread = sink::start_thread(sink.clone(), sink_listener);
        // The plain server: two workers, as hookrelay has on two cores.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-plain")
            .enable_all()
            .build();
        let (Ok(_), Ok(runtime)) = (sink_thread, runtime) else {
            return Err("cannot start the runtimes".into());
        };
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(plain_listener) {
                serve(listener, plain).await;
            }
        });
        let relay = PlainRelay {
            sink: sink_addr,
            idle: Arc::new(Mutex::new(Vec::new())),
        };
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(relay_listener) {
                serve(listener, move |request| relay.clone().handle(request)).await;
            }
        });
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(durable_listener) {
                serve(listener, move |request| {
                    durable_plain.clone().handle(request)
                })
                .await;
            }
        });
        Ok(Servers {
            sink,
            sink_addr,
            plain_addr,
            durable_plain_addr,
            relay_addr,
            runtime,
        })
    }
}
