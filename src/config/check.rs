//! [`Checker`]: turns raw values into typed ones, one key at a time, recording a [`Problem`]
//! for each value that breaks a rule and carrying on, so that every problem is found.
//!
//! Each check returns `Err(Reported)` when it recorded a problem; callers finish checking the
//! other keys before giving up on the section (`?` only when assembling the result).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use super::defaults::{MAX_DURATION, MAX_DURATION_TEXT, MAX_SIZE, MAX_SIZE_TEXT};
use super::problem::{Problem, quoted};
use super::raw::{RawIntOrText, RawText};
use super::{LoadContext, Secret, Url, file_value, grammar};

/// A problem was recorded for this value (the problem itself is in the [`Checker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported;

/// What a check yields: the value (`None` when absent), or that a problem was recorded.
pub(crate) type Checked<T> = Result<Option<T>, Reported>;

/// Collects problems and warnings while values are checked.
pub(crate) struct Checker<'a> {
    ctx: &'a LoadContext,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

impl<'a> Checker<'a> {
    pub fn new(ctx: &'a LoadContext, problems: Vec<Problem>) -> Checker<'a> {
        Checker {
            ctx,
            problems,
            warnings: Vec::new(),
        }
    }

    /// Where the configuration comes from (its folder, the credentials directory).
    pub fn context(&self) -> &LoadContext {
        self.ctx
    }

    /// Records that `key` breaks `rule`; `shown` is the value as written (never a secret).
    pub fn report(
        &mut self,
        key: &str,
        rule: impl Into<String>,
        shown: Option<String>,
    ) -> Reported {
        let problem = Problem::new(key, rule);
        self.problems.push(match shown {
            Some(value) => problem.got(value),
            None => problem,
        });
        Reported
    }

    /// Reports a missing required key, unless a problem about it was already recorded.
    pub fn required<T>(&mut self, checked: Checked<T>, key: &str) -> Result<T, Reported> {
        match checked? {
            Some(value) => Ok(value),
            None if self.mentions(key) => Err(Reported),
            None => Err(self.report(key, "is required", None)),
        }
    }

    fn mentions(&self, key: &str) -> bool {
        let nested = format!("{key}.");
        self.problems
            .iter()
            .any(|problem| problem.key == key || problem.key.starts_with(&nested))
    }

    /// A plain (non-secret) string, read from its file when it is `{ file = … }`.
    pub fn text(&mut self, raw: Option<&RawText>, key: &str) -> Checked<String> {
        raw.map(|raw| self.resolve(raw, key, false)).transpose()
    }

    /// A secret string: must not be empty; never shown.
    pub fn secret(&mut self, raw: Option<&RawText>, key: &str) -> Checked<Secret> {
        let Some(raw) = raw else { return Ok(None) };
        let value = self.resolve(raw, key, true)?;
        if value.is_empty() {
            return Err(self.report(key, "must not be empty", None));
        }
        Ok(Some(Secret::new(value)))
    }

    fn resolve(&mut self, raw: &RawText, key: &str, secret: bool) -> Result<String, Reported> {
        match raw {
            RawText::Inline(value) => Ok(value.clone()),
            RawText::File(path) => match file_value::read(self.ctx, key, path, secret) {
                Ok(read) => {
                    self.warnings.extend(read.warning);
                    Ok(read.text)
                }
                Err(rule) => Err(self.report(key, rule, Some(quoted(path)))),
            },
        }
    }

    /// A plain string parsed by `parse`, whose error is the rule broken.
    pub fn parsed<T>(
        &mut self,
        raw: Option<&RawText>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Checked<T> {
        let Some(text) = self.text(raw, key)? else {
            return Ok(None);
        };
        parse(&text)
            .map(Some)
            .map_err(|rule| self.report(key, rule, Some(quoted(&text))))
    }

    /// A duration greater than zero and at most [`MAX_DURATION`]; `default` when absent.
    pub fn duration(
        &mut self,
        raw: Option<&RawText>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, Reported> {
        let parsed = self.parsed(raw, key, |text| match grammar::parse_duration(text)? {
            Duration::ZERO => Err("must be greater than 0".to_owned()),
            duration if duration > MAX_DURATION => Err(too_long()),
            duration => Ok(duration),
        })?;
        Ok(parsed.unwrap_or(default))
    }

    /// A duration at most [`MAX_DURATION`], where `"0s"` means "off"; `default` when absent.
    pub fn duration_or_off(
        &mut self,
        raw: Option<&RawText>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, Reported> {
        let parsed = self.parsed(raw, key, |text| match grammar::parse_duration(text)? {
            duration if duration > MAX_DURATION => Err(too_long()),
            duration => Ok(duration),
        })?;
        Ok(parsed.unwrap_or(default))
    }

    /// A size in bytes, greater than zero and at most [`MAX_SIZE`]; `default` when absent.
    pub fn size(
        &mut self,
        raw: Option<&RawIntOrText>,
        key: &str,
        default: u64,
    ) -> Result<u64, Reported> {
        const POSITIVE: &str = "must be greater than 0";
        let too_large = || format!("must be at most {MAX_SIZE_TEXT}");
        match raw {
            None => Ok(default),
            Some(RawIntOrText::Int(bytes)) => match u64::try_from(*bytes) {
                Ok(0) | Err(_) => Err(self.report(key, POSITIVE, Some(bytes.to_string()))),
                Ok(size) if size > MAX_SIZE => {
                    Err(self.report(key, too_large(), Some(bytes.to_string())))
                }
                Ok(size) => Ok(size),
            },
            Some(RawIntOrText::Text(text)) => {
                let parsed =
                    self.parsed(Some(text), key, |text| match grammar::parse_size(text)? {
                        0 => Err(POSITIVE.to_owned()),
                        bytes if bytes > MAX_SIZE => Err(too_large()),
                        bytes => Ok(bytes),
                    })?;
                Ok(parsed.unwrap_or(default))
            }
        }
    }

    /// An integer from 1 to `u32::MAX`; `default` when absent.
    pub fn positive_u32(
        &mut self,
        raw: Option<i64>,
        key: &str,
        default: u32,
    ) -> Result<u32, Reported> {
        let Some(value) = raw else { return Ok(default) };
        u32::try_from(value)
            .ok()
            .filter(|value| *value >= 1)
            .ok_or_else(|| {
                self.report(
                    key,
                    format!("must be an integer from 1 to {}", u32::MAX),
                    Some(value.to_string()),
                )
            })
    }

    /// Like [`Checker::positive_u32`], as the non-zero type the validated config holds.
    pub fn non_zero_u32(
        &mut self,
        raw: Option<i64>,
        key: &str,
        default: NonZeroU32,
    ) -> Result<NonZeroU32, Reported> {
        let value = self.positive_u32(raw, key, default.get())?;
        NonZeroU32::new(value).ok_or(Reported)
    }

    /// An `ip:port` address.
    pub fn socket_addr(&mut self, raw: Option<&RawText>, key: &str) -> Checked<SocketAddr> {
        self.parsed(raw, key, |text| {
            text.parse().map_err(|_| {
                "must be an IP address and port, such as \"127.0.0.1:8080\" or \"[::1]:8080\""
                    .to_owned()
            })
        })
    }

    /// An http or https URL with a host and no username or password.
    pub fn url(&mut self, raw: Option<&RawText>, key: &str) -> Checked<Url> {
        let Some(text) = self.text(raw, key)? else {
            return Ok(None);
        };
        let rule = match Url::parse(&text) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => "must be an http or https URL",
            Ok(url) if !url.has_host() => "must be an http or https URL with a host",
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                // The value is not shown: it holds a credential.
                return Err(self.report(key, "must not contain a username or password", None));
            }
            Ok(url) => return Ok(Some(url)),
            Err(_) => "must be an http or https URL",
        };
        Err(self.report(key, rule, Some(quoted(&text))))
    }
}

/// The rule a duration above [`MAX_DURATION`] breaks.
fn too_long() -> String {
    format!("must be at most {MAX_DURATION_TEXT}")
}
