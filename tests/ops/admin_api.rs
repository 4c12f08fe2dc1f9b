//! The admin listener: the token guards every `/admin/*` endpoint and nothing else; the dead
//! letter endpoints list, replay (and the event arrives) and purge.

use serde_json::Value;

use crate::support::{ACCOUNT, Callback, OTHER_ACCOUNT, Relay, Setup, eventually};

const TOKEN: &str = "ops-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_needs_the_token_and_health_does_not() {
    let callback = Callback::start(200).await;
    let mut setup = Setup::new(&callback.url);
    setup.token = Some(TOKEN.into());
    let relay = Relay::start(setup).await;

    let endpoints: [(&str, &str, Option<&str>); 4] = [
        ("GET", "/admin/status", None),
        ("GET", "/admin/dead", None),
        ("POST", "/admin/dead/replay", Some(r#"{"all": true}"#)),
        ("POST", "/admin/dead/purge", Some(r#"{"all": true}"#)),
    ];
    for (method, path, body) in endpoints {
        let (missing, _) = relay.admin_as(method, path, body, None).await;
        assert_eq!(missing, 401, "{method} {path} without a token");
        let (wrong, _) = relay
            .admin_as(method, path, body, Some("not-the-token"))
            .await;
        assert_eq!(wrong, 401, "{method} {path} with a wrong token");
        let (prefix, _) = relay.admin_as(method, path, body, Some(&TOKEN[..10])).await;
        assert_eq!(prefix, 401, "{method} {path} with a prefix of the token");
        let (ok, answer) = relay.admin_as(method, path, body, Some(TOKEN)).await;
        assert_eq!(ok, 200, "{method} {path} with the token: {answer}");
        let json: Value = serde_json::from_str(&answer).expect("JSON");
        if method == "POST" {
            assert_eq!(json["count"], 0, "{answer}");
        } else {
            assert!(json.is_array(), "{answer}");
        }
    }
    let (unknown, _) = relay
        .admin_as("GET", "/admin/nothing-here", None, None)
        .await;
    assert_eq!(unknown, 401, "unknown admin paths are guarded too");

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = relay.admin_as("GET", path, None, None).await;
        assert_eq!(status, 200, "{path} needs no token: {body}");
    }
    let (_, metrics) = relay.admin_as("GET", "/metrics", None, None).await;
    assert!(metrics.contains("hookrelay_dead_letters"), "{metrics}");

    // Bodies and queries are checked.
    for body in [
        r#"{}"#,
        r#"{"all": true, "instance": "acme"}"#,
        r#"{"ids": ["x"]}"#,
        "not json",
    ] {
        let (status, answer) = relay.admin("POST", "/admin/dead/replay", Some(body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains("error"), "{answer}");
    }
    let (status, _) = relay
        .admin("GET", "/admin/dead?since=yesterday", None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = relay.admin("GET", "/admin/dead?colour=red", None).await;
    assert_eq!(status, 400);
    let (status, _) = relay.admin("DELETE", "/admin/dead", None).await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_purged_through_the_api() {
    let callback = Callback::start(410).await;
    let relay = Relay::start(Setup::new(&callback.url)).await;

    relay.notify(ACCOUNT).await;
    relay.notify(OTHER_ACCOUNT).await;
    let dead = eventually("two dead letters", || async {
        let dead = relay.dead().await;
        (dead.len() == 2).then_some(dead)
    })
    .await;
    for letter in &dead {
        assert_eq!(letter["instance"], "acme");
        assert_eq!(letter["last_status"], 410);
        assert!(letter["dead_at_ms"].as_u64().is_some(), "{letter}");
    }
    // Counters are published just after the batch a scan already sees: poll.
    let status = eventually("status counting two dead letters", || async {
        let (_, body) = relay.admin("GET", "/admin/status", None).await;
        let status: Value = serde_json::from_str(&body).ok()?;
        (status[0]["dead_lettered"] == 2).then_some(status)
    })
    .await;
    assert_eq!(status[0]["instance"], "acme");
    assert_eq!(status[0]["queued"], 0);

    // Windows: nothing died in the future or before an hour ago.
    let (_, future) = relay
        .admin("GET", "/admin/dead?since=4102444800000", None)
        .await;
    assert_eq!(future, "[]");
    let (_, old) = relay.admin("GET", "/admin/dead?until=1h", None).await;
    assert_eq!(old, "[]");
    let (_, recent) = relay
        .admin("GET", "/admin/dead?instance=acme&since=1h", None)
        .await;
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&recent)
            .map(|v| v.len())
            .ok(),
        Some(2)
    );
    let (_, other) = relay.admin("GET", "/admin/dead?instance=other", None).await;
    assert_eq!(other, "[]");

    // Replay one to a consumer that now takes it: it arrives with its id, fresh.
    let replayed = dead[0]["id"].as_str().expect("id").to_owned();
    callback.answer(200);
    let body = format!(r#"{{"ids": ["{replayed}"]}}"#);
    let (status, answer) = relay.admin("POST", "/admin/dead/replay", Some(&body)).await;
    assert_eq!((status, answer.as_str()), (200, r#"{"count":1}"#));
    let delivery = callback.wait_for(&replayed, 200).await;
    assert_eq!(delivery.body["message"]["eventId"], replayed.as_str());
    eventually("the replayed letter gone from the list", || async {
        (relay.dead().await.len() == 1).then_some(())
    })
    .await;

    // Replaying it again finds nothing; the answer names it.
    let (status, answer) = relay.admin("POST", "/admin/dead/replay", Some(&body)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).expect("JSON"),
        serde_json::json!({"count": 0, "not_found": [replayed]})
    );

    // Purge by instance, within a window that holds it.
    let (status, answer) = relay
        .admin(
            "POST",
            "/admin/dead/purge",
            Some(r#"{"instance": "acme", "since": "1h"}"#),
        )
        .await;
    assert_eq!((status, answer.as_str()), (200, r#"{"count":1}"#));
    assert!(relay.dead().await.is_empty());
    let (_, metrics) = relay.admin("GET", "/metrics", None).await;
    assert!(
        metrics.contains(r#"hookrelay_dead_letters{instance="acme"} 0"#),
        "{metrics}"
    );
}
