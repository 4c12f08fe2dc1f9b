//! `hookrelay dead list|replay|purge`: through the admin API, or on the stopped store with
//! the same selection code ([`crate::ops::dead`]).

use super::access::{Access, Offline};
use super::status::{age, render};
use super::{EXIT_FAILURE, Failure, SelectArgs, WindowArgs};
use crate::config::Config;
use crate::ops::dead::{self, ListQuery, Outcome, Selection, SelectionBody, Target, Window};
use crate::store::{self, inspect::EventSummary};
use crate::time::{self, rfc3339};

impl From<WindowArgs> for Window {
    fn from(args: WindowArgs) -> Window {
        Window {
            since_ms: args.since,
            until_ms: args.until,
        }
    }
}

impl From<SelectArgs> for Selection {
    fn from(args: SelectArgs) -> Selection {
        let target = if !args.ids.is_empty() {
            Target::Ids(args.ids)
        } else if let Some(instance) = args.instance {
            Target::Instance(instance)
        } else {
            Target::All
        };
        Selection {
            target,
            window: args.window.into(),
        }
    }
}

fn store_failure(err: store::Error) -> Failure {
    Failure::new(EXIT_FAILURE, err.to_string())
}

/// Lists dead letters a page at a time (through the daemon or from the stopped store), printing
/// each page as it comes, so that neither the daemon nor this command holds the whole set. The
/// text table's columns are sized per page; `--json` prints one JSON array.
pub async fn list(
    config: &Config,
    instance: Option<String>,
    window: WindowArgs,
    json: bool,
) -> Result<(), Failure> {
    let access = Access::open(config).await?;
    let mut query = Some(ListQuery::first(instance, Window::from(window)));
    let mut printed = 0usize;
    if json {
        print!("[");
    }
    while let Some(page_query) = query.take() {
        let page: Vec<EventSummary> = match &access {
            Access::Daemon(client) => client.get(&page_query.path()).await?,
            Access::Offline(offline) => match &offline.store {
                Some(store) => page_query.read(store).map_err(store_failure)?,
                None => Vec::new(),
            },
        };
        if json {
            for letter in &page {
                let text = serde_json::to_string_pretty(letter)
                    .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
                let separator = if printed == 0 { "\n" } else { ",\n" };
                print!("{separator}{text}");
                printed += 1;
            }
        } else if !page.is_empty() {
            print!("{}", table(&page, time::now_ms()));
            printed += page.len();
        }
        query = page_query.next(&page);
    }
    access.close().await?;
    if json {
        println!("{}]", if printed == 0 { "" } else { "\n" });
    } else if printed == 0 {
        println!("no dead letters");
    }
    Ok(())
}

fn table(letters: &[EventSummary], now_ms: u64) -> String {
    let header = [
        "ID",
        "INSTANCE",
        "ACCOUNT",
        "ATTEMPTS",
        "DEAD AT (UTC)",
        "AGE",
        "LAST STATUS",
        "REASON",
    ];
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let dead_at = l.dead_at_ms.unwrap_or(0);
            vec![
                l.id.clone(),
                l.instance.clone(),
                l.account.clone(),
                l.attempts.to_string(),
                rfc3339(dead_at),
                age(now_ms.saturating_sub(dead_at)),
                l.last_status.map_or_else(|| "-".into(), |s| s.to_string()),
                l.reason
                    .clone()
                    .unwrap_or_default()
                    .replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// A replay or a purge.
#[derive(Debug, Clone, Copy)]
enum Action {
    Replay,
    Purge,
}

impl Action {
    fn endpoint(self) -> &'static str {
        match self {
            Action::Replay => "/admin/dead/replay",
            Action::Purge => "/admin/dead/purge",
        }
    }
}

/// Runs `action` through the daemon, or on the stopped store; also says whether the daemon
/// did it.
async fn apply(
    config: &Config,
    action: Action,
    selection: &Selection,
) -> Result<(Outcome, bool), Failure> {
    let access = Access::open(config).await?;
    let outcome = match &access {
        Access::Daemon(client) => {
            let body = SelectionBody::from_selection(selection);
            client.post_long(action.endpoint(), &body).await
        }
        Access::Offline(Offline {
            store: Some(store), ..
        }) => match action {
            Action::Replay => dead::replay(store, selection).await,
            Action::Purge => {
                let configured = |name: &str| config.instance(name).is_some();
                dead::purge(store, selection, configured).await
            }
        }
        .map_err(store_failure),
        Access::Offline(Offline { store: None, .. }) => Ok(nothing_stored(selection)),
    };
    let by_daemon = matches!(access, Access::Daemon(_));
    access.close().await?;
    Ok((outcome?, by_daemon))
}

pub async fn replay(config: &Config, select: SelectArgs) -> Result<(), Failure> {
    let selection = Selection::from(select);
    let (outcome, by_daemon) = apply(config, Action::Replay, &selection).await?;
    let later = if by_daemon || outcome.count == 0 {
        ""
    } else {
        "; they are delivered when the daemon starts"
    };
    println!("replayed {} dead letter(s){later}", outcome.count);
    missing(&outcome)
}

pub async fn purge(config: &Config, select: SelectArgs) -> Result<(), Failure> {
    let selection = Selection::from(select);
    let (outcome, _) = apply(config, Action::Purge, &selection).await?;
    println!("purged {} dead letter(s)", outcome.count);
    if outcome.held > 0
        && let Target::Instance(name) = &selection.target
    {
        println!(
            "purged {} held pending event(s) of {name}, which is no longer configured",
            outcome.held
        );
    }
    if outcome.forgotten > 0
        && let Target::Instance(name) = &selection.target
    {
        println!(
            "removed {} other record(s) of {name} (delivered history, seen accounts, cursors, \
             object maps, change queues, credentials, dead-letter alert tally)",
            outcome.forgotten
        );
    }
    missing(&outcome)
}

/// What a replay or purge finds in a store that does not exist yet.
fn nothing_stored(selection: &Selection) -> Outcome {
    let not_found = match &selection.target {
        Target::Ids(ids) => ids.iter().map(ToString::to_string).collect(),
        Target::Instance(_) | Target::All => Vec::new(),
    };
    Outcome {
        not_found,
        ..Outcome::default()
    }
}

/// Ids asked for but not found make the command fail (after the others were handled).
fn missing(outcome: &Outcome) -> Result<(), Failure> {
    if outcome.not_found.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        EXIT_FAILURE,
        format!(
            "no dead letter with id {} (within the --since/--until window, if given)",
            outcome.not_found.join(", ")
        ),
    ))
}
