//! Classifying one delivery attempt (docs/protocol.md): delivered, gone (dead-letter at once), or a
//! failed attempt, and whether that failure was a definite refusal (the consumer certainly did
//! not take the event, which is what lets coalescing merge into it).

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use super::ssrf::ForbiddenDestination;
use crate::retry::parse_retry_after;
use crate::telemetry::metrics::DeliveryOutcome;

/// The longest error text kept for an attempt (logs, `status`, dead letters).
const MAX_ERROR_CHARS: usize = 200;

/// What one attempt to deliver an event came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Any 2xx.
    Delivered { status: u16 },
    /// Dead-letter at once (410 Gone).
    Gone { status: u16 },
    /// A failed attempt. `definite_refusal`: the consumer certainly did not take it (a non-2xx
    /// status, a refused connection); false for timeouts and resets, where it may have.
    /// `retry_after` from 429/503 only.
    Failed {
        status: Option<u16>,
        error: String,
        definite_refusal: bool,
        retry_after: Option<Duration>,
    },
}

/// Classifies an answer from its status, its `Retry-After` header and its `Location` header.
/// 2xx is delivered, 410 gone; 3xx fails (redirects are never followed); anything else fails
/// as a definite refusal. `Retry-After` counts only on 429 and 503; `now` dates it.
pub fn from_status(
    status: u16,
    retry_after: Option<&str>,
    location: Option<&str>,
    now: SystemTime,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status },
        410 => Outcome::Gone { status },
        300..=399 => refused_with(status, redirect_error(status, location), None),
        429 | 503 => {
            let wait = retry_after.and_then(|value| parse_retry_after(value, now));
            refused_with(status, status_error(status), wait)
        }
        _ => refused_with(status, status_error(status), None),
    }
}

fn refused_with(status: u16, error: String, retry_after: Option<Duration>) -> Outcome {
    Outcome::Failed {
        status: Some(status),
        error,
        definite_refusal: true,
        retry_after,
    }
}

/// `HTTP 503 Service Unavailable`, or `HTTP 599` for a code without a standard reason.
fn status_error(status: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason());
    match reason {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// `redirect to <Location> not followed`, the location without its query or fragment.
fn redirect_error(status: u16, location: Option<&str>) -> String {
    match location
        .map(without_query)
        .filter(|target| !target.is_empty())
    {
        Some(target) => shorten(format!("redirect to {target} not followed")),
        None => format!("redirect (HTTP {status}) not followed"),
    }
}

/// A URL-ish text up to its query (`?`) or fragment (`#`), which may carry tokens.
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or_default().trim()
}

/// Classifies a transport error. Failing to connect (refused, DNS failure, a forbidden
/// destination) is a definite refusal unless it timed out; timeouts, resets and body errors are
/// not, since the consumer may have taken the request. The message names no URL.
pub fn from_transport_error(err: &reqwest::Error) -> Outcome {
    let forbidden = find_source::<ForbiddenDestination>(err);
    let timed_out = err.is_timeout();
    let definite_refusal = !timed_out && (forbidden.is_some() || err.is_connect());
    let error = match forbidden {
        Some(forbidden) => forbidden.to_string(),
        None => describe(err, timed_out),
    };
    Outcome::Failed {
        status: None,
        error: shorten(error),
        definite_refusal,
        retry_after: None,
    }
}

/// A short description: the kind of failure, then its root cause (never the reqwest error's
/// own text, which includes the URL and its query string).
fn describe(err: &reqwest::Error, timed_out: bool) -> String {
    if timed_out {
        return "timed out".to_owned();
    }
    let kind = if err.is_connect() {
        "connect error"
    } else if err.is_body() || err.is_decode() {
        "body error"
    } else {
        "request error"
    };
    match root_cause(err) {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

/// The innermost error under `err`, if `err` has a source.
fn root_cause<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    let mut cause = err.source()?;
    while let Some(deeper) = cause.source() {
        cause = deeper;
    }
    Some(cause)
}

/// The first error of type `T` in `err`'s source chain.
fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cause = err.source();
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        cause = current.source();
    }
    None
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters, with `…` when cut.
fn shorten(text: String) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

impl Outcome {
    /// A label for the `outcome` metric label: `delivered`, `gone`, `redirect` (a 3xx),
    /// `failed` (any other status), `refused` (no connection made) or `error` (a timeout, reset
    /// or body error: the consumer may have taken it).
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The same as a value of the metric's closed list.
    pub fn kind(&self) -> DeliveryOutcome {
        match self {
            Outcome::Delivered { .. } => DeliveryOutcome::Delivered,
            Outcome::Gone { .. } => DeliveryOutcome::Gone,
            Outcome::Failed {
                status: Some(300..=399),
                ..
            } => DeliveryOutcome::Redirect,
            Outcome::Failed {
                status: Some(_), ..
            } => DeliveryOutcome::Failed,
            Outcome::Failed {
                definite_refusal: true,
                ..
            } => DeliveryOutcome::Refused,
            Outcome::Failed { .. } => DeliveryOutcome::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn failed(status: u16, error: &str, retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed {
            status: Some(status),
            error: error.to_owned(),
            definite_refusal: true,
            retry_after,
        }
    }

    #[test]
    fn success_statuses_are_delivered() {
        for status in [200, 204, 299] {
            let outcome = from_status(status, None, None, now());
            assert_eq!(outcome, Outcome::Delivered { status });
            assert_eq!(outcome.label(), "delivered");
        }
    }

    #[test]
    fn redirects_fail_and_name_the_target_without_query() {
        let outcome = from_status(
            301,
            None,
            Some("https://elsewhere.example/hook?token=s3cret#x"),
            now(),
        );
        assert_eq!(
            outcome,
            failed(
                301,
                "redirect to https://elsewhere.example/hook not followed",
                None
            )
        );
        assert_eq!(outcome.label(), "redirect");
        assert_eq!(
            from_status(307, Some("5"), None, now()),
            failed(307, "redirect (HTTP 307) not followed", None)
        );
    }

    #[test]
    fn long_locations_are_shortened() {
        let location = format!("https://example.com/{}", "a".repeat(1000));
        let Outcome::Failed { error, .. } = from_status(302, None, Some(&location), now()) else {
            panic!("a redirect fails");
        };
        assert!(error.chars().count() <= MAX_ERROR_CHARS + 1, "{error}");
        assert!(error.ends_with('…'));
    }

    #[test]
    fn gone_dead_letters() {
        let outcome = from_status(410, Some("60"), None, now());
        assert_eq!(outcome, Outcome::Gone { status: 410 });
        assert_eq!(outcome.label(), "gone");
    }

    #[test]
    fn too_many_requests_takes_retry_after() {
        assert_eq!(
            from_status(429, Some("120"), None, now()),
            failed(
                429,
                "HTTP 429 Too Many Requests",
                Some(Duration::from_secs(120))
            )
        );
        assert_eq!(
            from_status(429, None, None, now()),
            failed(429, "HTTP 429 Too Many Requests", None)
        );
        assert_eq!(
            from_status(429, Some("whenever"), None, now()),
            failed(429, "HTTP 429 Too Many Requests", None)
        );
    }

    #[test]
    fn service_unavailable_takes_an_http_date() {
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(300));
        assert_eq!(
            from_status(503, Some(&date), None, now()),
            failed(
                503,
                "HTTP 503 Service Unavailable",
                Some(Duration::from_secs(300))
            )
        );
    }

    #[test]
    fn other_statuses_fail_without_retry_after() {
        let outcome = from_status(500, Some("60"), None, now());
        assert_eq!(outcome, failed(500, "HTTP 500 Internal Server Error", None));
        assert_eq!(outcome.label(), "failed");
        assert_eq!(
            from_status(404, None, None, now()),
            failed(404, "HTTP 404 Not Found", None)
        );
        assert_eq!(
            from_status(599, None, None, now()),
            failed(599, "HTTP 599", None)
        );
    }

    #[test]
    fn labels_of_transport_failures() {
        let transport = |definite_refusal| Outcome::Failed {
            status: None,
            error: String::new(),
            definite_refusal,
            retry_after: None,
        };
        assert_eq!(transport(true).label(), "refused");
        assert_eq!(transport(false).label(), "error");
    }

    #[test]
    fn shorten_respects_char_boundaries() {
        let text = "é".repeat(MAX_ERROR_CHARS + 5);
        let short = shorten(text);
        assert_eq!(short.chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(shorten("short".to_owned()), "short");
    }

    // === transport errors, against loopback only ===

    fn client(builder: reqwest::ClientBuilder) -> reqwest::Client {
        // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        builder
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a client builds")
    }

    async fn transport_error(client: &reqwest::Client, url: &str) -> reqwest::Error {
        let attempt = client.post(url).body("{}").send();
        let result = tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("the attempt ends");
        result.expect_err("the attempt fails")
    }

    fn assert_failed(outcome: &Outcome, definite: bool, needle: &str) {
        let Outcome::Failed {
            status,
            error,
            definite_refusal,
            retry_after,
        } = outcome
        else {
            panic!("not a failure: {outcome:?}");
        };
        assert_eq!(*status, None);
        assert_eq!(*definite_refusal, definite, "{error}");
        assert_eq!(*retry_after, None);
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        assert!(!error.contains("token"), "{error:?} leaks the query");
    }

    #[tokio::test]
    async fn refused_connection_is_a_definite_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
        let err = transport_error(&client(reqwest::Client::builder()), &url).await;
        let outcome = from_transport_error(&err);
        assert_failed(&outcome, true, "connect error");
        assert_eq!(outcome.label(), "refused");
    }

    #[tokio::test]
    async fn forbidden_destination_is_a_definite_refusal() {
        let builder = reqwest::Client::builder().dns_resolver(super::super::ssrf::GuardedResolver);
        let err = transport_error(&client(builder), "http://localhost:9/hook?token=s3cret").await;
        let outcome = from_transport_error(&err);
        assert_failed(&outcome, true, "allow_private_destinations");
        assert_eq!(outcome.label(), "refused");
    }

    #[tokio::test]
    async fn timeout_may_have_been_delivered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = tokio::spawn(async move {
            let (_connection, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let builder = reqwest::Client::builder().timeout(Duration::from_millis(200));
        let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
        let err = transport_error(&client(builder), &url).await;
        silent.abort();
        let outcome = from_transport_error(&err);
        assert_failed(&outcome, false, "timed out");
        assert_eq!(outcome.label(), "error");
    }

    #[tokio::test]
    async fn reset_may_have_been_delivered() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hang_up = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _read = connection.read(&mut request).await;
            drop(connection);
        });
        let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
        let err = transport_error(&client(reqwest::Client::builder()), &url).await;
        hang_up.abort();
        let outcome = from_transport_error(&err);
        assert_failed(&outcome, false, "request error");
        assert_eq!(outcome.label(), "error");
    }
}
