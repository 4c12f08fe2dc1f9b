//! `[instance.configuration]`: quoted and dotted keys, unknown keys, and the rules between
//! the Cloud Elements keys (notification, change events, polling).

use std::time::Duration;

use super::{MINIMAL, instance_with, only_problem, problems, valid};
use crate::config::document::read_configuration;
use crate::config::keys::KNOWN_KEYS;
use crate::config::{EventsMode, VendorType};

#[test]
fn dotted_and_quoted_configuration_keys_give_equal_configs() {
    let quoted = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "\"event.notification.enabled\" = true\n\"event.notification.callback.url\" = \"https://example.com/h\"\n\"event.notification.signature.key\" = \"k\"",
        )
    );
    let dotted = format!(
        r#"{MINIMAL}
[[instance]]
name = "a"
id = 1
element = "dropbox"
[instance.configuration]
oauth.api.key = "app-key"
oauth.api.secret = "app-secret"
event.notification.enabled = true
event.notification.callback.url = "https://example.com/h"
event.notification.signature.key = "k"
"#
    );
    let (quoted, dotted) = (valid(&quoted), valid(&dotted));
    assert!(quoted.instances[0].enabled);
    assert_eq!(quoted, dotted);
}

#[test]
fn a_key_given_both_ways_and_unknown_keys_are_problems() {
    let text = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "oauth.api.key = \"other\"\n\"filemanagement.provider\" = \"x\"\nevent.vendor.kind = 1"
        )
    );
    let found = problems(&text);
    let described: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.key.as_str(), p.rule.as_str()))
        .collect();
    assert_eq!(
        described,
        [
            (
                "instance[0].configuration.\"event.vendor.kind\"",
                "unknown configuration key"
            ),
            (
                "instance[0].configuration.\"filemanagement.provider\"",
                "unknown configuration key"
            ),
            (
                "instance[0].configuration.\"oauth.api.key\"",
                "given twice (quoted and as dotted keys)"
            ),
        ]
    );
}

#[test]
fn enabled_without_a_callback_url_is_a_problem() {
    let text = format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "", "event.notification.enabled = true")
    );
    let problem = only_problem(&text);
    assert_eq!(
        problem.key,
        "instance[0].configuration.\"event.notification.callback.url\""
    );
    assert_eq!(
        problem.rule,
        "is required when \"event.notification.enabled\" is true"
    );
}

#[test]
fn change_events_need_credentials_and_polling_needs_change_events() {
    let changes = only_problem(&format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "events = \"changes\"", "")
    ));
    assert_eq!(changes.key, "instance[0].events");
    let polling = only_problem(&format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "\"event.vendor.type\" = \"polling\"\n\"event.poller.refresh_interval\" = 5"
        )
    ));
    assert_eq!(
        polling.key,
        "instance[0].configuration.\"event.vendor.type\""
    );
    let no_interval = only_problem(&format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "events = \"changes\"",
            "\"oauth.refresh_token\" = \"t\"\n\"event.vendor.type\" = \"polling\""
        )
    ));
    assert_eq!(
        no_interval.key,
        "instance[0].configuration.\"event.poller.refresh_interval\""
    );
    let config = valid(&format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "events = \"changes\"",
            "\"oauth.refresh_token\" = \"t\"\n\"event.vendor.type\" = \"polling\"\n\"event.poller.refresh_interval\" = \"5\""
        )
    ));
    let instance = &config.instances[0];
    assert_eq!(instance.events, EventsMode::Changes);
    assert_eq!(
        instance.vendor,
        VendorType::Polling {
            interval: Duration::from_secs(300)
        }
    );
}

#[test]
fn refresh_intervals_are_whole_minutes() {
    for bad in [
        "0",
        "\"0\"",
        "\"5m\"",
        "-1",
        "\"\"",
        "525601",
        "\"525601\"",
        "300000000000000000",
        "\"99999999999999999999\"",
    ] {
        let text = format!(
            "{MINIMAL}{}",
            instance_with(
                "a",
                1,
                "",
                &format!("\"event.poller.refresh_interval\" = {bad}")
            )
        );
        let problem = only_problem(&text);
        assert_eq!(
            problem.rule, "must be a whole number of minutes, from 1 to 525600 (365d)",
            "{bad}"
        );
    }
    let a_year = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "events = \"changes\"",
            "\"oauth.refresh_token\" = \"t\"\n\"event.vendor.type\" = \"polling\"\n\"event.poller.refresh_interval\" = 525600"
        )
    );
    assert_eq!(
        valid(&a_year).instances[0].vendor,
        VendorType::Polling {
            interval: Duration::from_secs(365 * 86_400)
        }
    );
}

#[test]
fn every_known_configuration_key_decodes() {
    let mut table = toml::Table::new();
    for name in KNOWN_KEYS {
        let value = match name {
            "event.notification.enabled" => toml::Value::Boolean(true),
            "event.poller.refresh_interval" => toml::Value::Integer(5),
            _ => toml::Value::String("x".to_owned()),
        };
        table.insert(name.to_owned(), value);
    }
    let mut found = Vec::new();
    let raw = read_configuration(table, "instance[0].configuration", &mut found);
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(raw.enabled, Some(true));
    assert!(raw.previous_signature_key.is_some() && raw.vendor_type.is_some());
}

#[test]
fn a_bad_file_reference_in_the_configuration_names_the_nested_key() {
    let text = format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "", "").replace("\"app-key\"", "{ file = 5 }")
    );
    let problem = only_problem(&text);
    assert_eq!(
        problem.key,
        "instance[0].configuration.\"oauth.api.key\".file"
    );
    assert_eq!(problem.rule, "invalid type: integer `5`, expected a string");
}
