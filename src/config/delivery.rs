//! A `[delivery]` table, the shared one or an instance's, checked over the settings it
//! overrides.

use std::time::Duration;

use super::check::{Checker, Reported};
use super::problem::child;
use super::raw::{RawDelivery, RawText};
use super::{Delivery, callback_tls, grammar, headers};

/// `raw` (the table at key path `path`) over `base`: `[delivery]` over the defaults
/// ([`Delivery::default`]), or `[instance.delivery]` over `[delivery]`.
pub(crate) fn check(
    c: &mut Checker,
    raw: &RawDelivery,
    path: &str,
    base: &Delivery,
) -> Result<Delivery, Reported> {
    let key = |name: &str| child(path, name);
    let timeout = c.duration(raw.timeout.as_ref(), &key("timeout"), base.timeout);
    let rate_limit = c
        .parsed(
            raw.rate_limit.as_ref(),
            &key("rate_limit"),
            grammar::parse_rate,
        )
        .map(|rate| rate.unwrap_or(base.rate_limit));
    let rate_limit_burst = c.non_zero_u32(
        raw.rate_limit_burst,
        &key("rate_limit_burst"),
        base.rate_limit_burst,
    );
    let concurrency = c.non_zero_u32(raw.concurrency, &key("concurrency"), base.concurrency);
    let retry_initial = c.duration(
        raw.retry_initial.as_ref(),
        &key("retry_initial"),
        base.retry_initial,
    );
    let retry_multiplier = multiplier(c, raw.retry_multiplier, &key("retry_multiplier"), base);
    let retry_max_interval = c.duration(
        raw.retry_max_interval.as_ref(),
        &key("retry_max_interval"),
        base.retry_max_interval,
    );
    let max_attempts = c.positive_u32(raw.max_attempts, &key("max_attempts"), base.max_attempts);
    let max_age = c.duration(raw.max_age.as_ref(), &key("max_age"), base.max_age);
    let dead_letter_ttl = c.duration(
        raw.dead_letter_ttl.as_ref(),
        &key("dead_letter_ttl"),
        base.dead_letter_ttl,
    );
    let max_queued_bytes = c.size(
        raw.max_queued_bytes.as_ref(),
        &key("max_queued_bytes"),
        base.max_queued_bytes,
    );
    let history = history_duration(c, raw.history.as_ref(), &key("history"), base.history);
    let history_max_bytes = c.size(
        raw.history_max_bytes.as_ref(),
        &key("history_max_bytes"),
        base.history_max_bytes,
    );
    let outage_after = c.duration_or_off(
        raw.outage_after.as_ref(),
        &key("outage_after"),
        base.outage_after,
    );
    let probe_interval = c.duration(
        raw.probe_interval.as_ref(),
        &key("probe_interval"),
        base.probe_interval,
    );
    let proxy = c
        .url(raw.proxy.as_ref(), &key("proxy"))
        .map(|proxy| proxy.or_else(|| base.proxy.clone()));
    let headers = headers::check(c, raw.headers.as_ref(), &key("headers"), &base.headers);
    let client_identity = callback_tls::identity(c, raw, path, base.client_identity.as_ref());
    let extra_roots = callback_tls::roots(c, raw, path, base.extra_roots.as_ref());
    let retry_max_interval = retry_interval_order(
        c,
        retry_initial?,
        retry_max_interval?,
        &key("retry_max_interval"),
    );
    Ok(Delivery {
        timeout: timeout?,
        rate_limit: rate_limit?,
        rate_limit_burst: rate_limit_burst?,
        concurrency: concurrency?,
        retry_initial: retry_initial?,
        retry_multiplier: retry_multiplier?,
        retry_max_interval: retry_max_interval?,
        max_attempts: max_attempts?,
        max_age: max_age?,
        dead_letter_ttl: dead_letter_ttl?,
        max_queued_bytes: max_queued_bytes?,
        coalesce: raw.coalesce.unwrap_or(base.coalesce),
        allow_private_destinations: raw
            .allow_private_destinations
            .unwrap_or(base.allow_private_destinations),
        paused: raw.paused.unwrap_or(base.paused),
        proxy: proxy?,
        history: history?,
        history_max_bytes: history_max_bytes?,
        headers: headers?,
        client_identity: client_identity?,
        extra_roots: extra_roots?,
        outage_after: outage_after?,
        probe_interval: probe_interval?,
    })
}

/// `history`: a duration, where `"0s"` turns the history off; at most 365 days.
fn history_duration(
    c: &mut Checker,
    raw: Option<&RawText>,
    key: &str,
    default: Duration,
) -> Result<Duration, Reported> {
    const MAX: Duration = Duration::from_secs(365 * 86_400);
    let parsed = c.parsed(raw, key, |text| match grammar::parse_duration(text)? {
        duration if duration > MAX => Err("must be at most 365d".to_owned()),
        duration => Ok(duration),
    })?;
    Ok(parsed.unwrap_or(default))
}

fn multiplier(
    c: &mut Checker,
    raw: Option<f64>,
    key: &str,
    base: &Delivery,
) -> Result<f64, Reported> {
    match raw {
        None => Ok(base.retry_multiplier),
        Some(value) if value.is_finite() && value >= 1.0 => Ok(value),
        Some(value) => Err(c.report(
            key,
            "must be a finite number of at least 1.0",
            Some(value.to_string()),
        )),
    }
}

/// `retry_max_interval` must not be below `retry_initial`.
fn retry_interval_order(
    c: &mut Checker,
    initial: Duration,
    max: Duration,
    key: &str,
) -> Result<Duration, Reported> {
    if max >= initial {
        return Ok(max);
    }
    let rule = format!("must be at least retry_initial ({initial:?})");
    Err(c.report(key, rule, Some(format!("{max:?}"))))
}
