//! The configuration's defaults, in one place (`config.example.toml` spells out the same values).

use std::num::NonZeroU32;
use std::time::Duration;

use super::{Delivery, Rate};

pub(crate) const SERVER_MAX_BODY_BYTES: u64 = 64 * KIB;
/// The largest `server.max_body_bytes` accepted. Dropbox notifications are a few hundred bytes;
/// the cap bounds what one request makes the store and its journal write.
pub(crate) const SERVER_MAX_BODY_BYTES_LIMIT: u64 = 96 * KIB;
pub(crate) const SERVER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const STORAGE_MAX_BYTES: u64 = 10 * GIB;
pub(crate) const STORAGE_CACHE_BYTES: u64 = 32 * MIB;
pub(crate) const DROPBOX_API_URL: &str = "https://api.dropboxapi.com";
pub(crate) const DROPBOX_CONTENT_URL: &str = "https://content.dropboxapi.com";
pub(crate) const DROPBOX_NOTIFY_URL: &str = "https://notify.dropboxapi.com";
/// The largest value of any duration key (`event.poller.refresh_interval` included): a year.
/// Bigger values are refused by name, so that nothing computed from one (a due time, an
/// `Instant`) can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * DAY);
/// How [`MAX_DURATION`] is written in problem messages.
pub(crate) const MAX_DURATION_TEXT: &str = "365d";
/// The largest value of any size key: 1 TiB.
pub(crate) const MAX_SIZE: u64 = 1024 * GIB;
/// How [`MAX_SIZE`] is written in problem messages.
pub(crate) const MAX_SIZE_TEXT: &str = "1024GiB";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

impl Default for Delivery {
    /// The `[delivery]` defaults.
    fn default() -> Self {
        Delivery {
            timeout: Duration::from_secs(10),
            rate_limit: Rate {
                count: NonZeroU32::MIN.saturating_add(99),
                per: Duration::from_secs(1),
            },
            rate_limit_burst: NonZeroU32::MIN.saturating_add(9),
            concurrency: NonZeroU32::MIN.saturating_add(31),
            retry_initial: Duration::from_secs(4),
            retry_multiplier: 4.0,
            retry_max_interval: Duration::from_secs(24 * HOUR),
            max_attempts: 10,
            max_age: Duration::from_secs(73 * HOUR),
            dead_letter_ttl: Duration::from_secs(30 * DAY),
            max_queued_bytes: GIB,
            coalesce: true,
            allow_private_destinations: false,
            paused: false,
            proxy: None,
            history: Duration::from_secs(7 * DAY),
            history_max_bytes: 256 * MIB,
            headers: Default::default(),
            client_identity: None,
            extra_roots: None,
            outage_after: Duration::from_secs(10 * 60),
            probe_interval: Duration::from_secs(60),
        }
    }
}
