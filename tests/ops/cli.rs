//! `status`, `dead …` and `import-instance` as an operator runs them: through the daemon,
//! on a stopped store, and the exit codes of docs/operations.md.

use serde_json::Value;

use crate::support::{
    ACCOUNT, Callback, OTHER_ACCOUNT, Relay, Setup, cli_in, eventually, free_port,
};

const TOKEN: &str = "cli-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dead_commands_go_through_the_running_daemon() {
    let callback = Callback::start(410).await;
    let mut setup = Setup::new(&callback.url);
    setup.token = Some(TOKEN.into());
    let relay = Relay::start(setup).await;
    relay.notify(ACCOUNT).await;
    eventually("a dead letter counted", || async {
        let (_, body) = relay.admin("GET", "/admin/status", None).await;
        let status: Value = serde_json::from_str(&body).ok()?;
        (status[0]["dead_lettered"] == 1).then_some(())
    })
    .await;

    let status = relay.cli(&["status", "--json"]).await;
    let json = status.assert_code(0).json();
    assert_eq!(json["daemon"], "running");
    assert_eq!(json["instances"][0]["instance"], "acme");
    assert_eq!(json["instances"][0]["state"], "active");
    assert_eq!(json["instances"][0]["dead_lettered"], 1);
    assert!(
        json["instances"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("410")),
        "{json}"
    );

    let table = relay.cli(&["status"]).await;
    table.assert_code(0);
    assert!(
        table.stdout.starts_with("daemon: running"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("INSTANCE  STATE   QUEUED  IN RETRY  DEAD"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("\nacme      active  0       0         1"),
        "{}",
        table.stdout
    );

    let list = relay
        .cli(&[
            "dead",
            "list",
            "--json",
            "--instance",
            "acme",
            "--since",
            "1h",
        ])
        .await;
    let letters = list.assert_code(0).json();
    let id = letters[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(letters[0]["account"], ACCOUNT);
    let none = relay.cli(&["dead", "list", "--until", "1h"]).await;
    assert_eq!(none.assert_code(0).stdout, "no dead letters\n");
    let table = relay.cli(&["dead", "list"]).await;
    assert!(
        table.assert_code(0).stdout.contains(&id),
        "{}",
        table.stdout
    );

    callback.answer(200);
    let replay = relay.cli(&["dead", "replay", "--id", &id]).await;
    assert_eq!(replay.assert_code(0).stdout, "replayed 1 dead letter(s)\n");
    callback.wait_for(&id, 200).await;
    let again = relay.cli(&["dead", "replay", "--id", &id]).await;
    again.assert_code(1);
    assert!(
        again
            .stderr
            .contains(&format!("no dead letter with id {id}")),
        "{again:?}"
    );

    callback.answer(410);
    relay.notify(OTHER_ACCOUNT).await;
    eventually("a second dead letter", || async {
        (relay.dead().await.len() == 1).then_some(())
    })
    .await;
    let purge = relay
        .cli(&["dead", "purge", "--all", "--since", "1h"])
        .await;
    assert_eq!(purge.assert_code(0).stdout, "purged 1 dead letter(s)\n");
    assert!(relay.dead().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dead_commands_work_on_a_stopped_store() {
    let callback = Callback::start(410).await;
    let mut setup = Setup::new(&callback.url);
    setup.retry_initial = "1h";
    let mut relay = Relay::start(setup).await;
    relay.notify(ACCOUNT).await;
    let dead = eventually("a dead letter", || async {
        let dead = relay.dead().await;
        (dead.len() == 1).then_some(dead)
    })
    .await;
    let dead_id = dead[0]["id"].as_str().expect("id").to_owned();
    callback.answer(500);
    relay.notify(OTHER_ACCOUNT).await;
    eventually("an event waiting for its retry", || async {
        let (_, body) = relay.admin("GET", "/admin/status", None).await;
        let status: Value = serde_json::from_str(&body).ok()?;
        (status[0]["in_retry"] == 1).then_some(())
    })
    .await;
    assert!(relay.stop().await.success(), "{}", relay.logs());

    // Offline: figures come from the store.
    let status = relay.cli(&["status", "--json"]).await.assert_code(0).json();
    assert_eq!(status["daemon"], "stopped");
    let acme = &status["instances"][0];
    assert_eq!(
        (acme["queued"].as_u64(), acme["in_retry"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(acme["dead_lettered"], 1);
    assert!(
        acme["oldest_pending_age_seconds"].as_f64().is_some(),
        "{status}"
    );
    let table = relay.cli(&["status"]).await;
    assert!(
        table.assert_code(0).stdout.starts_with("daemon: stopped"),
        "{}",
        table.stdout
    );
    let letters = relay
        .cli(&["dead", "list", "--json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(letters[0]["id"], dead_id.as_str());

    let replay = relay.cli(&["dead", "replay", "--id", &dead_id]).await;
    assert_eq!(
        replay.assert_code(0).stdout,
        "replayed 1 dead letter(s); they are delivered when the daemon starts\n"
    );
    let status = relay.cli(&["status", "--json"]).await.assert_code(0).json();
    assert_eq!(status["instances"][0]["queued"], 2);
    assert_eq!(status["instances"][0]["dead_lettered"], 0);

    // The daemon delivers the replayed event when it starts.
    callback.answer(200);
    relay.spawn().await;
    let delivery = callback.wait_for(&dead_id, 200).await;
    assert_eq!(delivery.body["message"]["accountId"], ACCOUNT);
    assert!(relay.stop().await.success());

    // Remove the instance: its waiting event is held; `dead purge --instance` drops it.
    let mut renamed = relay.setup.clone();
    renamed.instance = "acme2".into();
    relay.write_config(&renamed.text());
    let status = relay.cli(&["status", "--json"]).await.assert_code(0).json();
    let held: Vec<&Value> = status["instances"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|i| i["instance"] == "acme")
        .collect();
    assert_eq!(held.len(), 1, "{status}");
    assert_eq!(
        (held[0]["state"].as_str(), held[0]["queued"].as_u64()),
        (Some("held"), Some(1))
    );
    let table = relay.cli(&["status"]).await;
    assert!(
        table
            .assert_code(0)
            .stdout
            .contains("dead purge --instance NAME"),
        "{}",
        table.stdout
    );
    // The other records: the replayed event's history (its record, and its account's marker
    // and the marker's twin), and three of the instance's.
    let purge = relay.cli(&["dead", "purge", "--instance", "acme"]).await;
    assert_eq!(
        purge.assert_code(0).stdout,
        "purged 0 dead letter(s)\npurged 1 held pending event(s) of acme, which is no longer configured\n\
         removed 6 other record(s) of acme (delivered history, seen accounts, cursors, object \
         maps, change queues, credentials, dead-letter alert tally)\n"
    );
    let status = relay.cli(&["status", "--json"]).await.assert_code(0).json();
    assert_eq!(
        status["instances"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["instances"][0]["instance"], "acme2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let callback = Callback::start(200).await;
    let mut setup = Setup::new(&callback.url);
    setup.token = Some(TOKEN.into());
    let mut relay = Relay::start(setup.clone()).await;
    let dir = relay.dir.path().to_path_buf();
    let write = |name: &str, setup: &Setup| {
        std::fs::write(dir.join(name), setup.text()).expect("config");
    };

    // 77: the daemon rejects the token (a wrong one, or none).
    let mut wrong = setup.clone();
    wrong.token = Some("not-the-token".into());
    write("wrong-token.toml", &wrong);
    let run = cli_in(&dir, "wrong-token.toml", &["status"]).await;
    run.assert_code(77);
    assert!(run.stderr.contains("rejected"), "{run:?}");
    let mut tokenless = setup.clone();
    tokenless.token = None;
    write("no-token.toml", &tokenless);
    cli_in(&dir, "no-token.toml", &["dead", "list"])
        .await
        .assert_code(77);
    relay.cli(&["status"]).await.assert_code(0);

    // 69: nothing answers on admin.listen, but the store is held by the running daemon.
    let mut elsewhere = setup.clone();
    elsewhere.admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    write("elsewhere.toml", &elsewhere);
    for args in [&["status"][..], &["dead", "replay", "--all"][..]] {
        let run = cli_in(&dir, "elsewhere.toml", args).await;
        run.assert_code(69);
        assert!(run.stderr.contains("does not answer"), "{run:?}");
    }

    // 78: an invalid config, before anything is tried.
    std::fs::write(
        dir.join("invalid.toml"),
        format!("{}\n[colour]\nhue = 1\n", setup.text()),
    )
    .expect("config");
    let run = cli_in(&dir, "invalid.toml", &["status"]).await;
    run.assert_code(78);
    assert!(run.stderr.contains("colour"), "{run:?}");
    cli_in(&dir, "invalid.toml", &["dead", "purge", "--all"])
        .await
        .assert_code(78);

    // 2: usage.
    relay.cli(&["dead", "replay"]).await.assert_code(2);
    relay
        .cli(&["dead", "purge", "--all", "--instance", "acme"])
        .await
        .assert_code(2);
    relay
        .cli(&["dead", "list", "--since", "last tuesday"])
        .await
        .assert_code(2);

    // With the daemon stopped, the same config that got 69 reads the store: 0.
    assert!(relay.stop().await.success());
    cli_in(&dir, "elsewhere.toml", &["status"])
        .await
        .assert_code(0);
}

/// A Cloud Elements instance JSON (as `import-instance` reads it) with secrets and extra keys.
const INSTANCE_JSON: &str = r#"{
  "element": { "key": "dropbox" },
  "providerData": { "code": "single-use-code" },
  "configuration": {
    "oauth.api.key": "imported-app-key",
    "oauth.api.secret": "imported-app-secret-value",
    "oauth.callback.url": "https://www.mycoolapp.com/auth",
    "authentication.type": "oauth2",
    "event.notification.enabled": true,
    "event.notification.callback.url": "https://example.com/hooks/dropbox",
    "event.notification.signature.key": "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
  },
  "tags": [ "imported" ],
  "name": "Imported Dropbox"
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_instance_output_passes_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = Setup::new("http://127.0.0.1:9/hook").text();
    std::fs::write(dir.path().join("instance.json"), INSTANCE_JSON).expect("json");
    std::fs::write(dir.path().join("base.toml"), &base).expect("config");
    cli_in(dir.path(), "base.toml", &["check"])
        .await
        .assert_code(0);

    let no_id = cli_in(
        dir.path(),
        "base.toml",
        &["import-instance", "instance.json"],
    )
    .await;
    no_id.assert_code(2);
    assert!(no_id.stderr.contains("--id"), "{no_id:?}");

    // Secrets as file references: the comment says which files to create.
    let import = cli_in(
        dir.path(),
        "base.toml",
        &["import-instance", "instance.json", "--id", "99"],
    )
    .await;
    let block = import.assert_code(0).stdout.clone();
    assert!(
        !block.contains("imported-app-secret-value") && !block.contains("whsec_QUJD"),
        "{block}"
    );
    std::fs::write(dir.path().join("merged.toml"), format!("{base}\n{block}")).expect("config");
    let missing = cli_in(dir.path(), "merged.toml", &["check"]).await;
    missing.assert_code(78);
    assert!(
        missing.stderr.contains("Imported-Dropbox-app-secret"),
        "{missing:?}"
    );
    let json: Value = serde_json::from_str(INSTANCE_JSON).expect("json");
    let mut created = 0;
    for line in block
        .lines()
        .filter(|l| l.starts_with("#   jq -j '.configuration[\""))
    {
        let key = line.split('"').nth(1).expect("a key");
        let file = line.rsplit("> ").next().expect("a file");
        let value = json["configuration"][key].as_str().expect("a secret");
        std::fs::write(dir.path().join(file), value).expect("secret file");
        created += 1;
    }
    assert_eq!(created, 2, "{block}");
    let check = cli_in(dir.path(), "merged.toml", &["check"]).await;
    assert!(
        check.assert_code(0).stdout.contains("ok (2 instance(s))"),
        "{check:?}"
    );

    // Inline secrets need no files.
    let inline = cli_in(
        dir.path(),
        "base.toml",
        &[
            "import-instance",
            "instance.json",
            "--id",
            "99",
            "--include-secrets",
        ],
    )
    .await;
    let block = inline.assert_code(0).stdout.clone();
    assert!(block.contains("imported-app-secret-value"), "{block}");
    std::fs::write(dir.path().join("inline.toml"), format!("{base}\n{block}")).expect("config");
    cli_in(dir.path(), "inline.toml", &["check"])
        .await
        .assert_code(0);
}
