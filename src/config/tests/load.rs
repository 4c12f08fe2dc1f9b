//! Loading as a whole: the example file, defaults, syntax and type errors, how errors render,
//! reload blockers, and `Config::load` from disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    MINIMAL, context, context_in, instance, load, only_problem, problem_keys, problems, valid,
};
use crate::config::{
    Config, ConfigError, Delivery, EventsMode, LoadContext, Problem, Secret, VendorType,
};

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");

fn example() -> (Config, Vec<String>) {
    let ctx = LoadContext::for_file(Path::new(EXAMPLE_PATH)).expect("context for the example");
    let text = std::fs::read_to_string(EXAMPLE_PATH).expect("config.example.toml is readable");
    match Config::from_toml_str(&text, &ctx) {
        Ok(loaded) => (loaded.config, loaded.warnings),
        Err(err) => panic!("config.example.toml must load:\n{err}"),
    }
}

#[test]
fn example_file_loads_without_problems_or_warnings() {
    let (config, warnings) = example();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.source, PathBuf::from(EXAMPLE_PATH));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(config.admin.token, None);
    assert_eq!(
        config.storage.path,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("./data")
    );
}

#[test]
fn example_file_has_the_spec_defaults() {
    let (config, _) = example();
    assert_eq!(config.server.max_body_bytes, 64 * 1024);
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.storage.max_bytes, 10 << 30);
    assert_eq!(config.storage.cache_bytes, 32 << 20);
    assert_eq!(
        config.dropbox.api_url.as_str(),
        "https://api.dropboxapi.com/"
    );
    assert_eq!(
        config.dropbox.content_url.as_str(),
        "https://content.dropboxapi.com/"
    );
    assert_eq!(
        config.dropbox.notify_url.as_str(),
        "https://notify.dropboxapi.com/"
    );
    let instance = config
        .instance("acme-dropbox")
        .expect("the example instance");
    let expected = Delivery {
        allow_private_destinations: true,
        ..Delivery::default()
    };
    assert_eq!(instance.delivery, expected);
    assert_eq!((instance.id, instance.element.as_str()), (4567, "dropbox"));
    assert_eq!(instance.tags, ["dev"]);
    assert_eq!(
        (instance.accounts.clone(), instance.events),
        (None, EventsMode::Notify)
    );
    assert!(instance.enabled);
    assert_eq!(
        instance.callback_url.as_ref().map(|url| url.as_str()),
        Some("http://127.0.0.1:9000/hooks/dropbox")
    );
    assert_eq!(
        instance.signature_key,
        Some(Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"))
    );
    assert_eq!(instance.vendor, VendorType::Webhook);
}

#[test]
fn delivery_defaults_are_the_spec_values() {
    let delivery = Delivery::default();
    assert_eq!(delivery.timeout, Duration::from_secs(10));
    assert_eq!(
        (delivery.rate_limit.count.get(), delivery.rate_limit.per),
        (100, Duration::from_secs(1))
    );
    assert_eq!(
        (delivery.rate_limit_burst.get(), delivery.concurrency.get()),
        (10, 32)
    );
    assert_eq!(
        (delivery.retry_initial, delivery.retry_multiplier),
        (Duration::from_secs(4), 4.0)
    );
    assert_eq!(delivery.retry_max_interval, Duration::from_secs(24 * 3600));
    assert_eq!(delivery.max_attempts, 10);
    assert_eq!(delivery.max_age, Duration::from_secs(73 * 3600));
    assert_eq!(delivery.dead_letter_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(delivery.max_queued_bytes, 1 << 30);
    assert!(delivery.coalesce && !delivery.allow_private_destinations && !delivery.paused);
    assert_eq!(delivery.proxy, None);
}

#[test]
fn minimal_config_takes_every_default() {
    let config = valid(MINIMAL);
    assert_eq!(config.server.max_body_bytes, 64 * 1024);
    assert_eq!(config.storage.path, PathBuf::from("/etc/hookrelay/data"));
    assert!(config.instances.is_empty());
    let with_instance = valid(&format!("{MINIMAL}{}", instance("a", 1)));
    let instance = &with_instance.instances[0];
    assert_eq!(instance.delivery, Delivery::default());
    assert_eq!(
        (instance.enabled, instance.callback_url.clone()),
        (false, None)
    );
    assert_eq!(
        (instance.events, instance.tags.len()),
        (EventsMode::Notify, 0)
    );
}

#[test]
fn missing_required_keys_are_named() {
    let keys = problem_keys("");
    assert_eq!(keys, ["server.listen", "admin.listen", "storage.path"]);
    assert!(
        problems("")
            .iter()
            .all(|problem| problem.rule == "is required")
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let problem = only_problem("[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = \n");
    assert_eq!(problem.key, "line 3, column 18");
    assert!(
        !problem.rule.is_empty() && !problem.rule.contains('\n'),
        "{problem}"
    );
    let duplicate = only_problem("[server]\nlisten = \"a\"\nlisten = \"b\"\n");
    assert!(duplicate.key.starts_with("line 3, column 1"), "{duplicate}");
}

#[test]
fn type_errors_name_the_key() {
    let problem = only_problem(&MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = 8080"));
    assert_eq!(problem.key, "server.listen");
    assert_eq!(
        problem.rule,
        "invalid type: integer `8080`, expected a string or { file = \"PATH\" }"
    );
    let nested = only_problem(&MINIMAL.replace("path = \"./data\"", "path = { file = 5 }"));
    assert_eq!(nested.key, "storage.path.file");
}

#[test]
fn unknown_sections_and_keys_are_named() {
    let text = format!("{MINIMAL}retires = 5\n[logging]\nlevel = \"debug\"\n");
    let text = text.replace("[admin]", "[admin]\nlistne = \"x\"\nport = 1");
    let found = problems(&text);
    let keys: Vec<&str> = found.iter().map(|problem| problem.key.as_str()).collect();
    assert_eq!(
        keys,
        ["logging", "admin.listne", "admin.port", "storage.retires"]
    );
    assert!(
        found[1]
            .rule
            .starts_with("unknown field `listne`, expected `listen` or `token`"),
        "{}",
        found[1]
    );
}

#[test]
fn errors_render_with_file_key_rule_and_value() {
    let ctx = context();
    let text = MINIMAL.replace("\"127.0.0.1:8080\"", "\"localhost\"");
    let err = Config::from_toml_str(&text, &ctx).expect_err("invalid listen");
    let expected = "/etc/hookrelay/config.toml: 1 problem\n/etc/hookrelay/config.toml: server.listen: must be an IP address and port, such as \"127.0.0.1:8080\" or \"[::1]:8080\" (got \"localhost\")";
    assert_eq!(err.to_string(), expected);
    let problem = Problem::new("a.b", "must be x");
    assert_eq!(problem.to_string(), "a.b: must be x");
    let two = Config::from_toml_str("", &ctx).expect_err("empty file");
    assert!(
        two.to_string()
            .starts_with("/etc/hookrelay/config.toml: 3 problems\n"),
        "{two}"
    );
}

#[test]
fn reload_blockers_name_the_changed_fixed_keys() {
    let old = valid(MINIMAL);
    let changed = valid(
        &MINIMAL
            .replace("127.0.0.1:8080", "127.0.0.1:8081")
            .replace("./data", "./other")
            .replace(
                "[storage]",
                "[storage]\ncache_bytes = \"64MiB\"\nmax_bytes = \"1GiB\"",
            ),
    );
    assert_eq!(
        old.reload_blockers(&changed),
        [
            "server.listen",
            "storage.path",
            "storage.max_bytes",
            "storage.cache_bytes"
        ]
    );
    let admin = valid(&MINIMAL.replace("127.0.0.1:9464", "127.0.0.1:9465"));
    assert_eq!(old.reload_blockers(&admin), ["admin.listen"]);
    let reloadable = valid(&format!(
        "{MINIMAL}[delivery]\npaused = true\n{}",
        instance("a", 1)
    ));
    assert!(old.reload_blockers(&reloadable).is_empty());
}

#[test]
fn load_reads_the_file_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hookrelay.toml");
    std::fs::write(&file, MINIMAL).expect("write config");
    let loaded = Config::load(&file).expect("valid file");
    assert_eq!(loaded.config.source, file);
    assert_eq!(loaded.config.storage.path, dir.path().join("./data"));
    let missing = dir.path().join("missing.toml");
    match Config::load(&missing) {
        Err(ConfigError::Read { file, .. }) => assert_eq!(file, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn for_file_makes_the_path_absolute() {
    let ctx = LoadContext::for_file(Path::new("some/dir/config.toml")).expect("context");
    assert!(ctx.file.is_absolute());
    assert!(ctx.file.ends_with("some/dir/config.toml"));
    assert_eq!(Some(ctx.base_dir.as_path()), ctx.file.parent());
    let explicit = context_in(Path::new("/srv"));
    assert_eq!(explicit.file, PathBuf::from("/srv/config.toml"));
    assert!(load(MINIMAL).is_ok());
}
