//! Log output: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON;
//! records of crates that use `log` are bridged in, except sled's debug and trace records
//! (see [`QuietSled`]). When stderr is systemd's journal, every line starts with its priority
//! (see [`Stderr`]).

use std::io::{IsTerminal as _, Write};

use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata, Subscriber};
use tracing_log::{AsLog, LogTracer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The two log formats of `run --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber and the `log` bridge (once, at start; the only globals the
/// daemon sets up). Returns the stderr it logs to, for the messages `run` prints itself.
pub fn init(format: LogFormat) -> Stderr {
    let stderr = Stderr::detect();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: in a file, a pipe or systemd's journal, escape codes would
    // show as text.
    let ansi = std::io::stderr().is_terminal() && !stderr.journal;
    let subscriber = subscriber(format, filter, ansi, Prefixed::new(std::io::stderr, stderr));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return stderr;
    }
    if log::set_boxed_logger(Box::new(QuietSled(LogTracer::new()))).is_ok() {
        log::set_max_level(LevelFilter::current().as_log());
    }
    stderr
}

/// The fmt subscriber in `format`, writing through `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// The process's stderr, and whether it is systemd's journal.
///
/// systemd sets `JOURNAL_STREAM=DEV:INODE` to the stream it connects stdout/stderr to; when
/// stderr's `fstat` matches, each line written starts with its sd-daemon(3) priority prefix
/// (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace), which journald strips and
/// records as PRIORITY=, so `journalctl -p warning` works. (The variable is inherited, so a
/// process whose stderr was redirected elsewhere sees no match and writes no prefix.) The
/// native journal protocol (`tracing-journald`, a datagram socket) would carry the same; the
/// prefix keeps one output path, needs no new crate, and is what systemd documents for
/// services logging to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stderr {
    journal: bool,
}

impl Stderr {
    fn detect() -> Stderr {
        let journal = std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|value| parse_journal_stream(&value))
            .is_some_and(|stream| Some(stream) == stderr_identity());
        Stderr { journal }
    }

    /// Prints `message` on stderr as an error (each line prefixed `<3>` under the journal):
    /// for what `run` reports outside `tracing`, such as a config that cannot start.
    pub fn error(&self, message: &str) {
        let prefix = self.journal.then(|| priority(&Level::ERROR));
        let mut writer = PrefixWriter::new(std::io::stderr().lock(), prefix);
        let _ = writeln!(writer, "{message}");
    }
}

/// `DEV:INODE` as systemd writes `JOURNAL_STREAM` (two decimal numbers).
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// stderr's device and inode (`None` if it is closed).
// `st_dev` and `st_ino` are u64 on some targets and c_ulong on others.
#[allow(clippy::useless_conversion)]
fn stderr_identity() -> Option<(u64, u64)> {
    let stat = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((u64::from(stat.st_dev), u64::from(stat.st_ino)))
}

/// sd-daemon(3)'s prefix for `level` (`<5>` notice has no `tracing` level).
fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"<3>",
        Level::WARN => b"<4>",
        Level::INFO => b"<6>",
        Level::DEBUG | Level::TRACE => b"<7>",
    }
}

/// A [`MakeWriter`] that makes, per event, a writer starting every line with the event's
/// priority when stderr is the journal, and passes the bytes through unchanged otherwise.
struct Prefixed<M> {
    inner: M,
    journal: bool,
}

impl<M> Prefixed<M> {
    fn new(inner: M, stderr: Stderr) -> Self {
        Prefixed {
            inner,
            journal: stderr.journal,
        }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Prefixed<M> {
    type Writer = PrefixWriter<M::Writer>;

    /// Without an event's level (the fmt layer always passes one): no prefix, journald's
    /// default priority.
    fn make_writer(&'a self) -> Self::Writer {
        PrefixWriter::new(self.inner.make_writer(), None)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        let prefix = self.journal.then(|| priority(meta.level()));
        PrefixWriter::new(self.inner.make_writer_for(meta), prefix)
    }
}

/// Writes `prefix` before every line (after each `\n`, at the next byte), and each `write`
/// with one `write_all` to `inner`: the fmt layer hands over a whole event in one call, so
/// events from different threads do not interleave within a line.
struct PrefixWriter<W> {
    inner: W,
    prefix: Option<&'static [u8]>,
    line_start: bool,
}

impl<W> PrefixWriter<W> {
    fn new(inner: W, prefix: Option<&'static [u8]>) -> Self {
        PrefixWriter {
            inner,
            prefix,
            line_start: true,
        }
    }
}

impl<W: Write> Write for PrefixWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(prefix) = self.prefix else {
            return self.inner.write(buf);
        };
        let mut out = Vec::with_capacity(buf.len() + 2 * prefix.len());
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.line_start {
                out.extend_from_slice(prefix);
            }
            out.extend_from_slice(line);
            self.line_start = line.ends_with(b"\n");
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What `writes` become through a writer with `prefix`.
    fn through(prefix: Option<&'static [u8]>, writes: &[&str]) -> String {
        let mut writer = PrefixWriter::new(Vec::new(), prefix);
        for w in writes {
            writer.write_all(w.as_bytes()).unwrap();
        }
        String::from_utf8(writer.inner).unwrap()
    }

    #[test]
    fn levels_map_to_sd_daemon_priorities() {
        assert_eq!(priority(&Level::ERROR), b"<3>");
        assert_eq!(priority(&Level::WARN), b"<4>");
        assert_eq!(priority(&Level::INFO), b"<6>");
        assert_eq!(priority(&Level::DEBUG), b"<7>");
        assert_eq!(priority(&Level::TRACE), b"<7>");
    }

    #[test]
    fn every_physical_line_carries_the_prefix() {
        assert_eq!(through(Some(b"<4>"), &["one\n"]), "<4>one\n");
        assert_eq!(
            through(Some(b"<3>"), &["one\ntwo\n\nfour\n"]),
            "<3>one\n<3>two\n<3>\n<3>four\n"
        );
        // Lines split across writes: the prefix only at a line's first byte.
        assert_eq!(
            through(Some(b"<6>"), &["a", "b\nc", "", "\n"]),
            "<6>ab\n<6>c\n"
        );
        assert_eq!(through(Some(b"<7>"), &["no newline"]), "<7>no newline");
    }

    #[test]
    fn without_a_prefix_bytes_pass_unchanged() {
        assert_eq!(through(None, &["one\ntwo\n"]), "one\ntwo\n");
    }

    #[test]
    fn journal_stream_is_two_decimal_numbers() {
        assert_eq!(parse_journal_stream("64769:12345"), Some((64769, 12345)));
        assert_eq!(parse_journal_stream("64769"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    /// A shared buffer as a `MakeWriter` (one writer per event, as the fmt layer asks).
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `format` writes for one event per level (the error's message has two lines).
    fn logged(format: LogFormat, journal: bool) -> Vec<String> {
        let buffer = Shared::default();
        let out = buffer.clone();
        let writer = Prefixed::new(move || out.clone(), Stderr { journal });
        let subscriber = subscriber(format, EnvFilter::new("trace"), false, writer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("failed\nsecond line");
            tracing::warn!("warned");
            tracing::info!("informed");
            tracing::debug!("debugged");
            tracing::trace!("traced");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn prefixes(lines: &[String]) -> Vec<&str> {
        lines.iter().map(|l| l.get(..3).unwrap_or(l)).collect()
    }

    #[test]
    fn text_lines_under_the_journal_start_with_their_priority() {
        let lines = logged(LogFormat::Text, true);
        assert_eq!(
            prefixes(&lines),
            ["<3>", "<3>", "<4>", "<6>", "<7>", "<7>"],
            "{lines:#?}"
        );
        assert!(lines[0].contains("ERROR") && lines[0].ends_with("failed"));
        assert_eq!(lines[1], "<3>second line");
        assert!(lines[2].contains("WARN") && lines[2].ends_with("warned"));
    }

    #[test]
    fn json_lines_under_the_journal_start_with_their_priority() {
        let lines = logged(LogFormat::Json, true);
        assert_eq!(
            prefixes(&lines),
            ["<3>", "<4>", "<6>", "<7>", "<7>"],
            "{lines:#?}"
        );
        for line in &lines {
            let object: serde_json::Value = serde_json::from_str(&line[3..]).unwrap();
            assert!(object["level"].is_string(), "{line}");
        }
    }

    #[test]
    fn without_the_journal_no_line_is_prefixed() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let lines = logged(format, false);
            assert!(lines.len() >= 5, "{lines:#?}");
            assert!(lines.iter().all(|l| !l.starts_with('<')), "{lines:#?}");
        }
    }

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
