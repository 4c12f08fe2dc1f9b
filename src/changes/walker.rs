//! Cursor walks (docs/change-events.md): one at a time per (instance, account). A request that
//! arrives while the pair walks sets "walk again"; the durable `w/` marker (written by ingest,
//! polling or catch-up) is cleared only by a walk that reached `has_more == false` and only if no
//! newer request replaced its token meanwhile. Each page is committed (cursor, object maps,
//! envelopes) in one batch before the next is fetched, so a crash repeats a page, never skips.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::api::{Api, ApiError};
use super::authorize::{self, AuthorizeError, Authorized};
use super::mapping::{self, Mapper, Objects};
use crate::alerts::{Alert, Alerts};
use crate::config::{self, EventsMode, Instance, LiveConfig, VendorType};
use crate::deliver::Dispatcher;
use crate::retry;
use crate::store::{self, Store, WalkPage, record::ObjectV1};
use crate::telemetry::metrics::{Metrics, WalkResult};
use crate::time;

/// Test-only override of every polling interval (a duration such as `1s`), read once at start.
/// Not for production.
pub const POLL_INTERVAL_ENV: &str = "HOOKRELAY_TEST_POLL_INTERVAL";
/// How often a walk waiting on back-pressure looks at the backlog again.
const BACKPRESSURE_CHECK: Duration = Duration::from_millis(500);
/// Refresh an access token this long before it expires (the SDK's buffer).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// Why a walk stopped before its end.
#[derive(Debug)]
enum WalkError {
    /// Dropbox refused the refresh token, or there is none: `authorize` is needed.
    NeedsAuthorize,
    /// The cursor was reset (handled by the walk).
    Reset,
    /// The instance is gone, disabled, or not in change-events mode any more.
    NotConfigured,
    Store(store::Error),
}

impl From<store::Error> for WalkError {
    fn from(err: store::Error) -> Self {
        WalkError::Store(err)
    }
}

#[derive(Default)]
struct PairState {
    again: bool,
}

struct Credentials {
    access: String,
    refresh_at: Instant,
    account: Option<String>,
}

struct Inner {
    store: Store,
    live: LiveConfig,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    /// Raises `needs_authorize` when Dropbox first refuses an instance's grant.
    alerts: Alerts,
    api: Api,
    /// Pairs walking now.
    walking: Mutex<HashMap<(String, String), PairState>>,
    /// Held only to read or store an entry, never across a store read or a Dropbox call, so
    /// that one instance's slow token endpoint holds up no other instance.
    credentials: tokio::sync::Mutex<HashMap<String, Credentials>>,
    /// One token refresh at a time per instance: a walk that needs a token while another
    /// refreshes it waits for that refresh (its instance only) and takes its token.
    refreshes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    poll_override: Option<Duration>,
    shutdown: watch::Receiver<bool>,
}

/// Runs the walks of change-events instances; cheap to share.
pub struct Walker {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

impl Walker {
    pub fn new(
        store: Store,
        live: LiveConfig,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
        alerts: Alerts,
    ) -> Result<Walker, reqwest::Error> {
        let (stop, shutdown) = watch::channel(false);
        let poll_override = std::env::var(POLL_INTERVAL_ENV)
            .ok()
            .and_then(|v| config::parse_duration(&v).ok());
        Ok(Walker {
            inner: Arc::new(Inner {
                store,
                live,
                dispatcher,
                metrics,
                alerts,
                api: Api::new()?,
                walking: Mutex::new(HashMap::new()),
                credentials: tokio::sync::Mutex::new(HashMap::new()),
                refreshes: Mutex::new(HashMap::new()),
                poll_override,
                shutdown,
            }),
            stop,
        })
    }

    /// Asks for a walk of the pair (its `w/` marker is already durable).
    pub fn request(&self, instance: &str, account: &str) {
        request(&self.inner, instance, account);
    }

    /// Prepares every change-events instance (token, account, first cursor), resumes the walks
    /// owed by the store (recovery), and runs the polling timers.
    pub fn start(&self) {
        prepare_and_resume(&self.inner, changes_instances(&self.inner));
        let inner = self.inner.clone();
        spawn_until_shutdown(&self.inner, async move { poll_loop(&inner).await });
    }

    /// After a reload: prepares the change-events instances that have no credentials in memory
    /// yet (added, enabled or switched to change events) and resumes their owed walks, so that
    /// a polling instance polls without waiting for a notification.
    pub fn reconfigured(&self) {
        let inner = self.inner.clone();
        spawn_until_shutdown(&self.inner, async move {
            let prepared: HashSet<String> =
                inner.credentials.lock().await.keys().cloned().collect();
            let new: Vec<Instance> = changes_instances(&inner)
                .into_iter()
                .filter(|i| !prepared.contains(&i.name))
                .collect();
            prepare_and_resume(&inner, new);
        });
    }

    /// `authorize` inside the running daemon: stores the new credentials, uses them at once,
    /// and resumes the walks that waited for them.
    pub async fn authorize(&self, name: &str, code: &str) -> Result<Authorized, AuthorizeError> {
        let inner = &self.inner;
        let config = inner.live.load().config.clone();
        let authorized =
            authorize::authorize(&inner.api, &inner.store, &config, name, code).await?;
        inner.credentials.lock().await.insert(
            name.to_owned(),
            Credentials {
                access: authorized.access_token.clone(),
                refresh_at: refresh_at(authorized.expires_in),
                account: Some(authorized.account.clone()),
            },
        );
        set_needs_authorize(inner, name, false);
        info!(instance = %name, account = %authorized.account, cursor_taken = authorized.cursor_taken, "change events authorized");
        if let Some(instance) = config.instance(name) {
            prepare_and_resume(inner, vec![instance.clone()]);
        }
        Ok(authorized)
    }

    /// Stops every walk between two requests (what is committed stays committed).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

fn spawn_until_shutdown(inner: &Arc<Inner>, work: impl Future<Output = ()> + Send + 'static) {
    let mut shutdown = inner.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
}

/// Per instance, on its own task (one whose Dropbox calls keep failing must not hold up the
/// others): credentials, account and first cursor, then the walks the store says it owes.
fn prepare_and_resume(inner: &Arc<Inner>, instances: Vec<Instance>) {
    let markers = inner.store.walk_markers().unwrap_or_else(|err| {
        warn!(error = %err, "cannot read pending walks");
        Vec::new()
    });
    for instance in instances {
        let owed: Vec<String> = markers
            .iter()
            .filter(|(name, _, _)| *name == instance.name)
            .map(|(_, account, _)| account.clone())
            .collect();
        let task_inner = inner.clone();
        spawn_until_shutdown(inner, async move {
            if let Err(err) = prepare(&task_inner, &instance).await {
                debug!(instance = %instance.name, ?err, "change events not ready yet");
            }
            for account in owed {
                request(&task_inner, &instance.name, &account);
            }
        });
    }
}

fn changes_instances(inner: &Inner) -> Vec<Instance> {
    inner
        .live
        .load()
        .config
        .instances
        .iter()
        .filter(|i| i.enabled && i.events == EventsMode::Changes)
        .cloned()
        .collect()
}

fn request(inner: &Arc<Inner>, instance: &str, account: &str) {
    let key = (instance.to_owned(), account.to_owned());
    {
        let Ok(mut walking) = inner.walking.lock() else {
            return;
        };
        if let Some(state) = walking.get_mut(&key) {
            state.again = true;
            return;
        }
        walking.insert(key.clone(), PairState::default());
    }
    let task_inner = inner.clone();
    spawn_until_shutdown(inner, async move {
        let inner = task_inner;
        loop {
            let result = walk(&inner, &key.0, &key.1).await;
            let label = match &result {
                Ok(()) => WalkResult::Done,
                Err(WalkError::Reset) => WalkResult::Reset,
                Err(WalkError::NeedsAuthorize) => WalkResult::NeedsAuthorize,
                Err(_) => WalkResult::Error,
            };
            inner.metrics.changes_walk(&key.0, label);
            if let Err(err) = &result {
                match err {
                    WalkError::NeedsAuthorize => {
                        warn!(instance = %key.0, account = %key.1, "change events need `hookrelay authorize`; the walk stays pending")
                    }
                    WalkError::NotConfigured => {
                        debug!(instance = %key.0, account = %key.1, "walk skipped: not a change-events instance now")
                    }
                    WalkError::Reset => {}
                    WalkError::Store(e) => {
                        warn!(instance = %key.0, account = %key.1, error = %e, "walk stopped: store error")
                    }
                }
            }
            let again = match inner.walking.lock() {
                Ok(mut walking) => {
                    let again = matches!(result, Ok(()) | Err(WalkError::Reset))
                        && walking.get(&key).is_some_and(|s| s.again);
                    if again {
                        walking.insert(key.clone(), PairState::default());
                    } else {
                        walking.remove(&key);
                    }
                    again
                }
                Err(_) => false,
            };
            if !again {
                break;
            }
        }
    });
}

/// The instance's credentials are usable, its account known, and that account has a cursor.
async fn prepare(inner: &Inner, instance: &Instance) -> Result<String, WalkError> {
    let account = account_of(inner, instance).await?;
    if inner.store.cursor(&instance.name, &account)?.is_none() {
        let cursor = latest_cursor(inner, instance).await?;
        inner
            .store
            .set_cursor(&instance.name, &account, &cursor, true)
            .await?;
        info!(instance = %instance.name, account = %account, "change events: cursor taken; changes from now on are reported");
    }
    Ok(account)
}

fn api_base(inner: &Inner) -> config::Url {
    inner.live.load().config.dropbox.api_url.clone()
}

/// One walk of the pair: pages until `has_more` is false, each committed before the next.
async fn walk(inner: &Inner, instance_name: &str, account: &str) -> Result<(), WalkError> {
    let instance = current_instance(inner, instance_name)?;
    let marker = inner.store.walk_marker(instance_name, account)?;
    let own_account = prepare(inner, &instance).await?;
    if own_account != account {
        warn!(instance = %instance_name, account, credentials_for = %own_account, "a walk was asked for an account these credentials do not cover; dropped");
        commit(
            inner,
            &instance,
            account,
            None,
            Vec::new(),
            Vec::new(),
            marker,
            0,
        )
        .await?;
        return Ok(());
    }
    let Some(mut cursor) = inner.store.cursor(instance_name, account)? else {
        return Ok(());
    };
    let date_ms = time::now_ms();
    let mut mapper = Mapper::new(&instance.element, time::rfc3339(date_ms));
    let objects = StoreObjects {
        store: &inner.store,
        instance: instance_name,
        account,
    };
    let mut pages = 0u64;
    loop {
        wait_for_room(inner, instance_name).await?;
        let page = match call(inner, &instance, Call::Continue(&cursor)).await {
            Ok(Answer::Page(page)) => page,
            Ok(_) => {
                return Err(WalkError::Store(store::Error::Corrupt(
                    "unexpected answer".into(),
                )));
            }
            Err(WalkError::Reset) => {
                let fresh = latest_cursor(inner, &instance).await?;
                let unknown = mapper.reset_envelope(account);
                warn!(instance = %instance_name, account, "Dropbox reset the cursor; a fresh one was taken and an UNKNOWN event queued");
                commit(
                    inner,
                    &instance,
                    account,
                    Some(fresh),
                    vec![unknown],
                    Vec::new(),
                    marker,
                    date_ms,
                )
                .await?;
                return Err(WalkError::Reset);
            }
            Err(err) => return Err(err),
        };
        pages += 1;
        let (events, writes) = mapper.map_page(&objects, &page.entries);
        // Filtered-out entries still move the cursor and the object maps (committed below).
        let (events, filtered) = mapping::filter(events, &instance.filter);
        let count = events.len();
        let envelopes =
            mapping::envelopes(events, mapping::MAX_EVENTS, mapping::MAX_ENVELOPE_BYTES);
        let clear = if page.has_more { None } else { marker.clone() };
        commit(
            inner,
            &instance,
            account,
            Some(page.cursor.clone()),
            envelopes,
            writes,
            clear,
            date_ms,
        )
        .await?;
        if filtered > 0 {
            inner
                .metrics
                .change_entries_filtered(instance_name, filtered);
        }
        // The store holds the page's object maps now: lookups go there.
        mapper.committed();
        debug!(instance = %instance_name, account, page = pages, entries = page.entries.len(), events = count, filtered, "walk page committed");
        cursor = page.cursor;
        if !page.has_more {
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn commit(
    inner: &Inner,
    instance: &Instance,
    account: &str,
    cursor: Option<String>,
    envelopes: Vec<store::NewEnvelope>,
    map: Vec<store::MapWrite>,
    clear_marker: Option<Vec<u8>>,
    date_ms: u64,
) -> Result<(), WalkError> {
    let added = envelopes.len();
    let heads = inner
        .store
        .commit_walk_page(WalkPage {
            instance: instance.name.clone(),
            account: account.to_owned(),
            cursor,
            envelopes,
            map,
            clear_marker,
            date_ms,
        })
        .await?;
    for _ in 0..added {
        inner.metrics.event_accepted(&instance.name);
    }
    for head in heads {
        inner.dispatcher.offer(head);
    }
    Ok(())
}

fn current_instance(inner: &Inner, name: &str) -> Result<Instance, WalkError> {
    inner
        .live
        .load()
        .config
        .instance(name)
        .filter(|i| i.enabled && i.events == EventsMode::Changes)
        .cloned()
        .ok_or(WalkError::NotConfigured)
}

/// Past `max_queued_bytes`, the walk waits with its cursor in place.
async fn wait_for_room(inner: &Inner, name: &str) -> Result<(), WalkError> {
    let mut logged = false;
    loop {
        let quota = current_instance(inner, name)?.delivery.max_queued_bytes;
        let pending = inner
            .store
            .counters()
            .get(name)
            .map_or(0, |c| c.pending_bytes);
        if pending < quota {
            return Ok(());
        }
        if !logged {
            info!(instance = %name, pending, quota, "max_queued_bytes reached; the walk waits for the backlog to shrink");
            logged = true;
        }
        tokio::time::sleep(BACKPRESSURE_CHECK).await;
    }
}

/// A Dropbox call a walk makes.
enum Call<'a> {
    /// Only make sure there is a valid access token.
    Token,
    LatestCursor,
    Continue(&'a str),
    CurrentAccount,
}

enum Answer {
    Done,
    Cursor(String),
    Page(super::api::Page),
    Account(String),
}

async fn latest_cursor(inner: &Inner, instance: &Instance) -> Result<String, WalkError> {
    match call(inner, instance, Call::LatestCursor).await? {
        Answer::Cursor(cursor) => Ok(cursor),
        _ => Err(WalkError::Store(store::Error::Corrupt(
            "unexpected answer".into(),
        ))),
    }
}

async fn send(inner: &Inner, call: &Call<'_>, token: &str) -> Result<Answer, ApiError> {
    let base = api_base(inner);
    match call {
        Call::Token => Ok(Answer::Done),
        Call::LatestCursor => inner
            .api
            .latest_cursor(&base, token)
            .await
            .map(Answer::Cursor),
        Call::Continue(cursor) => inner
            .api
            .continue_from(&base, token, cursor)
            .await
            .map(Answer::Page),
        Call::CurrentAccount => inner
            .api
            .current_account(&base, token)
            .await
            .map(Answer::Account),
    }
}

/// Runs a Dropbox call with the instance's access token: refreshes once on a 401, waits out
/// 429s, backs off on 5xx and network errors (the delivery retry shape), and gives up only on
/// a reset (the caller's) or a refused refresh token.
async fn call(inner: &Inner, instance: &Instance, what: Call<'_>) -> Result<Answer, WalkError> {
    let mut refreshed = false;
    let mut failures = 0u32;
    loop {
        let result = match access_token(inner, instance).await {
            Ok(token) => match send(inner, &what, &token).await {
                Err(ApiError::Unauthorized) if !refreshed => {
                    refreshed = true;
                    forget_token(inner, &instance.name, &token).await;
                    continue;
                }
                other => other,
            },
            Err(err) => Err(err),
        };
        let wait = match result {
            Ok(value) => return Ok(value),
            Err(ApiError::Reset) => return Err(WalkError::Reset),
            Err(ApiError::InvalidGrant) => {
                set_needs_authorize(inner, &instance.name, true);
                return Err(WalkError::NeedsAuthorize);
            }
            Err(ApiError::RateLimited(wait)) => {
                info!(instance = %instance.name, wait = ?wait, "Dropbox rate limit; waiting");
                wait
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                refreshed = false;
                let policy = retry::RetryPolicy {
                    initial: instance.delivery.retry_initial,
                    multiplier: instance.delivery.retry_multiplier,
                    max_interval: instance.delivery.retry_max_interval,
                };
                let wait = retry::retry_delay(&policy, failures, retry::random_jitter(), None);
                warn!(instance = %instance.name, error = %err, retry_in = ?wait, "Dropbox call failed; retrying");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn set_needs_authorize(inner: &Inner, instance: &str, needs: bool) {
    inner.metrics.set_changes_needs_authorize(instance, needs);
    if let Some(lane) = inner.dispatcher.stats(instance) {
        let was = lane.stats.needs_authorize.swap(needs, Ordering::Relaxed);
        if needs && !was {
            lane.stats
                .record_error("Dropbox refused the refresh token: run `hookrelay authorize`");
            // Once per episode: the flag stays set until a grant works again.
            inner.alerts.raise(Alert::NeedsAuthorize {
                instance: instance.to_owned(),
            });
        }
    }
}

/// A valid access token, refreshed ahead of expiry with the refresh token `authorize` stored,
/// else the configured one.
async fn access_token(inner: &Inner, instance: &Instance) -> Result<String, ApiError> {
    if let Some(token) = current_token(inner, &instance.name).await {
        return Ok(token);
    }
    let gate = refresh_gate(inner, &instance.name);
    let _refreshing = gate.lock().await;
    // Another walk of this instance may have refreshed it meanwhile.
    if let Some(token) = current_token(inner, &instance.name).await {
        return Ok(token);
    }
    let stored = inner
        .store
        .authorization(&instance.name)
        .map_err(|e| ApiError::Transient(e.to_string()))?;
    let (refresh_token, stored_account) = match (&stored, &instance.refresh_token) {
        (Some(authorization), _) => (
            authorization.refresh_token.as_str(),
            Some(authorization.account.clone()),
        ),
        (None, Some(configured)) => (configured.expose(), None),
        (None, None) => return Err(ApiError::InvalidGrant),
    };
    let base = api_base(inner);
    let token = inner
        .api
        .refresh(
            &base,
            &instance.app_key,
            instance.app_secret.expose(),
            refresh_token,
        )
        .await?;
    inner.metrics.changes_token_refresh(&instance.name);
    set_needs_authorize(inner, &instance.name, false);
    let lifetime = token.lifetime();
    let mut credentials = inner.credentials.lock().await;
    let known_account = credentials
        .get(&instance.name)
        .and_then(|c| c.account.clone());
    credentials.insert(
        instance.name.clone(),
        Credentials {
            access: token.access_token.clone(),
            refresh_at: refresh_at(lifetime),
            account: token.account_id.or(stored_account).or(known_account),
        },
    );
    debug!(instance = %instance.name, expires_in = lifetime.as_secs(), "access token refreshed");
    Ok(token.access_token)
}

/// The instance's access token, unless it is missing or due for a refresh.
async fn current_token(inner: &Inner, instance: &str) -> Option<String> {
    let credentials = inner.credentials.lock().await;
    credentials
        .get(instance)
        .filter(|c| Instant::now() < c.refresh_at)
        .map(|c| c.access.clone())
}

/// The lock that makes an instance's token refreshes one at a time.
fn refresh_gate(inner: &Inner, instance: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut refreshes = inner
        .refreshes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    refreshes.entry(instance.to_owned()).or_default().clone()
}

/// When to refresh an access token that lives `lifetime`: [`REFRESH_AHEAD`] before it expires
/// (at half its life if it is short).
fn refresh_at(lifetime: Duration) -> Instant {
    retry::instant_after(
        Instant::now(),
        lifetime.saturating_sub(REFRESH_AHEAD.min(lifetime / 2)),
    )
}

/// Drops the access token after a 401, unless another walk already replaced it.
async fn forget_token(inner: &Inner, instance: &str, token: &str) {
    let mut credentials = inner.credentials.lock().await;
    if let Some(c) = credentials.get_mut(instance)
        && c.access == token
    {
        c.refresh_at = Instant::now();
    }
}

/// The Dropbox account the instance's credentials belong to: the token answer's `account_id`,
/// else `users/get_current_account`.
async fn account_of(inner: &Inner, instance: &Instance) -> Result<String, WalkError> {
    let known = |credentials: &HashMap<String, Credentials>| {
        credentials
            .get(&instance.name)
            .and_then(|c| c.account.clone())
    };
    if let Some(account) = known(&*inner.credentials.lock().await) {
        return Ok(account);
    }
    // The first refresh may name the account.
    call(inner, instance, Call::Token).await?;
    if let Some(account) = known(&*inner.credentials.lock().await) {
        return Ok(account);
    }
    let Answer::Account(account) = call(inner, instance, Call::CurrentAccount).await? else {
        return Err(WalkError::Store(store::Error::Corrupt(
            "unexpected answer".into(),
        )));
    };
    if let Some(c) = inner.credentials.lock().await.get_mut(&instance.name) {
        c.account = Some(account.clone());
    }
    Ok(account)
}

/// Polling instances: every `event.poller.refresh_interval`, each known account owes a walk.
async fn poll_loop(inner: &Arc<Inner>) {
    let tick = inner
        .poll_override
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    let mut next: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let mut seen = HashSet::new();
        for instance in changes_instances(inner) {
            let VendorType::Polling { interval } = instance.vendor else {
                continue;
            };
            seen.insert(instance.name.clone());
            let interval = inner.poll_override.unwrap_or(interval);
            let due = next
                .entry(instance.name.clone())
                .or_insert_with(|| retry::instant_after(now, interval));
            if now < *due {
                continue;
            }
            *due = retry::instant_after(now, interval);
            let mut accounts = inner
                .store
                .cursor_accounts(&instance.name)
                .unwrap_or_default();
            if let Some(own) = inner
                .credentials
                .lock()
                .await
                .get(&instance.name)
                .and_then(|c| c.account.clone())
                && !accounts.contains(&own)
            {
                accounts.push(own);
            }
            let pairs: Vec<(String, String)> = accounts
                .into_iter()
                .map(|a| (instance.name.clone(), a))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            if let Err(err) = inner.store.mark_walk(pairs.clone()).await {
                warn!(instance = %instance.name, error = %err, "cannot mark a polling walk");
                continue;
            }
            for (name, account) in pairs {
                request(inner, &name, &account);
            }
        }
        next.retain(|name, _| seen.contains(name));
    }
}

/// The committed object maps of one pair.
struct StoreObjects<'a> {
    store: &'a Store,
    instance: &'a str,
    account: &'a str,
}

impl Objects for StoreObjects<'_> {
    fn by_id(&self, id: &str) -> Option<ObjectV1> {
        self.store
            .object_by_id(self.instance, self.account, id)
            .ok()
            .flatten()
    }

    fn by_path(&self, path_lower: &str) -> Option<ObjectV1> {
        self.store
            .object_by_path(self.instance, self.account, path_lower)
            .ok()
            .flatten()
    }
}
