//! `FaultProxy`: a loopback TCP proxy of our own, put between the daemon and a `FakeCallback`, that
//! injects destination faults (tc netem and toxiproxy are not available here). HTTP-unaware except
//! that it notes the `webhook-id` of the first request on each connection, so tests can tell
//! attempts of one event apart.
//!
//! The mode is read when a connection is accepted: [`FaultProxy::set_mode`] applies to new
//! connections; established ones keep the mode they started with (a failing attempt closes its
//! connection, so the next attempt of an event sees the new mode).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// What the proxy does to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways untouched.
    Pass,
    /// Forward both ways, each chunk held back this long.
    Latency(Duration),
    /// Accept and read the request, never connect upstream, never answer.
    Blackhole,
    /// Forward the request; send the response one byte per this interval.
    Drip(Duration),
    /// Forward the request; write half of the response's first chunk, then reset the
    /// connection (`SO_LINGER` 0: an RST, not a FIN).
    ResetMidResponse,
    /// Forward both ways in 1-byte writes.
    Slice,
}

/// One accepted connection, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub mode: Mode,
    pub accepted: Instant,
    /// When the first request byte arrived from the daemon.
    pub first_byte: Option<Instant>,
    /// When the daemon's side ended (EOF or error), or the proxy closed it.
    pub closed: Option<Instant>,
    /// The `webhook-id` header of the first request on this connection.
    pub event_id: Option<String>,
    /// Bytes from the daemon / to the daemon.
    pub bytes_up: usize,
    pub bytes_down: usize,
}

struct State {
    mode: Mutex<Mode>,
    conns: Mutex<Vec<Conn>>,
    changed: Notify,
}

impl State {
    fn update(&self, index: usize, f: impl FnOnce(&mut Conn)) {
        f(&mut self.conns.lock().unwrap()[index]);
        self.changed.notify_waiters();
    }
}

/// The proxy. Dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (a loopback address).
    pub async fn start(upstream: std::net::SocketAddr, mode: Mode) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fault proxy");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            conns: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn({
            let state = state.clone();
            let mut stop = stop.clone();
            async move {
                loop {
                    let (client, _) = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let _ = client.set_nodelay(true);
                    let mode = *state.mode.lock().unwrap();
                    let index = {
                        let mut conns = state.conns.lock().unwrap();
                        conns.push(Conn {
                            mode,
                            accepted: Instant::now(),
                            first_byte: None,
                            closed: None,
                            event_id: None,
                            bytes_up: 0,
                            bytes_down: 0,
                        });
                        conns.len() - 1
                    };
                    state.changed.notify_waiters();
                    let state = state.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve(client, upstream, mode, &state, index) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                        state.update(index, |c| {
                            c.closed.get_or_insert_with(Instant::now);
                        });
                    });
                }
            }
        });
        FaultProxy {
            addr,
            state,
            shutdown,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/hooks/dropbox`: the callback URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/dropbox", self.addr)
    }

    /// The mode for connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Every connection so far, in accept order.
    pub fn conns(&self) -> Vec<Conn> {
        self.state.conns.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for the connections so far; panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Conn]) -> bool,
    ) -> Vec<Conn> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            let count = {
                let conns = self.state.conns.lock().unwrap();
                if cond(&conns) {
                    return conns.clone();
                }
                conns.len()
            };
            // Panic without the lock held, so the proxy's tasks keep working for other tests.
            if Instant::now() >= deadline {
                panic!(
                    "fault proxy {}: timed out after {timeout:?} waiting for {what}; {count} connection(s)",
                    self.addr
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changed).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The `webhook-id` header in a request head, once the head is complete.
fn webhook_id(head: &[u8]) -> Option<String> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&head[..end]);
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("webhook-id")
            .then(|| value.trim().to_owned())
    })
}

/// Reads from the daemon, recording the first byte, the `webhook-id` and the byte count;
/// writes each chunk with `write` (which may delay or slice it). Returns at EOF or an error.
async fn pump_up<R, W>(
    mut from: R,
    mut to: W,
    mode: Mode,
    state: &State,
    index: usize,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buffer[..n];
        let now = Instant::now();
        let id = if head.len() < 64 * 1024 && state.conns.lock().unwrap()[index].event_id.is_none()
        {
            head.extend_from_slice(chunk);
            webhook_id(&head)
        } else {
            None
        };
        state.update(index, |c| {
            c.first_byte.get_or_insert(now);
            c.bytes_up += n;
            if id.is_some() {
                c.event_id = id;
            }
        });
        match mode {
            Mode::Blackhole => {}
            Mode::Latency(d) => {
                tokio::time::sleep(d).await;
                to.write_all(chunk).await?;
            }
            Mode::Slice => {
                for byte in chunk {
                    to.write_all(std::slice::from_ref(byte)).await?;
                    to.flush().await?;
                }
            }
            Mode::Pass | Mode::Drip(_) | Mode::ResetMidResponse => to.write_all(chunk).await?,
        }
    }
}

/// Reads the upstream's answers and writes them to the daemon as the mode says.
async fn pump_down<R>(
    mut from: R,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mode: Mode,
    state: &State,
    index: usize,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buffer[..n];
        match mode {
            Mode::Pass | Mode::Blackhole => to.write_all(chunk).await?,
            Mode::Latency(d) => {
                tokio::time::sleep(d).await;
                to.write_all(chunk).await?;
            }
            Mode::Slice => {
                for byte in chunk {
                    to.write_all(std::slice::from_ref(byte)).await?;
                    to.flush().await?;
                }
            }
            Mode::Drip(every) => {
                for byte in chunk {
                    to.write_all(std::slice::from_ref(byte)).await?;
                    to.flush().await?;
                    state.update(index, |c| c.bytes_down += 1);
                    tokio::time::sleep(every).await;
                }
                continue;
            }
            Mode::ResetMidResponse => {
                // Let the rest of a response that came in pieces arrive, so that "half" is
                // half of the whole answer.
                let mut response = chunk.to_vec();
                let _ = tokio::time::timeout(Duration::from_millis(100), async {
                    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
                        match from.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => response.extend_from_slice(&buffer[..n]),
                        }
                    }
                })
                .await;
                let half = &response[..response.len() / 2];
                to.write_all(half).await?;
                to.flush().await?;
                state.update(index, |c| c.bytes_down += half.len());
                // Let the half reach the daemon before the RST discards unsent data.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(std::io::Error::other("reset mid-response"));
            }
        }
        state.update(index, |c| c.bytes_down += n);
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: std::net::SocketAddr,
    mode: Mode,
    state: &State,
    index: usize,
) {
    if mode == Mode::Blackhole {
        let _ = pump_up(&mut client, tokio::io::sink(), mode, state, index).await;
        state.update(index, |c| {
            c.closed.get_or_insert_with(Instant::now);
        });
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let reset = {
        let (client_read, mut client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            _ = pump_up(client_read, server_write, mode, state, index) => {
                // The daemon closed (or broke) its side: it gave up or is done.
                state.update(index, |c| { c.closed.get_or_insert_with(Instant::now); });
                false
            }
            down = pump_down(server_read, &mut client_write, mode, state, index) => {
                down.is_err() && mode == Mode::ResetMidResponse
            }
        }
    };
    if reset {
        let _ = client.set_zero_linger();
    }
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::FakeCallback;
    use crate::support::http::{client, send};

    async fn post_through(proxy: &FaultProxy, timeout: Duration) -> Result<u16, String> {
        send(
            client()
                .post(proxy.url())
                .header("webhook-id", "01TESTID")
                .body("x".repeat(100))
                .timeout(timeout),
        )
        .await
        .map(|r| r.status)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn modes_behave_as_named() {
        let cb = FakeCallback::ok().await;
        let proxy = FaultProxy::start(cb.addr(), Mode::Pass).await;
        assert_eq!(post_through(&proxy, Duration::from_secs(5)).await, Ok(200));

        proxy.set_mode(Mode::Slice);
        assert_eq!(post_through(&proxy, Duration::from_secs(5)).await, Ok(200));

        proxy.set_mode(Mode::Latency(Duration::from_millis(200)));
        let started = Instant::now();
        assert_eq!(post_through(&proxy, Duration::from_secs(5)).await, Ok(200));
        assert!(started.elapsed() >= Duration::from_millis(400));

        proxy.set_mode(Mode::Blackhole);
        let started = Instant::now();
        assert!(
            post_through(&proxy, Duration::from_millis(500))
                .await
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        proxy.set_mode(Mode::Drip(Duration::from_millis(300)));
        assert!(
            post_through(&proxy, Duration::from_millis(800))
                .await
                .is_err()
        );

        proxy.set_mode(Mode::ResetMidResponse);
        assert!(post_through(&proxy, Duration::from_secs(5)).await.is_err());

        let conns = proxy
            .wait_until(Duration::from_secs(5), "6 closed connections", |c| {
                c.len() == 6 && c.iter().all(|c| c.closed.is_some())
            })
            .await;
        let modes: Vec<Mode> = conns.iter().map(|c| c.mode).collect();
        assert_eq!(
            modes,
            [
                Mode::Pass,
                Mode::Slice,
                Mode::Latency(Duration::from_millis(200)),
                Mode::Blackhole,
                Mode::Drip(Duration::from_millis(300)),
                Mode::ResetMidResponse
            ]
        );
        assert!(
            conns
                .iter()
                .all(|c| c.event_id.as_deref() == Some("01TESTID"))
        );
        // Blackhole: the request arrived, nothing went back.
        assert!(conns[3].bytes_up > 100 && conns[3].bytes_down == 0);
        // Drip: a few bytes of the answer before the client gave up.
        assert!((1..10).contains(&conns[4].bytes_down), "{:?}", conns[4]);
        // The upstream saw every request except the blackholed one.
        assert_eq!(cb.count(), 5);
    }
}
