//! `sign`: Dropbox verification accepts exactly the right HMAC (either hex case) and never
//! panics; the outbound signatures match independent computations (the `standardwebhooks`
//! crate for Standard Webhooks).

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use hookrelay::sign::{
    WebhookSecret, dropbox_signature, elements_signature, standard_signature, verify_dropbox,
};
use proptest::prelude::*;
use sha2::Sha256;

fn reference_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A header that is the right signature with each letter's case chosen by `cases`.
fn recase(hex: &str, cases: &[bool]) -> Vec<u8> {
    hex.bytes()
        .zip(cases.iter().cycle())
        .map(|(b, upper)| if *upper { b.to_ascii_uppercase() } else { b })
        .collect()
}

proptest! {
    #![proptest_config(crate::cases(256, 20_000))]

    #[test]
    fn verification_accepts_exactly_the_right_hmac_in_any_case(
        secret in proptest::collection::vec(any::<u8>(), 0..80),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        header in proptest::collection::vec(any::<u8>(), 0..140),
    ) {
        let right = reference_hex(&secret, &body);
        prop_assert_eq!(dropbox_signature(&secret, &body), right.clone());
        // Arbitrary header bytes: never a panic, true only for the right MAC.
        prop_assert_eq!(
            verify_dropbox(&secret, &body, &header),
            header.eq_ignore_ascii_case(right.as_bytes())
        );
    }

    #[test]
    fn the_right_hmac_verifies_in_every_case_mix_and_any_other_digit_does_not(
        secret in proptest::collection::vec(any::<u8>(), 0..80),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        cases in proptest::collection::vec(any::<bool>(), 64),
        position in 0usize..64,
        replacement in any::<u8>(),
        extra in proptest::collection::vec(any::<u8>(), 1..4),
    ) {
        let right = reference_hex(&secret, &body);
        let header = recase(&right, &cases);
        prop_assert!(verify_dropbox(&secret, &body, &header));
        let mut changed = header.clone();
        changed[position] = replacement;
        prop_assert_eq!(
            verify_dropbox(&secret, &body, &changed),
            changed.eq_ignore_ascii_case(right.as_bytes())
        );
        let mut longer = header.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(!verify_dropbox(&secret, &body, &longer));
        prop_assert!(!verify_dropbox(&secret, &body, &header[..position]));
        // A different body never verifies with this signature (no collisions in practice).
        let mut other = body.clone();
        other.push(replacement);
        prop_assert!(!verify_dropbox(&secret, &other, &header));
    }

    #[test]
    fn outbound_signatures_match_independent_computations(
        key in proptest::collection::vec(any::<u8>(), 1..=64),
        id in "[0-9A-Z]{26}",
        timestamp in 0i64..4_102_444_800,
        // The reference library signs UTF-8 payloads only (ours are JSON).
        body in ".{0,200}".prop_map(String::into_bytes),
        plain_key in ".{0,40}",
    ) {
        let whsec = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let secret = WebhookSecret::parse(&whsec).expect("a valid whsec_ key parses");
        prop_assert_eq!(format!("{secret:?}"), "***");
        let ours = standard_signature(&secret, &id, timestamp, &body);
        let reference = standardwebhooks::Webhook::new(&whsec)
            .expect("the reference accepts the key")
            .sign(&id, timestamp, &body)
            .expect("the reference signs");
        prop_assert_eq!(ours, reference);

        let mut mac = Hmac::<Sha256>::new_from_slice(plain_key.as_bytes()).expect("any key");
        mac.update(&body);
        let expected = format!(
            "sha256={}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        prop_assert_eq!(elements_signature(plain_key.as_bytes(), &body), expected);
    }

    #[test]
    fn whsec_parsing_never_panics_and_needs_the_prefix_and_base64(text in ".{0,100}") {
        let parsed = WebhookSecret::parse(&text);
        let valid = text
            .strip_prefix("whsec_")
            .and_then(|tail| base64::engine::general_purpose::STANDARD.decode(tail).ok())
            .is_some_and(|bytes| !bytes.is_empty());
        prop_assert_eq!(parsed.is_some(), valid);
    }
}
