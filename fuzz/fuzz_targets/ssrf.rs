//! The destination guard: an IPv4 address and its IPv4-mapped and NAT64 spellings are judged
//! alike; `check_literal` agrees with `is_forbidden` on IP-literal URLs; arbitrary URL text
//! never panics and a refusal always names a forbidden address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hookrelay::config::Url;
use hookrelay::deliver::ssrf::{check_literal, is_forbidden};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        let v6 = Ipv6Addr::from_bits(u128::from_be_bytes(data[..16].try_into().unwrap()));
        let url = Url::parse(&format!("http://[{v6}]/")).unwrap();
        assert_eq!(
            check_literal(&url).is_err(),
            is_forbidden(IpAddr::V6(v6)),
            "{v6}"
        );
    }
    if data.len() >= 4 {
        let v4 = Ipv4Addr::from_bits(u32::from_be_bytes(data[..4].try_into().unwrap()));
        let forbidden = is_forbidden(IpAddr::V4(v4));
        let mapped = v4.to_ipv6_mapped();
        let nat64 = Ipv6Addr::from_bits((0x64_ff9b_u128 << 96) | u128::from(v4.to_bits()));
        assert_eq!(is_forbidden(IpAddr::V6(mapped)), forbidden, "{mapped}");
        assert_eq!(is_forbidden(IpAddr::V6(nat64)), forbidden, "{nat64}");
        for host in [
            v4.to_string(),
            v4.to_bits().to_string(),
            format!("0x{:x}", v4.to_bits()),
        ] {
            let url = Url::parse(&format!("http://{host}/")).unwrap();
            assert_eq!(check_literal(&url).is_err(), forbidden, "{host}");
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(url) = Url::parse(text)
        && let Err(err) = check_literal(&url)
    {
        assert!(is_forbidden(err.addr), "{text}");
    }
});
