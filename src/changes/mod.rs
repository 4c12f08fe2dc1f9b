//! Change events (docs/change-events.md): a notification for a change-events instance becomes a
//! durable "walk pending" marker; the [`walker`] walks the pair's Dropbox cursor with [`api`],
//! turns the entries into per-object events with [`mapping`], and commits each page (cursor, object
//! maps, envelopes) in one batch. Envelopes of a pair are delivered first-in-first-out, one in
//! flight, by the store's per-pair queue and the instance's lane. [`authorize`] obtains the
//! credentials.

pub mod api;
pub mod authorize;
pub mod mapping;
pub mod walker;

pub use walker::{POLL_INTERVAL_ENV, Walker};
