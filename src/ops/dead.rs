//! Dead-letter administration (`dead …` in docs/operations.md): choosing dead letters by id,
//! instance or all within a time window, then listing, replaying or purging them. One
//! implementation serves both the admin API (daemon running) and the CLI's offline path (daemon
//! stopped).
//!
//! Times select on when an event was dead-lettered: `since` inclusive, `until` exclusive.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::config::{Url, parse_duration};
use crate::store::inspect::{DeadRef, EventSummary};
use crate::store::{self, Store};
use crate::time;

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
    /// Purge only: the other records of a no-longer-configured instance that went with them
    /// (seen pairs, cursors, object maps, change queues, credentials, dead-letter alert tally).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forgotten: u64,
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

/// Dead letters one page of a listing shows by default, and at most.
pub const LIST_PAGE: usize = 1_000;
pub const LIST_PAGE_MAX: usize = 10_000;

/// A page of dead letters of one instance or all, within `window`, oldest death first, after
/// the letter `after` names (the last of the previous page; see [`after_token`]). Reads the
/// index and `limit` records, never the whole set, and no bodies.
///
/// # Errors
/// A store read error.
pub fn list(
    store: &Store,
    instance: Option<&str>,
    window: &Window,
    after: Option<&DeadRef>,
    limit: usize,
) -> Result<Vec<EventSummary>, store::Error> {
    let refs = store.dead_page(
        instance,
        (window.since_ms, window.until_ms),
        after,
        limit.clamp(1, LIST_PAGE_MAX),
    )?;
    store.dead_summaries(&refs)
}

/// A listing request, `GET /admin/dead?instance=&since=&until=&after=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub instance: Option<String>,
    pub window: Window,
    /// The last letter of the previous page ([`after_token`]).
    pub after: Option<DeadRef>,
    /// Letters in this page: [`LIST_PAGE`] unless asked, at most [`LIST_PAGE_MAX`].
    pub limit: usize,
}

impl ListQuery {
    /// The first page of `instance`'s (or all) letters within `window`.
    pub fn first(instance: Option<String>, window: Window) -> ListQuery {
        ListQuery {
            instance,
            window,
            after: None,
            limit: LIST_PAGE,
        }
    }

    /// Reads a query string; times as [`parse_time`] reads them.
    ///
    /// # Errors
    /// A message naming the parameter that is wrong.
    pub fn parse(query: Option<&str>, now_ms: u64) -> Result<ListQuery, String> {
        let mut list = ListQuery::first(None, Window::default());
        let mut url = Url::parse("http://admin/").map_err(|e| e.to_string())?;
        url.set_query(query);
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "instance" => list.instance = Some(value.into_owned()),
                "since" => list.window.since_ms = Some(parse_time(&value, now_ms)?),
                "until" => list.window.until_ms = Some(parse_time(&value, now_ms)?),
                "after" => list.after = Some(parse_after(&value)?),
                "limit" => {
                    list.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIST_PAGE_MAX).contains(n))
                        .ok_or_else(|| {
                            format!("limit {value:?}: expected a number from 1 to {LIST_PAGE_MAX}")
                        })?;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; expected instance, since, until, after or \
                         limit"
                    ));
                }
            }
        }
        Ok(list)
    }

    /// `/admin/dead?…` asking for this page, the query properly encoded.
    pub fn path(&self) -> String {
        let Ok(mut url) = Url::parse("http://admin/admin/dead") else {
            return "/admin/dead".into();
        };
        {
            let mut query = url.query_pairs_mut();
            if let Some(instance) = &self.instance {
                query.append_pair("instance", instance);
            }
            if let Some(since) = self.window.since_ms {
                query.append_pair("since", &since.to_string());
            }
            if let Some(until) = self.window.until_ms {
                query.append_pair("until", &until.to_string());
            }
            if let Some(after) = &self.after {
                query.append_pair("after", &token(after));
            }
            if self.limit != LIST_PAGE {
                query.append_pair("limit", &self.limit.to_string());
            }
        }
        match url.query() {
            Some(query) if !query.is_empty() => format!("{}?{query}", url.path()),
            _ => url.path().to_owned(),
        }
    }

    /// The query of the page after `page` (the page this query got), if it was full.
    pub fn next(&self, page: &[EventSummary]) -> Option<ListQuery> {
        let last = page.last().filter(|_| page.len() >= self.limit)?;
        Some(ListQuery {
            after: parse_after(&after_token(last)).ok(),
            ..self.clone()
        })
    }

    /// This page, read from the store directly.
    ///
    /// # Errors
    /// A store read error.
    pub fn read(&self, store: &Store) -> Result<Vec<EventSummary>, store::Error> {
        list(
            store,
            self.instance.as_deref(),
            &self.window,
            self.after.as_ref(),
            self.limit,
        )
    }
}

fn token(letter: &DeadRef) -> String {
    format!("{}.{}.{}", letter.dead_at_ms, letter.id, letter.instance)
}

/// The position after `letter`, for the next page: `<dead at ms>.<id>.<instance>`.
pub fn after_token(letter: &EventSummary) -> String {
    format!(
        "{}.{}.{}",
        letter.dead_at_ms.unwrap_or(0),
        letter.id,
        letter.instance
    )
}

/// Reads [`after_token`]'s text back.
///
/// # Errors
/// A message naming what does not parse.
pub fn parse_after(token: &str) -> Result<DeadRef, String> {
    let bad = || format!("{token:?} is not a position in the dead letters (<ms>.<id>.<instance>)");
    let mut parts = token.splitn(3, '.');
    let (Some(at), Some(id), Some(instance)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(DeadRef {
        dead_at_ms: at.parse().map_err(|_| bad())?,
        id: id.parse().map_err(|_| bad())?,
        instance: instance.to_owned(),
    })
}

/// Dead letters as the store names them: (instance, event id).
type Letters = Vec<(String, Ulid)>;

/// What a replay or purge does with each page of letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

/// Runs `action` on the letters `selection` names, a page of [`store::MAINTENANCE_PAGE`] at
/// a time: each page is read on a blocking thread and is one request to the committer, so
/// neither memory nor the committer's time grows with the number of letters. Letters that die
/// while it runs (a replayed one failing again) are left for the next request: the window
/// ends when the request began.
async fn act(
    store: &Store,
    selection: &Selection,
    action: Action,
) -> Result<Outcome, store::Error> {
    let mut outcome = Outcome::default();
    let apply = async |outcome: &mut Outcome, letters: Letters| {
        if letters.is_empty() {
            return Ok(());
        }
        outcome
            .instances
            .extend(letters.iter().map(|(name, _)| name.clone()));
        outcome.count += match action {
            Action::Replay => store.replay_dead(letters).await?,
            Action::Purge => store.purge_dead(letters).await?,
        };
        Ok::<_, store::Error>(())
    };
    let instance = match &selection.target {
        Target::Ids(ids) => {
            let (found, not_found) = find(store, ids, selection.window).await?;
            outcome.not_found = not_found;
            for page in found.chunks(store::MAINTENANCE_PAGE) {
                apply(&mut outcome, page.to_vec()).await?;
            }
            return Ok(outcome);
        }
        Target::Instance(name) => Some(name.clone()),
        Target::All => None,
    };
    let began = time::now_ms().saturating_add(1);
    let window = (
        selection.window.since_ms,
        Some(
            selection
                .window
                .until_ms
                .map_or(began, |until| until.min(began)),
        ),
    );
    let mut after: Option<DeadRef> = None;
    loop {
        let (page_store, page_instance, page_after) = (store.clone(), instance.clone(), after);
        let page = read(move || {
            page_store.dead_page(
                page_instance.as_deref(),
                window,
                page_after.as_ref(),
                store::MAINTENANCE_PAGE,
            )
        })
        .await?;
        let Some(last) = page.last().cloned() else {
            return Ok(outcome);
        };
        let letters = page.into_iter().map(|r| (r.instance, r.id)).collect();
        apply(&mut outcome, letters).await?;
        after = Some(last);
    }
}

/// Which of `ids` are dead letters within `window`, and the ones that are not.
async fn find(
    store: &Store,
    ids: &[Ulid],
    window: Window,
) -> Result<(Letters, Vec<String>), store::Error> {
    let (found_store, wanted) = (store.clone(), ids.to_vec());
    let found = read(move || {
        let found = found_store.find_dead(&wanted)?;
        let refs: Vec<DeadRef> = found
            .into_iter()
            .map(|(instance, id)| DeadRef {
                dead_at_ms: 0,
                instance,
                id,
            })
            .collect();
        found_store.dead_summaries(&refs)
    })
    .await?;
    let mut letters = Vec::new();
    for letter in found {
        if window.contains(letter.dead_at_ms.unwrap_or(0))
            && let Ok(id) = letter.id.parse::<Ulid>()
        {
            letters.push((letter.instance, id));
        }
    }
    let not_found = ids
        .iter()
        .filter(|id| !letters.iter().any(|(_, found)| found == *id))
        .map(Ulid::to_string)
        .collect();
    Ok((letters, not_found))
}

/// A store read on a blocking thread, so that a long scan never holds an async worker.
async fn read<T: Send + 'static>(
    scan: impl FnOnce() -> Result<T, store::Error> + Send + 'static,
) -> Result<T, store::Error> {
    tokio::task::spawn_blocking(scan)
        .await
        .map_err(|e| store::Error::Failed(format!("a store read did not finish: {e}")))?
}

/// Puts the selected dead letters back on the queue with a fresh attempt count and age.
/// The caller pokes the lanes of [`Outcome::instances`].
///
/// # Errors
/// A store error.
pub async fn replay(store: &Store, selection: &Selection) -> Result<Outcome, store::Error> {
    act(store, selection, Action::Replay).await
}

/// Deletes the selected dead letters. With `--instance NAME` and no window, when NAME is not
/// configured (`is_configured` says no), everything else of NAME goes too: its held pending
/// events, then its other records, so that a removed instance leaves nothing behind.
///
/// # Errors
/// A store error.
pub async fn purge(
    store: &Store,
    selection: &Selection,
    is_configured: impl Fn(&str) -> bool,
) -> Result<Outcome, store::Error> {
    let mut outcome = act(store, selection, Action::Purge).await?;
    outcome.instances.clear();
    if let Target::Instance(name) = &selection.target
        && selection.window.is_unbounded()
        && !is_configured(name)
    {
        outcome.held = store.purge_pending(name).await?;
        outcome.forgotten = store.forget_instance(name).await?;
    }
    Ok(outcome)
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
    fn list_queries_encode_parse_and_page() {
        let first = ListQuery::first(None, Window::default());
        assert_eq!(first.path(), "/admin/dead");
        let mut query = ListQuery::first(
            Some("acme dropbox&x".into()),
            Window {
                since_ms: Some(5),
                until_ms: Some(9),
            },
        );
        query.limit = 2;
        assert_eq!(
            query.path(),
            "/admin/dead?instance=acme+dropbox%26x&since=5&until=9&limit=2"
        );
        let letter = |id: u64| EventSummary {
            id: Ulid::from_parts(id, 1).to_string(),
            instance: "a.b".into(),
            account: String::new(),
            attempts: 1,
            raw: Vec::new(),
            accepted_ms: 0,
            due_ms: 0,
            last_status: None,
            last_error: None,
            dead_at_ms: Some(7),
            reason: None,
        };
        // A short page is the last; a full one names the position after its last letter.
        assert_eq!(query.next(&[letter(1)]), None);
        let next = query.next(&[letter(1), letter(2)]).expect("a next page");
        let after = next.after.clone().expect("after");
        assert_eq!(
            (after.dead_at_ms, after.id, after.instance.as_str()),
            (7, Ulid::from_parts(2, 1), "a.b")
        );
        let query_string = next.path();
        let parsed = ListQuery::parse(query_string.split_once('?').map(|(_, q)| q), NOW);
        assert_eq!(parsed, Ok(next));
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=x",
            "after=7",
            "after=7.nope.a",
            "page=2",
        ] {
            assert!(ListQuery::parse(Some(bad), NOW).is_err(), "{bad} accepted");
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
