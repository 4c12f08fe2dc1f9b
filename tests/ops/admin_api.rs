//! The admin listener: the token guards every `/admin/*` endpoint and nothing else; the dead
//! letter endpoints list, replay (and the event arrives) and purge.

use serde_json::Value;

use crate::support::{ACCOUNT, Callback, OTHER_ACCOUNT, Relay, Setup, WAIT, eventually};

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
        metrics.contains(r#"hookrelay_dead_letters{instance_name="acme"} 0"#),
        "{metrics}"
    );
}

/// A refused request: what it is, its HTTP version, its headers, the answer expected.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

/// A raw HTTP/1.x request to the admin listener (headers exactly as given, so `Host` and
/// `Origin` can be anything a browser or a rebound name would send) → the answer's status.
async fn raw_admin(
    relay: &Relay,
    version: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!("POST {path} {version}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut stream = tokio::net::TcpStream::connect(relay.setup.admin)
        .await
        .expect("connecting to the admin listener");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Without a token (the loopback default), a web page must not be able to drive the admin API:
/// a change needs `Content-Type: application/json`, no `Origin`, and the listener's own address
/// as `Host` (a rebound name is refused). The refused requests change nothing; the CLI's own
/// requests and a script's JSON requests still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_admin_requests_are_refused_and_change_nothing() {
    let callback = Callback::start(410).await;
    let relay = Relay::start(Setup::new(&callback.url)).await;
    relay.notify(ACCOUNT).await;
    relay.notify(OTHER_ACCOUNT).await;
    eventually("two dead letters", || async {
        (relay.dead().await.len() == 2).then_some(())
    })
    .await;
    let before = relay.dead().await;

    let host = relay.setup.admin.to_string();
    let port = relay.setup.admin.port();
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    let rebound = format!("rebound.example:{port}");
    let json = "application/json";
    let cases: [Case; 11] = [
        (
            "text/plain (a form or a fetch without preflight)",
            "HTTP/1.1",
            vec![
                ("Host", &host),
                ("Content-Type", "text/plain;charset=UTF-8"),
            ],
            415,
        ),
        (
            "a form's content type",
            "HTTP/1.1",
            vec![
                ("Host", &host),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            415,
        ),
        ("no content type", "HTTP/1.1", vec![("Host", &host)], 415),
        (
            "JSON-looking but not JSON",
            "HTTP/1.1",
            vec![("Host", &host), ("Content-Type", "application/jsonp")],
            415,
        ),
        (
            "a foreign Origin",
            "HTTP/1.1",
            vec![
                ("Host", &host),
                ("Content-Type", json),
                ("Origin", "http://evil.example"),
            ],
            403,
        ),
        (
            "Origin null (a sandboxed page)",
            "HTTP/1.1",
            vec![("Host", &host), ("Content-Type", json), ("Origin", "null")],
            403,
        ),
        (
            "text/plain with a foreign Origin",
            "HTTP/1.1",
            vec![
                ("Host", &host),
                ("Content-Type", "text/plain"),
                ("Origin", "http://evil.example"),
            ],
            403,
        ),
        (
            "a rebound name as Host",
            "HTTP/1.1",
            vec![("Host", &rebound), ("Content-Type", json)],
            403,
        ),
        (
            "another port as Host",
            "HTTP/1.1",
            vec![("Host", &other_port), ("Content-Type", json)],
            403,
        ),
        (
            "Host without the port",
            "HTTP/1.1",
            vec![("Host", "127.0.0.1"), ("Content-Type", json)],
            403,
        ),
        (
            "no Host at all",
            "HTTP/1.0",
            vec![("Content-Type", json)],
            403,
        ),
    ];
    let bodies = [
        ("/admin/dead/purge", r#"{"all": true}"#),
        ("/admin/dead/replay", r#"{"all": true}"#),
        (
            "/admin/authorize",
            r#"{"instance": "acme", "code": "attacker-code"}"#,
        ),
    ];
    for (path, body) in bodies {
        for (what, version, headers, expected) in &cases {
            let status = raw_admin(&relay, version, path, headers, body).await;
            assert_eq!(status, *expected, "POST {path} with {what}");
        }
    }
    assert_eq!(
        relay.dead().await,
        before,
        "a refused request changed the dead letters"
    );

    // A script's JSON request names the listener as 127.0.0.1:PORT or localhost:PORT.
    for host in [
        host.clone(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        let headers = [
            ("Host", host.as_str()),
            ("Content-Type", "application/json; charset=utf-8"),
        ];
        let status = raw_admin(
            &relay,
            "HTTP/1.1",
            "/admin/dead/replay",
            &headers,
            r#"{"instance": "other"}"#,
        )
        .await;
        assert_eq!(status, 200, "POST /admin/dead/replay with Host {host}");
    }
    assert_eq!(relay.dead().await, before);

    // The CLI's own requests pass.
    let list = relay.cli(&["dead", "list", "--json"]).await;
    assert_eq!(list.assert_code(0).json().as_array().map(Vec::len), Some(2));
    let purge = relay.cli(&["dead", "purge", "--all"]).await;
    assert_eq!(purge.assert_code(0).stdout, "purged 2 dead letter(s)\n");
    assert!(relay.dead().await.is_empty());
}
