//! `[alerts]`: off without `url`, defaults, every type by default, unknown types and formats
//! refused by key, the signature key kept secret, and the `[delivery]` settings alerts follow.

use super::{MINIMAL, problems, valid};
use crate::config::{AlertFormat, AlertType};

fn with_alerts(lines: &str) -> String {
    format!("{MINIMAL}[delivery]\nmax_attempts = 3\n[alerts]\n{lines}\n")
}

#[test]
fn alerts_are_off_without_a_url_and_default_to_json_and_every_type() {
    assert_eq!(valid(MINIMAL).alerts, None);
    assert_eq!(valid(&with_alerts("format = \"slack\"")).alerts, None);
    let config = valid(&with_alerts(
        "url = \"https://chat.internal/hooks/1\"\nsignature_key = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"",
    ));
    let alerts = config.alerts.unwrap_or_else(|| panic!("alerts are on"));
    assert_eq!(alerts.url.as_str(), "https://chat.internal/hooks/1");
    assert_eq!(alerts.format, AlertFormat::Json);
    assert_eq!(alerts.on, AlertType::ALL.to_vec());
    assert_eq!(alerts.proxy, None);
    assert_eq!(alerts.delivery.max_attempts, 3, "the [delivery] settings");
    assert!(
        !format!("{alerts:?}").contains("whsec_"),
        "the key is never shown"
    );
}

#[test]
fn bad_alert_keys_are_refused_by_name() {
    let text = with_alerts(
        "url = \"ftp://chat.internal\"\nformat = \"xml\"\non = [\"dead_letter\", \"fire\", \"dead_letter\"]\nproxy = \"nope\"\nsignature_key = \"\"\nextra = 1",
    );
    let shown: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "alerts.extra: unknown field `extra`, expected one of `url`, `format`, `signature_key`, `on`, `proxy`",
            "alerts.url: must be an http or https URL (got \"ftp://chat.internal\")",
            "alerts.format: must be \"json\" or \"slack\" (got \"xml\")",
            "alerts.signature_key: must not be empty",
            "alerts.on[1]: unknown alert type; expected one of dead_letter, outage, recovered, needs_authorize, store_full (got \"fire\")",
            "alerts.on[2]: is listed twice (got \"dead_letter\")",
            "alerts.proxy: must be an http or https URL (got \"nope\")",
        ]
    );
}

#[test]
fn a_subset_of_types_is_kept_in_order() {
    let config = valid(&with_alerts(
        "url = \"http://10.0.0.5/hook\"\nformat = \"slack\"\non = [\"store_full\", \"outage\"]\nproxy = \"http://proxy.internal:3128\"",
    ));
    let alerts = config.alerts.unwrap_or_else(|| panic!("alerts are on"));
    assert_eq!(alerts.format, AlertFormat::Slack);
    assert_eq!(alerts.on, vec![AlertType::StoreFull, AlertType::Outage]);
    assert_eq!(
        alerts.proxy.map(|p| p.to_string()),
        Some("http://proxy.internal:3128/".into())
    );
}
