//! Events in every state (`events list|show|replay` in docs/operations.md): the listing's
//! query and its pages, one event with its attempts and envelope, and the replay of delivered
//! events from the history. One implementation serves the admin API (daemon running) and the
//! CLI's offline path (daemon stopped).
//!
//! Times select on when an event was accepted (its id's time): `since` inclusive, `until`
//! exclusive. `held` is decided here, from the configuration and the stored outage state ([`is_held`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use ulid::Ulid;

use crate::config::{Config, Url};
use crate::deliver::envelope;
use crate::ops::dead::{TimeValue, Window, parse_time};
use crate::store::history::Attempt;
use crate::store::{self, EventQuery, EventState, Store, StoredEvent};
use crate::time::rfc3339;

/// Events a page shows by default, and at most.
pub const LIST_LIMIT: usize = 100;
pub const LIST_LIMIT_MAX: usize = 1_000;
/// Records one page may look at per instance and family (runs, due, waiting, dead, history)
/// to find events of an account or a state: the page ends where the budget ran out, and its
/// `next` continues from there.
pub const SCAN_BUDGET: usize = 10_000;

/// An event's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Retrying,
    /// Pending or retrying, but its instance does not deliver now: paused, removed or in an
    /// outage ([`is_held`]).
    Held,
    Dead,
    Delivered,
}

impl State {
    pub fn parse(text: &str) -> Result<State, String> {
        match text {
            "pending" => Ok(State::Pending),
            "retrying" => Ok(State::Retrying),
            "held" => Ok(State::Held),
            "dead" => Ok(State::Dead),
            "delivered" => Ok(State::Delivered),
            other => Err(format!(
                "state {other:?}: expected pending, retrying, held, dead or delivered"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Retrying => "retrying",
            State::Held => "held",
            State::Dead => "dead",
            State::Delivered => "delivered",
        }
    }
}

/// Whether `instance`'s waiting events are held: it is paused, no longer configured, or in an
/// outage (as its lane stored it when the outage began, so this holds with the daemon stopped
/// too). The one place that decides it, for `events` and anything else that shows held events.
///
/// # Errors
/// A store read error.
pub fn is_held(store: &Store, config: &Config, instance: &str) -> Result<bool, store::Error> {
    let paused_or_gone = config
        .instance(instance)
        .is_none_or(|configured| configured.delivery.paused);
    Ok(paused_or_gone
        || store
            .outage(instance)?
            .is_some_and(|outage| outage.active()))
}

/// One event of a listing (the JSON of `events list --json` and `GET /admin/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: String,
    pub instance: String,
    pub account: String,
    pub state: State,
    /// When it was accepted (its id's time), Unix ms and RFC 3339.
    pub accepted_ms: u64,
    pub accepted: String,
    /// Pending, retrying, held: when it is due.
    pub due_ms: Option<u64>,
    /// Attempts since it was queued (or replayed).
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub delivered_ms: Option<u64>,
}

/// One attempt as `events show` gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub at_ms: u64,
    pub at: String,
    pub duration_ms: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// One event with its attempts and envelope (`events show --json`, `GET /admin/events/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDetail {
    pub event: EventRow,
    /// The last 20 attempts, oldest first.
    pub attempts: Vec<AttemptRow>,
    /// The envelope as it was sent (delivered) or will be sent (its instance's current
    /// settings); none for an instance no longer configured.
    pub envelope: Option<Box<RawValue>>,
}

/// A page of a listing: `{"events": […], "next": cursor | null}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListAnswer {
    pub events: Vec<EventRow>,
    pub next: Option<String>,
}

/// A listing request, `GET /admin/events?instance=&account=&state=&since=&until=&limit=&cursor=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub instance: Option<String>,
    pub account: Option<String>,
    pub state: Option<State>,
    pub window: Window,
    pub limit: usize,
    /// Where the previous page ended (its `next`).
    pub cursor: Option<Ulid>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            instance: None,
            account: None,
            state: None,
            window: Window::default(),
            limit: LIST_LIMIT,
            cursor: None,
        }
    }
}

impl ListQuery {
    /// Reads a query string; times as [`parse_time`] reads them.
    ///
    /// # Errors
    /// A message naming the parameter that is wrong.
    pub fn parse(query: Option<&str>, now_ms: u64) -> Result<ListQuery, String> {
        let mut list = ListQuery::default();
        let mut url = Url::parse("http://admin/").map_err(|e| e.to_string())?;
        url.set_query(query);
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "instance" => list.instance = Some(value.into_owned()),
                "account" => list.account = Some(value.into_owned()),
                "state" => list.state = Some(State::parse(&value)?),
                "since" => list.window.since_ms = Some(parse_time(&value, now_ms)?),
                "until" => list.window.until_ms = Some(parse_time(&value, now_ms)?),
                "cursor" => list.cursor = Some(parse_cursor(&value)?),
                "limit" => list.limit = parse_limit(&value)?,
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; expected instance, account, state, since, \
                         until, limit or cursor"
                    ));
                }
            }
        }
        Ok(list)
    }

    /// `/admin/events?…` asking for this page, the query properly encoded.
    pub fn path(&self) -> String {
        let Ok(mut url) = Url::parse("http://admin/admin/events") else {
            return "/admin/events".into();
        };
        {
            let mut query = url.query_pairs_mut();
            if let Some(instance) = &self.instance {
                query.append_pair("instance", instance);
            }
            if let Some(account) = &self.account {
                query.append_pair("account", account);
            }
            if let Some(state) = self.state {
                query.append_pair("state", state.as_str());
            }
            if let Some(since) = self.window.since_ms {
                query.append_pair("since", &since.to_string());
            }
            if let Some(until) = self.window.until_ms {
                query.append_pair("until", &until.to_string());
            }
            if self.limit != LIST_LIMIT {
                query.append_pair("limit", &self.limit.to_string());
            }
            if let Some(cursor) = self.cursor {
                query.append_pair("cursor", &cursor.to_string());
            }
        }
        match url.query() {
            Some(query) if !query.is_empty() => format!("{}?{query}", url.path()),
            _ => url.path().to_owned(),
        }
    }
}

/// A limit: 1 to [`LIST_LIMIT_MAX`].
///
/// # Errors
/// A message saying what is expected.
pub fn parse_limit(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=LIST_LIMIT_MAX).contains(n))
        .ok_or_else(|| format!("limit {text:?}: expected a number from 1 to {LIST_LIMIT_MAX}"))
}

/// A cursor: the `next` of a page.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_cursor(text: &str) -> Result<Ulid, String> {
    text.parse()
        .map_err(|_| format!("cursor {text:?}: expected the \"next\" of a previous page"))
}

/// A page of events, newest first. Reads at most [`SCAN_BUDGET`] records per instance and
/// family, never the whole store; `next` continues where it stopped.
///
/// # Errors
/// A store read error.
pub fn list(store: &Store, config: &Config, query: &ListQuery) -> Result<ListAnswer, store::Error> {
    let mut names: BTreeSet<String> = store.instances().into_iter().collect();
    names.extend(config.instances.iter().map(|i| i.name.clone()));
    if let Some(wanted) = &query.instance {
        names.retain(|name| name == wanted);
    }
    let mut held = BTreeSet::new();
    for name in &names {
        if is_held(store, config, name)? {
            held.insert(name.clone());
        }
    }
    let waiting = [EventState::Pending, EventState::Retrying];
    let (instances, states): (Vec<String>, Vec<EventState>) = match query.state {
        None => (names.into_iter().collect(), Vec::new()),
        Some(State::Held) => (
            names.into_iter().filter(|n| held.contains(n)).collect(),
            waiting.to_vec(),
        ),
        Some(State::Pending) => (
            names.into_iter().filter(|n| !held.contains(n)).collect(),
            vec![EventState::Pending],
        ),
        Some(State::Retrying) => (
            names.into_iter().filter(|n| !held.contains(n)).collect(),
            vec![EventState::Retrying],
        ),
        Some(State::Dead) => (names.into_iter().collect(), vec![EventState::Dead]),
        Some(State::Delivered) => (names.into_iter().collect(), vec![EventState::Delivered]),
    };
    let page = store.events_page(&EventQuery {
        instances,
        account: query.account.clone(),
        states,
        since_ms: query.window.since_ms,
        until_ms: query.window.until_ms,
        before: query.cursor,
        limit: query.limit.clamp(1, LIST_LIMIT_MAX),
        budget: SCAN_BUDGET,
    })?;
    Ok(ListAnswer {
        events: page.events.iter().map(|e| row(&held, e)).collect(),
        next: page.next.map(|id| id.to_string()),
    })
}

/// One event in any state, with its attempts and envelope; `None` if the store has no such
/// event (any more).
///
/// # Errors
/// A store read error.
pub fn show(store: &Store, config: &Config, id: Ulid) -> Result<Option<EventDetail>, store::Error> {
    let Some(event) = store.event(id)? else {
        return Ok(None);
    };
    let envelope = match &event.envelope {
        Some(sent) => Some(sent.clone()),
        None => config
            .instance(&event.instance)
            .map(|instance| envelope::build(&event.to_event(), instance)),
    };
    let envelope = envelope
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| RawValue::from_string(text).ok());
    let held: BTreeSet<String> = match is_held(store, config, &event.instance)? {
        true => BTreeSet::from([event.instance.clone()]),
        false => BTreeSet::new(),
    };
    Ok(Some(EventDetail {
        event: row(&held, &event),
        attempts: event.attempts.iter().map(attempt_row).collect(),
        envelope,
    }))
}

/// An event's row; `held`: the instances whose waiting events are held ([`is_held`]).
fn row(held: &BTreeSet<String>, event: &StoredEvent) -> EventRow {
    let state = match event.state {
        EventState::Pending | EventState::Retrying if held.contains(&event.instance) => State::Held,
        EventState::Pending => State::Pending,
        EventState::Retrying => State::Retrying,
        EventState::Dead => State::Dead,
        EventState::Delivered => State::Delivered,
    };
    EventRow {
        id: event.id.to_string(),
        instance: event.instance.clone(),
        account: event.account.clone(),
        state,
        accepted_ms: event.accepted_ms(),
        accepted: rfc3339(event.accepted_ms()),
        due_ms: event.due_ms,
        attempts: event.attempt_count,
        last_status: event.last_status,
        last_error: event.last_error.clone(),
        dead_at_ms: event.dead_at_ms,
        reason: event.reason.clone(),
        delivered_ms: event.delivered_ms,
    }
}

fn attempt_row(attempt: &Attempt) -> AttemptRow {
    AttemptRow {
        at_ms: attempt.at_ms,
        at: rfc3339(attempt.at_ms),
        duration_ms: attempt.duration_ms,
        status: attempt.status,
        error: attempt.error.clone(),
    }
}

/// Which delivered events a replay sends again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    Ids(Vec<Ulid>),
    Instance(String),
}

/// The JSON body of `POST /admin/events/replay`: exactly one of `ids` or `instance`, and
/// optionally `since` and `until` (acceptance times).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<TimeValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<TimeValue>,
}

/// What a replay did (the admin API's answer, and what the CLI prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// Delivered events queued again.
    pub count: u64,
    /// Requested ids that are not (or no longer) in the history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<String>,
    /// Instances that had events queued (their lanes should look at the store).
    #[serde(skip)]
    pub instances: BTreeSet<String>,
}

impl ReplayBody {
    pub fn new(target: &ReplayTarget, window: Window) -> ReplayBody {
        let mut body = ReplayBody {
            since: window.since_ms.map(TimeValue::Ms),
            until: window.until_ms.map(TimeValue::Ms),
            ..ReplayBody::default()
        };
        match target {
            ReplayTarget::Ids(ids) => body.ids = Some(ids.iter().map(Ulid::to_string).collect()),
            ReplayTarget::Instance(name) => body.instance = Some(name.clone()),
        }
        body
    }

    /// Checks the body: one selector, valid ids and times.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn into_target(self, now_ms: u64) -> Result<(ReplayTarget, Window), String> {
        let resolve = |t: Option<TimeValue>| match t {
            Some(TimeValue::Ms(ms)) => Ok(Some(ms)),
            Some(TimeValue::Text(text)) => parse_time(&text, now_ms).map(Some),
            None => Ok(None),
        };
        let window = Window {
            since_ms: resolve(self.since)?,
            until_ms: resolve(self.until)?,
        };
        let target = match (self.ids, self.instance) {
            (Some(ids), None) if !ids.is_empty() => ReplayTarget::Ids(
                ids.iter()
                    .map(|id| {
                        id.parse::<Ulid>()
                            .map_err(|_| format!("{id:?} is not an event id"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(instance)) => ReplayTarget::Instance(instance),
            _ => {
                return Err(
                    "give exactly one of \"ids\" (a non-empty list) or \"instance\" (a name)"
                        .into(),
                );
            }
        };
        Ok((target, window))
    }
}

/// Queues delivered events from the history again with their ids, a fresh attempt count and
/// age, a page of [`store::MAINTENANCE_PAGE`] at a time (each page read on a blocking thread
/// and queued in one request). The caller pokes the lanes of [`ReplayOutcome::instances`].
///
/// # Errors
/// A store error.
pub async fn replay(
    store: &Store,
    target: &ReplayTarget,
    window: Window,
) -> Result<ReplayOutcome, store::Error> {
    let mut outcome = ReplayOutcome::default();
    match target {
        ReplayTarget::Ids(ids) => {
            let (found_store, wanted) = (store.clone(), ids.clone());
            let found = read(move || {
                let mut found = Vec::new();
                for id in wanted {
                    if let Some(event) = found_store.event(id)?
                        && event.state == EventState::Delivered
                        && window.contains(event.accepted_ms())
                    {
                        found.push((event.instance, id));
                    }
                }
                Ok(found)
            })
            .await?;
            outcome.not_found = ids
                .iter()
                .filter(|id| !found.iter().any(|(_, f)| f == *id))
                .map(Ulid::to_string)
                .collect();
            for page in found.chunks(store::MAINTENANCE_PAGE) {
                outcome
                    .instances
                    .extend(page.iter().map(|(n, _)| n.clone()));
                outcome.count += store.replay_history(page.to_vec()).await?;
            }
        }
        ReplayTarget::Instance(name) => {
            let mut before = None;
            loop {
                let query = EventQuery {
                    instances: vec![name.clone()],
                    account: None,
                    states: vec![EventState::Delivered],
                    since_ms: window.since_ms,
                    until_ms: window.until_ms,
                    before,
                    limit: store::MAINTENANCE_PAGE,
                    budget: SCAN_BUDGET,
                };
                let page_store = store.clone();
                let page = read(move || page_store.events_page(&query)).await?;
                let events: Vec<(String, Ulid)> = page
                    .events
                    .iter()
                    .map(|e| (e.instance.clone(), e.id))
                    .collect();
                if !events.is_empty() {
                    outcome.instances.insert(name.clone());
                    outcome.count += store.replay_history(events).await?;
                }
                match page.next {
                    Some(next) => before = Some(next),
                    None => return Ok(outcome),
                }
            }
        }
    }
    Ok(outcome)
}

/// A store read on a blocking thread, so that a long scan never holds an async worker.
async fn read<T: Send + 'static>(
    scan: impl FnOnce() -> Result<T, store::Error> + Send + 'static,
) -> Result<T, store::Error> {
    tokio::task::spawn_blocking(scan)
        .await
        .map_err(|e| store::Error::Failed(format!("a store read did not finish: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn list_queries_encode_and_parse_back() {
        assert_eq!(ListQuery::default().path(), "/admin/events");
        let query = ListQuery {
            instance: Some("acme dropbox".into()),
            account: Some("dbid:a&b".into()),
            state: Some(State::Delivered),
            window: Window {
                since_ms: Some(5),
                until_ms: Some(9),
            },
            limit: 7,
            cursor: Some(Ulid::from_parts(3, 4)),
        };
        let path = query.path();
        assert!(path.starts_with("/admin/events?instance=acme+dropbox&account=dbid%3Aa%26b"));
        let parsed = ListQuery::parse(path.split_once('?').map(|(_, q)| q), NOW);
        assert_eq!(parsed, Ok(query));
        for bad in [
            "limit=0",
            "limit=1001",
            "state=lost",
            "cursor=x",
            "since=soon",
            "page=2",
        ] {
            assert!(ListQuery::parse(Some(bad), NOW).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn replay_bodies_need_one_selector() {
        let body = |json: &str| {
            serde_json::from_str::<ReplayBody>(json)
                .map_err(|e| e.to_string())
                .and_then(|b| b.into_target(NOW))
        };
        let id = Ulid::from_parts(1, 2);
        assert_eq!(
            body(&format!(r#"{{"ids": ["{id}"], "since": 1}}"#)),
            Ok((
                ReplayTarget::Ids(vec![id]),
                Window {
                    since_ms: Some(1),
                    until_ms: None
                }
            ))
        );
        assert!(body(r#"{"instance": "acme", "until": "2h"}"#).is_ok());
        for bad in [
            r#"{}"#,
            r#"{"ids": []}"#,
            r#"{"ids": ["x"]}"#,
            r#"{"ids": [], "instance": "a"}"#,
            r#"{"all": true}"#,
        ] {
            assert!(body(bad).is_err(), "{bad} accepted");
        }
        let target = ReplayTarget::Instance("acme".into());
        let json = serde_json::to_string(&ReplayBody::new(&target, Window::default()));
        assert_eq!(json.ok().as_deref(), Some(r#"{"instance":"acme"}"#));
    }
}
