//! What a consumer behind a gateway asks of hookrelay's requests: extra headers (`headers`,
//! values from files among them, never logged), a TLS client certificate (`client_cert`,
//! `client_key`) and trust in the consumer's own CA (`ca_file`). A consumer that requires a
//! client certificate is an HTTPS fake built on rustls' `WebPkiClientVerifier`; a wrong or
//! missing certificate is a failed attempt, retried and shown as the instance's last error. A
//! reload that adds a header and a certificate applies to the next attempt. `ca_file` adds to
//! the system's roots (here `SSL_CERT_FILE`), which stay trusted.
//!
//! Each test makes its own CAs with rcgen; certificates name `127.0.0.1` (an IP SAN).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::support::config::ToToml;
use crate::support::daemon::ConfigArg;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::http::get;
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A TOML value written as is (an inline table).
struct Toml(&'static str);

impl ToToml for Toml {
    fn to_toml(&self) -> String {
        self.0.to_owned()
    }
}

/// A test certificate authority.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate signed by a [`TestCa`], and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `127.0.0.1` and `localhost`, for `purpose`.
    fn leaf(&self, common_name: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_with(common_name, purpose, |_| {})
    }

    /// [`TestCa::leaf`], with `adjust` applied to its parameters (its validity, say).
    fn leaf_with(
        &self,
        common_name: &str,
        purpose: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".into()])
            .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        adjust(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A consumer's TLS: a server certificate from `server_ca`, and client certificates required,
/// trusted when `client_ca` issued them.
fn consumer_acceptor(server_ca: &TestCa, client_ca: &TestCa) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = server_ca.leaf("consumer", ExtendedKeyUsagePurpose::ServerAuth);
    let chain = vec![
        CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("server cert"),
        server_ca.der(),
    ];
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der()).expect("client CA as a root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("writing a test file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_str().expect("UTF-8 temp path").to_owned()
}

/// One instance's `/admin/status` entry.
async fn instance_status(d: &Daemon, name: &str) -> serde_json::Value {
    let r = get(&format!("{}/admin/status", d.admin_url())).await;
    assert_eq!(r.status, 200, "GET /admin/status");
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&r.body).expect("/admin/status is JSON");
    list.into_iter()
        .find(|s| s["instance"] == name)
        .unwrap_or_else(|| panic!("no /admin/status entry for {name}"))
}

/// The attempts `name` made so far, by outcome label (`None`: every outcome).
async fn attempts(d: &Daemon, name: &str, outcome: Option<&str>) -> f64 {
    let selector = match outcome {
        Some(outcome) => {
            format!("hookrelay_deliveries_total{{instance_name=\"{name}\",outcome=\"{outcome}\"}}")
        }
        None => format!("hookrelay_deliveries_total{{instance_name=\"{name}\"}}"),
    };
    d.metric(&selector).await.unwrap_or(0.0)
}

/// Applies `edit` to instance `name` of `config`.
fn change(
    config: &mut TestConfig,
    name: &str,
    edit: impl FnOnce(InstanceConfig) -> InstanceConfig,
) {
    let instance = config.instance_mut(name);
    *instance = edit(instance.clone());
}

async fn notify(d: &Daemon, app: &App) {
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_a_file_reaches_the_consumer_and_no_log() {
    let api_key = format!(
        "api-key-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    // The first attempt fails, so the failure path logs too.
    let cb = FakeCallback::start([Action::Status(500)], Action::Status(200)).await;
    let app = App::new("app-key");
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .coalesce(false)
            .delivery(
                "headers",
                Toml(r#"{ "X-Api-Key" = { file = "acme-api-key" }, "X-Tenant" = "acme" }"#),
            ),
    );
    let key = api_key.clone();
    let mut d = Daemon::start_full(
        &cfg,
        ConfigArg::AfterCommand,
        &[("RUST_LOG", "debug")],
        |dir| {
            write_file(dir, "acme-api-key", &format!("{key}\n"));
        },
    )
    .await;
    notify(&d, &app).await;
    let requests = cb.wait_for(2, WAIT).await;
    for request in &requests {
        assert_eq!(request.header("x-api-key"), Some(api_key.as_str()));
        assert_eq!(request.header("x-tenant"), Some("acme"));
        // hookrelay's own headers are still there, once.
        assert_eq!(request.headers.get_all("webhook-id").iter().count(), 1);
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    assert_eq!(requests[0].event_id(), requests[1].event_id(), "a retry");
    let check = d.cli(&["check"]).await;
    assert_eq!(check.code(), Some(0), "{check:?}");
    let status = d.cli(&["status", "--json"]).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    d.stop().await;
    let logs = d.logs();
    assert!(
        logs.contains("attempt failed"),
        "debug logging did not take effect:\n{logs}"
    );
    for (what, text) in [
        ("the daemon's output", logs.as_str()),
        ("check", &format!("{}{}", check.stdout, check.stderr)),
        ("status", &format!("{}{}", status.stdout, status.stderr)),
    ] {
        assert!(!text.contains(&api_key), "{what} shows the header's value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_invalid_header_names_are_refused_by_key() {
    let cb = FakeCallback::ok().await;
    let app = App::new("app-key");
    let good = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .delivery("headers", Toml(r#"{ "X-Tenant" = "acme" }"#)),
    );
    let mut bad = good.clone();
    change(&mut bad, "acme", |i| {
        i.delivery(
            "headers",
            Toml(r#"{ "Host" = "example.com", "bad name" = "x", "X-Tenant" = "acme" }"#),
        )
    });
    let mut d = Daemon::start(&good).await;
    let expected = [
        r#"instance[0].delivery.headers."Host""#,
        r#"instance[0].delivery.headers."bad name""#,
    ];

    // `check` on the bad file.
    d.rewrite_config(&bad);
    let out = d.cli(&["check"]).await;
    assert_eq!(out.code(), Some(78), "{out:?}");
    for key in expected {
        assert!(
            out.stderr.contains(key),
            "check does not name {key}:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("X-Tenant"), "{}", out.stderr);

    // A reload to it is rejected, naming the keys; the running configuration stays.
    d.sighup();
    wait_until(Duration::from_secs(10), "a rejected reload", || async {
        d.metric(r#"hookrelay_config_reloads_total{result="error"}"#)
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(d.generation().await, Some(1));
    notify(&d, &app).await;
    let delivered = cb.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].header("x-tenant"), Some("acme"));
    assert_eq!(
        delivered[0].header("host"),
        Some(cb.addr().to_string().as_str())
    );
    let logs = d.logs();
    for key in expected {
        assert!(
            logs.contains(key),
            "the rejected reload does not name {key}"
        );
    }

    // And a start with it fails.
    d.stop().await;
    d.relaunch();
    let exited = d.wait_ready_or_exit().await;
    assert!(exited.is_err(), "hookrelay started with a Host header");
}

/// The files of a mutual-TLS setup, in `dir`: the consumer's CA (`consumer-ca.pem`), a client
/// certificate from the CA the consumer trusts (`good.crt`, `good.key`) and one from another
/// CA (`wrong.crt`, `wrong.key`).
struct MutualTls {
    dir: tempfile::TempDir,
    acceptor: TlsAcceptor,
}

impl MutualTls {
    fn new() -> MutualTls {
        let server_ca = TestCa::new("consumer server CA");
        let client_ca = TestCa::new("consumer client CA");
        let other_ca = TestCa::new("some other CA");
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        write_file(dir.path(), "consumer-ca.pem", &server_ca.pem());
        for (name, ca) in [("good", &client_ca), ("wrong", &other_ca)] {
            let leaf = ca.leaf("hookrelay", ExtendedKeyUsagePurpose::ClientAuth);
            write_file(dir.path(), &format!("{name}.crt"), &leaf.cert_pem);
            write_file(dir.path(), &format!("{name}.key"), &leaf.key_pem);
        }
        MutualTls {
            acceptor: consumer_acceptor(&server_ca, &client_ca),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("UTF-8")
            .to_owned()
    }

    /// `instance` trusting the consumer's CA (`ca_file`) and presenting `client` (`good` or
    /// `wrong`), or no certificate.
    fn instance(&self, instance: InstanceConfig, client: Option<&str>) -> InstanceConfig {
        let instance = instance
            .delivery("ca_file", self.path("consumer-ca.pem"))
            .delivery("max_attempts", 100_u32);
        match client {
            Some(name) => instance
                .delivery("client_cert", self.path(&format!("{name}.crt")))
                .delivery("client_key", self.path(&format!("{name}.key"))),
            None => instance,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_requiring_a_client_certificate_accepts_only_the_right_one() {
    let tls = MutualTls::new();
    let cb = FakeCallback::start_tls([], Action::Status(200), tls.acceptor.clone()).await;
    let app = App::new("app-key");
    let url = |name: &str| format!("{}?instance={name}", cb.url());
    let cfg = TestConfig::new()
        .instance(tls.instance(
            InstanceConfig::new("good", 1, &app).callback(&url("good")),
            Some("good"),
        ))
        .instance(tls.instance(
            InstanceConfig::new("wrong", 2, &app).callback(&url("wrong")),
            Some("wrong"),
        ))
        .instance(tls.instance(
            InstanceConfig::new("missing", 3, &app).callback(&url("missing")),
            None,
        ))
        // The right certificate, but without ca_file the consumer's own CA is not trusted.
        .instance(
            InstanceConfig::new("untrusted", 4, &app)
                .callback(&url("untrusted"))
                .delivery("client_cert", tls.path("good.crt"))
                .delivery("client_key", tls.path("good.key"))
                .delivery("max_attempts", 100_u32),
        );
    let d = Daemon::start(&cfg).await;
    notify(&d, &app).await;

    let delivered = cb.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].path, "/hooks/dropbox?instance=good");
    assert_eq!(delivered[0].answered, Some(200));
    for name in ["wrong", "missing", "untrusted"] {
        wait_until(
            WAIT,
            &format!("{name}: a failed attempt and its retry"),
            || async {
                attempts(&d, name, None).await >= 2.0
                    && !instance_status(&d, name).await["last_error"].is_null()
            },
        )
        .await;
        assert_eq!(attempts(&d, name, Some("delivered")).await, 0.0, "{name}");
        let status = instance_status(&d, name).await;
        assert_eq!(status["queued"], 1, "{name}: {status}");
        eprintln!("{name}: last error {}", status["last_error"]);
    }
    // Only the right certificate got a request through; the others failed in the handshake.
    assert!(
        cb.requests()
            .iter()
            .all(|r| r.path == "/hooks/dropbox?instance=good"),
        "{:?}",
        cb.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(
        cb.handshake_failures() >= 4,
        "{} failed handshakes",
        cb.handshake_failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_adds_roots_to_the_systems_rather_than_replacing_them() {
    // The "system" store is SSL_CERT_FILE, which the platform verifier reads on Linux.
    let system_ca = TestCa::new("a CA of the system store");
    let client_ca = TestCa::new("consumer client CA");
    let unrelated_ca = TestCa::new("an unrelated CA in ca_file");
    let dir = tempfile::tempdir().expect("temp dir for certificates");
    let system_roots = write_file(dir.path(), "system-roots.pem", &system_ca.pem());
    let extra_roots = write_file(dir.path(), "extra.pem", &unrelated_ca.pem());
    let client = client_ca.leaf("hookrelay", ExtendedKeyUsagePurpose::ClientAuth);
    let cert = write_file(dir.path(), "client.crt", &client.cert_pem);
    let key = write_file(dir.path(), "client.key", &client.key_pem);
    let acceptor = consumer_acceptor(&system_ca, &client_ca);
    let cb = FakeCallback::start_tls([], Action::Status(200), acceptor).await;
    let app = App::new("app-key");
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .delivery("ca_file", extra_roots.as_str())
            .delivery("client_cert", cert.as_str())
            .delivery("client_key", key.as_str()),
    );
    let d = Daemon::start_env(&cfg, &[("SSL_CERT_FILE", system_roots.as_str())]).await;
    notify(&d, &app).await;
    let delivered = cb.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].answered, Some(200));
    // The consumer answered; the daemon counts the delivery once the answer is in.
    wait_until(WAIT, "the delivery counted", || async {
        attempts(&d, "acme", Some("delivered")).await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_a_certificate_and_a_header_applies_to_the_next_attempt() {
    let tls = MutualTls::new();
    let cb = FakeCallback::start_tls([], Action::Status(200), tls.acceptor.clone()).await;
    let app = App::new("app-key");
    let before = TestConfig::new().instance(tls.instance(
        InstanceConfig::new("acme", 1, &app).callback(&cb.url()),
        None,
    ));
    let mut d = Daemon::start(&before).await;
    notify(&d, &app).await;
    wait_until(
        WAIT,
        "attempts refused for want of a certificate",
        || async { attempts(&d, "acme", None).await >= 2.0 },
    )
    .await;
    assert_eq!(cb.count(), 0);

    let mut after = before.clone();
    change(&mut after, "acme", |i| {
        i.delivery("client_cert", tls.path("good.crt"))
            .delivery("client_key", tls.path("good.key"))
            .delivery("headers", Toml(r#"{ "X-Api-Key" = "added-on-reload" }"#))
    });
    d.rewrite_config(&after);
    d.sighup();
    wait_until(Duration::from_secs(10), "generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    let delivered = cb.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].header("x-api-key"), Some("added-on-reload"));
    assert_eq!(delivered[0].answered, Some(200));
    wait_until(WAIT, "the event delivered", || async {
        instance_status(&d, "acme").await["queued"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_an_expired_client_certificate() {
    let ca = TestCa::new("client CA");
    let dir = tempfile::tempdir().expect("temp dir for certificates");
    let expired = ca.leaf_with("hookrelay", ExtendedKeyUsagePurpose::ClientAuth, |params| {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let valid = ca.leaf("hookrelay", ExtendedKeyUsagePurpose::ClientAuth);
    let mut files = Vec::new();
    for (name, leaf) in [("expired", &expired), ("valid", &valid)] {
        files.push((
            write_file(dir.path(), &format!("{name}.crt"), &leaf.cert_pem),
            write_file(dir.path(), &format!("{name}.key"), &leaf.key_pem),
        ));
    }
    let app = App::new("app-key");
    let mut cfg = TestConfig::new();
    for (index, (name, (cert, key))) in ["expired", "valid"].iter().zip(&files).enumerate() {
        cfg = cfg.instance(
            InstanceConfig::new(name, index as u64 + 1, &app)
                .callback("https://127.0.0.1:9/hooks")
                .delivery("client_cert", cert.as_str())
                .delivery("client_key", key.as_str()),
        );
    }
    // doctor reads the config only; no daemon is needed for these lines.
    let d = Daemon::prepare(&cfg);
    let out = d.cli(&["doctor"]).await;
    assert_eq!(out.code(), Some(1), "{out:?}");
    let line = |check: &str| {
        out.stdout
            .lines()
            .find(|line| line.contains(&format!(" {check}: ")))
            .unwrap_or_else(|| panic!("no {check} line:\n{}", out.stdout))
            .to_owned()
    };
    let expired_line = line("client certificate expired");
    assert!(expired_line.starts_with("fail "), "{expired_line}");
    assert!(
        expired_line.contains("expired at 2020-01-01"),
        "{expired_line}"
    );
    let valid_line = line("client certificate valid");
    assert!(valid_line.starts_with("ok "), "{valid_line}");
}
