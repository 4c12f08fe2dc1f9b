//! `hookrelay events list|show|replay`: through the admin API, or on the stopped store with
//! the same code ([`crate::ops::events`]).

use clap::{ArgGroup, Args, Subcommand};
use ulid::Ulid;

use super::access::{Access, Offline};
use super::status::render;
use super::{EXIT_FAILURE, Failure, event_id, time_arg};
use crate::config::Config;
use crate::ops::dead::Window;
use crate::ops::events::{
    self, EventDetail, EventRow, ListAnswer, ListQuery, ReplayBody, ReplayOutcome, ReplayTarget,
    State,
};
use crate::store;
use crate::time::rfc3339;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events in any state, newest first
    List(ListArgs),
    /// One event: state, instance, account, times, its attempts and its envelope
    Show {
        /// The event id
        #[arg(value_name = "ID", value_parser = event_id)]
        id: Ulid,
        /// JSON for scripts instead of the text
        #[arg(long)]
        json: bool,
    },
    /// Send delivered events from the history again, with the same eventId
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this instance's
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Only this Dropbox account's
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// Only events in this state
    #[arg(long, value_name = "STATE", value_parser = State::parse)]
    pub state: Option<State>,
    /// Accepted at or after TIME: RFC 3339 (UTC) or an age such as 2h
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<u64>,
    /// Accepted before TIME: RFC 3339 (UTC) or an age such as 30m
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<u64>,
    /// Events to show at most (1 to 1000)
    #[arg(long, value_name = "N", default_value_t = events::LIST_LIMIT, value_parser = events::parse_limit)]
    pub limit: usize,
    /// Continue a listing where the previous one said it stopped (its "next")
    #[arg(long, value_name = "CURSOR", value_parser = events::parse_cursor)]
    pub cursor: Option<Ulid>,
    /// JSON for scripts instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Which delivered events: by id, or an instance's; within an optional window.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["ids", "instance"])))]
pub struct ReplayArgs {
    /// These events (repeat --id, or give several ids after it)
    #[arg(long = "id", value_name = "ID", num_args = 1.., value_parser = event_id)]
    pub ids: Vec<Ulid>,
    /// Every delivered event of this instance in the history
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Accepted at or after TIME: RFC 3339 (UTC) or an age such as 2h
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<u64>,
    /// Accepted before TIME: RFC 3339 (UTC) or an age such as 30m
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<u64>,
}

pub async fn main(config: &Config, command: EventsCommand) -> Result<(), Failure> {
    match command {
        EventsCommand::List(args) => list(config, args).await,
        EventsCommand::Show { id, json } => show(config, id, json).await,
        EventsCommand::Replay(args) => replay(config, args).await,
    }
}

fn store_failure(err: store::Error) -> Failure {
    Failure::new(EXIT_FAILURE, err.to_string())
}

/// One page of up to `--limit` events. A page may stop early where the store stopped looking
/// (a filter on account or state); then `next` says where to continue (`--cursor`).
async fn list(config: &Config, args: ListArgs) -> Result<(), Failure> {
    let query = ListQuery {
        instance: args.instance,
        account: args.account,
        state: args.state,
        window: Window {
            since_ms: args.since,
            until_ms: args.until,
        },
        limit: args.limit,
        cursor: args.cursor,
    };
    let access = Access::open(config).await?;
    let answer: Result<ListAnswer, Failure> = match &access {
        Access::Daemon(client) => client.get(&query.path()).await,
        Access::Offline(Offline {
            store: Some(store), ..
        }) => events::list(store, config, &query).map_err(store_failure),
        Access::Offline(Offline { store: None, .. }) => Ok(ListAnswer::default()),
    };
    access.close().await?;
    let answer = answer?;
    if args.json {
        let text = serde_json::to_string_pretty(&answer)
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    if answer.events.is_empty() {
        println!("no events");
    } else {
        print!("{}", table(&answer.events));
    }
    if let Some(next) = &answer.next {
        eprintln!("more events: continue with --cursor {next}");
    }
    Ok(())
}

fn table(rows: &[EventRow]) -> String {
    let header = [
        "ID",
        "INSTANCE",
        "ACCOUNT",
        "STATE",
        "ACCEPTED (UTC)",
        "ATTEMPTS",
        "LAST",
        "DUE / DEAD / DELIVERED (UTC)",
    ];
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let when = row.delivered_ms.or(row.dead_at_ms).or(row.due_ms);
            vec![
                row.id.clone(),
                row.instance.clone(),
                row.account.clone(),
                row.state.as_str().to_owned(),
                row.accepted.clone(),
                row.attempts.to_string(),
                last(row.last_status, row.last_error.as_deref()),
                when.map_or_else(|| "-".into(), rfc3339),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// A status, or else an error text on one line.
fn last(status: Option<u16>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.replace(['\n', '\r'], " "),
        (None, None) => "-".into(),
    }
}

async fn show(config: &Config, id: Ulid, json: bool) -> Result<(), Failure> {
    let access = Access::open(config).await?;
    let shown: Result<Option<EventDetail>, Failure> = match &access {
        Access::Daemon(client) => client.get_optional(&format!("/admin/events/{id}")).await,
        Access::Offline(Offline {
            store: Some(store), ..
        }) => events::show(store, config, id).map_err(store_failure),
        Access::Offline(Offline { store: None, .. }) => Ok(None),
    };
    access.close().await?;
    let Some(detail) = shown? else {
        return Err(Failure::new(EXIT_FAILURE, format!("no event {id}")));
    };
    if json {
        let text = serde_json::to_string_pretty(&detail)
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", text(&detail));
    }
    Ok(())
}

fn text(detail: &EventDetail) -> String {
    let row = &detail.event;
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<10} {value}\n"));
    line("id", row.id.clone());
    line("instance", row.instance.clone());
    line("account", row.account.clone());
    line("state", row.state.as_str().to_owned());
    line("accepted", row.accepted.clone());
    if let Some(due) = row.due_ms {
        line("next due", rfc3339(due));
    }
    if let Some(dead) = row.dead_at_ms {
        let reason = row.reason.clone().unwrap_or_default();
        line("dead", format!("{} ({reason})", rfc3339(dead)));
    }
    if let Some(delivered) = row.delivered_ms {
        line("delivered", rfc3339(delivered));
    }
    line("attempts", row.attempts.to_string());
    if !detail.attempts.is_empty() {
        let header = ["AT (UTC)", "DURATION", "STATUS", "ERROR"];
        let rows: Vec<Vec<String>> = detail
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.at.clone(),
                    format!("{} ms", a.duration_ms),
                    a.status.map_or_else(|| "-".into(), |s| s.to_string()),
                    a.error
                        .clone()
                        .unwrap_or_default()
                        .replace(['\n', '\r'], " "),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render(&header, &rows));
    }
    out.push_str("\nenvelope:\n");
    match &detail.envelope {
        Some(envelope) => {
            let pretty = serde_json::from_str::<serde_json::Value>(envelope.get())
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| envelope.get().to_owned());
            out.push_str(&pretty);
            out.push('\n');
        }
        None => out.push_str("(unknown: its instance is no longer configured)\n"),
    }
    out
}

async fn replay(config: &Config, args: ReplayArgs) -> Result<(), Failure> {
    let target = match args.instance {
        Some(instance) if args.ids.is_empty() => ReplayTarget::Instance(instance),
        _ => ReplayTarget::Ids(args.ids),
    };
    let window = Window {
        since_ms: args.since,
        until_ms: args.until,
    };
    let access = Access::open(config).await?;
    let outcome: Result<ReplayOutcome, Failure> = match &access {
        Access::Daemon(client) => {
            let body = ReplayBody::new(&target, window);
            client.post_long("/admin/events/replay", &body).await
        }
        Access::Offline(Offline {
            store: Some(store), ..
        }) => events::replay(store, &target, window)
            .await
            .map_err(store_failure),
        Access::Offline(Offline { store: None, .. }) => Ok(ReplayOutcome {
            not_found: match &target {
                ReplayTarget::Ids(ids) => ids.iter().map(ToString::to_string).collect(),
                ReplayTarget::Instance(_) => Vec::new(),
            },
            ..ReplayOutcome::default()
        }),
    };
    let by_daemon = matches!(access, Access::Daemon(_));
    access.close().await?;
    let outcome = outcome?;
    let later = if by_daemon || outcome.count == 0 {
        ""
    } else {
        "; they are delivered when the daemon starts"
    };
    println!("queued {} delivered event(s) again{later}", outcome.count);
    if outcome.not_found.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        EXIT_FAILURE,
        format!(
            "no delivered event with id {} in the history (within the --since/--until window, \
             if given)",
            outcome.not_found.join(", ")
        ),
    ))
}
