//! Change events (docs/change-events.md) against a fake Dropbox API: per-object events in order,
//! subfolders, envelopes of at most 20, `kill -9` between a committed page and its delivery, a
//! cursor reset, an expired access token, polling without a webhook, and a folder of many files
//! moved in bounded memory.

use std::time::Duration;

use serde_json::Value;

use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::fake_api::{FakeDropboxApi, REFRESH_TOKEN};
use crate::support::{
    Action, App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

/// A change-events instance of `app` for `account`, with the fake's refresh token.
fn changes_instance(app: &App, account: &str, callback: &str) -> InstanceConfig {
    InstanceConfig::new("files", 31, app)
        .raw("events = \"changes\"")
        .accounts(&[account])
        .callback(callback)
        .signature_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .configuration("oauth.refresh_token", REFRESH_TOKEN)
}

/// What every test here starts from: a Dropbox app and account, the fake Dropbox API (naming
/// the account in its token answers, or leaving the daemon to ask for it) and a callback.
struct Fixture {
    app: App,
    account: String,
    api: FakeDropboxApi,
    cb: FakeCallback,
}

impl Fixture {
    async fn start(account_in_token: bool) -> Fixture {
        Fixture::with_callback(account_in_token, FakeCallback::ok().await).await
    }

    async fn with_callback(account_in_token: bool, cb: FakeCallback) -> Fixture {
        let account = account_id();
        let api = FakeDropboxApi::start(&account).await;
        api.set_account_in_token(account_in_token);
        Fixture {
            app: App::new("app-changes"),
            account,
            api,
            cb,
        }
    }

    /// The change-events instance, with the fake's refresh token.
    fn instance(&self) -> InstanceConfig {
        changes_instance(&self.app, &self.account, &self.cb.url())
    }

    /// The change-events instance without credentials, waiting for `authorize`.
    fn instance_to_authorize(&self) -> InstanceConfig {
        instance_to_authorize(&self.app, &self.account, &self.cb.url())
    }

    fn parts(self) -> (App, String, FakeDropboxApi, FakeCallback) {
        (self.app, self.account, self.api, self.cb)
    }

    /// A config of `instance` and the `[dropbox]` table of the fake API.
    fn config(&self, instance: InstanceConfig) -> TestConfig {
        TestConfig::new().instance(instance).raw(&self.api.toml())
    }
}

/// `instance` polling every second (with the test interval override).
fn polling(instance: InstanceConfig) -> InstanceConfig {
    instance
        .configuration("event.vendor.type", "polling")
        .configuration("event.poller.refresh_interval", 1_i64)
}

/// Starts the daemon and waits until it took its first cursor.
async fn start(cfg: &TestConfig, api: &FakeDropboxApi, env: &[(&str, &str)]) -> Daemon {
    let d = Daemon::start_with_env(cfg, env).await;
    wait_until(WAIT, "the first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    d
}

async fn notify(d: &Daemon, app: &App, account: &str) {
    let status =
        post_notification(&d.ingest_url(), &app.secret, &notification_body(&[account])).await;
    assert_eq!(status, 200, "{}", d.logs());
}

/// Every event of every 2xx-answered delivery, in delivery order.
fn delivered_events(reqs: &[Recorded]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.answered == Some(200))
        .flat_map(|r| {
            r.message()["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn count_delivered(reqs: &[Recorded]) -> usize {
    delivered_events(reqs).len()
}

fn field(e: &Value, key: &str) -> String {
    e[key].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_created_modified_renamed_and_deleted_in_order() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;

    let id = api.write_file("/Report.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "CREATED", |r| count_delivered(r) >= 1)
        .await;
    api.write_file("/Report.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "UPDATED", |r| count_delivered(r) >= 2)
        .await;
    api.rename("/Report.txt", "/Final Report.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the move", |r| count_delivered(r) >= 3)
        .await;
    api.delete("/Final Report.txt");
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "DELETED", |r| count_delivered(r) >= 4)
        .await;

    let events = delivered_events(&reqs);
    let rows: Vec<(String, String, String, String, String)> = events
        .iter()
        .map(|e| {
            (
                field(e, "eventType"),
                field(e, "objectType"),
                field(e, "objectId"),
                field(e, "path"),
                field(e, "previousPath"),
            )
        })
        .collect();
    let row = |t: &str, p: &str, pp: &str| {
        (
            t.to_owned(),
            "file".to_owned(),
            id.clone(),
            p.to_owned(),
            pp.to_owned(),
        )
    };
    assert_eq!(
        rows,
        vec![
            row("CREATED", "/Report.txt", ""),
            row("UPDATED", "/Report.txt", ""),
            row("UPDATED", "/Final Report.txt", "/Report.txt"),
            row("DELETED", "/Final Report.txt", ""),
        ],
        "{}",
        d.logs()
    );
    let first = reqs[0].message();
    assert_eq!(first["accountId"], account.as_str());
    assert_eq!(first["instanceId"], 31);
    assert_eq!(first["events"][0]["elementKey"], "dropbox");
    assert!(
        first["events"][0]["date"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z'))
    );
    assert_eq!(first["raw"]["entries"][0]["id"], id.as_str());
    // The move's raw holds both of its entries (the folded `deleted` and the new path).
    let mv = reqs[2].message();
    assert_eq!(mv["raw"]["entries"].as_array().map(Vec::len), Some(2));
    crate::support::callback::verify_signatures(&reqs[0], "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_a_subfolder_is_reported_and_the_account_comes_from_get_current_account() {
    let f = Fixture::start(false).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    assert!(api.calls("2/users/get_current_account") >= 1);

    api.create_folder("/Projects");
    api.create_folder("/Projects/2026");
    let id = api.write_file("/Projects/2026/plan.md");
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "three events", |r| count_delivered(r) >= 3)
        .await;
    let events = delivered_events(&reqs);
    let last = &events[2];
    assert_eq!(field(last, "eventType"), "CREATED");
    assert_eq!(field(last, "objectId"), id);
    assert_eq!(field(last, "path"), "/Projects/2026/plan.md");
    assert_eq!(field(&events[0], "objectType"), "folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_five_changes_arrive_as_envelopes_of_20_20_and_5_in_order() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    let ids: Vec<String> = (0..45)
        .map(|n| api.write_file(&format!("/f{n:02}.txt")))
        .collect();
    notify(&d, &app, &account).await;
    let reqs = cb.wait_for(3, WAIT).await;
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| r.message()["events"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, [20, 20, 5], "{}", d.logs());
    for r in &reqs {
        let m = r.message();
        assert_eq!(
            m["raw"]["entries"].as_array().map(Vec::len),
            m["events"].as_array().map(Vec::len),
            "raw holds exactly the entries of the envelope's events"
        );
    }
    let got: Vec<String> = delivered_events(&reqs)
        .iter()
        .map(|e| field(e, "objectId"))
        .collect();
    assert_eq!(got, ids);
    // One in flight per pair: each envelope was sent after the previous one was answered.
    assert!(reqs.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_a_committed_page_and_its_delivery_loses_nothing() {
    let f = Fixture::with_callback(true, FakeCallback::start([], Action::Hang).await).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    api.set_page_size(10);
    let mut d = start(&cfg, &api, &[]).await;
    let ids: Vec<String> = (0..25)
        .map(|n| api.write_file(&format!("/k{n:02}.txt")))
        .collect();
    notify(&d, &app, &account).await;
    cb.wait_for(1, WAIT).await;
    d.kill9();
    cb.set_plan([], Action::Status(200));
    d.restart().await;
    let reqs = cb
        .wait_until(WAIT, "all 25 objects delivered", |r| {
            let got: std::collections::BTreeSet<String> = delivered_events(r)
                .iter()
                .map(|e| field(e, "objectId"))
                .collect();
            ids.iter().all(|id| got.contains(id))
        })
        .await;
    // In order of first delivery.
    let mut first_seen: Vec<String> = Vec::new();
    for e in delivered_events(&reqs) {
        let id = field(&e, "objectId");
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, ids, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_reset_yields_one_unknown_event_and_the_walk_carries_on() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    api.write_file("/lost.txt");
    api.reset_next();
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "UNKNOWN", |r| count_delivered(r) >= 1)
        .await;
    let id = api.write_file("/after-reset.txt");
    api.rate_limit_next();
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "the next change", |r| count_delivered(r) >= 2)
        .await;
    let events = delivered_events(&reqs);
    assert_eq!(field(&events[0], "eventType"), "UNKNOWN", "{}", d.logs());
    assert_eq!(field(&events[0], "objectId"), account);
    assert_eq!(field(&events[1], "eventType"), "CREATED");
    assert_eq!(field(&events[1], "objectId"), id);
    assert_eq!(
        events.len(),
        2,
        "nothing before the fresh cursor is replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_exactly_once() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    let before = api.calls("oauth2/token");
    api.expire_token();
    api.write_file("/a.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the change", |r| count_delivered(r) >= 1)
        .await;
    assert_eq!(api.calls("oauth2/token"), before + 1, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_shows_needs_authorize_and_keeps_the_walk_pending() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    api.revoke_refresh_token(true);
    api.expire_token();
    api.write_file("/a.txt");
    notify(&d, &app, &account).await;
    wait_until(WAIT, "needs_authorize in status", || async {
        let r = crate::support::http::get(&format!("{}/admin/status", d.admin_url())).await;
        r.text().contains("needs_authorize")
    })
    .await;
    assert_eq!(
        d.metric("hookrelay_changes_needs_authorize{instance_name=\"files\"}")
            .await,
        Some(1.0)
    );
    // Authorized again (here: the token works again), the next request finds the change.
    api.revoke_refresh_token(false);
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the change", |r| count_delivered(r) >= 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_finds_a_change_without_a_webhook() {
    let f = Fixture::start(true).await;
    let cfg = f.config(polling(f.instance()));
    let Fixture { api, cb, .. } = f;
    let _d = start(&cfg, &api, &[(hookrelay::changes::POLL_INTERVAL_ENV, "1s")]).await;
    let id = api.write_file("/polled.txt");
    let reqs = cb
        .wait_until(WAIT, "the polled change", |r| count_delivered(r) >= 1)
        .await;
    assert_eq!(field(&delivered_events(&reqs)[0], "objectId"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_instance_added_by_a_reload_polls_without_a_webhook() {
    let f = Fixture::start(true).await;
    let without = f.config(InstanceConfig::new("other", 7, &f.app).callback(&f.cb.url()));
    let with = without.clone().instance(polling(f.instance()));
    let Fixture { api, cb, .. } = f;
    let mut d =
        Daemon::start_with_env(&without, &[(hookrelay::changes::POLL_INTERVAL_ENV, "1s")]).await;
    d.rewrite_config(&with);
    d.sighup();
    wait_until(WAIT, "the added instance's first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    let id = api.write_file("/polled after reload.txt");
    let reqs = cb
        .wait_until(WAIT, "the polled change", |r| count_delivered(r) >= 1)
        .await;
    assert_eq!(field(&delivered_events(&reqs)[0], "objectId"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropbox_5xx_answers_are_retried_with_backoff() {
    let f = Fixture::start(true).await;
    let cfg = f.config(f.instance());
    let (app, account, api, cb) = f.parts();
    let d = start(&cfg, &api, &[]).await;
    let id = api.write_file("/retry.txt");
    api.fail_next(2);
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "the change", |r| count_delivered(r) >= 1)
        .await;
    assert_eq!(field(&delivered_events(&reqs)[0], "objectId"), id);
    assert!(
        api.calls("2/files/list_folder/continue") >= 3,
        "{}",
        d.logs()
    );
}

/// One instance's token endpoint hangs (its refresh token's calls are never answered): the
/// other instance still gets its token, walks and delivers its change event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_token_refresh_does_not_delay_another_instance() {
    const SLOW_TOKEN: &str = "rt-hangs";
    let f = Fixture::start(true).await;
    f.api.hang_refresh(SLOW_TOKEN);
    let slow_cb = FakeCallback::ok().await;
    let slow = InstanceConfig::new("slow", 32, &f.app)
        .raw("events = \"changes\"")
        .accounts(&[&f.account])
        .callback(&slow_cb.url())
        .configuration("oauth.refresh_token", SLOW_TOKEN);
    let cfg = f.config(f.instance()).instance(slow);
    let (app, account, api, cb) = f.parts();
    let d = Daemon::start(&cfg).await;
    wait_until(WAIT, "the slow instance's token call to hang", || async {
        api.hung_refreshes() >= 1
    })
    .await;
    wait_until(WAIT, "the other instance's first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;

    let id = api.write_file("/while-another-hangs.txt");
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "the change", |r| count_delivered(r) >= 1)
        .await;
    assert_eq!(field(&delivered_events(&reqs)[0], "objectId"), id);
    assert_eq!(slow_cb.count(), 0, "the slow instance had no token");
}

/// The redirect URI the authorize tests' instance names (`oauth.callback.url`).
const REDIRECT_URI: &str = "https://example.com/dropbox/auth";

/// A change-events instance without a refresh token: it waits for `hookrelay authorize`.
fn instance_to_authorize(app: &App, account: &str, callback: &str) -> InstanceConfig {
    InstanceConfig::new("files", 31, app)
        .raw("events = \"changes\"")
        .accounts(&[account])
        .callback(callback)
        .configuration("oauth.callback.url", REDIRECT_URI)
}

async fn status_text(d: &Daemon) -> String {
    crate::support::http::get(&format!("{}/admin/status", d.admin_url()))
        .await
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_through_the_running_daemon_starts_change_events_with_the_stored_token() {
    let f = Fixture::start(false).await;
    let cfg = f.config(f.instance_to_authorize());
    let (app, account, api, cb) = f.parts();
    let mut d = Daemon::start(&cfg).await;
    wait_until(WAIT, "needs_authorize before authorize", || async {
        status_text(&d).await.contains("needs_authorize")
    })
    .await;

    let unknown = d
        .cli(&["authorize", "--instance", "nope", "--code", "x"])
        .await;
    assert_eq!(unknown.code(), Some(1), "{unknown:?}");
    assert!(unknown.stderr.contains("no instance named"), "{unknown:?}");
    let refused = d
        .cli(&["authorize", "--instance", "files", "--code", "ac-wrong"])
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("refused the code"), "{refused:?}");
    assert_eq!(
        api.calls("2/files/list_folder/get_latest_cursor"),
        0,
        "a refused code takes no cursor"
    );

    let code = api.issue_code(REDIRECT_URI);
    let authorized = d
        .cli(&["authorize", "--instance", "files", "--code", &code])
        .await;
    assert_eq!(authorized.code(), Some(0), "{authorized:?}\n{}", d.logs());
    assert!(
        authorized.stdout.contains(&account) && authorized.stdout.contains("cursor starts now"),
        "{authorized:?}"
    );
    assert!(!d.logs().contains(&code), "the code is never logged");
    assert!(!status_text(&d).await.contains("needs_authorize"));

    let id = api.write_file("/After.txt");
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "the change after authorize", |r| {
            count_delivered(r) >= 1
        })
        .await;
    let first = &delivered_events(&reqs)[0];
    assert_eq!(
        (field(first, "eventType"), field(first, "objectId")),
        ("CREATED".to_owned(), id)
    );

    // The access token expires: the refresh uses the token `authorize` stored, also after a
    // restart (the config has none).
    api.expire_token();
    api.write_file("/Later.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the change after a refresh", |r| {
        count_delivered(r) >= 2
    })
    .await;
    let granted = api.last_refresh_token().unwrap_or_default();
    assert!(granted.starts_with("rt-granted-"), "{granted:?}");
    d.stop().await;
    d.restart().await;
    api.write_file("/After restart.txt");
    notify(&d, &app, &account).await;
    cb.wait_until(WAIT, "the change after a restart", |r| {
        count_delivered(r) >= 3
    })
    .await;
    assert_eq!(api.last_refresh_token(), Some(granted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_before_the_first_start_creates_the_store_and_reports_changes_made_since() {
    let f = Fixture::start(false).await;
    let cfg = f.config(f.instance_to_authorize());
    let (app, account, api, cb) = f.parts();
    let mut d = Daemon::prepare(&cfg);
    api.write_file("/Before.txt");
    let status = d.cli(&["status", "--json"]).await;
    assert!(status.stdout.contains("needs_authorize"), "{status:?}");
    let code = api.issue_code(REDIRECT_URI);
    let authorized = d
        .cli(&["authorize", "--instance", "files", "--code", &code])
        .await;
    assert_eq!(authorized.code(), Some(0), "{authorized:?}");
    assert!(
        authorized.stdout.contains("cursor starts now"),
        "{authorized:?}"
    );
    assert!(d.store_path().join("db").exists(), "the store was created");
    let status = d.cli(&["status", "--json"]).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!status.stdout.contains("needs_authorize"), "{status:?}");

    let id = api.write_file("/Between.txt");
    d.restart().await;
    notify(&d, &app, &account).await;
    let reqs = cb
        .wait_until(WAIT, "the change made after authorize", |r| {
            count_delivered(r) >= 1
        })
        .await;
    let events = delivered_events(&reqs);
    let rows: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                field(e, "eventType"),
                field(e, "objectId"),
                field(e, "path"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![("CREATED".to_owned(), id, "/Between.txt".to_owned())],
        "only what changed after authorize\n{}",
        d.logs()
    );

    // Authorized again (a new grant for the same account), the cursor is kept.
    let code = api.issue_code(REDIRECT_URI);
    let again = d
        .cli(&["authorize", "--instance", "files", "--code", &code])
        .await;
    assert_eq!(again.code(), Some(0), "{again:?}");
    assert!(again.stdout.contains("keeps its cursor"), "{again:?}");
}

/// Files in the moved folder: 100,000 in the long tier (`HOOKRELAY_LONG_TESTS=1`), else 20,000
/// (each is created, then moved, and both events delivered one envelope at a time: the long
/// tier takes about 4 minutes in the debug build).
fn moved_folder_size() -> usize {
    if crate::support::rng::long_tests() {
        100_000
    } else {
        20_000
    }
}

/// A `/proc/<pid>/status` figure, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The events of the 2xx-answered deliveries, each envelope once (an attempt that timed out
/// on the daemon's side may have been answered, and is delivered again: at least once).
#[derive(Default)]
struct Unique {
    parsed: usize,
    seen: std::collections::HashSet<String>,
    events: Vec<Value>,
}

impl Unique {
    fn add(&mut self, reqs: &[Recorded]) {
        for r in reqs[self.parsed..]
            .iter()
            .filter(|r| r.answered == Some(200))
        {
            let message = r.message();
            let id = message["eventId"].as_str().unwrap_or_default().to_owned();
            if self.seen.insert(id) {
                self.events
                    .extend(message["events"].as_array().cloned().unwrap_or_default());
            }
        }
        self.parsed = reqs.len();
    }

    /// Waits until `total` events were delivered in all.
    async fn wait_for(&mut self, cb: &FakeCallback, total: usize, what: &str) {
        cb.wait_until(Duration::from_secs(300), what, |reqs| {
            self.add(reqs);
            self.events.len() >= total
        })
        .await;
    }
}

/// A folder of files moved at once (`deleted` at each old path, then the file at its new path;
/// 20,000 files, 100,000 in the long tier) and walked in pages of 2,000: every file's move
/// arrives as its own `UPDATED` event with `previousPath`, in Dropbox's order, and the daemon's
/// peak resident memory stays within 64 MiB above what it held before the walk. The mapper
/// that kept every object of the walk (by id and by path) and every old path of its moves held
/// about 1 KiB per object: with 100,000 it grew by more than twice the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_folder_of_many_files_is_walked_in_bounded_memory() {
    /// sled's page cache, which fills during the walk (32 MiB by default).
    const CACHE_MIB: u64 = 8;
    /// The page cache; one page of entries, its events, envelopes and the batch that commits
    /// them (about 12 MiB in the debug build) twice over for the allocator; sled's own
    /// metadata. Measured: 35 MiB with 20,000 files, 47 MiB with 100,000.
    const GROWTH_BOUND_MIB: u64 = 64;
    let n = moved_folder_size();
    let f = Fixture::start(true).await;
    let cfg = f
        .config(f.instance())
        .storage("cache_bytes", format!("{CACHE_MIB}MiB"));
    let (app, account, api, cb) = f.parts();
    api.set_page_size(2_000);
    // As the systemd unit runs it (glibc's arenas per thread would measure the allocator).
    let env = [("MALLOC_ARENA_MAX", "2")];
    let mut d = start(&cfg, &api, &env).await;
    let started = std::time::Instant::now();

    let folder = api.create_folder("/Archive");
    for i in 0..n {
        api.write_file(&format!("/Archive/f{i:06}.txt"));
    }
    notify(&d, &app, &account).await;
    let mut delivered = Unique::default();
    delivered
        .wait_for(&cb, n + 1, "the folder's files created")
        .await;
    let created_in = started.elapsed();
    // A fresh process: its peak (VmHWM) is the move's alone.
    d.stop().await;
    d.restart().await;
    let pid = d.pid();
    let before = proc_status_kib(pid, "VmRSS:");

    let moved = api.move_folder("/Archive", "/Moved");
    assert_eq!(moved.len(), n);
    // Resident memory each second of the walk and the deliveries, printed as a figure.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut series = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                series.push(proc_status_kib(pid, "VmRSS:") / 1024);
                std::thread::sleep(Duration::from_secs(1));
            }
            series
        })
    };
    notify(&d, &app, &account).await;
    delivered
        .wait_for(&cb, 2 * (n + 1), "every file's move")
        .await;
    let peak = proc_status_kib(pid, "VmHWM:");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let series = sampler.join().expect("the RSS sampler");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "a moved folder of {n} files: created and delivered in {created_in:?}, moved in {:?}; \
         RSS before the move {} MiB, peak {} MiB, growth {growth_mib} MiB; \
         RSS (MiB) each second: {series:?}",
        started.elapsed() - created_in,
        before / 1024,
        peak / 1024,
    );

    let events = &delivered.events[n + 1..];
    assert_eq!(events.len(), n + 1, "one event per moved object");
    let row = |e: &Value| {
        (
            field(e, "eventType"),
            field(e, "objectId"),
            field(e, "path"),
            field(e, "previousPath"),
        )
    };
    let expected = |id: &str, new: &str, old: &str| {
        (
            "UPDATED".to_owned(),
            id.to_owned(),
            new.to_owned(),
            old.to_owned(),
        )
    };
    assert_eq!(row(&events[0]), expected(&folder, "/Moved", "/Archive"));
    for (event, (id, old, new)) in events[1..].iter().zip(&moved) {
        assert_eq!(row(event), expected(id, new, old), "{}", d.logs());
    }
    let last = &moved[n - 1];
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        (
            format!("/Archive/f{:06}.txt", n - 1).as_str(),
            format!("/Moved/f{:06}.txt", n - 1).as_str()
        )
    );
    assert!(
        growth_mib < GROWTH_BOUND_MIB,
        "the walk of a {n}-file move grew the daemon by {growth_mib} MiB (bound \
         {GROWTH_BOUND_MIB} MiB): before {} MiB, peak {} MiB",
        before / 1024,
        peak / 1024
    );
}
