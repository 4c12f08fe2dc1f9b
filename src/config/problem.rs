//! What loading reports: [`ConfigError`], the [`Problem`]s it carries, and how key paths are
//! spelled (`instance[2].configuration."event.notification.callback.url"`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (or its path made absolute).
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but breaks the rules; every problem found is listed.
    #[error("{}", render_problems(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One broken rule: the key it is about, the rule, and the offending value unless it is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A key path such as `instance[0].delivery.rate_limit`, or `line L, column C` for syntax.
    pub key: String,
    /// What the value must be, e.g. `must be an http or https URL`.
    pub rule: String,
    /// The value as written (strings quoted); `None` for secrets and when there is no value.
    pub value: Option<String>,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, rule: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            rule: rule.into(),
            value: None,
        }
    }

    /// The same problem, showing `value` as written.
    pub(crate) fn got(mut self, value: impl Into<String>) -> Problem {
        self.value = Some(value.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.rule)?;
        if let Some(value) = &self.value {
            write!(f, " (got {value})")?;
        }
        Ok(())
    }
}

/// `{file}: N problems`, then `{file}: {problem}` per line, so each line names file and key.
fn render_problems(file: &Path, problems: &[Problem]) -> String {
    let file = file.display();
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut text = format!("{file}: {count} {noun}");
    for problem in problems {
        text.push_str(&format!("\n{file}: {problem}"));
    }
    text
}

/// `key` as one segment of a key path: bare when TOML allows it, else quoted.
pub(crate) fn segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { key.to_owned() } else { quoted(key) }
}

/// `parent.key`, with `key` quoted when needed; just `key` at the top level.
pub(crate) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        segment(key)
    } else {
        format!("{parent}.{}", segment(key))
    }
}

/// A string value as shown in problems: in double quotes, escaped.
pub(crate) fn quoted(value: &str) -> String {
    format!("{value:?}")
}
