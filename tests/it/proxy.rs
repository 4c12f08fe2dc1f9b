//! The destination guard through an egress `proxy`: the proxy resolves and connects, so the
//! daemon resolves the callback's host name itself before handing the request over, and refuses
//! a name that points at a private address unless `allow_private_destinations` is set.

use std::time::Duration;

use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::http::get;
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

/// `last_error` of `instance` in `GET /admin/status`, if any.
async fn last_error(d: &Daemon, instance: &str) -> Option<String> {
    let r = get(&format!("{}/admin/status", d.admin_url())).await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).ok()?;
    list.iter()
        .find(|s| s["instance"] == instance)
        .and_then(|s| s["last_error"].as_str())
        .map(str::to_owned)
}

/// A callback named `localhost` reached through a proxy: refused for the guarded instance (the
/// proxy never sees its request), forwarded for the instance that allows private destinations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_proxy_a_name_resolving_to_loopback_is_refused_unless_allowed() {
    let app = App::new("app-key");
    // Stands in for the proxy: it records each request it is asked to forward and answers 200.
    let proxy = FakeCallback::ok().await;
    let callback = "http://localhost:9/hooks/dropbox";
    let cfg = TestConfig::new()
        .delivery("proxy", format!("http://{}", proxy.addr()).as_str())
        .instance(
            InstanceConfig::new("guarded", 1, &app)
                .callback(callback)
                .delivery("allow_private_destinations", false),
        )
        .instance(
            InstanceConfig::new("allowed", 2, &app)
                .callback(callback)
                .delivery("allow_private_destinations", true),
        );
    let d = Daemon::start(&cfg).await;
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );

    let forwarded = proxy.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(forwarded[0].message()["instanceName"], "allowed");
    assert_eq!(forwarded[0].header("host"), Some("localhost:9"));
    wait_until(
        Duration::from_secs(15),
        "the guarded instance to report a refused destination",
        || async {
            last_error(&d, "guarded")
                .await
                .is_some_and(|e| e.contains("not allowed"))
        },
    )
    .await;
    let guarded: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.message()["instanceName"] != "allowed")
        .collect();
    assert!(
        guarded.is_empty(),
        "the proxy was asked to forward {guarded:?}"
    );
}
