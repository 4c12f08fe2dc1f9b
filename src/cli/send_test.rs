//! `hookrelay send-test --instance NAME [--account A]`: a notification signed with the
//! instance's app secret, POSTed to the running daemon's own Dropbox listener, so that it takes
//! the whole path (verification, the store, delivery); prints the event it became.

use std::time::Duration;

use super::access::dialable;
use super::{EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE, Failure};
use crate::config::{Config, EventsMode, Instance};
use crate::ingest;
use crate::sign;

/// How long the daemon gets to store the notification and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends the notification and prints what became of it.
///
/// # Errors
/// 2 for an unknown instance or a missing account, 69 when nothing listens on `server.listen`,
/// 1 when the daemon refuses the notification or routes it nowhere.
pub async fn run(config: &Config, name: &str, account: Option<&str>) -> Result<(), Failure> {
    let instance = find(config, name)?;
    let account = account_of(instance, account)?;
    let body = serde_json::json!({
        "list_folder": { "accounts": [account] },
        "delta": { "users": [] },
    })
    .to_string();
    let signature =
        sign::dropbox_signature(instance.app_secret.expose().as_bytes(), body.as_bytes());
    let addr = dialable(config.server.listen);
    let scheme = match config.server.tls {
        Some(_) => "https",
        None => "http",
    };
    let url = format!("{scheme}://{addr}{}", ingest::PATH);
    // The daemon's own listener on this machine: its certificate names the public host, not
    // the loopback address dialled here, so it is not checked; nothing secret is sent (the
    // signature covers this one test body).
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(ANSWER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(config.server.tls.is_some())
        .build()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot build the HTTP client: {e}")))?;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-dropbox-signature", signature)
        .header(ingest::REPORT_HEADER, "events")
        .body(body)
        .send()
        .await
        .map_err(|err| {
            Failure::new(
                EXIT_UNAVAILABLE,
                format!(
                    "the daemon does not answer on server.listen ({url}): {err}; is it running \
                     (`systemctl status hookrelay`)?"
                ),
            )
        })?;
    let status = response.status();
    let placed: Vec<String> = response
        .headers()
        .get_all(ingest::EVENT_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_owned)
        .collect();
    match status.as_u16() {
        200 => report(instance, &account, &placed),
        403 => Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "the daemon refused the signature (403): it runs with another app secret for \
                 {name}; reload it after editing the config (`systemctl reload hookrelay`)"
            ),
        )),
        503 => Err(Failure::new(
            EXIT_FAILURE,
            "the daemon cannot store notifications now (503): the store is full \
             (storage.max_bytes) or failing; see `hookrelay status` and `journalctl -u hookrelay`",
        )),
        other => Err(Failure::new(
            EXIT_FAILURE,
            format!("the daemon answered {other} to the test notification"),
        )),
    }
}

fn find<'c>(config: &'c Config, name: &str) -> Result<&'c Instance, Failure> {
    config
        .instances
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.instances.iter().map(|i| i.name.as_str()).collect();
            Failure::new(
                EXIT_USAGE,
                format!(
                    "no instance named {name:?} in {}; instances: {}",
                    config.source.display(),
                    names.join(", ")
                ),
            )
        })
}

/// The account to notify about: the one given (which the instance must take), else the
/// instance's first.
fn account_of(instance: &Instance, given: Option<&str>) -> Result<String, Failure> {
    let name = &instance.name;
    match (given, instance.accounts.as_deref()) {
        (Some(account), _) if instance.matches_account(account) => Ok(account.to_owned()),
        (Some(account), _) => Err(Failure::new(
            EXIT_USAGE,
            format!("instance {name} does not list account {account:?} in its accounts"),
        )),
        (None, Some([first, ..])) => Ok(first.clone()),
        (None, _) => Err(Failure::new(
            EXIT_USAGE,
            format!(
                "instance {name} lists no accounts (it takes every account of its app): give \
                 one with --account dbid:…"
            ),
        )),
    }
}

/// Prints the event the notification became for `instance`.
fn report(instance: &Instance, account: &str, placed: &[String]) -> Result<(), Failure> {
    let name = &instance.name;
    let mine = placed.iter().find_map(|value| {
        let mut parts = value.split(' ');
        let (Some(i), Some(a), Some(event)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        (i == name && a == account).then(|| event.to_owned())
    });
    let Some(event) = mine else {
        let why = if !instance.enabled {
            "the instance is disabled (enabled = false)"
        } else if instance.callback_url.is_none() {
            "the instance has no callback URL"
        } else {
            "the running daemon's config does not route it to the instance: reload it after \
             editing the config (`systemctl reload hookrelay`)"
        };
        return Err(Failure::new(
            EXIT_FAILURE,
            format!("the daemon accepted the notification but stored nothing for {name}: {why}"),
        ));
    };
    if event == "walk" || instance.events == EventsMode::Changes {
        println!(
            "sent: a walk of account {account}'s changes is queued for {name}; one change event \
             per file Dropbox reports as changed will follow (nothing if nothing changed)"
        );
        return Ok(());
    }
    println!("{event}");
    let paused = match instance.delivery.paused {
        true => " (the instance is paused: it waits until paused = false)",
        false => "",
    };
    eprintln!(
        "sent: event {event} (account {account}) is queued for {name}{paused}; the consumer \
         receives it with eventId {event}; `hookrelay status` shows its progress"
    );
    Ok(())
}
