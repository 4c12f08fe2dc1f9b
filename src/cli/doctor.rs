//! `hookrelay doctor [--json]`: checks an installation, one line per check —
//! `ok|warn|fail <check>: <what, and what to do>` — and exits 1 when any check failed.
//!
//! The checks: the config (as `check` reads it, `{ file = … }` values included), the store
//! folder (exists, owner, private, free disk against `storage.max_bytes`), the admin listener
//! (token unless on loopback), the daemon (reachable, ready), the listener's certificate and
//! each enabled instance's client certificate (expiry), each enabled callback's host (resolves
//! to an address delivery may use), and each change-events instance's authorization.
//! docs/operations.md explains each line.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::access::dialable;
use super::{EXIT_FAILURE, status};
use crate::config::{Config, ConfigError, EventsMode};
use crate::deliver::ssrf;
use crate::time;

/// A certificate closer than this to its expiry draws a warning.
const CERT_WARN_DAYS: i64 = 14;
/// How long the daemon and each callback host get to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub verdict: Verdict,
    pub check: String,
    pub message: String,
}

impl Finding {
    fn new(verdict: Verdict, check: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            verdict,
            check: check.into(),
            message: message.into(),
        }
    }
}

/// Runs every check against the config at `path` and prints the report; the exit code is 0
/// when no check failed, else 1.
pub async fn run(path: &Path, json: bool) -> u8 {
    let findings = findings(path).await;
    if json {
        match serde_json::to_string_pretty(&findings) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("hookrelay: {err}");
                return EXIT_FAILURE;
            }
        }
    } else {
        for finding in &findings {
            let verdict = match finding.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "warn",
                Verdict::Fail => "fail",
            };
            println!("{verdict} {}: {}", finding.check, finding.message);
        }
    }
    match findings.iter().any(|f| f.verdict == Verdict::Fail) {
        true => EXIT_FAILURE,
        false => 0,
    }
}

/// Every check, in the order an operator fixes things: the config first (the others need it).
pub async fn findings(path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match Config::load(path) {
        Ok(loaded) => {
            out.push(Finding::new(
                Verdict::Ok,
                "config",
                format!(
                    "{} is valid ({} instance(s)); every {{ file = … }} value was read",
                    loaded.config.source.display(),
                    loaded.config.instances.len()
                ),
            ));
            for warning in loaded.warnings {
                out.push(Finding::new(Verdict::Warn, "config", warning));
            }
            loaded.config
        }
        Err(err) => {
            out.extend(config_failures(&err));
            out.push(Finding::new(
                Verdict::Fail,
                "config",
                "the other checks need a valid config: fix the lines above, then run \
                 `hookrelay check` and `hookrelay doctor` again",
            ));
            return out;
        }
    };
    out.extend(store_findings(&config));
    out.push(admin_finding(&config));
    out.push(daemon_finding(&config).await);
    out.push(certificate_finding(&config, unix_now()));
    out.extend(client_certificate_findings(&config, unix_now()));
    for instance in config.instances.iter().filter(|i| i.enabled) {
        let Some(url) = &instance.callback_url else {
            continue;
        };
        let check = format!("callback {}", instance.name);
        out.push(callback_finding(check, url, &instance.delivery).await);
    }
    out.extend(authorization_findings(&config).await);
    out
}

fn config_failures(err: &ConfigError) -> Vec<Finding> {
    match err {
        ConfigError::Read { file, source } => vec![Finding::new(
            Verdict::Fail,
            "config",
            format!(
                "cannot read {}: {source}; give the right path with --config or \
                 $HOOKRELAY_CONFIG",
                file.display()
            ),
        )],
        ConfigError::Invalid { file, problems } => problems
            .iter()
            .map(|problem| {
                Finding::new(
                    Verdict::Fail,
                    "config",
                    format!("{}: {problem}", file.display()),
                )
            })
            .collect(),
    }
}

/// The store folder: present, owned by whoever runs the checks (the service user, when run
/// as it), private (0700), with room for `storage.max_bytes`.
fn store_findings(config: &Config) -> Vec<Finding> {
    let path = &config.storage.path;
    let shown = path.display();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let verdict = match parent.is_none_or(Path::exists) {
                true => Verdict::Ok,
                false => Verdict::Fail,
            };
            let message = match verdict {
                Verdict::Ok => format!(
                    "{shown} does not exist yet; the daemon creates it (0700) at its first start"
                ),
                _ => format!(
                    "neither {shown} nor its parent folder exists: create the parent, or set \
                     storage.path"
                ),
            };
            return vec![Finding::new(verdict, "store", message)];
        }
        Err(err) => {
            return vec![Finding::new(
                Verdict::Fail,
                "store",
                format!("cannot inspect {shown}: {err}; the service user needs to own it"),
            )];
        }
    };
    if !metadata.is_dir() {
        return vec![Finding::new(
            Verdict::Fail,
            "store",
            format!("{shown} is not a folder: move it away, or set storage.path"),
        )];
    }
    let mut out = Vec::new();
    let mode = metadata.permissions().mode() & 0o777;
    let me = rustix::process::geteuid().as_raw();
    if mode & 0o077 != 0 {
        out.push(Finding::new(
            Verdict::Fail,
            "store",
            format!(
                "{shown} is mode {mode:04o}: other users can read the queued notifications and \
                 tokens; run `chmod 0700 {shown}`"
            ),
        ));
    } else if metadata.uid() != me {
        out.push(Finding::new(
            Verdict::Warn,
            "store",
            format!(
                "{shown} belongs to uid {}, and doctor runs as uid {me}: run doctor as the \
                 service user (`sudo -u hookrelay hookrelay doctor`), or `chown -R` the folder \
                 to the user the daemon runs as",
                metadata.uid()
            ),
        ));
    } else {
        out.push(Finding::new(
            Verdict::Ok,
            "store",
            format!("{shown} is private (0700) and yours"),
        ));
    }
    out.push(disk_finding(config));
    out
}

/// Free space on the store's file system against what the queue may still grow by.
fn disk_finding(config: &Config) -> Finding {
    let path = &config.storage.path;
    let stats = match rustix::fs::statvfs(path) {
        Ok(stats) => stats,
        Err(err) => {
            return Finding::new(
                Verdict::Warn,
                "disk",
                format!("cannot read the free space of {}: {err}", path.display()),
            );
        }
    };
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    let used = folder_bytes(path);
    let room = config.storage.max_bytes.saturating_sub(used);
    let (verdict, advice) = match free >= room {
        true => (Verdict::Ok, ""),
        false => (
            Verdict::Warn,
            "; the disk fills before the queue reaches its limit, and a full disk stops \
             acknowledgements: free space, or lower storage.max_bytes",
        ),
    };
    Finding::new(
        verdict,
        "disk",
        format!(
            "{} free on the store's file system, the store uses {}, storage.max_bytes is {}{advice}",
            mib(free),
            mib(used),
            mib(config.storage.max_bytes)
        ),
    )
}

/// The bytes of the files directly in `path` and in its `blobs/` folder (sled's layout).
fn folder_bytes(path: &Path) -> u64 {
    let sum = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .filter(|metadata| metadata.is_file())
            .map(|metadata| metadata.len())
            .sum()
    };
    sum(path).saturating_add(sum(&path.join("blobs")))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// An admin listener others can reach needs a token.
fn admin_finding(config: &Config) -> Finding {
    let listen = config.admin.listen;
    match (listen.ip().is_loopback(), config.admin.token.is_some()) {
        (true, _) => Finding::new(
            Verdict::Ok,
            "admin",
            format!("admin.listen {listen} is loopback only"),
        ),
        (false, true) => Finding::new(
            Verdict::Ok,
            "admin",
            format!("admin.listen {listen} is reachable from the network and admin.token is set"),
        ),
        (false, false) => Finding::new(
            Verdict::Fail,
            "admin",
            format!(
                "admin.listen {listen} is reachable from the network without admin.token: \
                 anyone who can connect may replay or purge events; set admin.token (e.g. \
                 {{ file = \"admin-token\" }}), or listen on 127.0.0.1"
            ),
        ),
    }
}

/// The daemon answers `/readyz` on the admin listener.
async fn daemon_finding(config: &Config) -> Finding {
    let addr = dialable(config.admin.listen);
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            return Finding::new(Verdict::Fail, "daemon", format!("no HTTP client: {err}"));
        }
    };
    let url = format!("http://{addr}/readyz");
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => {
            Finding::new(Verdict::Ok, "daemon", format!("running and ready ({url})"))
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Finding::new(
                Verdict::Fail,
                "daemon",
                format!(
                    "running but not ready ({url} answered {status}: {}); see `journalctl -u \
                     hookrelay` and docs/troubleshooting.md",
                    body.trim()
                ),
            )
        }
        Err(err) => Finding::new(
            Verdict::Fail,
            "daemon",
            format!(
                "not reachable on admin.listen {addr} ({}): start it with `systemctl start \
                 hookrelay`, and if it stops, read `journalctl -u hookrelay`",
                reason(&err)
            ),
        ),
    }
}

fn reason(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "no answer in time"
    } else if err.is_connect() {
        "connection refused"
    } else {
        "request failed"
    }
}

/// The listener's certificate, when hookrelay terminates TLS itself.
fn certificate_finding(config: &Config, now: i64) -> Finding {
    let Some(tls) = &config.server.tls else {
        return Finding::new(
            Verdict::Ok,
            "certificate",
            "the listener speaks plain HTTP (no server.tls_cert): Dropbox needs HTTPS, so a \
             reverse proxy in front must terminate it (docs/https.md)",
        );
    };
    let expiry = Expiry {
        check: "certificate".to_owned(),
        file: tls.cert_path(),
        not_after: tls.leaf_not_after(),
        impact: "Dropbox cannot deliver",
        renew: "(docs/https.md has a renewal hook)",
    };
    expiry.finding(now)
}

/// Each client certificate an enabled instance presents to its callback: one line per
/// instance, since each consumer refuses an expired one.
fn client_certificate_findings(config: &Config, now: i64) -> Vec<Finding> {
    config
        .instances
        .iter()
        .filter(|instance| instance.enabled)
        .filter_map(|instance| {
            let identity = instance.delivery.client_identity.as_ref()?;
            let expiry = Expiry {
                check: format!("client certificate {}", instance.name),
                file: identity.cert_path(),
                not_after: identity.leaf_not_after(),
                impact: "a consumer that checks it refuses every delivery",
                renew: "(client_cert in docs/configuration.md)",
            };
            Some(expiry.finding(now))
        })
        .collect()
}

/// A certificate's expiry, and what to say about it.
struct Expiry<'a> {
    check: String,
    file: &'a Path,
    /// Unix seconds; `None` when the certificate does not parse as X.509.
    not_after: Option<i64>,
    /// What an expired certificate breaks.
    impact: &'static str,
    /// Where renewal is explained.
    renew: &'static str,
}

impl Expiry<'_> {
    /// Fails when expired, warns within [`CERT_WARN_DAYS`] of the expiry.
    fn finding(self, now: i64) -> Finding {
        let file = self.file.display();
        let Some(not_after) = self.not_after else {
            return Finding::new(
                Verdict::Warn,
                self.check,
                format!("cannot read the expiry date of {file}'s first certificate"),
            );
        };
        let expires = time::rfc3339(u64::try_from(not_after).unwrap_or(0).saturating_mul(1000));
        let days = (not_after - now).div_euclid(86_400);
        let (verdict, message) = if not_after <= now {
            (
                Verdict::Fail,
                format!(
                    "{file} expired at {expires}: {}; renew it, then `systemctl reload \
                     hookrelay`",
                    self.impact
                ),
            )
        } else if days < CERT_WARN_DAYS {
            (
                Verdict::Warn,
                format!(
                    "{file} expires in {days} day(s), at {expires}: renew it, then `systemctl \
                     reload hookrelay` {}",
                    self.renew
                ),
            )
        } else {
            (
                Verdict::Ok,
                format!("{file} is valid until {expires} ({days} days)"),
            )
        };
        Finding::new(verdict, self.check, message)
    }
}

fn unix_now() -> i64 {
    i64::try_from(time::now_ms() / 1000).unwrap_or(i64::MAX)
}

/// A callback's host resolves here, to an address delivery may connect to.
async fn callback_finding(
    check: String,
    url: &reqwest::Url,
    delivery: &crate::config::Delivery,
) -> Finding {
    if let Some(proxy) = &delivery.proxy
        && delivery.allow_private_destinations
    {
        return Finding::new(
            Verdict::Ok,
            check,
            format!("{url} is reached through the proxy {proxy}, which resolves it"),
        );
    }
    let Some(host) = url.host_str() else {
        return Finding::new(Verdict::Fail, check, format!("{url} has no host"));
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> =
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(err)) => {
                return Finding::new(
                    Verdict::Fail,
                    check,
                    format!(
                        "cannot resolve {host}: {err}; check the instance's \
                         event.notification.callback.url and this machine's DNS"
                    ),
                );
            }
            Err(_) => {
                return Finding::new(
                    Verdict::Fail,
                    check,
                    format!("no DNS answer for {host} within {PROBE_TIMEOUT:?}"),
                );
            }
        };
    if delivery.allow_private_destinations {
        return Finding::new(
            Verdict::Ok,
            check,
            format!(
                "{host} resolves ({} address(es); private ones allowed)",
                resolved.len()
            ),
        );
    }
    let refused: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|addr| ssrf::is_forbidden(addr.ip()))
        .collect();
    match (refused.len(), resolved.len()) {
        (_, 0) => Finding::new(Verdict::Fail, check, format!("{host} resolves to nothing")),
        (r, n) if r == n => Finding::new(
            Verdict::Fail,
            check,
            format!(
                "{host} resolves only to private or reserved addresses ({}), which delivery \
                 refuses: if the consumer is yours on a private network, set \
                 allow_private_destinations = true in the instance's delivery settings",
                refused[0].ip()
            ),
        ),
        (0, n) => Finding::new(
            Verdict::Ok,
            check,
            format!("{host} resolves to {n} public address(es)"),
        ),
        // Through a proxy, any forbidden address refuses the callback (`ssrf::check_before_proxy`);
        // directly, delivery connects to the allowed ones only.
        (r, n) if delivery.proxy.is_some() => Finding::new(
            Verdict::Fail,
            check,
            format!(
                "{host} resolves to {n} address(es), {r} of them private ({}), so delivery \
                 through the proxy refuses it: set allow_private_destinations = true if that is \
                 intended",
                refused[0].ip()
            ),
        ),
        (r, n) => Finding::new(
            Verdict::Warn,
            check,
            format!(
                "{host} resolves to {n} address(es), {r} of them private ({}), which delivery \
                 skips",
                refused[0].ip()
            ),
        ),
    }
}

/// Change-events instances hold a Dropbox authorization.
async fn authorization_findings(config: &Config) -> Vec<Finding> {
    let changes: Vec<&str> = config
        .instances
        .iter()
        .filter(|i| i.enabled && i.events == EventsMode::Changes)
        .map(|i| i.name.as_str())
        .collect();
    if changes.is_empty() {
        return Vec::new();
    }
    let report = match status::report(config).await {
        Ok((report, _)) => report,
        Err(failure) => {
            return vec![Finding::new(
                Verdict::Warn,
                "authorize",
                format!("cannot read the instances' state: {}", failure.message),
            )];
        }
    };
    changes
        .into_iter()
        .map(|name| {
            let check = format!("authorize {name}");
            match report.instances.iter().find(|i| i.instance == name) {
                Some(found) if found.state == "needs_authorize" => Finding::new(
                    Verdict::Fail,
                    check,
                    format!(
                        "change events need a Dropbox authorization: open the authorization \
                         URL, then run `hookrelay authorize --instance {name} --code CODE` \
                         (docs/change-events.md)"
                    ),
                ),
                _ => Finding::new(Verdict::Ok, check, "authorized"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_fails_once_expired_and_warns_within_fourteen_days() {
        let now = 1_800_000_000;
        let verdict = |not_after: Option<i64>| {
            let expiry = Expiry {
                check: "client certificate acme".to_owned(),
                file: Path::new("/etc/hookrelay/client.pem"),
                not_after,
                impact: "refused",
                renew: "",
            };
            let finding = expiry.finding(now);
            assert_eq!(finding.check, "client certificate acme");
            finding.verdict
        };
        assert_eq!(verdict(Some(now)), Verdict::Fail);
        assert_eq!(verdict(Some(now - 1)), Verdict::Fail);
        assert_eq!(verdict(Some(now + 13 * 86_400)), Verdict::Warn);
        assert_eq!(verdict(Some(now + 14 * 86_400)), Verdict::Ok);
        assert_eq!(verdict(None), Verdict::Warn);
    }

    #[test]
    fn verdicts_print_as_the_report_spells_them() {
        let finding = Finding::new(Verdict::Warn, "disk", "low");
        let json = serde_json::to_value(&finding).expect("json");
        assert_eq!(json["verdict"], "warn");
        assert_eq!(json["check"], "disk");
        assert_eq!(json["message"], "low");
    }
}
