//! A small Dropbox API client: the routes change events use (docs/change-events.md), against
//! `[dropbox] api_url`, and the classification of Dropbox's errors. Tokens are never logged.

use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::RETRY_AFTER;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::retry;

/// Per-request bound.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Wait on a 429 that names no delay (the SDK's choice).
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);
/// The longest wait a 429 can ask for: a larger `retry_after` (or `Retry-After`) waits this
/// long, then the call is tried again (and waits again if Dropbox still refuses).
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);
/// An access token's lifetime when the token endpoint names none (Dropbox's is 4 hours).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// The longest lifetime an access token is taken to have, whatever `expires_in` says: it is
/// refreshed at the latest a day after it was issued.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What went wrong with a Dropbox call, as far as the walk is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 401: the access token is expired or invalid; refresh once and retry.
    Unauthorized,
    /// 409 `reset`: the cursor is no longer valid.
    Reset,
    /// 429: wait this long.
    RateLimited(Duration),
    /// 400 `invalid_grant` from the token endpoint: the refresh token was revoked.
    InvalidGrant,
    /// 5xx, a timeout or a network error: back off and retry.
    Transient(String),
    /// Anything else (a route error, a bad request): logged, backed off and retried.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized => f.write_str("401 unauthorized (access token)"),
            ApiError::Reset => f.write_str("409 reset (cursor invalidated)"),
            ApiError::RateLimited(wait) => write!(f, "429 rate limited for {wait:?}"),
            ApiError::InvalidGrant => f.write_str("invalid_grant (refresh token revoked)"),
            ApiError::Transient(e) => write!(f, "transient: {e}"),
            ApiError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Classifies a non-2xx answer of a Dropbox RPC or token call.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> ApiError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let summary = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("{status}: {text}")
    };
    match status {
        401 => ApiError::Unauthorized,
        409 if json["error"][".tag"] == "reset" => ApiError::Reset,
        429 => {
            let from_body = json["error"]["retry_after"]
                .as_u64()
                .map(Duration::from_secs);
            let from_header =
                retry_after.and_then(|value| retry::parse_retry_after(value, SystemTime::now()));
            let wait = from_body.or(from_header).unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
            ApiError::RateLimited(wait.min(MAX_RATE_LIMIT_WAIT))
        }
        400 if json["error"] == "invalid_grant" => ApiError::InvalidGrant,
        500..=599 => ApiError::Transient(summary()),
        _ => ApiError::Other(summary()),
    }
}

/// One page of `list_folder/continue`.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    pub entries: Vec<Value>,
    pub cursor: String,
    pub has_more: bool,
}

/// The token endpoint's answer.
#[derive(Clone, Deserialize)]
pub struct Token {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
}

impl Token {
    /// How long the access token lives: `expires_in`, at most [`MAX_TOKEN_LIFETIME`] (a value
    /// from the network never reaches clock arithmetic unbounded).
    pub fn lifetime(&self) -> Duration {
        self.expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(MAX_TOKEN_LIFETIME)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
}

impl Api {
    pub fn new() -> Result<Api, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(TIMEOUT)
            .build()?;
        Ok(Api { client })
    }

    async fn rpc(
        &self,
        base: &Url,
        route: &str,
        token: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let url = join(base, route)?;
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| ApiError::Transient(e.without_url().to_string()))?;
        read(response).await
    }

    /// `list_folder/get_latest_cursor` of the whole account (`path ""`, recursive).
    pub async fn latest_cursor(&self, base: &Url, token: &str) -> Result<String, ApiError> {
        let body = json!({"path": "", "recursive": true});
        let value = self
            .rpc(base, "2/files/list_folder/get_latest_cursor", token, &body)
            .await?;
        value["cursor"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Other("get_latest_cursor: no cursor in the answer".into()))
    }

    /// `list_folder/continue`.
    pub async fn continue_from(
        &self,
        base: &Url,
        token: &str,
        cursor: &str,
    ) -> Result<Page, ApiError> {
        let value = self
            .rpc(
                base,
                "2/files/list_folder/continue",
                token,
                &json!({"cursor": cursor}),
            )
            .await?;
        serde_json::from_value(value)
            .map_err(|e| ApiError::Other(format!("list_folder/continue: unexpected answer: {e}")))
    }

    /// `users/get_current_account`: the token's `account_id`.
    pub async fn current_account(&self, base: &Url, token: &str) -> Result<String, ApiError> {
        let value = self
            .rpc(base, "2/users/get_current_account", token, &Value::Null)
            .await?;
        value["account_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Other("get_current_account: no account_id".into()))
    }

    /// `/oauth2/token` with `grant_type=refresh_token`.
    pub async fn refresh(
        &self,
        base: &Url,
        app_key: &str,
        app_secret: &str,
        refresh_token: &str,
    ) -> Result<Token, ApiError> {
        self.token(
            base,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", app_key),
                ("client_secret", app_secret),
            ],
        )
        .await
    }

    /// `/oauth2/token` with `grant_type=authorization_code`.
    pub async fn exchange_code(
        &self,
        base: &Url,
        app_key: &str,
        app_secret: &str,
        code: &str,
        redirect_uri: &str,
    ) -> Result<Token, ApiError> {
        self.token(
            base,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("client_id", app_key),
                ("client_secret", app_secret),
            ],
        )
        .await
    }

    async fn token(&self, base: &Url, form: &[(&str, &str)]) -> Result<Token, ApiError> {
        let url = join(base, "oauth2/token")?;
        let response = self
            .client
            .post(url)
            .form(form)
            .send()
            .await
            .map_err(|e| ApiError::Transient(e.without_url().to_string()))?;
        let value = read(response).await?;
        serde_json::from_value(value)
            .map_err(|_| ApiError::Other("oauth2/token: unexpected answer".into()))
    }
}

fn join(base: &Url, route: &str) -> Result<Url, ApiError> {
    let text = format!("{}/{route}", base.as_str().trim_end_matches('/'));
    Url::parse(&text).map_err(|e| ApiError::Other(format!("bad api_url: {e}")))
}

async fn read(response: reqwest::Response) -> Result<Value, ApiError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .map_err(|e| ApiError::Transient(e.without_url().to_string()))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body)
            .map_err(|e| ApiError::Other(format!("{status} with a body that is not JSON: {e}")));
    }
    Err(classify(status, retry_after.as_deref(), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropbox_errors_are_classified() {
        let cases: Vec<(u16, Option<&str>, &str, ApiError)> = vec![
            (
                401,
                None,
                r#"{"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}"#,
                ApiError::Unauthorized,
            ),
            (
                409,
                None,
                r#"{"error_summary": "reset/..", "error": {".tag": "reset"}}"#,
                ApiError::Reset,
            ),
            (
                429,
                Some("7"),
                "too many requests",
                ApiError::RateLimited(Duration::from_secs(7)),
            ),
            (
                429,
                Some("7"),
                r#"{"error": {"reason": {".tag": "too_many_requests"}, "retry_after": 3}}"#,
                ApiError::RateLimited(Duration::from_secs(3)),
            ),
            (
                429,
                None,
                "",
                ApiError::RateLimited(DEFAULT_RATE_LIMIT_WAIT),
            ),
            (
                400,
                None,
                r#"{"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}"#,
                ApiError::InvalidGrant,
            ),
        ];
        for (status, retry_after, body, expected) in cases {
            assert_eq!(
                classify(status, retry_after, body.as_bytes()),
                expected,
                "{status} {body}"
            );
        }
        assert!(matches!(
            classify(503, None, b"busy"),
            ApiError::Transient(_)
        ));
        assert!(matches!(classify(500, None, b""), ApiError::Transient(_)));
        assert!(matches!(
            classify(409, None, br#"{"error": {".tag": "path"}}"#),
            ApiError::Other(_)
        ));
        assert!(matches!(
            classify(400, None, b"bad input"),
            ApiError::Other(_)
        ));
    }

    #[test]
    fn waits_and_lifetimes_from_the_network_are_bounded() {
        let huge = u64::MAX.to_string();
        let body = format!(r#"{{"error": {{"retry_after": {huge}}}}}"#);
        for (header, body) in [
            (Some(huge.as_str()), ""),
            (Some("Fri, 31 Dec 9999 23:59:59 GMT"), ""),
            (None, body.as_str()),
        ] {
            assert_eq!(
                classify(429, header, body.as_bytes()),
                ApiError::RateLimited(MAX_RATE_LIMIT_WAIT),
                "{header:?} {body}"
            );
        }
        let token = |expires_in| Token {
            access_token: "sl.token".into(),
            expires_in,
            refresh_token: None,
            account_id: None,
        };
        assert_eq!(token(Some(u64::MAX)).lifetime(), MAX_TOKEN_LIFETIME);
        assert_eq!(token(Some(14_400)).lifetime(), Duration::from_secs(14_400));
        assert_eq!(token(None).lifetime(), Duration::from_secs(14_400));
        assert_eq!(token(Some(0)).lifetime(), Duration::ZERO);
    }

    #[test]
    fn routes_join_the_base_url() {
        let base = Url::parse("http://127.0.0.1:9/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            join(&base, "oauth2/token").map(|u| u.to_string()),
            Ok("http://127.0.0.1:9/oauth2/token".to_owned())
        );
    }

    #[test]
    fn token_debug_hides_the_token() {
        let token = Token {
            access_token: "sl.secret".into(),
            expires_in: Some(14_400),
            refresh_token: None,
            account_id: None,
        };
        assert!(!format!("{token:?}").contains("sl.secret"));
    }
}
