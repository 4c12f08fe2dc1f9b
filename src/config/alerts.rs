//! The `[alerts]` table: where operator alerts go, in which format, signed with which key, for
//! which types, through which proxy.

use super::check::{Checker, Reported};
use super::problem::quoted;
use super::raw::RawAlerts;
use super::{AlertFormat, AlertType, Alerts, Delivery};

/// `[alerts]` over the `[delivery]` settings alerts share (retries, rate limit, timeout).
/// `None` when no `url` is set: alerts are off, and the other keys are still checked.
pub(crate) fn check(
    c: &mut Checker,
    raw: &RawAlerts,
    delivery: &Delivery,
) -> Result<Option<Alerts>, Reported> {
    let url = c.url(raw.url.as_ref(), "alerts.url");
    let format = c.parsed(raw.format.as_ref(), "alerts.format", |text| match text {
        "json" => Ok(AlertFormat::Json),
        "slack" => Ok(AlertFormat::Slack),
        _ => Err("must be \"json\" or \"slack\"".to_owned()),
    });
    let signature_key = c.secret(raw.signature_key.as_ref(), "alerts.signature_key");
    let on = types(c, raw);
    let proxy = c.url(raw.proxy.as_ref(), "alerts.proxy");
    let (url, format, signature_key, on, proxy) = (url?, format?, signature_key?, on?, proxy?);
    Ok(url.map(|url| Alerts {
        url,
        format: format.unwrap_or(AlertFormat::Json),
        signature_key,
        on,
        proxy,
        delivery: delivery.clone(),
    }))
}

/// `alerts.on`: a subset of the alert types, each at most once; every type when absent.
fn types(c: &mut Checker, raw: &RawAlerts) -> Result<Vec<AlertType>, Reported> {
    let Some(names) = &raw.on else {
        return Ok(AlertType::ALL.to_vec());
    };
    let mut on = Vec::with_capacity(names.len());
    let mut failed = None;
    for (index, name) in names.iter().enumerate() {
        let key = format!("alerts.on[{index}]");
        let Ok(Some(name)) = c.text(Some(name), &key) else {
            failed = Some(Reported);
            continue;
        };
        match AlertType::ALL.iter().find(|t| t.name() == name) {
            Some(kind) if on.contains(kind) => {
                failed = Some(c.report(&key, "is listed twice", Some(quoted(&name))));
            }
            Some(kind) => on.push(*kind),
            None => {
                let known: Vec<&str> = AlertType::ALL.iter().map(|t| t.name()).collect();
                let rule = format!("unknown alert type; expected one of {}", known.join(", "));
                failed = Some(c.report(&key, rule, Some(quoted(&name))));
            }
        }
    }
    match failed {
        Some(reported) => Err(reported),
        None => Ok(on),
    }
}
