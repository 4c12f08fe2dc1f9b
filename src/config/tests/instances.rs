//! `[[instance]]`: per-instance problems, the rules across instances, delivery overrides,
//! account matching.

use std::time::Duration;

use super::{MINIMAL, instance, instance_with, only_problem, problem_keys, problems, valid};

const ACCOUNT: &str = "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc";

#[test]
fn several_problems_are_all_reported_with_exact_keys() {
    let text = format!(
        r#"
[server]
listen = "nowhere"
[admin]
listen = "127.0.0.1:9464"
[storage]
path = "./data"
max_bytes = 0
[delivery]
retry_multiplier = 0.5
{}{}{}"#,
        instance_with("ok-1", 1, "tags = [\"a\"]", ""),
        instance_with(
            "bad name",
            2,
            "accounts = [\"dbid:x\"]",
            "\"event.notification.enabled\" = true"
        ),
        instance_with(
            "c",
            3,
            "",
            "\"event.notification.callback.url\" = \"ftp://x\"\n\"oauth.callback.url\" = \"https://u:p@example.com/\""
        ),
    );
    assert_eq!(
        problem_keys(&text),
        [
            "server.listen",
            "storage.max_bytes",
            "delivery.retry_multiplier",
            "instance[1].name",
            "instance[1].accounts[0]",
            "instance[1].configuration.\"event.notification.callback.url\"",
            "instance[2].configuration.\"oauth.callback.url\"",
            "instance[2].configuration.\"event.notification.callback.url\"",
        ]
    );
    let rendered: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered[7],
        "instance[2].configuration.\"event.notification.callback.url\": must be an http or https URL (got \"ftp://x\")"
    );
    assert_eq!(
        rendered[6],
        "instance[2].configuration.\"oauth.callback.url\": must not contain a username or password"
    );
}

#[test]
fn an_unknown_key_in_one_instance_and_a_bad_value_in_another_are_both_reported() {
    let text = format!(
        "{MINIMAL}{}{}",
        instance_with("a", 1, "events = \"everything\"", ""),
        instance_with("b", 2, "colour = \"red\"", ""),
    );
    let found = problems(&text);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["instance[0].events", "instance[1].colour"]);
    assert_eq!(found[0].rule, "must be \"notify\" or \"changes\"");
    assert!(
        found[1]
            .rule
            .starts_with("unknown field `colour`, expected one of `name`, `id`"),
        "{}",
        found[1]
    );
}

#[test]
fn duplicate_names_and_ids_are_reported_on_the_later_instance() {
    let text = format!(
        "{MINIMAL}{}{}{}",
        instance("a", 1),
        instance("b", 1),
        instance("a", 2)
    );
    let found = problems(&text);
    let described: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        described,
        [
            "instance[1].id: duplicate id; also used by instance[0] (got 1)",
            "instance[2].name: duplicate name; also used by instance[0] (got \"a\")"
        ]
    );
}

#[test]
fn ids_names_and_elements_are_checked() {
    let text = format!(
        "{MINIMAL}{}{}",
        instance_with("a", 0, "", "").replace("\"dropbox\"", "\"box\""),
        instance(&"n".repeat(65), 2),
    );
    let found = problems(&text);
    let described: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.key.as_str(), p.rule.as_str()))
        .collect();
    assert_eq!(
        described,
        [
            ("instance[0].id", "must be an integer of at least 1"),
            (
                "instance[0].element",
                "unsupported element; expected \"dropbox\""
            ),
            (
                "instance[1].name",
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            ),
        ]
    );
}

#[test]
fn accounts_must_be_dropbox_ids_listed_once() {
    let accounts = format!(
        "accounts = [\"{ACCOUNT}\", \"dbid:short\", \"{ACCOUNT}\", \"{}\"]",
        ACCOUNT.replace('-', "!")
    );
    let found = problems(&format!(
        "{MINIMAL}{}",
        instance_with("a", 1, &accounts, "")
    ));
    let described: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.key.as_str(), p.rule.as_str()))
        .collect();
    let format_rule = "must be \"dbid:\" followed by 35 characters of A-Z, a-z, 0-9, '_' or '-'";
    assert_eq!(
        described,
        [
            ("instance[0].accounts[1]", format_rule),
            ("instance[0].accounts[2]", "duplicate account"),
            ("instance[0].accounts[3]", format_rule),
        ]
    );
    let empty = only_problem(&format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "accounts = []", "")
    ));
    assert_eq!(empty.key, "instance[0].accounts");
}

#[test]
fn accounts_decide_which_notifications_match() {
    let text = format!(
        "{MINIMAL}{}{}",
        instance_with("some", 1, &format!("accounts = [\"{ACCOUNT}\"]"), ""),
        instance("all", 2)
    );
    let config = valid(&text);
    let some = config.instance("some").expect("instance some");
    assert!(some.matches_account(ACCOUNT));
    assert!(!some.matches_account("dbid:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    assert!(
        config
            .instance("all")
            .expect("instance all")
            .matches_account("dbid:anything")
    );
    assert!(config.instance("none").is_none());
}

#[test]
fn instance_delivery_overrides_the_defaults_key_by_key() {
    let text = format!(
        "{MINIMAL}[delivery]\ntimeout = \"5s\"\nmax_attempts = 3\n{}{}",
        instance_with(
            "a",
            1,
            "[instance.delivery]\nrate_limit = \"10/m\"\nmax_attempts = 1\npaused = true",
            ""
        ),
        instance("b", 2),
    );
    let config = valid(&text);
    let (a, b) = (&config.instances[0].delivery, &config.instances[1].delivery);
    assert_eq!(
        (a.timeout, b.timeout),
        (Duration::from_secs(5), Duration::from_secs(5))
    );
    assert_eq!((a.max_attempts, b.max_attempts), (1, 3));
    assert_eq!(
        (a.rate_limit.count.get(), a.rate_limit.per),
        (10, Duration::from_secs(60))
    );
    assert_eq!(b.rate_limit.count.get(), 100);
    assert!(a.paused && !b.paused);
    let bad = only_problem(&format!(
        "{MINIMAL}{}",
        instance_with("a", 1, "[instance.delivery]\nretries = 2", "")
    ));
    assert_eq!(bad.key, "instance[0].delivery.retries");
}

#[test]
fn instances_sharing_an_app_key_must_share_its_secret() {
    let other_secret = instance("b", 2).replace("\"app-secret\"", "\"other-secret\"");
    let problem = only_problem(&format!("{MINIMAL}{}{}", instance("a", 1), other_secret));
    assert_eq!(
        problem.key,
        "instance[1].configuration.\"oauth.api.secret\""
    );
    assert_eq!(
        problem.rule,
        "instances sharing oauth.api.key must share oauth.api.secret"
    );
    assert_eq!(problem.value, None);
    let same_secret = format!("{MINIMAL}{}{}", instance("a", 1), instance("b", 2));
    assert_eq!(valid(&same_secret).instances.len(), 2);
}
