//! Change filters (`paths`, `event_types`; docs/change-events.md) against the fake Dropbox API:
//! only matching objects and types are delivered, a move into the filtered folder is kept, the
//! cursor moves past filtered entries (they are never delivered later), the object maps learn
//! of them, the metric counts them, and a reload changes the filter.

use std::time::Duration;

use serde_json::Value;

use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::fake_api::{FakeDropboxApi, REFRESH_TOKEN};
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const FILTERED: &str = "hookrelay_change_entries_filtered_total{instance_name=\"files\"}";
const WALKS_DONE: &str = "hookrelay_changes_walks_total{instance_name=\"files\",result=\"done\"}";

fn changes_instance(app: &App, account: &str, callback: &str, filter: &str) -> InstanceConfig {
    InstanceConfig::new("files", 41, app)
        .raw("events = \"changes\"")
        .raw(filter)
        .accounts(&[account])
        .callback(callback)
        .signature_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .configuration("oauth.refresh_token", REFRESH_TOKEN)
}

async fn notify(d: &Daemon, app: &App, account: &str) {
    let status =
        post_notification(&d.ingest_url(), &app.secret, &notification_body(&[account])).await;
    assert_eq!(status, 200, "{}", d.logs());
}

/// The 2xx-answered deliveries.
fn delivered(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter().filter(|r| r.answered == Some(200)).collect()
}

/// (eventType, path, previousPath) of every delivered event, in delivery order.
fn rows(reqs: &[Recorded]) -> Vec<(String, String, String)> {
    delivered(reqs)
        .iter()
        .flat_map(|r| {
            r.message()["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("eventType"), s("path"), s("previousPath"))
        })
        .collect()
}

fn row(t: &str, p: &str, pp: &str) -> (String, String, String) {
    (t.to_owned(), p.to_owned(), pp.to_owned())
}

/// `path_display` of every entry in the delivered envelopes' `raw`, in order.
fn raw_paths(reqs: &[Recorded]) -> Vec<String> {
    delivered(reqs)
        .iter()
        .flat_map(|r| {
            r.message()["raw"]["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e: Value| e["path_display"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn wait_metric(d: &Daemon, selector: &str, want: f64) {
    wait_until(WAIT, &format!("{selector} = {want}"), || async {
        d.metric(selector).await == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_matching_paths_and_types_are_delivered_and_the_cursor_moves_past_the_rest() {
    let account = account_id();
    let api = FakeDropboxApi::start(&account).await;
    api.set_account_in_token(true);
    api.set_page_size(2);
    let app = App::new("app-filters");
    let cb = FakeCallback::ok().await;
    let filter = "paths = [\"/Invoices/**\", \"/reports/*.pdf\"]\n\
                  event_types = [\"CREATED\", \"UPDATED\"]";
    let cfg = TestConfig::new()
        .instance(changes_instance(&app, &account, &cb.url(), filter))
        .raw(&api.toml());
    let d = Daemon::start(&cfg).await;
    wait_until(WAIT, "the first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    assert_eq!(d.metric(FILTERED).await, Some(0.0), "zero from the start");

    // First walk, three pages of two entries: the last entry is filtered out.
    api.write_file("/Invoices/a.pdf");
    api.write_file("/notes.txt");
    api.write_file("/reports/q1.pdf");
    api.write_file("/reports/2026/q1.pdf");
    api.write_file("/Outside/moved.txt");
    notify(&d, &app, &account).await;
    wait_metric(&d, WALKS_DONE, 1.0).await;
    assert_eq!(d.metric(FILTERED).await, Some(3.0), "{}", d.logs());

    // Second walk: a move into the filtered folder (of a file only a filtered entry told of),
    // a deletion (a type not kept), a file in the folder named in another case.
    api.rename("/Outside/moved.txt", "/Invoices/moved.txt");
    api.delete("/Invoices/a.pdf");
    api.write_file("/INVOICES/b.pdf");
    notify(&d, &app, &account).await;
    wait_metric(&d, WALKS_DONE, 2.0).await;
    assert_eq!(d.metric(FILTERED).await, Some(4.0), "{}", d.logs());
    let reqs = cb
        .wait_until(WAIT, "the four kept events", |r| rows(r).len() >= 4)
        .await;
    assert_eq!(
        rows(&reqs),
        [
            row("CREATED", "/Invoices/a.pdf", ""),
            row("CREATED", "/reports/q1.pdf", ""),
            row("UPDATED", "/Invoices/moved.txt", "/Outside/moved.txt"),
            row("CREATED", "/INVOICES/b.pdf", ""),
        ],
        "{}",
        d.logs()
    );
    // Each envelope's raw holds exactly the entries of its events (the move: both of its own).
    assert_eq!(
        raw_paths(&reqs),
        [
            "/Invoices/a.pdf",
            "/reports/q1.pdf",
            "/Outside/moved.txt",
            "/Invoices/moved.txt",
            "/INVOICES/b.pdf",
        ]
    );
    // The second walk started from the cursor after the first walk's filtered last entry.
    assert_eq!(
        api.continued_from(),
        ["c0", "c2", "c4", "c5", "c7"],
        "{}",
        d.logs()
    );

    // A third walk finds nothing new: the filtered entries are not delivered later.
    notify(&d, &app, &account).await;
    wait_metric(&d, WALKS_DONE, 3.0).await;
    assert_eq!(api.continued_from().last().map(String::as_str), Some("c9"));
    assert_eq!(rows(&cb.requests()).len(), 4, "{}", d.logs());
    assert_eq!(d.metric(FILTERED).await, Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_filter() {
    let account = account_id();
    let api = FakeDropboxApi::start(&account).await;
    api.set_account_in_token(true);
    let app = App::new("app-filters-reload");
    let cb = FakeCallback::ok().await;
    let unfiltered = TestConfig::new()
        .instance(changes_instance(&app, &account, &cb.url(), ""))
        .raw(&api.toml());
    let mut filtered = unfiltered.clone();
    filtered.instances = vec![changes_instance(
        &app,
        &account,
        &cb.url(),
        "paths = [\"/keep/**\"]",
    )];
    let mut d = Daemon::start(&unfiltered).await;
    wait_until(WAIT, "the first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    api.write_file("/before.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the unfiltered event", |r| !rows(r).is_empty())
        .await;

    d.rewrite_config(&filtered);
    d.sighup();
    wait_until(WAIT, "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    api.write_file("/drop.txt");
    api.write_file("/keep/x.txt");
    notify(&d, &app, &account).await;
    wait_metric(&d, WALKS_DONE, 2.0).await;
    let reqs = cb
        .wait_until(WAIT, "the kept event", |r| rows(r).len() >= 2)
        .await;
    assert_eq!(
        rows(&reqs),
        [
            row("CREATED", "/before.txt", ""),
            row("CREATED", "/keep/x.txt", "")
        ],
        "{}",
        d.logs()
    );
    assert_eq!(d.metric(FILTERED).await, Some(1.0));
}
