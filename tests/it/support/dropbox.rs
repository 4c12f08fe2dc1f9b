//! What Dropbox sends: signed notifications (docs/protocol.md) and challenges.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::http::{Reply, client, send};

/// A Dropbox app: `oauth.api.key` and `oauth.api.secret`.
#[derive(Debug, Clone)]
pub struct App {
    pub key: String,
    pub secret: String,
}

impl App {
    /// An app with this key and a fresh random secret (15 lowercase alphanumerics, like Dropbox's).
    pub fn new(key: &str) -> App {
        let secret: String = random_chars(15).to_lowercase();
        App {
            key: key.to_owned(),
            secret,
        }
    }
}

/// `n` random characters from Crockford's base32 alphabet (upper case letters and digits).
fn random_chars(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        // The last 16 characters of a ULID are its 80 random bits.
        out.push_str(&ulid::Ulid::generate().to_string()[10..]);
    }
    out.truncate(n);
    out
}

/// A fresh, valid, random Dropbox account id: `dbid:` + 35 characters.
pub fn account_id() -> String {
    format!("dbid:AA{}", random_chars(33))
}

/// `X-Dropbox-Signature` for `body`: lowercase hex HMAC-SHA256 under the app secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A notification body the way Dropbox writes it (Python-style `": "` and `", "` separators).
pub fn notification_body(accounts: &[&str]) -> String {
    let accounts: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "{{\"list_folder\": {{\"accounts\": [{}]}}, \"delta\": {{\"users\": [12345]}}}}",
        accounts.join(", ")
    )
}

/// POSTs `body` signed with `secret`; the status, or the transport error.
pub async fn try_post_notification(url: &str, secret: &str, body: &str) -> Result<u16, String> {
    let sig = sign(secret, body.as_bytes());
    post_raw(
        url,
        &[
            ("Content-Type", "application/json"),
            ("X-Dropbox-Signature", &sig),
        ],
        body.as_bytes().to_vec(),
    )
    .await
    .map(|r| r.status)
}

/// POSTs `body` signed with `secret` and returns the status (panics on transport errors).
pub async fn post_notification(url: &str, secret: &str, body: &str) -> u16 {
    try_post_notification(url, secret, body)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// POSTs `body` with exactly these extra headers (none added but what HTTP needs).
pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply, String> {
    let mut req = client().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

/// Posts a notification for each account (one account per body, each signed) and asserts 200.
/// Returns the bodies in order.
pub async fn notify_each(url: &str, app: &App, accounts: &[String]) -> Vec<String> {
    let mut bodies = Vec::new();
    for account in accounts {
        let body = notification_body(&[account]);
        let status = post_notification(url, &app.secret, &body).await;
        assert_eq!(status, 200, "notification for {account} answered {status}");
        bodies.push(body);
    }
    bodies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_the_published_vector() {
        assert_eq!(
            sign("the_secret", br#"{"delta": {"users": [12345]}}"#),
            "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529"
        );
    }

    #[test]
    fn sign_matches_the_computed_list_folder_vector() {
        let body = r#"{"list_folder": {"accounts": ["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]}, "delta": {"users": [4245623]}}"#;
        assert_eq!(
            sign("the_secret", body.as_bytes()),
            "b1f11e5fa932d1cdda98abb2fa2474ac42cabf9cb4a9fb1739ccc5647c918a70"
        );
    }

    #[test]
    fn notification_body_has_dropbox_spacing() {
        assert_eq!(
            notification_body(&["dbid:a", "dbid:b"]),
            r#"{"list_folder": {"accounts": ["dbid:a", "dbid:b"]}, "delta": {"users": [12345]}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&notification_body(&["dbid:a"])).unwrap();
        assert_eq!(v["list_folder"]["accounts"][0], "dbid:a");
    }

    #[test]
    fn account_ids_are_valid_and_unique() {
        let a = account_id();
        let b = account_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 40, "{id}");
            assert!(id.starts_with("dbid:"));
            assert!(
                id[5..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{id}"
            );
        }
    }

    #[test]
    fn app_secrets_differ() {
        assert_ne!(App::new("a").secret, App::new("a").secret);
    }
}
