//! `paths` and `event_types`: change events only, checked entry by entry, each problem naming
//! its key.

use super::{MINIMAL, instance_with, only_problem, problems, valid};
use crate::config::ChangeType;

/// A change-events instance with `own` among its keys.
fn changes_instance(own: &str) -> String {
    instance_with(
        "files",
        1,
        &format!("events = \"changes\"\n{own}"),
        "\"oauth.refresh_token\" = \"rt\"",
    )
}

#[test]
fn filters_are_read_onto_the_instance() {
    let config = valid(&format!(
        "{MINIMAL}{}",
        changes_instance(
            "paths = [\"/Invoices/**\", \"/reports/*.pdf\"]\nevent_types = [\"CREATED\", \"DELETED\"]"
        )
    ));
    let filter = &config.instance("files").expect("instance files").filter;
    let paths: Vec<String> = filter
        .paths
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(paths, ["/Invoices/**", "/reports/*.pdf"]);
    assert_eq!(
        filter.event_types,
        Some(vec![ChangeType::Created, ChangeType::Deleted])
    );
    assert!(filter.keeps("CREATED", &["/invoices/a.pdf"]));
    assert!(!filter.keeps("UPDATED", &["/invoices/a.pdf"]));

    let unfiltered = valid(&format!("{MINIMAL}{}", changes_instance("")));
    assert!(unfiltered.instances[0].filter.keeps_all());
}

#[test]
fn bad_globs_and_event_types_are_refused_by_key() {
    let found = problems(&format!(
        "{MINIMAL}{}",
        changes_instance(
            "paths = [\"/ok/**\", \"invoices/**\", \"/a**\"]\nevent_types = [\"CREATED\", \"MOVED\"]"
        )
    ));
    let described: Vec<(&str, Option<&str>)> = found
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_deref()))
        .collect();
    assert_eq!(
        described,
        [
            ("instance[0].paths[1]", Some("\"invoices/**\"")),
            ("instance[0].paths[2]", Some("\"/a**\"")),
            ("instance[0].event_types[1]", Some("\"MOVED\"")),
        ],
        "{found:#?}"
    );
    assert!(found[0].rule.contains("must start with \"/\""));
    assert!(
        found[2]
            .rule
            .contains("\"CREATED\", \"UPDATED\", \"DELETED\"")
    );

    for (own, key) in [
        ("paths = []", "instance[0].paths"),
        ("event_types = []", "instance[0].event_types"),
    ] {
        let problem = only_problem(&format!("{MINIMAL}{}", changes_instance(own)));
        assert_eq!(problem.key, key);
        assert!(problem.rule.contains("at least one"), "{problem}");
    }
}

#[test]
fn filters_on_a_notify_instance_are_refused_naming_the_key() {
    let found = problems(&format!(
        "{MINIMAL}{}",
        instance_with(
            "plain",
            1,
            "paths = [\"/x/**\"]\nevent_types = [\"CREATED\"]",
            ""
        )
    ));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["instance[0].paths", "instance[0].event_types"]);
    assert!(
        found[0].rule.contains("events = \"changes\""),
        "{}",
        found[0]
    );
}
