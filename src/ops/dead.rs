//! Dead-letter administration (SPEC §2 `dead …`): choosing dead letters by id, instance or
//! all within a time window, then listing, replaying or purging them. One implementation
//! serves both the admin API (daemon running) and the CLI's offline path (daemon stopped).
//!
//! Times select on when an event was dead-lettered: `since` inclusive, `until` exclusive.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::config::parse_duration;
use crate::store::inspect::EventSummary;
use crate::store::{self, Store};

/// What a TIME may be, for messages.
pub const TIME_EXPECTED: &str = "expected an RFC 3339 time in UTC (2026-01-31T10:00:00Z), \
     an age such as 2h or 1h30m (that long ago), or Unix milliseconds";

/// Parses TIME: RFC 3339 (UTC), an age (`2h` = two hours before `now_ms`), or Unix ms.
///
/// # Errors
/// Anything else, with [`TIME_EXPECTED`].
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map_err(|_| format!("{text:?}: {TIME_EXPECTED}"));
    }
    if let Ok(age) = parse_duration(text) {
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        return Ok(now_ms.saturating_sub(age_ms));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(time) => Ok(time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)),
        Err(_) => Err(format!("{text:?}: {TIME_EXPECTED}")),
    }
}

/// A window on the time an event was dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Inclusive, Unix ms.
    pub since_ms: Option<u64>,
    /// Exclusive, Unix ms.
    pub until_ms: Option<u64>,
}

impl Window {
    pub fn contains(&self, ms: u64) -> bool {
        self.since_ms.is_none_or(|since| ms >= since)
            && self.until_ms.is_none_or(|until| ms < until)
    }

    pub fn is_unbounded(&self) -> bool {
        self.since_ms.is_none() && self.until_ms.is_none()
    }
}

/// Which dead letters a replay or purge acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ids(Vec<Ulid>),
    Instance(String),
    All,
}

/// A target within a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub target: Target,
    pub window: Window,
}

/// A time in a JSON body: Unix ms, or text (RFC 3339, an age, digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimeValue {
    Ms(u64),
    Text(String),
}

impl TimeValue {
    fn resolve(&self, now_ms: u64) -> Result<u64, String> {
        match self {
            TimeValue::Ms(ms) => Ok(*ms),
            TimeValue::Text(text) => parse_time(text, now_ms),
        }
    }
}

/// The JSON body of `POST /admin/dead/replay` and `/admin/dead/purge`: exactly one of `ids`,
/// `instance` or `all: true`, and optionally `since` and `until`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<TimeValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<TimeValue>,
}

impl SelectionBody {
    /// The body that asks for `selection`.
    pub fn from_selection(selection: &Selection) -> SelectionBody {
        let mut body = SelectionBody {
            since: selection.window.since_ms.map(TimeValue::Ms),
            until: selection.window.until_ms.map(TimeValue::Ms),
            ..SelectionBody::default()
        };
        match &selection.target {
            Target::Ids(ids) => body.ids = Some(ids.iter().map(Ulid::to_string).collect()),
            Target::Instance(name) => body.instance = Some(name.clone()),
            Target::All => body.all = Some(true),
        }
        body
    }

    /// Checks the body: one selector, valid ids and times.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn into_selection(self, now_ms: u64) -> Result<Selection, String> {
        let all = self.all == Some(true);
        let given = usize::from(self.ids.is_some())
            + usize::from(self.instance.is_some())
            + usize::from(all);
        if given != 1 {
            return Err(
                "give exactly one of \"ids\" (a list), \"instance\" (a name) or \"all\": true"
                    .into(),
            );
        }
        let target = if let Some(ids) = self.ids {
            if ids.is_empty() {
                return Err("\"ids\" is empty".into());
            }
            let ids = ids
                .iter()
                .map(|id| {
                    id.parse::<Ulid>()
                        .map_err(|_| format!("{id:?} is not an event id"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Target::Ids(ids)
        } else if let Some(instance) = self.instance {
            Target::Instance(instance)
        } else {
            Target::All
        };
        let window = Window {
            since_ms: self.since.map(|t| t.resolve(now_ms)).transpose()?,
            until_ms: self.until.map(|t| t.resolve(now_ms)).transpose()?,
        };
        Ok(Selection { target, window })
    }
}

/// What a replay or purge did: the answer of the admin API, and what the CLI prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Dead letters replayed or purged.
    pub count: u64,
    /// Purge only: pending events of a no-longer-configured instance that were dropped too.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: u64,
    /// Requested ids that are not (or no longer) dead letters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<String>,
    /// Instances that had letters replayed (their lanes should look at the store).
    #[serde(skip)]
    pub instances: BTreeSet<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Dead letters of one instance or all, within `window`, oldest death first.
///
/// # Errors
/// A store read error.
pub fn list(
    store: &Store,
    instance: Option<&str>,
    window: &Window,
) -> Result<Vec<EventSummary>, store::Error> {
    let mut letters: Vec<EventSummary> = store
        .dead_letters(instance)?
        .into_iter()
        .filter(|letter| window.contains(letter.dead_at_ms.unwrap_or(0)))
        .collect();
    letters.sort_by(|a, b| (a.dead_at_ms, &a.id).cmp(&(b.dead_at_ms, &b.id)));
    Ok(letters)
}

/// Dead letters as the store names them: (instance, event id).
type Letters = Vec<(String, Ulid)>;

/// The letters `selection` names, and the requested ids that are not dead letters.
fn resolve(store: &Store, selection: &Selection) -> Result<(Letters, Vec<String>), store::Error> {
    let instance = match &selection.target {
        Target::Instance(name) => Some(name.as_str()),
        Target::Ids(_) | Target::All => None,
    };
    let letters = list(store, instance, &selection.window)?;
    let pair = |letter: &EventSummary| {
        letter
            .id
            .parse::<Ulid>()
            .ok()
            .map(|id| (letter.instance.clone(), id))
    };
    match &selection.target {
        Target::Ids(ids) => {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                match letters.iter().filter_map(pair).find(|(_, l)| l == id) {
                    Some(hit) => found.push(hit),
                    None => missing.push(id.to_string()),
                }
            }
            Ok((found, missing))
        }
        Target::Instance(_) | Target::All => {
            Ok((letters.iter().filter_map(pair).collect(), Vec::new()))
        }
    }
}

/// Puts the selected dead letters back on the queue with a fresh attempt count and age.
/// The caller pokes the lanes of [`Outcome::instances`].
///
/// # Errors
/// A store error.
pub async fn replay(store: &Store, selection: &Selection) -> Result<Outcome, store::Error> {
    let (letters, not_found) = resolve(store, selection)?;
    let instances = letters.iter().map(|(name, _)| name.clone()).collect();
    let count = if letters.is_empty() {
        0
    } else {
        store.replay_dead(letters).await?
    };
    Ok(Outcome {
        count,
        held: 0,
        not_found,
        instances,
    })
}

/// Deletes the selected dead letters. With `--instance NAME` and no window, when NAME is not
/// configured (`is_configured` says no), NAME's held pending events are deleted too (SPEC §7).
///
/// # Errors
/// A store error.
pub async fn purge(
    store: &Store,
    selection: &Selection,
    is_configured: impl Fn(&str) -> bool,
) -> Result<Outcome, store::Error> {
    let (letters, not_found) = resolve(store, selection)?;
    let count = if letters.is_empty() {
        0
    } else {
        store.purge_dead(letters).await?
    };
    let held = match &selection.target {
        Target::Instance(name) if selection.window.is_unbounded() && !is_configured(name) => {
            store.purge_pending(name).await?
        }
        _ => 0,
    };
    Ok(Outcome {
        count,
        held,
        not_found,
        instances: BTreeSet::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn times_are_rfc3339_ages_or_milliseconds() {
        assert_eq!(parse_time("2h", NOW), Ok(NOW - 2 * 3_600_000));
        assert_eq!(parse_time("1h30m", NOW), Ok(NOW - 90 * 60_000));
        assert_eq!(parse_time("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", NOW),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z", NOW),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("2023-11-14 22:13:20", NOW),
            Ok(1_700_000_000_000)
        );
        for bad in ["", "yesterday", "2h ago", "-5", "2023-13-01T00:00:00Z"] {
            let err = parse_time(bad, NOW).expect_err(bad);
            assert!(err.contains("RFC 3339"), "{err}");
        }
    }

    #[test]
    fn window_is_half_open() {
        let window = Window {
            since_ms: Some(10),
            until_ms: Some(20),
        };
        assert!(!window.contains(9));
        assert!(window.contains(10));
        assert!(window.contains(19));
        assert!(!window.contains(20));
        assert!(Window::default().contains(0));
        assert!(Window::default().is_unbounded());
    }

    fn body(json: &str) -> Result<Selection, String> {
        serde_json::from_str::<SelectionBody>(json)
            .map_err(|e| e.to_string())?
            .into_selection(NOW)
    }

    #[test]
    fn bodies_need_exactly_one_selector() {
        let id = Ulid::from_parts(1, 2);
        assert_eq!(
            body(&format!(r#"{{"ids": ["{id}"]}}"#)),
            Ok(Selection {
                target: Target::Ids(vec![id]),
                window: Window::default()
            })
        );
        assert_eq!(
            body(r#"{"instance": "acme", "since": "2h", "until": 1700000000000}"#),
            Ok(Selection {
                target: Target::Instance("acme".into()),
                window: Window {
                    since_ms: Some(NOW - 7_200_000),
                    until_ms: Some(1_700_000_000_000)
                }
            })
        );
        assert_eq!(
            body(r#"{"all": true, "since": "2023-11-14T22:13:20Z"}"#).map(|s| s.window),
            Ok(Window {
                since_ms: Some(1_700_000_000_000),
                until_ms: None
            })
        );
        for bad in [
            r#"{}"#,
            r#"{"all": false}"#,
            r#"{"all": true, "instance": "acme"}"#,
            r#"{"ids": []}"#,
            r#"{"ids": ["nope"]}"#,
            r#"{"all": true, "since": "soon"}"#,
            r#"{"all": true, "colour": "red"}"#,
        ] {
            assert!(body(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn selections_round_trip_through_bodies() {
        let selection = Selection {
            target: Target::Ids(vec![Ulid::from_parts(5, 6), Ulid::from_parts(7, 8)]),
            window: Window {
                since_ms: Some(1),
                until_ms: Some(2),
            },
        };
        let json =
            serde_json::to_string(&SelectionBody::from_selection(&selection)).expect("serialises");
        assert_eq!(body(&json), Ok(selection));
        let all = Selection {
            target: Target::All,
            window: Window::default(),
        };
        let json = serde_json::to_string(&SelectionBody::from_selection(&all)).expect("json");
        assert_eq!(json, r#"{"all":true}"#);
    }
}
