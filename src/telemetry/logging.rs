//! Log output: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON;
//! records of crates that use `log` are bridged in, except sled's debug and trace records
//! (see [`QuietSled`]).

use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_log::{AsLog, LogTracer};
use tracing_subscriber::EnvFilter;

/// The two log formats of `run --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber and the `log` bridge (once, at start; the only globals the
/// daemon sets up).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: in a file, a pipe or systemd's journal, escape codes would
    // show as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let subscriber: Box<dyn Subscriber + Send + Sync> = match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    };
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    if log::set_boxed_logger(Box::new(QuietSled(LogTracer::new()))).is_ok() {
        log::set_max_level(LevelFilter::current().as_log());
    }
}

/// The `log` → `tracing` bridge without sled's debug and trace records. sled emits some of them
/// from crossbeam-epoch's deferred closures, which may run inside a thread's thread-local
/// destructors; the fmt layer cannot write there, and the process would abort at shutdown
/// whenever `RUST_LOG` enabled them.
struct QuietSled(LogTracer);

impl QuietSled {
    fn passes(metadata: &log::Metadata<'_>) -> bool {
        let target = metadata.target();
        let sled = target == "sled" || target.starts_with("sled::");
        !(sled && metadata.level() > log::Level::Info)
    }
}

impl log::Log for QuietSled {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        QuietSled::passes(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if QuietSled::passes(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes(target: &str, level: log::Level) -> bool {
        QuietSled::passes(&log::Metadata::builder().target(target).level(level).build())
    }

    #[test]
    fn only_sleds_debug_and_trace_records_are_dropped() {
        assert!(!passes("sled::pagecache::iobuf", log::Level::Debug));
        assert!(!passes("sled", log::Level::Trace));
        assert!(passes("sled::pagecache", log::Level::Info));
        assert!(passes("sled::tree", log::Level::Error));
        assert!(passes("sledgehammer", log::Level::Debug));
        assert!(passes("reqwest::connect", log::Level::Trace));
    }
}
