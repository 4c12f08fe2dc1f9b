//! The destination guard (`deliver::ssrf`) against a reference classifier written as a plain table
//! of CIDR ranges (IANA's special-purpose registries, the ranges README and docs/configuration.md
//! promise to refuse), over random IPv4 and IPv6 addresses biased towards those ranges and their
//! edges, in every spelling: IPv4, IPv4-mapped, IPv4-compatible, NAT64 and 6to4; and for
//! `check_literal`, the URL forms `url` normalises (`0177.0.0.1`, `0x7f.1`, `2130706433`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hookrelay::deliver::ssrf::{check_literal, is_forbidden};
use proptest::prelude::*;

/// Refused IPv4 networks: "this network", private, CGNAT, loopback, link-local, IETF protocol
/// assignments, the three documentation nets, benchmarking, multicast, reserved + broadcast.
const V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Refused IPv6 networks (the IPv4-carrying ones are judged by what they carry, below).
const V6: &[&str] = &[
    "::/96",           // unspecified, loopback, deprecated IPv4-compatible
    "::ffff:0:0:0/96", // IPv4-translated (SIIT, RFC 6145), whatever it carries
    "100::/64",        // discard-only (RFC 6666)
    "2001::/32",       // Teredo (RFC 4380), whatever server and client it names
    "2001:2::/48",     // benchmarking (RFC 5180)
    "fc00::/7",        // unique local
    "fe80::/10",       // link-local
    "fec0::/10",       // deprecated site-local
    "ff00::/8",        // multicast
    "2001:db8::/32",   // documentation
    "3fff::/20",       // documentation (RFC 9637)
    "64:ff9b:1::/48",  // local-use NAT64 (RFC 8215)
];

/// Ranges the reference refuses and the daemon does not: none since the guard refuses
/// `3fff::/20` (RFC 9637) and `64:ff9b:1::/48` (RFC 8215) too; kept so a new finding can be
/// recorded here while it is open.
const KNOWN_GAPS: &[&str] = &[];

/// Not in the reference (noted, not asserted): `5f00::/16` (SRv6 SIDs, RFC 9602) reaches
/// nothing on the public Internet either.
fn parse_v4(cidr: &str) -> (u32, u32) {
    let (net, len) = cidr.split_once('/').expect("a CIDR");
    let net: Ipv4Addr = net.parse().expect("an IPv4 network");
    let len: u32 = len.parse().expect("a prefix length");
    (net.to_bits(), len)
}

fn parse_v6(cidr: &str) -> (u128, u32) {
    let (net, len) = cidr.split_once('/').expect("a CIDR");
    let net: Ipv6Addr = net.parse().expect("an IPv6 network");
    let len: u32 = len.parse().expect("a prefix length");
    (net.to_bits(), len)
}

fn in_v4(ip: u32, (net, len): (u32, u32)) -> bool {
    len == 0 || ip >> (32 - len) == net >> (32 - len)
}

fn in_v6(ip: u128, (net, len): (u128, u32)) -> bool {
    len == 0 || ip >> (128 - len) == net >> (128 - len)
}

fn reference_v4(ip: Ipv4Addr) -> bool {
    V4.iter().any(|c| in_v4(ip.to_bits(), parse_v4(c)))
}

/// The reference: IPv4 by table; IPv6 by table, or by the IPv4 it carries (mapped
/// `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16` with IPv4 in bits 16..48).
fn reference(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => reference_v4(v4),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            let carried = if in_v6(bits, parse_v6("::ffff:0:0/96"))
                || in_v6(bits, parse_v6("64:ff9b::/96"))
            {
                Some(Ipv4Addr::from_bits(bits as u32))
            } else if in_v6(bits, parse_v6("2002::/16")) {
                Some(Ipv4Addr::from_bits((bits >> 80) as u32))
            } else {
                None
            };
            V6.iter()
                .chain(KNOWN_GAPS)
                .any(|c| in_v6(bits, parse_v6(c)))
                || carried.is_some_and(reference_v4)
        }
    }
}

fn in_known_gap(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => KNOWN_GAPS.iter().any(|c| in_v6(v6.to_bits(), parse_v6(c))),
        IpAddr::V4(_) => false,
    }
}

/// IPv4 addresses: uniform, inside a table range, or just outside one.
fn v4() -> impl Strategy<Value = u32> {
    let ranges: Vec<(u32, u32)> = V4.iter().map(|c| parse_v4(c)).collect();
    let inside =
        (proptest::sample::select(ranges.clone()), any::<u32>()).prop_map(|((net, len), host)| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (net & mask) | (host & !mask)
        });
    let edges = (proptest::sample::select(ranges), any::<bool>(), 0u32..3).prop_map(
        |((net, len), above, off)| {
            let size = if len == 0 { 0 } else { 1u32 << (32 - len) };
            if above {
                net.wrapping_add(size).wrapping_add(off)
            } else {
                net.wrapping_sub(1 + off)
            }
        },
    );
    prop_oneof![2 => any::<u32>(), 3 => inside, 2 => edges]
}

/// IPv6 addresses: uniform, inside or next to a table range, or an IPv4 in an IPv6 spelling.
fn v6() -> impl Strategy<Value = u128> {
    let ranges: Vec<(u128, u32)> = V6
        .iter()
        .chain(KNOWN_GAPS)
        .chain(
            [
                "2001::/23",
                "2001:1::/32",
                "2002::/16",
                "64:ff9b::/96",
                "::ffff:0:0/96",
                "100::/64",
            ]
            .iter(),
        )
        .map(|c| parse_v6(c))
        .collect();
    let inside =
        (proptest::sample::select(ranges.clone()), any::<u128>()).prop_map(|((net, len), host)| {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            (net & mask) | (host & !mask)
        });
    let edges = (proptest::sample::select(ranges), any::<bool>(), 0u128..3).prop_map(
        |((net, len), above, off)| {
            let size = 1u128 << (128 - len);
            if above {
                net.wrapping_add(size).wrapping_add(off)
            } else {
                net.wrapping_sub(1 + off)
            }
        },
    );
    let embedded = (v4(), 0u8..6, any::<u64>()).prop_map(|(v4, form, noise)| {
        let v4 = u128::from(v4);
        match form {
            0 => (0xffffu128 << 32) | v4, // ::ffff:a.b.c.d
            1 => v4,                      // ::a.b.c.d
            2 => Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0).to_bits() | v4, // NAT64
            3 => (0xffffu128 << 48) | v4, // ::ffff:0:a.b.c.d (IPv4-translated)
            // Teredo: server IPv4 in bits 64..96, client IPv4 (inverted) in the low 32 bits.
            4 => (0x2001u128 << 112) | (v4 << 64) | u128::from(noise as u32 ^ u32::MAX),
            _ => (0x2002u128 << 112) | (v4 << 80) | u128::from(noise), // 6to4
        }
    });
    prop_oneof![2 => any::<u128>(), 3 => inside, 2 => edges, 4 => embedded]
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        v4().prop_map(|b| IpAddr::V4(Ipv4Addr::from_bits(b))),
        v6().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
    ]
}

/// The ways a URL can spell an IPv4 host that `url` turns into the dotted form.
fn v4_spellings(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    let bits = ip.to_bits();
    vec![
        ip.to_string(),
        bits.to_string(),
        format!("0x{bits:x}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("0x{a:x}.{b}.0x{c:x}.{d}"),
        format!("{a}.{}", bits & 0x00ff_ffff),
        format!("{a}.{b}.{}", bits & 0xffff),
    ]
}

proptest! {
    #![proptest_config(crate::cases(2048, 200_000))]

    #[test]
    fn is_forbidden_agrees_with_the_reference_table(ip in any_ip()) {
        prop_assume!(!in_known_gap(ip));
        prop_assert_eq!(is_forbidden(ip), reference(ip), "{}", ip);
    }

    #[test]
    fn check_literal_agrees_in_every_url_spelling(ip in any_ip(), port in proptest::option::of(1u16..)) {
        prop_assume!(!in_known_gap(ip));
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let hosts = match ip {
            IpAddr::V4(v4) => v4_spellings(v4),
            IpAddr::V6(v6) => vec![format!("[{v6}]"), format!("[{}]", full_v6(v6))],
        };
        for host in hosts {
            let text = format!("http://{host}{port}/hooks?x=1");
            let url = reqwest::Url::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let refused = check_literal(&url);
            prop_assert_eq!(refused.is_err(), reference(ip), "{} ({})", text, ip);
            if let Err(err) = refused {
                prop_assert!(is_forbidden(err.addr));
            }
        }
    }
}

/// All eight groups written out, e.g. `0:0:0:0:0:ffff:7f00:1`.
fn full_v6(ip: Ipv6Addr) -> String {
    ip.segments()
        .iter()
        .map(|s| format!("{s:x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn the_reference_table_holds_the_documented_examples() {
    for text in [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:c0a8:101::",
        "fd00::1",
        "fe80::1",
        "2001:db8::1",
        "100.64.0.1",
        "255.255.255.255",
        "224.0.0.1",
    ] {
        let ip: IpAddr = text.parse().unwrap();
        assert!(reference(ip), "{text}");
        assert!(is_forbidden(ip), "{text}");
    }
    for text in [
        "8.8.8.8",
        "2606:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:1::1",
        "2001:3::1",
    ] {
        let ip: IpAddr = text.parse().unwrap();
        assert!(!reference(ip), "{text}");
        assert!(!is_forbidden(ip), "{text}");
    }
}

#[test]
fn known_gaps_are_refused() {
    let mut passing = Vec::new();
    for text in [
        // IPv4-translated loopback and metadata, Teredo naming loopback, benchmarking,
        // discard-only.
        "::ffff:0:7f00:1",
        "::ffff:0:a9fe:a9fe",
        "2001:0:7f00:1::80ff:fffe",
        "2001:2::1",
        "100::1",
        "3fff::1",
        "3fff:fff:ffff::1",
        // 127.0.0.1 under the local-use NAT64 prefix with a /64 (RFC 6052 §2.2) layout.
        "64:ff9b:1:0:7f:0:100:0",
        // 10.0.0.1 with a /56 layout and non-zero suffix bits (which read as 8.8.8.8).
        "64:ff9b:1:a:0:1:808:808",
    ] {
        let ip: IpAddr = text.parse().unwrap();
        let url = reqwest::Url::parse(&format!("http://[{ip}]/hooks")).unwrap();
        if !is_forbidden(ip) || check_literal(&url).is_ok() {
            passing.push(text);
        }
    }
    assert!(
        passing.is_empty(),
        "these pass the destination guard: {passing:?}"
    );
}
