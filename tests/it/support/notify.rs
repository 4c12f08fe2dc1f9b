//! `NotifySocket`: a `NOTIFY_SOCKET` the test owns (a Unix datagram socket in a temp dir), to
//! read the daemon's sd_notify datagrams as systemd would. Every wait is bounded.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixDatagram;

pub struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    /// Every datagram received so far, in order.
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-notify-")
            .tempdir()
            .expect("a temp dir for the notify socket");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket {
            _dir: dir,
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    /// Receives until a datagram satisfies `wanted` and returns it; panics after `timeout`.
    pub async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buffer = vec![0u8; 4096];
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await;
            let Ok(Ok(length)) = received else {
                let tail: Vec<&String> = self.seen.iter().rev().take(10).collect();
                panic!("no {what} within {timeout:?}; last datagrams (newest first): {tail:?}");
            };
            let datagram = String::from_utf8_lossy(&buffer[..length]).into_owned();
            self.seen.push(datagram.clone());
            if wanted(&datagram) {
                return datagram;
            }
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC` is written.
pub fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec / 1_000).unwrap_or(0)
}
