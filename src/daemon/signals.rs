//! Unix signals turned into the daemon's two control requests.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP (systemd's `ExecReload`): re-read the configuration.
    Reload,
    /// SIGTERM (systemd's stop) or SIGINT (Ctrl-C): stop accepting, drain, exit 0.
    Shutdown,
}

pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Registers the handlers; must run inside the tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Control {
        tokio::select! {
            _ = self.hangup.recv() => Control::Reload,
            _ = self.terminate.recv() => Control::Shutdown,
            _ = self.interrupt.recv() => Control::Shutdown,
        }
    }
}
