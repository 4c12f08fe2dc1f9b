//! Value rules outside instances (addresses, sizes, delivery numbers, URLs) and secrecy.

use super::{MINIMAL, instance_with, load, only_problem, problem_keys, problems, valid};

fn with_delivery(lines: &str) -> String {
    format!("{MINIMAL}[delivery]\n{lines}\n")
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let open = MINIMAL.replace("127.0.0.1:9464", "0.0.0.0:9464");
    let problem = only_problem(&open);
    assert_eq!(
        problem.to_string(),
        "admin.listen: a non-loopback address requires admin.token (got \"0.0.0.0:9464\")"
    );
    let with_token = open.replace("[admin]", "[admin]\ntoken = \"s3cret-token\"");
    assert!(valid(&with_token).admin.token.is_some());
    assert!(load(&MINIMAL.replace("127.0.0.1:9464", "[::1]:9464")).is_ok());
}

#[test]
fn durations_over_a_year_and_sizes_over_a_tebibyte_are_rejected() {
    let text = with_delivery(
        "timeout = \"366d\"\nmax_age = \"365d1ms\"\nretry_max_interval = \"18446744073709551615ms\"\nmax_queued_bytes = 1099511627777\ndead_letter_ttl = \"1025GiB\"",
    )
    .replace("[storage]", "[storage]\nmax_bytes = \"1025GiB\"");
    let found = problems(&text);
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "storage.max_bytes: must be at most 1024GiB (got \"1025GiB\")",
            "delivery.timeout: must be at most 365d (got \"366d\")",
            "delivery.retry_max_interval: must be at most 365d (got \"18446744073709551615ms\")",
            "delivery.max_age: must be at most 365d (got \"365d1ms\")",
            "delivery.dead_letter_ttl: expected a duration: digits followed by a unit (ms, s, m, h or d), repeatable, such as \"250ms\", \"10s\" or \"1h30m\" (got \"1025GiB\")",
            "delivery.max_queued_bytes: must be at most 1024GiB (got 1099511627777)",
        ]
    );
    let at_the_caps = with_delivery(
        "timeout = \"365d\"\nretry_max_interval = \"8760h\"\nmax_queued_bytes = 1099511627776",
    )
    .replace("[storage]", "[storage]\nmax_bytes = \"1024GiB\"");
    assert_eq!(valid(&at_the_caps).storage.max_bytes, 1 << 40);
}

#[test]
fn zero_rates_counts_and_sizes_are_rejected() {
    let text = with_delivery(
        "rate_limit = \"0/s\"\nrate_limit_burst = 0\nconcurrency = -1\nmax_attempts = 0\nmax_queued_bytes = \"0KiB\"",
    );
    let found = problems(&text);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "delivery.rate_limit",
            "delivery.rate_limit_burst",
            "delivery.concurrency",
            "delivery.max_attempts",
            "delivery.max_queued_bytes"
        ]
    );
    assert_eq!(
        found[0].to_string(),
        "delivery.rate_limit: count must be at least 1; expected a rate: a count, \"/\" and a period (s, m or h), such as \"100/s\" (got \"0/s\")"
    );
    assert_eq!(
        found[1].to_string(),
        "delivery.rate_limit_burst: must be an integer from 1 to 4294967295 (got 0)"
    );
    assert_eq!(
        found[4].to_string(),
        "delivery.max_queued_bytes: must be greater than 0 (got \"0KiB\")"
    );
}

#[test]
fn durations_must_be_positive_and_retries_ordered() {
    let zero = only_problem(&with_delivery("timeout = \"0s\""));
    assert_eq!(
        zero.to_string(),
        "delivery.timeout: must be greater than 0 (got \"0s\")"
    );
    let order = only_problem(&with_delivery(
        "retry_initial = \"2h\"\nretry_max_interval = \"1h\"",
    ));
    assert_eq!(
        order.to_string(),
        "delivery.retry_max_interval: must be at least retry_initial (7200s) (got 3600s)"
    );
    let multiplier = only_problem(&with_delivery("retry_multiplier = nan"));
    assert_eq!(multiplier.key, "delivery.retry_multiplier");
    assert_eq!(
        valid(&with_delivery("retry_multiplier = 1"))
            .instances
            .len(),
        0
    );
}

#[test]
fn outage_keys_default_turn_off_override_and_are_checked_by_name() {
    use std::time::Duration;
    let with_instance = |delivery: &str, own: &str| {
        let instance = instance_with("a", 1, "", &format!("[instance.delivery]\n{own}"));
        format!("{}{instance}", with_delivery(delivery))
    };
    let defaults = valid(&with_instance("", "")).instances[0].delivery.clone();
    assert_eq!(defaults.outage_after, Duration::from_secs(600));
    assert_eq!(defaults.probe_interval, Duration::from_secs(60));
    let text = with_instance(
        "outage_after = \"0s\"\nprobe_interval = \"5s\"",
        "probe_interval = \"2s\"",
    );
    let delivery = valid(&text).instances[0].delivery.clone();
    assert_eq!(delivery.outage_after, Duration::ZERO, "0s turns it off");
    assert_eq!(delivery.probe_interval, Duration::from_secs(2));
    let found = problems(&with_delivery(
        "outage_after = \"366d\"\nprobe_interval = \"0s\"",
    ));
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "delivery.outage_after: must be at most 365d (got \"366d\")",
            "delivery.probe_interval: must be greater than 0 (got \"0s\")",
        ]
    );
    let soon = only_problem(&with_instance("", "outage_after = \"soon\""));
    assert_eq!(soon.key, "instance[0].delivery.outage_after");
}

#[test]
fn sizes_accept_integers_and_strings_within_limits() {
    let config = valid(&MINIMAL.replace("[server]", "[server]\nmax_body_bytes = 1024"));
    assert_eq!(config.server.max_body_bytes, 1024);
    let too_big =
        only_problem(&MINIMAL.replace("[server]", "[server]\nmax_body_bytes = \"97KiB\""));
    assert_eq!(
        too_big.to_string(),
        "server.max_body_bytes: must be at most 96KiB (larger records would reach sled's unsynced blob files) (got 99328)"
    );
    let negative = only_problem(&MINIMAL.replace("[storage]", "[storage]\ncache_bytes = -5"));
    assert_eq!(
        negative.to_string(),
        "storage.cache_bytes: must be greater than 0 (got -5)"
    );
}

#[test]
fn urls_must_be_http_or_https_with_a_host() {
    let text = format!(
        "{MINIMAL}[dropbox]\napi_url = \"mailto:x@example.com\"\nnotify_url = \"not a url\"\n[delivery]\nproxy = \"socks5://p:1080\""
    );
    assert_eq!(
        problem_keys(&text),
        ["delivery.proxy", "dropbox.api_url", "dropbox.notify_url"]
    );
    let config = valid(&format!(
        "{MINIMAL}[dropbox]\napi_url = \"http://127.0.0.1:3000\"\n"
    ));
    assert_eq!(config.dropbox.api_url.as_str(), "http://127.0.0.1:3000/");
}

#[test]
fn whsec_keys_must_carry_base64_of_1_to_64_bytes() {
    for key in [
        "whsec_",
        "whsec_not base64!",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7o",
        &format!("whsec_{}", "QUFB".repeat(22)),
    ] {
        let text = format!(
            "{MINIMAL}{}",
            instance_with(
                "a",
                1,
                "",
                &format!("\"event.notification.signature.key\" = \"{key}\"")
            )
        );
        let problem = only_problem(&text);
        assert_eq!(
            problem.key,
            "instance[0].configuration.\"event.notification.signature.key\""
        );
        assert_eq!(
            problem.rule,
            "a whsec_ key must be followed by standard base64 of 1 to 64 bytes"
        );
        assert_eq!(problem.value, None);
    }
    let plain = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "\"event.notification.signature.key\" = \"any-utf8-key\""
        )
    );
    assert!(valid(&plain).instances[0].signature_key.is_some());
}

#[test]
fn a_previous_key_needs_a_current_key() {
    let text = format!(
        "{MINIMAL}{}",
        instance_with(
            "a",
            1,
            "",
            "\"event.notification.signature.previous_key\" = \"old\""
        )
    );
    let problem = only_problem(&text);
    assert_eq!(
        problem.key,
        "instance[0].configuration.\"event.notification.signature.previous_key\""
    );
}

#[test]
fn secret_values_never_appear_in_problems_or_debug() {
    let text = format!(
        "{}{}",
        MINIMAL.replace("[admin]", "[admin]\ntoken = 987654321"),
        instance_with(
            "a",
            1,
            "",
            "\"oauth.refresh_token\" = 123456789\n\"event.notification.signature.key\" = \"\""
        )
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:#?}");
    let rendered = format!(
        "{found:?} {}",
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !rendered.contains("987654321") && !rendered.contains("123456789"),
        "{rendered}"
    );

    let secrets = format!(
        "{}{}",
        MINIMAL.replace("[admin]", "[admin]\ntoken = \"admin-token-value\""),
        instance_with(
            "a",
            1,
            "events = \"changes\"",
            "\"oauth.refresh_token\" = \"refresh-token-value\"\n\"event.notification.signature.key\" = \"signature-key-value\"\n\"event.notification.signature.previous_key\" = \"previous-key-value\"",
        )
        .replace("\"app-secret\"", "\"app-secret-value\""),
    );
    let debug = format!("{:?}", valid(&secrets));
    for secret in [
        "admin-token-value",
        "refresh-token-value",
        "signature-key-value",
        "previous-key-value",
        "app-secret-value",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("***"));
}

#[test]
fn type_errors_use_toml_words() {
    let text = with_delivery("retry_multiplier = \"4\"\nmax_attempts = \"10\"")
        .replace("[server]", "instance = { name = \"x\" }\n[server]");
    let rules: Vec<String> = problems(&text)
        .into_iter()
        .map(|problem| format!("{}: {}", problem.key, problem.rule))
        .collect();
    assert_eq!(
        rules,
        [
            "instance: invalid type: map, expected an array",
            "delivery.max_attempts: invalid type: string \"10\", expected an integer",
            "delivery.retry_multiplier: invalid type: string \"4\", expected a number",
        ]
    );
}
