//! Configuration: the TOML file (docs/configuration.md) read into raw serde types, then validated
//! into the types below, which the rest of the daemon uses. Owns the duration, size and rate
//! grammars, `{ file = "…" }` secret references and the reload rules (what may change on SIGHUP).
//!
//! Loading collects every problem, each naming the file, the key, the rule and the value.
//!
//! The way through, file by file:
//! - `document`: text → `toml::Table` → the `raw` serde types, one table at a time;
//!   `configuration` flattens `[instance.configuration]`'s quoted or dotted keys.
//! - `validate` (sections), `instance` and `configuration` (per instance): raw → the types
//!   below, through `check::Checker`, which reads `{ file = … }` values (`file_value`), applies
//!   the `grammar`s and the `defaults`, and records each `problem`.

mod alerts;
mod callback_tls;
mod check;
mod configuration;
mod defaults;
mod delivery;
mod document;
mod file_value;
mod filter;
mod grammar;
mod headers;
mod instance;
mod keys;
mod live;
mod problem;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use reqwest::Url;

use crate::tls::TlsIdentity;
use crate::tls::client::{ClientIdentity, ExtraRoots};
pub(crate) use keys::KNOWN_KEYS as KNOWN_CONFIGURATION_KEYS;

pub use filter::{ChangeFilter, ChangeType, PathGlob};
pub use grammar::{parse_duration, parse_rate, parse_size};
pub use headers::CallbackHeaders;
pub use live::{Live, LiveConfig, new_live};
pub use problem::{ConfigError, Problem};

/// A configuration that passed every rule, with the warnings it drew (e.g. a secret file that
/// every user can read). Warnings never contain secret values.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Where a configuration comes from: what problems name, and where `{ file = "…" }` resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadContext {
    /// The config file, absolute; used in messages and as `Config::source`.
    pub file: PathBuf,
    /// The config file's folder: relative `storage.path` and file references resolve here.
    pub base_dir: PathBuf,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), searched first for file references.
    pub credentials_dir: Option<PathBuf>,
}

impl LoadContext {
    /// The context for loading `path`: made absolute (not canonicalised), with
    /// `$CREDENTIALS_DIRECTORY` read once, here.
    ///
    /// # Errors
    /// When the current directory is needed and cannot be read.
    pub fn for_file(path: &Path) -> std::io::Result<LoadContext> {
        let file = std::path::absolute(path)?;
        let base_dir = file
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        Ok(LoadContext {
            file,
            base_dir,
            credentials_dir,
        })
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Invalid`] with every
    /// problem found otherwise.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let read_error = |source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        };
        let ctx = LoadContext::for_file(path).map_err(read_error)?;
        let text = std::fs::read_to_string(&ctx.file).map_err(|source| ConfigError::Read {
            file: ctx.file.clone(),
            source,
        })?;
        Config::from_toml_str(&text, &ctx)
    }

    /// Validates `text` as if read from `ctx.file`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found.
    pub fn from_toml_str(text: &str, ctx: &LoadContext) -> Result<Loaded, ConfigError> {
        validate::load_str(text, ctx)
    }

    /// The keys that a reload may not change and that `new` changes, in file order:
    /// `server.listen`, `admin.listen`, `storage.path`, `storage.max_bytes`, `storage.cache_bytes`.
    pub fn reload_blockers(&self, new: &Config) -> Vec<&'static str> {
        let changed = [
            ("server.listen", self.server.listen != new.server.listen),
            ("admin.listen", self.admin.listen != new.admin.listen),
            ("storage.path", self.storage.path != new.storage.path),
            (
                "storage.max_bytes",
                self.storage.max_bytes != new.storage.max_bytes,
            ),
            (
                "storage.cache_bytes",
                self.storage.cache_bytes != new.storage.cache_bytes,
            ),
        ];
        changed
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect()
    }

    /// The instance called `name`.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|instance| instance.name == name)
    }
}

impl Instance {
    /// Whether notifications for Dropbox account `account` (`dbid:…`) concern this instance.
    pub fn matches_account(&self, account: &str) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|accounts| accounts.iter().any(|listed| listed == account))
    }
}

/// A validated configuration: everything a running daemon needs, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from (absolute).
    pub source: PathBuf,
    pub server: Server,
    pub admin: Admin,
    pub storage: Storage,
    pub dropbox: DropboxApi,
    /// `[alerts]`; `None` (alerts off) unless `url` is set.
    pub alerts: Option<Alerts>,
    /// Instances in file order; names and ids are unique.
    pub instances: Vec<Instance>,
}

/// `[server]`: the Dropbox-facing listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub shutdown_timeout: Duration,
    /// `tls_cert` and `tls_key`, loaded and checked: the listener serves HTTPS with them.
    /// `None`: plain HTTP (behind a reverse proxy that terminates TLS).
    pub tls: Option<TlsIdentity>,
}

/// `[admin]`: health, metrics and the CLI's API.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

/// `[storage]`: the sled directory and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    /// Absolute: relative paths are resolved from the config file's folder.
    pub path: PathBuf,
    pub max_bytes: u64,
    pub cache_bytes: u64,
}

/// `[dropbox]`: API base URLs (overridable so tests can use a fake Dropbox).
#[derive(Debug, Clone, PartialEq)]
pub struct DropboxApi {
    pub api_url: Url,
    pub content_url: Url,
    pub notify_url: Url,
}

/// `[alerts]`: operator notifications, sent through the store's alert queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    pub url: Url,
    pub format: AlertFormat,
    /// Signs `json` alerts like events; a `whsec_` key adds the Standard Webhooks signature.
    pub signature_key: Option<Secret>,
    /// The types sent, in the order written; every type by default.
    pub on: Vec<AlertType>,
    /// Egress proxy for the alert URL; none by default (environment proxies are ignored).
    pub proxy: Option<Url>,
    /// The `[delivery]` settings alerts follow: timeout, rate limit and the retry schedule.
    pub delivery: Delivery,
}

/// How an alert's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFormat {
    /// `{"alert": {"type", "instance", "at", "summary", "detail"}}`, signed like events.
    Json,
    /// `{"text": "<summary>"}`: Slack, Mattermost, Rocket.Chat incoming webhooks.
    Slack,
}

/// The types of alert, as `alerts.on` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertType {
    DeadLetter,
    Outage,
    Recovered,
    NeedsAuthorize,
    StoreFull,
}

impl AlertType {
    pub const ALL: [AlertType; 5] = [
        AlertType::DeadLetter,
        AlertType::Outage,
        AlertType::Recovered,
        AlertType::NeedsAuthorize,
        AlertType::StoreFull,
    ];

    /// The name in `alerts.on` and in a `json` alert's `type`.
    pub fn name(self) -> &'static str {
        match self {
            AlertType::DeadLetter => "dead_letter",
            AlertType::Outage => "outage",
            AlertType::Recovered => "recovered",
            AlertType::NeedsAuthorize => "needs_authorize",
            AlertType::StoreFull => "store_full",
        }
    }

    pub fn from_name(name: &str) -> Option<AlertType> {
        AlertType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// `[delivery]` merged with an instance's `[instance.delivery]` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub timeout: Duration,
    pub rate_limit: Rate,
    pub rate_limit_burst: NonZeroU32,
    pub concurrency: NonZeroU32,
    pub retry_initial: Duration,
    pub retry_multiplier: f64,
    pub retry_max_interval: Duration,
    /// Attempts in all (first try included) before dead-lettering; at least 1.
    pub max_attempts: u32,
    pub max_age: Duration,
    pub dead_letter_ttl: Duration,
    pub max_queued_bytes: u64,
    pub coalesce: bool,
    pub allow_private_destinations: bool,
    pub paused: bool,
    pub proxy: Option<Url>,
    /// How long delivered events are kept for `events` (from their acceptance); zero: not kept.
    pub history: Duration,
    /// The most bytes of delivered history kept for the instance; the oldest goes first.
    pub history_max_bytes: u64,
    /// `headers`: added to every request, built once at load (values never shown).
    pub headers: CallbackHeaders,
    /// `client_cert` and `client_key`, loaded and checked: the certificate callbacks see.
    pub client_identity: Option<ClientIdentity>,
    /// `ca_file`: roots trusted for callbacks in addition to the system's.
    pub extra_roots: Option<ExtraRoots>,
    /// No 2xx from the instance for this long while attempts were made: it is in an outage
    /// (one probe per `probe_interval`, attempts and age not counted). Zero: never.
    pub outage_after: Duration,
    /// In an outage, the time between two probes; greater than zero.
    pub probe_interval: Duration,
}

/// A rate such as `100/s`: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

/// What a notification turns into for an instance (docs/change-events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsMode {
    /// One `UPDATED`/`account` event per notified account.
    Notify,
    /// Per-object events from walking the account's cursor.
    Changes,
}

/// How an instance learns of changes (`event.vendor.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorType {
    Webhook,
    /// Walk on a timer (`event.poller.refresh_interval`), no webhook needed.
    Polling {
        interval: Duration,
    },
}

/// One `[[instance]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    /// The envelope's `instanceId`; positive and unique.
    pub id: u64,
    pub element: String,
    pub tags: Vec<String>,
    /// `None`: every account of the app.
    pub accounts: Option<Vec<String>>,
    pub events: EventsMode,
    /// `paths` and `event_types`: the change events delivered (change events only; keeps all
    /// when neither is set).
    pub filter: ChangeFilter,
    /// `oauth.api.key`: instances sharing it belong to one Dropbox app.
    pub app_key: String,
    /// `oauth.api.secret`: verifies `X-Dropbox-Signature`.
    pub app_secret: Secret,
    /// `oauth.callback.url`: OAuth redirect URI (change events only).
    pub oauth_callback_url: Option<Url>,
    /// `oauth.refresh_token`, when configured instead of `authorize`.
    pub refresh_token: Option<Secret>,
    /// `event.notification.enabled`.
    pub enabled: bool,
    /// `event.notification.callback.url`; always `Some` when `enabled`.
    pub callback_url: Option<Url>,
    /// `event.notification.signature.key`.
    pub signature_key: Option<Secret>,
    /// `event.notification.signature.previous_key`, during a key rotation.
    pub previous_signature_key: Option<Secret>,
    pub vendor: VendorType,
    pub delivery: Delivery,
}

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used (signing, verifying, comparing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
