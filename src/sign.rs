//! Signatures, both ways, with no IO: checking Dropbox's `X-Dropbox-Signature` on what we receive,
//! and signing what we deliver with Cloud Elements' `Elements-Webhook-Signature` and Standard
//! Webhooks' `webhook-signature` (docs/protocol.md).
//!
//! Every MAC is HMAC-SHA256 over the raw bytes; nothing is re-serialised before signing or checking.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks symmetric secret.
const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// HMAC-SHA256 keyed with `key`.
fn keyed_mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// HMAC-SHA256 of `body` under `key`.
fn mac_of(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = keyed_mac(key);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

// === Dropbox (inbound) ===

/// Whether `signature_header` (an `X-Dropbox-Signature` value) is the hex HMAC-SHA256 of the raw
/// `body` under the app secret. Either hex case is accepted; the comparison is constant-time.
/// False for anything that is not exactly 64 hex digits (empty, odd length, non-hex).
pub fn verify_dropbox(app_secret: &[u8], body: &[u8], signature_header: &[u8]) -> bool {
    let mut claimed = [0u8; 32];
    if hex::decode_to_slice(signature_header, &mut claimed).is_err() {
        return false;
    }
    let mut mac = keyed_mac(app_secret);
    mac.update(body);
    mac.verify_slice(&claimed).is_ok()
}

/// The `X-Dropbox-Signature` Dropbox would send for `body` (lowercase hex); for tests and fakes.
pub fn dropbox_signature(app_secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac_of(app_secret, body))
}

// === Cloud Elements (outbound) ===

/// The `Elements-Webhook-Signature` value: `sha256=` + padded standard base64 of
/// HMAC-SHA256(key, body), the key being the configured signature key's bytes as written.
pub fn elements_signature(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", BASE64.encode(mac_of(key, body)))
}

// === Standard Webhooks (outbound) ===

/// A Standard Webhooks `whsec_…` secret, decoded to its key bytes. `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Decodes a `whsec_<standard base64>` key. `None` without the prefix, with a tail that is not
    /// valid padded standard base64, or with an empty key.
    pub fn parse(key: &str) -> Option<WebhookSecret> {
        let tail = key.strip_prefix(STANDARD_SECRET_PREFIX)?;
        let bytes = BASE64.decode(tail).ok()?;
        (!bytes.is_empty()).then_some(WebhookSecret(bytes))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One `webhook-signature` entry: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).
pub fn standard_signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = keyed_mac(&secret.0);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one `v1,` entry per key, the current key's first, then
/// the previous key's (during a rotation), space-separated. `None` when neither key is given.
pub fn standard_signature_header(
    current: Option<&WebhookSecret>,
    previous: Option<&WebhookSecret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    let entries: Vec<String> = [current, previous]
        .into_iter()
        .flatten()
        .map(|secret| standard_signature(secret, id, timestamp, body))
        .collect();
    (!entries.is_empty()).then(|| entries.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPBOX_SECRET: &[u8] = b"the_secret";
    const DROPBOX_BODY: &[u8] = br#"{"delta": {"users": [12345]}}"#;
    const DROPBOX_SIGNATURE: &str =
        "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529";

    const SW_KEY: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SW_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SW_TIMESTAMP: i64 = 1649367553;
    const SW_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SW_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn sw_secret() -> WebhookSecret {
        WebhookSecret::parse(SW_KEY).expect("the published key parses")
    }

    #[test]
    fn dropbox_published_vector() {
        assert_eq!(
            dropbox_signature(DROPBOX_SECRET, DROPBOX_BODY),
            DROPBOX_SIGNATURE
        );
        assert!(verify_dropbox(
            DROPBOX_SECRET,
            DROPBOX_BODY,
            DROPBOX_SIGNATURE.as_bytes()
        ));
    }

    #[test]
    fn dropbox_computed_vector() {
        let body = br#"{"list_folder": {"accounts": ["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]}, "delta": {"users": [4245623]}}"#;
        let expected = "b1f11e5fa932d1cdda98abb2fa2474ac42cabf9cb4a9fb1739ccc5647c918a70";
        assert_eq!(dropbox_signature(DROPBOX_SECRET, body), expected);
        assert!(verify_dropbox(DROPBOX_SECRET, body, expected.as_bytes()));
    }

    #[test]
    fn dropbox_accepts_uppercase_hex() {
        let upper = DROPBOX_SIGNATURE.to_ascii_uppercase();
        assert!(verify_dropbox(
            DROPBOX_SECRET,
            DROPBOX_BODY,
            upper.as_bytes()
        ));
    }

    #[test]
    fn dropbox_rejects_malformed_headers() {
        let odd_length = &DROPBOX_SIGNATURE[..63];
        let too_short = &DROPBOX_SIGNATURE[..62];
        let too_long = format!("{DROPBOX_SIGNATURE}00");
        let non_hex = format!("{}zz", &DROPBOX_SIGNATURE[..62]);
        let padded = format!(" {DROPBOX_SIGNATURE}");
        for header in ["", odd_length, too_short, &too_long, &non_hex, &padded] {
            assert!(
                !verify_dropbox(DROPBOX_SECRET, DROPBOX_BODY, header.as_bytes()),
                "accepted {header:?}"
            );
        }
    }

    #[test]
    fn dropbox_rejects_any_flipped_character() {
        for position in 0..DROPBOX_SIGNATURE.len() {
            let mut flipped = DROPBOX_SIGNATURE.as_bytes().to_vec();
            flipped[position] = if flipped[position] == b'0' {
                b'1'
            } else {
                b'0'
            };
            assert!(
                !verify_dropbox(DROPBOX_SECRET, DROPBOX_BODY, &flipped),
                "accepted a flip at {position}"
            );
        }
    }

    #[test]
    fn dropbox_rejects_wrong_secret_or_body() {
        let signature = DROPBOX_SIGNATURE.as_bytes();
        assert!(!verify_dropbox(b"other_secret", DROPBOX_BODY, signature));
        assert!(!verify_dropbox(
            DROPBOX_SECRET,
            br#"{"delta":{"users":[12345]}}"#,
            signature
        ));
    }

    #[test]
    fn elements_published_vector() {
        assert_eq!(
            elements_signature(
                b"MySecretEventSignatureKey",
                b"<INSERT_EVENT_NOTIFICATION_RESPONSE_BODY>"
            ),
            "sha256=jHdbRx5EZAsOfTwAPJOGkNUzQMVVdu5VJlxcsk+G6jQ="
        );
    }

    #[test]
    fn elements_churros_vector() {
        let body = br#"{"message":{"elementKey":"dropbox","eventId":"evt_1","instanceId":42,"events":[{"elementKey":"dropbox","eventType":"CREATED","objectType":"files","objectId":"id:a4ayc_80_OEAAAAAAAAAXw","date":"2015-05-12T15:50:38Z"}],"raw":{}}}"#;
        assert_eq!(
            elements_signature(b"abcd1234efgh5678", body),
            "sha256=A1xX/Sd0EKda0nek4v6BAdxfLK/RC0sc8RD0WvEUrbs="
        );
    }

    #[test]
    fn elements_key_is_used_as_written_even_when_whsec() {
        // Cloud Elements signs with the key's UTF-8 bytes, never its decoded tail.
        let as_written = elements_signature(SW_KEY.as_bytes(), SW_BODY);
        let decoded = elements_signature(&sw_secret().0, SW_BODY);
        assert_ne!(as_written, decoded);
    }

    #[test]
    fn standard_published_vector() {
        assert_eq!(
            standard_signature(&sw_secret(), SW_ID, SW_TIMESTAMP, SW_BODY),
            SW_SIGNATURE
        );
        assert_ne!(
            standard_signature(&sw_secret(), SW_ID, SW_TIMESTAMP, b"{}"),
            SW_SIGNATURE
        );
    }

    #[test]
    fn webhook_secret_parse() {
        assert_eq!(sw_secret().0.len(), 24);
        assert!(WebhookSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_none());
        assert!(WebhookSecret::parse("whsec_").is_none());
        assert!(WebhookSecret::parse("whsec_not base64!").is_none());
        assert!(WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD").is_none());
        assert!(WebhookSecret::parse("whsec_YQ").is_none(), "unpadded");
        assert!(WebhookSecret::parse("MySecretEventSignatureKey").is_none());
    }

    #[test]
    fn webhook_secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", sw_secret()), "***");
        assert_eq!(format!("{:?}", Some(sw_secret())), "Some(***)");
    }

    #[test]
    fn standard_header_lists_current_then_previous() {
        let current = sw_secret();
        let previous =
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let header = standard_signature_header(
            Some(&current),
            Some(&previous),
            SW_ID,
            SW_TIMESTAMP,
            SW_BODY,
        )
        .expect("two keys give a header");
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], SW_SIGNATURE);
        assert_eq!(
            entries[1],
            standard_signature(&previous, SW_ID, SW_TIMESTAMP, SW_BODY)
        );
    }

    #[test]
    fn standard_header_with_one_or_no_key() {
        let secret = sw_secret();
        let only_current =
            standard_signature_header(Some(&secret), None, SW_ID, SW_TIMESTAMP, SW_BODY);
        let only_previous =
            standard_signature_header(None, Some(&secret), SW_ID, SW_TIMESTAMP, SW_BODY);
        assert_eq!(only_current.as_deref(), Some(SW_SIGNATURE));
        assert_eq!(only_previous.as_deref(), Some(SW_SIGNATURE));
        assert_eq!(
            standard_signature_header(None, None, SW_ID, SW_TIMESTAMP, SW_BODY),
            None
        );
    }

    /// Headers as a consumer using the reference `standardwebhooks` crate receives them.
    fn received_headers(id: &str, timestamp: i64, signature: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature.to_owned()),
        ] {
            let value = reqwest::header::HeaderValue::from_str(&value).expect("header-safe");
            headers.insert(name, value);
        }
        headers
    }

    fn now_unix() -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        i64::try_from(since_epoch.as_secs()).expect("fits")
    }

    #[test]
    fn reference_crate_verifies_our_header_with_either_key() {
        const CURRENT: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        const PREVIOUS: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const STRANGER: &str = "whsec_dGhpcyBrZXkgc2lnbmVkIG5vdGhpbmcgaGVyZQ==";
        let (current, previous) = (
            WebhookSecret::parse(CURRENT).expect("valid"),
            WebhookSecret::parse(PREVIOUS).expect("valid"),
        );
        let timestamp = now_unix();
        let body = br#"{"message":{"eventId":"01JDQ8"}}"#;
        let header =
            standard_signature_header(Some(&current), Some(&previous), "01JDQ8", timestamp, body)
                .expect("two keys");
        let headers = received_headers("01JDQ8", timestamp, &header);

        for key in [CURRENT, PREVIOUS] {
            let consumer = standardwebhooks::Webhook::new(key).expect("valid key");
            consumer.verify(body, &headers).expect("verifies");
        }
        let stranger = standardwebhooks::Webhook::new(STRANGER).expect("valid key");
        assert!(stranger.verify(body, &headers).is_err());
        let consumer = standardwebhooks::Webhook::new(CURRENT).expect("valid key");
        assert!(consumer.verify(b"{}", &headers).is_err());
    }

    #[test]
    fn reference_crate_signs_like_us() {
        let reference = standardwebhooks::Webhook::new(SW_KEY).expect("valid key");
        let theirs = reference
            .sign(SW_ID, SW_TIMESTAMP, SW_BODY)
            .expect("utf-8 body");
        assert_eq!(
            theirs,
            standard_signature(&sw_secret(), SW_ID, SW_TIMESTAMP, SW_BODY)
        );
    }
}
