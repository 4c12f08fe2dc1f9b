//! Checking a delivery's signatures (docs/protocol.md): Cloud Elements'
//! `Elements-Webhook-Signature` recomputed here, Standard Webhooks' `webhook-signature` with the
//! `standardwebhooks` crate.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::callback::Recorded;

/// `sha256=` + padded standard base64 of HMAC-SHA256(key bytes, body): Cloud Elements' scheme.
pub fn elements_signature(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a delivery's signatures for `key` (docs/protocol.md): `Elements-Webhook-Signature`
/// always, `webhook-signature` with the `standardwebhooks` crate for a `whsec_` key (and its
/// absence for any other key).
pub fn verify_signatures(req: &Recorded, key: &str) -> Result<(), String> {
    let expected = elements_signature(key, &req.body);
    match req.header("Elements-Webhook-Signature") {
        Some(got) if got == expected => {}
        Some(got) => {
            return Err(format!(
                "Elements-Webhook-Signature is {got:?}, expected {expected:?}"
            ));
        }
        None => return Err("no Elements-Webhook-Signature header".into()),
    }
    if key.starts_with("whsec_") {
        verify_standard(req, key)
    } else if let Some(got) = req.header("webhook-signature") {
        Err(format!(
            "webhook-signature {got:?} sent for a key that is not a whsec_ key"
        ))
    } else {
        Ok(())
    }
}

/// Checks `webhook-signature` (one of its `v1,` entries) for a `whsec_` key with the
/// `standardwebhooks` crate (timestamp tolerance ±5 min).
pub fn verify_standard(req: &Recorded, key: &str) -> Result<(), String> {
    let wh = standardwebhooks::Webhook::new(key).map_err(|e| format!("bad whsec_ key: {e}"))?;
    wh.verify(&req.body, &req.headers)
        .map_err(|e| format!("webhook-signature does not verify with {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::HeaderMap;
    use std::time::Instant;

    fn recorded(body: &str, headers: &[(&str, String)]) -> Recorded {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Recorded {
            method: "POST".into(),
            path: "/".into(),
            headers: map,
            body: Bytes::from(body.to_owned()),
            at: Instant::now(),
            answered: Some(200),
        }
    }

    #[test]
    fn elements_signature_matches_the_published_vector() {
        assert_eq!(
            elements_signature(
                "MySecretEventSignatureKey",
                b"<INSERT_EVENT_NOTIFICATION_RESPONSE_BODY>"
            ),
            "sha256=jHdbRx5EZAsOfTwAPJOGkNUzQMVVdu5VJlxcsk+G6jQ="
        );
    }

    #[test]
    fn verify_signatures_checks_both_schemes() {
        let key = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let body = r#"{"message":{}}"#;
        let id = "01JDQ8ZZZZZZZZZZZZZZZZZZZZ";
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let v1 = standardwebhooks::Webhook::new(key)
            .unwrap()
            .sign(id, ts, body.as_bytes())
            .unwrap();
        let good = recorded(
            body,
            &[
                (
                    "Elements-Webhook-Signature",
                    elements_signature(key, body.as_bytes()),
                ),
                ("webhook-id", id.into()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", v1.clone()),
            ],
        );
        verify_signatures(&good, key).unwrap();
        assert!(verify_signatures(&good, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());

        let no_std = recorded(
            body,
            &[(
                "Elements-Webhook-Signature",
                elements_signature(key, body.as_bytes()),
            )],
        );
        assert!(verify_signatures(&no_std, key).is_err());

        let plain = "plain-key";
        let ok_plain = recorded(
            body,
            &[(
                "Elements-Webhook-Signature",
                elements_signature(plain, body.as_bytes()),
            )],
        );
        verify_signatures(&ok_plain, plain).unwrap();
        let extra = recorded(
            body,
            &[
                (
                    "Elements-Webhook-Signature",
                    elements_signature(plain, body.as_bytes()),
                ),
                ("webhook-signature", v1),
            ],
        );
        assert!(verify_signatures(&extra, plain).is_err());
        assert!(verify_signatures(&recorded(body, &[]), plain).is_err());
    }
}
