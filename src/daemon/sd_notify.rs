//! The systemd notify protocol (sd_notify(3)) without libsystemd: datagrams of `KEY=VALUE` lines
//! to `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.
//!
//! Without systemd (`$NOTIFY_SOCKET` unset) every call is a no-op, so the daemon runs the same.
//! Sending never fails the caller: errors are logged at debug and dropped, as sd_notify does.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifySocket {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in `$NOTIFY_SOCKET`), without the `@`.
    Abstract(Vec<u8>),
}

/// Sends state changes to the service manager; a no-op when there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    socket: Option<NotifySocket>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` once: a path, or an abstract socket when it starts with `@`.
    /// Unset, empty or another kind (e.g. `vsock:`) gives a disabled notifier.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|value| {
            let socket = parse_socket(value.as_encoded_bytes());
            if socket.is_none() {
                tracing::debug!(notify_socket = ?value, "unsupported NOTIFY_SOCKET; not notifying");
            }
            socket
        });
        Notifier { socket }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { socket: None }
    }

    /// A notifier sending to the socket file at `path` (for tests).
    pub fn with_socket(path: impl Into<PathBuf>) -> Notifier {
        Notifier {
            socket: Some(NotifySocket::Path(path.into())),
        }
    }

    /// Whether notifications are sent anywhere.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1`: listening and recovered, or done reloading.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (CLOCK_MONOTONIC now, in µs) in one datagram, as
    /// `Type=notify-reload` requires; older managers ignore the timestamp.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STATUS=<line>`, with line breaks turned into spaces so it stays one field.
    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace(['\n', '\r'], " ")));
    }

    /// Sends `state` as is (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(err) = send_datagram(socket, state.as_bytes()) {
            tracing::debug!(error = %err, state, "sd_notify failed");
        }
    }
}

/// The socket named by a `$NOTIFY_SOCKET` value, if it is a kind we can send to.
fn parse_socket(value: &[u8]) -> Option<NotifySocket> {
    match value.first()? {
        b'@' => Some(NotifySocket::Abstract(value[1..].to_vec())),
        b'/' => {
            let path = std::str::from_utf8(value).ok()?;
            Some(NotifySocket::Path(PathBuf::from(path)))
        }
        _ => None,
    }
}

fn send_datagram(socket: &NotifySocket, payload: &[u8]) -> std::io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let sent = match socket {
        NotifySocket::Path(path) => sender.send_to(payload, path)?,
        NotifySocket::Abstract(name) => send_to_abstract(&sender, payload, name)?,
    };
    if sent == payload.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("datagram truncated"))
    }
}

#[cfg(target_os = "linux")]
fn send_to_abstract(sender: &UnixDatagram, payload: &[u8], name: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt as _;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sender.send_to_addr(payload, &address)
}

#[cfg(not(target_os = "linux"))]
fn send_to_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

/// CLOCK_MONOTONIC now, in microseconds: what systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1_000).unwrap_or(0);
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set and meant for us
/// (`$WATCHDOG_PID` unset or our pid); otherwise `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from given variable values, so it can be tested without the
/// environment.
fn watchdog_interval_from(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = watchdog_pid
        && pid.trim().parse::<u32>().ok() != Some(our_pid)
    {
        return None;
    }
    let usec = watchdog_usec?.trim().parse::<u64>().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound receiving socket in a temporary directory, and a notifier sending to it.
    fn listening() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (dir, receiver, Notifier::with_socket(path))
    }

    fn receive(receiver: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let length = receiver.recv(&mut buffer).expect("a datagram arrives");
        String::from_utf8(buffer[..length].to_vec()).expect("utf-8")
    }

    #[test]
    fn sends_ready_stopping_watchdog_status() {
        let (_dir, receiver, notifier) = listening();
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&receiver), "READY=1");
        notifier.status("delivering\r\n3 queued");
        assert_eq!(receive(&receiver), "STATUS=delivering  3 queued");
        notifier.watchdog();
        assert_eq!(receive(&receiver), "WATCHDOG=1");
        notifier.stopping();
        assert_eq!(receive(&receiver), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock_in_one_datagram() {
        let (_dir, receiver, notifier) = listening();
        let before = monotonic_usec();
        notifier.reloading();
        let after = monotonic_usec();
        let datagram = receive(&receiver);
        let (first, second) = datagram.split_once('\n').expect("two lines");
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC")
            .parse()
            .expect("a number");
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
    }

    #[test]
    fn monotonic_usec_agrees_with_instant() {
        let start_clock = monotonic_usec();
        let start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed_clock = monotonic_usec() - start_clock;
        let elapsed = u64::try_from(start.elapsed().as_micros()).expect("small");
        assert!(
            elapsed_clock.abs_diff(elapsed) < 10_000,
            "{elapsed_clock} vs {elapsed}"
        );
    }

    #[test]
    fn disabled_and_unreachable_notifiers_are_silent() {
        let disabled = Notifier::disabled();
        assert!(!disabled.is_enabled());
        disabled.ready();
        let dir = tempfile::tempdir().expect("tempdir");
        Notifier::with_socket(dir.path().join("nobody-listens")).ready();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("hookrelay-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let notifier = Notifier {
            socket: parse_socket(format!("@{name}").as_bytes()),
        };
        notifier.ready();
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn parses_notify_socket_values() {
        assert_eq!(
            parse_socket(b"/run/systemd/notify"),
            Some(NotifySocket::Path(PathBuf::from("/run/systemd/notify")))
        );
        assert_eq!(
            parse_socket(b"@sd-notify"),
            Some(NotifySocket::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(parse_socket(b""), None);
        assert_eq!(parse_socket(b"vsock:2:1234"), None);
        assert_eq!(parse_socket(b"relative/path"), None);
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let our_pid = 4242;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, our_pid),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("4242"), our_pid),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("1"), our_pid),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), our_pid),
            None
        );
        assert_eq!(watchdog_interval_from(None, None, our_pid), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, our_pid), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, our_pid), None);
    }
}
