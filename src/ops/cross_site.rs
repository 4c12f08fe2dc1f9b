//! The guard in front of every admin request that changes something (`POST /admin/*`): a web
//! page open in a browser on the host must not be able to drive the admin API, which needs no
//! token on loopback by default.
//!
//! - `Origin`: browsers send it on cross-origin requests and on every `POST` a page makes; the
//!   CLI and scripts never do. Any `Origin` is refused (403).
//! - `Host` (and the authority of an absolute-form target, if any): must name the admin
//!   listener itself, so that a page whose own name was re-pointed at 127.0.0.1 (DNS
//!   rebinding) is refused (403). Accepted: the listener's IP address with its port; on a
//!   loopback listener also `localhost` with the port; on a wildcard listener (`0.0.0.0`,
//!   `[::]`) any IP address with the port (a rebound page always sends its name, never an IP
//!   literal). The port may be left out only when the listener is on port 80.
//! - `Content-Type`: must be `application/json` (parameters such as `charset` allowed), which a
//!   page cannot send across sites without a CORS preflight that the admin listener never
//!   grants; anything else, or none, is refused (415 Unsupported Media Type).

use std::net::{IpAddr, SocketAddr};

use hyper::header::{CONTENT_TYPE, HOST, ORIGIN};
use hyper::{HeaderMap, StatusCode, Uri};

/// Why a changing admin request was refused before its body was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("admin requests that change something must not carry an Origin header")]
    Origin,
    #[error("Host must be the admin listener's address ({listen}), got {got}")]
    Host { listen: SocketAddr, got: String },
    #[error("Content-Type must be application/json, got {got}")]
    ContentType { got: String },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Origin | Refusal::Host { .. } => StatusCode::FORBIDDEN,
            Refusal::ContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// Checks the headers of a changing admin request received on the listener bound to `listen`.
///
/// # Errors
/// The first rule broken, in the order `Origin`, `Host`, `Content-Type`.
pub fn check(headers: &HeaderMap, uri: &Uri, listen: SocketAddr) -> Result<(), Refusal> {
    if headers.contains_key(ORIGIN) {
        return Err(Refusal::Origin);
    }
    let hosts: Vec<&str> = headers
        .get_all(HOST)
        .iter()
        .map(|value| value.to_str().unwrap_or(""))
        .collect();
    let host_ok = match hosts.as_slice() {
        [host] => names_listener(host, listen),
        _ => false,
    };
    let target_ok = uri
        .authority()
        .is_none_or(|authority| names_listener(authority.as_str(), listen));
    if !host_ok || !target_ok {
        let got = match hosts.as_slice() {
            [] => "none".to_owned(),
            [host] if target_ok => format!("{host:?}"),
            _ if !target_ok => format!("{:?} in the request target", uri.to_string()),
            several => format!("{} Host headers", several.len()),
        };
        return Err(Refusal::Host { listen, got });
    }
    let content_types: Vec<&str> = headers
        .get_all(CONTENT_TYPE)
        .iter()
        .map(|value| value.to_str().unwrap_or(""))
        .collect();
    match content_types.as_slice() {
        [value] if is_json(value) => Ok(()),
        [] => Err(Refusal::ContentType {
            got: "none".to_owned(),
        }),
        values => Err(Refusal::ContentType {
            got: format!("{:?}", values.join(", ")),
        }),
    }
}

/// `application/json`, in any case, with or without parameters.
fn is_json(value: &str) -> bool {
    let media_type = value.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// Whether `host` (a `Host` value: `name[:port]`, `ip[:port]` or `[ipv6][:port]`) names the
/// listener bound to `listen` (see the module doc).
fn names_listener(host: &str, listen: SocketAddr) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    let port_ok = match port {
        Some(port) => port == listen.port(),
        None => listen.port() == 80,
    };
    if !port_ok {
        return false;
    }
    let listen_ip = listen.ip().to_canonical();
    match name.parse::<IpAddr>() {
        Ok(ip) => listen_ip.is_unspecified() || ip.to_canonical() == listen_ip,
        Err(_) => {
            let name = name.strip_suffix('.').unwrap_or(name);
            name.eq_ignore_ascii_case("localhost")
                && (listen_ip.is_loopback() || listen_ip.is_unspecified())
        }
    }
}

/// `name[:port]` or `[ipv6][:port]` → (name without brackets, port); `None` when malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        match after {
            "" => (name, None),
            _ => (name, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            // A bare IPv6 address has colons but no brackets: not a valid Host.
            Some((name, _)) if name.contains(':') => return None,
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                value.parse().unwrap_or_else(|e| panic!("{value}: {e}")),
            );
        }
        map
    }

    fn origin_form() -> Uri {
        Uri::from_static("/admin/dead/purge")
    }

    #[test]
    fn the_hosts_a_listener_answers_to() {
        let cases: [(&str, &str, bool); 24] = [
            ("127.0.0.1:9464", "127.0.0.1:9464", true),
            ("127.0.0.1:9464", "localhost:9464", true),
            ("127.0.0.1:9464", "LOCALHOST:9464", true),
            ("127.0.0.1:9464", "localhost.:9464", true),
            ("127.0.0.1:9464", "[::ffff:127.0.0.1]:9464", true),
            ("127.0.0.1:9464", "127.0.0.1:9465", false),
            ("127.0.0.1:9464", "127.0.0.1", false),
            ("127.0.0.1:9464", "127.0.0.2:9464", false),
            ("127.0.0.1:9464", "[::1]:9464", false),
            ("127.0.0.1:9464", "rebound.example:9464", false),
            ("127.0.0.1:9464", "localhost.rebound.example:9464", false),
            ("127.0.0.1:9464", "127.0.0.1:9464:9464", false),
            ("127.0.0.1:9464", "127.0.0.1:+9464", false),
            ("127.0.0.1:9464", "", false),
            ("127.0.0.1:80", "127.0.0.1", true),
            ("127.0.0.1:80", "localhost", true),
            ("[::1]:9464", "[::1]:9464", true),
            ("[::1]:9464", "localhost:9464", true),
            ("[::1]:9464", "::1:9464", false),
            ("[::1]:9464", "127.0.0.1:9464", false),
            ("0.0.0.0:9464", "10.1.2.3:9464", true),
            ("[::]:9464", "[::1]:9464", true),
            ("0.0.0.0:9464", "admin.example:9464", false),
            ("10.1.2.3:9464", "localhost:9464", false),
        ];
        for (listen, host, expected) in cases {
            assert_eq!(
                names_listener(host, addr(listen)),
                expected,
                "Host {host:?} on a listener at {listen}"
            );
        }
    }

    #[test]
    fn what_the_cli_sends_passes() {
        // reqwest's `.json()`: `Host: ip:port` as dialled, `Content-Type: application/json`.
        for listen in ["127.0.0.1:9464", "[::1]:9464", "127.0.0.1:80"] {
            let listen = addr(listen);
            let host = if listen.port() == 80 {
                listen.ip().to_string()
            } else {
                listen.to_string()
            };
            let sent = headers(&[("host", &host), ("content-type", "application/json")]);
            assert_eq!(check(&sent, &origin_form(), listen), Ok(()), "{listen}");
        }
    }

    #[test]
    fn refusals_in_order() {
        let listen = addr("127.0.0.1:9464");
        let check = |pairs: &[(&'static str, &str)]| check(&headers(pairs), &origin_form(), listen);
        let ok = [
            ("host", "127.0.0.1:9464"),
            ("content-type", "Application/JSON; charset=utf-8"),
        ];
        assert_eq!(check(&ok), Ok(()));
        let with_origin = [
            ("host", "127.0.0.1:9464"),
            ("content-type", "text/plain"),
            ("origin", "http://127.0.0.1:9464"),
        ];
        assert_eq!(check(&with_origin), Err(Refusal::Origin));
        let refused = check(&[("content-type", "application/json")]).expect_err("no Host");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let two_hosts = [
            ("host", "127.0.0.1:9464"),
            ("host", "evil.example:9464"),
            ("content-type", "application/json"),
        ];
        assert!(matches!(check(&two_hosts), Err(Refusal::Host { .. })));
        for content_type in [
            vec![],
            vec![("content-type", "text/plain")],
            vec![("content-type", "application/jsonp")],
            vec![("content-type", "multipart/form-data; boundary=x")],
            vec![
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
        ] {
            let mut pairs = vec![("host", "127.0.0.1:9464")];
            pairs.extend(content_type.iter().copied());
            let refused = check(&pairs).expect_err("not JSON");
            assert_eq!(
                refused.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn an_absolute_form_target_must_name_the_listener_too() {
        let listen = addr("127.0.0.1:9464");
        let sent = headers(&[
            ("host", "127.0.0.1:9464"),
            ("content-type", "application/json"),
        ]);
        let foreign = Uri::from_static("http://evil.example:9464/admin/dead/purge");
        assert!(matches!(
            check(&sent, &foreign, listen),
            Err(Refusal::Host { .. })
        ));
        let own = Uri::from_static("http://127.0.0.1:9464/admin/dead/purge");
        assert_eq!(check(&sent, &own, listen), Ok(()));
    }
}
