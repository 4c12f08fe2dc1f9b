//! The destination guard: unless `allow_private_destinations` is set, a callback may not reach
//! loopback, private, link-local, CGNAT, unspecified, documentation, benchmarking, discard-only,
//! multicast or reserved addresses, in any of their IPv4, IPv4-mapped or IPv4-embedding IPv6
//! spellings, nor IPv6 transition addresses that would tunnel to an IPv4 address unchecked
//! (IPv4-translated, Teredo).
//!
//! Two checks, both needed: [`check_literal`] for URLs whose host is an IP literal (no DNS lookup
//! happens for those), and [`GuardedResolver`] for host names, which filters the resolved
//! addresses at connect time so that a name cannot be re-pointed after a check (DNS rebinding).
//!
//! Through an egress proxy neither can run at connect time: the proxy resolves the name and
//! connects. [`check_before_proxy`] therefore resolves the name itself before the request is
//! handed over and refuses it when any address it resolves to is forbidden (the proxy may pick
//! any of them). What a proxy can still do: resolve the name again, with its own resolver and at
//! a later moment, and connect wherever that answer says (a name re-pointed between the two
//! lookups, or one only the proxy's network knows), and reach whatever its own network reaches.
//! The proxy's own rules must refuse internal destinations; this check keeps a callback URL
//! from naming one outright.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A callback address refused by the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "destination {addr} is not allowed (private, loopback or reserved; set allow_private_destinations = true to allow)"
)]
pub struct ForbiddenDestination {
    pub addr: IpAddr,
}

/// Forbidden IPv4 networks, as (network, prefix length).
const FORBIDDEN_V4: [(Ipv4Addr, u8); 14] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT shared space
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// Forbidden IPv6 networks, as (network, prefix length). Well-known NAT64 and 6to4 are judged
/// by the IPv4 address they carry ([`embedded_v4`]) instead.
const FORBIDDEN_V6: [(Ipv6Addr, u8); 12] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // ::, ::1 and IPv4-compatible ::a.b.c.d
    // IPv4-translated ::ffff:0:a.b.c.d (SIIT): a translator turns it into any IPv4 address.
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    // Teredo: a relay tunnels to the client's IPv4 address, whatever it is.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48), // benchmarking
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),    // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),   // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),   // deprecated site-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),    // multicast
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),   // documentation (RFC 9637)
    // Local-use NAT64 (RFC 8215): private by definition, and its translators may embed the
    // IPv4 address at several offsets, so the whole /48 is refused.
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
];

/// Whether `ip` is forbidden as a callback destination (see the module doc). IPv4-mapped
/// addresses are judged as the IPv4 address they carry, as are well-known NAT64
/// (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses; local-use NAT64 (`64:ff9b:1::/48`) is
/// refused whole.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let bits = ip.to_bits();
    FORBIDDEN_V4
        .iter()
        .any(|&(network, prefix)| bits & v4_mask(prefix) == network.to_bits())
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let bits = ip.to_bits();
    let in_forbidden_range = FORBIDDEN_V6
        .iter()
        .any(|&(network, prefix)| bits & v6_mask(prefix) == network.to_bits());
    in_forbidden_range || embedded_v4(ip).is_some_and(is_forbidden_v4)
}

/// The IPv4 address carried by a NAT64 or 6to4 address (IPv4-mapped ones are canonicalised
/// before this, and IPv4-compatible ones are all in `::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    let well_known_nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0).to_bits();
    let six_to_four = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0).to_bits();
    if bits & v6_mask(96) == well_known_nat64 {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    if bits & v6_mask(16) == six_to_four {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Checks a callback URL whose host is an IP literal; a host name passes (the resolver checks
/// it at connect time). The `url` crate has already normalised forms like `0177.0.0.1`,
/// `0x7f.1` and `2130706433` to `127.0.0.1`.
///
/// # Errors
///
/// [`ForbiddenDestination`] when the literal is a forbidden address.
pub fn check_literal(url: &reqwest::Url) -> Result<(), ForbiddenDestination> {
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    match unbracketed.parse::<IpAddr>() {
        Ok(addr) if is_forbidden(addr) => Err(ForbiddenDestination { addr }),
        _ => Ok(()),
    }
}

/// Why a callback reached through a proxy is refused before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum ProxyCheckError {
    #[error(transparent)]
    Forbidden(#[from] ForbiddenDestination),
    #[error(
        "cannot resolve {host} to check it before sending through the proxy: {reason} (set allow_private_destinations = true if only the proxy can resolve it)"
    )]
    Unresolved { host: String, reason: String },
}

/// Checks a callback URL that is about to go through an egress proxy: an IP literal as
/// [`check_literal`] does, a host name by resolving it here (within `timeout`) and refusing it
/// when any of its addresses is forbidden. A name that does not resolve here is refused too: it
/// cannot be checked (see the module doc for what the proxy can still do).
///
/// # Errors
///
/// [`ProxyCheckError::Forbidden`] naming a forbidden address; [`ProxyCheckError::Unresolved`]
/// when the lookup fails, times out or finds nothing.
pub async fn check_before_proxy(url: &Url, timeout: Duration) -> Result<(), ProxyCheckError> {
    check_literal(url)?;
    // `domain()` is `None` for an IP literal, checked above.
    let Some(host) = url.domain() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(0);
    let unresolved = |reason: String| ProxyCheckError::Unresolved {
        host: host.to_owned(),
        reason,
    };
    let resolved: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(err)) => return Err(unresolved(err.to_string())),
            Err(_) => return Err(unresolved(format!("no answer within {timeout:?}"))),
        };
    if resolved.is_empty() {
        return Err(unresolved("no addresses".to_owned()));
    }
    every_address_allowed(&resolved)?;
    Ok(())
}

/// `Ok` when none of `resolved` is forbidden, else the first forbidden one.
fn every_address_allowed(resolved: &[SocketAddr]) -> Result<(), ForbiddenDestination> {
    match resolved
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| is_forbidden(*ip))
    {
        Some(addr) => Err(ForbiddenDestination { addr }),
        None => Ok(()),
    }
}

/// A reqwest DNS resolver that resolves with the system resolver and drops forbidden addresses.
/// When none remain the lookup fails with [`ForbiddenDestination`], so the connection attempt
/// fails: the check happens at connect time, on the addresses actually connected to.
///
/// Install it with `reqwest::ClientBuilder::dns_resolver(GuardedResolver)` unless
/// `allow_private_destinations` is set; pair it with [`check_literal`] for IP-literal URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addresses(resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The resolved addresses that are not forbidden.
///
/// # Errors
///
/// [`ForbiddenDestination`] naming the first address when all of them are forbidden; an empty
/// input gives an empty output (the connector reports that itself).
fn allowed_addresses(resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, ForbiddenDestination> {
    let first = resolved.first().map(SocketAddr::ip);
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| !is_forbidden(addr.ip()))
        .collect();
    match first {
        Some(addr) if allowed.is_empty() => Err(ForbiddenDestination { addr }),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test addresses parse")
    }

    #[test]
    fn forbidden_addresses() {
        for text in [
            "127.0.0.1",
            "127.255.255.254",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::1",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            // IPv4-translated (SIIT), whatever IPv4 it carries.
            "::ffff:0:7f00:1",
            "::ffff:0:808:808",
            "0:0:0:0:ffff:0:ffff:ffff",
            // Teredo, whatever server and client it names.
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
            // Benchmarking.
            "2001:2::1",
            "2001:2:0:ffff:ffff:ffff:ffff:ffff",
            // Discard-only.
            "100::",
            "100::ffff:ffff:ffff:ffff",
        ] {
            assert!(is_forbidden(ip(text)), "{text} should be forbidden");
        }
    }

    #[test]
    fn allowed_addresses_are_public() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "fe7f::1",
            "2001:db9::1",
            // Just outside the ranges above.
            "::fffe:0:7f00:1",
            "::1:0:0:0",
            "2001:1::1",
            "2001:2:1::1",
            "2001:3::1",
            "100:0:0:1::",
            "ff::ffff:ffff:ffff:ffff",
        ] {
            assert!(!is_forbidden(ip(text)), "{text} should be allowed");
        }
    }

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).expect("test URLs parse")
    }

    #[test]
    fn check_literal_rejects_obfuscated_loopback() {
        for text in [
            "http://127.0.0.1/",
            "http://0177.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1:8080/hook",
            "http://[::ffff:127.0.0.1]/",
            "https://[::1]:443/",
            "http://[fe80::1]/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let err = check_literal(&url(text)).expect_err(text);
            assert!(is_forbidden(err.addr), "{text}");
        }
    }

    #[test]
    fn check_literal_reports_the_address() {
        let err = check_literal(&url("http://0x7f.1/")).expect_err("loopback");
        assert_eq!(err.addr, ip("127.0.0.1"));
        let message = err.to_string();
        assert!(message.contains("127.0.0.1"), "{message}");
        assert!(message.contains("allow_private_destinations"), "{message}");
    }

    #[test]
    fn check_literal_passes_names_and_public_literals() {
        for text in [
            "http://example.com/",
            "https://localhost/",
            "https://8.8.8.8/hook",
            "https://[2606:4700::1111]/",
        ] {
            assert_eq!(check_literal(&url(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn allowed_addresses_filters_and_fails_when_nothing_is_left() {
        let public = SocketAddr::new(ip("8.8.8.8"), 0);
        let loopback = SocketAddr::new(ip("127.0.0.1"), 0);
        let metadata = SocketAddr::new(ip("169.254.169.254"), 0);
        assert_eq!(allowed_addresses(vec![loopback, public]), Ok(vec![public]));
        assert_eq!(
            allowed_addresses(vec![loopback, metadata]),
            Err(ForbiddenDestination {
                addr: loopback.ip()
            })
        );
        assert_eq!(allowed_addresses(Vec::new()), Ok(Vec::new()));
    }

    #[test]
    fn through_a_proxy_one_forbidden_address_is_enough_to_refuse() {
        let public = SocketAddr::new(ip("8.8.8.8"), 443);
        let loopback = SocketAddr::new(ip("::1"), 443);
        assert_eq!(every_address_allowed(&[public]), Ok(()));
        assert_eq!(
            every_address_allowed(&[public, loopback]),
            Err(ForbiddenDestination {
                addr: loopback.ip()
            })
        );
    }

    #[tokio::test]
    async fn check_before_proxy_resolves_names_and_checks_literals() {
        let timeout = std::time::Duration::from_secs(10);
        for text in [
            "http://localhost:9/hooks",
            "https://LOCALHOST/",
            "http://[::1]/",
        ] {
            let refused = check_before_proxy(&url(text), timeout).await;
            match refused {
                Err(ProxyCheckError::Forbidden(err)) => assert!(err.addr.is_loopback(), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let public = check_before_proxy(&url("https://8.8.8.8/hook"), timeout).await;
        assert!(public.is_ok(), "{public:?}");
    }

    #[tokio::test]
    async fn guarded_resolver_refuses_localhost() {
        let name: Name = "localhost".parse().expect("a valid name");
        let lookup = GuardedResolver.resolve(name);
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), lookup)
            .await
            .expect("resolving localhost is quick");
        let Err(err) = result else {
            panic!("localhost resolved to allowed addresses");
        };
        let forbidden = err
            .downcast_ref::<ForbiddenDestination>()
            .expect("fails with ForbiddenDestination");
        assert!(forbidden.addr.is_loopback());
    }
}
