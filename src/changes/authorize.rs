//! `authorize` (docs/change-events.md): turns the OAuth code Dropbox gave the operator into the
//! instance's refresh token, learns which account it covers, takes that account's first cursor, and
//! keeps all of it in one durable batch. The admin API runs it inside the daemon (which then uses
//! the new credentials at once); the CLI runs it on a stopped daemon's store.
//!
//! The stored refresh token takes precedence over `oauth.refresh_token` in the config: it is
//! the newer grant. An account authorized again keeps its cursor, so changes made while the
//! instance needed `authorize` are still reported.

use std::time::Duration;

use super::api::{Api, ApiError};
use crate::config::{Config, EventsMode, Instance};
use crate::store::{self, AuthorizationV1, Store};
use crate::time;

/// What `authorize` did.
#[derive(Debug)]
pub struct Authorized {
    pub account: String,
    /// True when the account's first cursor was taken now; false when it already had one.
    pub cursor_taken: bool,
    /// The access token the exchange returned, so the daemon need not refresh at once.
    pub access_token: String,
    pub expires_in: Duration,
}

/// Why `authorize` failed; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("no instance named {0:?} in the configuration")]
    UnknownInstance(String),
    #[error(
        "instance {0:?} does not use change events (events = \"changes\"), so it needs no `authorize`"
    )]
    NotChanges(String),
    #[error(
        "instance {0:?} has no configuration \"oauth.callback.url\": the code is tied to the redirect URI it was issued for"
    )]
    NoRedirectUri(String),
    #[error(
        "Dropbox refused the code (invalid_grant): it is wrong, expired (codes last minutes) or already used; authorize again in the browser for a new one"
    )]
    CodeRefused,
    #[error(
        "Dropbox returned no refresh token: the authorization URL must include token_access_type=offline"
    )]
    NoRefreshToken,
    #[error("Dropbox call failed: {0}")]
    Dropbox(ApiError),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl AuthorizeError {
    /// The operator's mistake (a wrong name or code), as opposed to a failure of Dropbox or
    /// of the store.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            AuthorizeError::UnknownInstance(_)
                | AuthorizeError::NotChanges(_)
                | AuthorizeError::NoRedirectUri(_)
                | AuthorizeError::CodeRefused
                | AuthorizeError::NoRefreshToken
        )
    }
}

/// The configured change-events instance `name` (enabled or not: an operator may authorize
/// before enabling it).
pub fn changes_instance<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a Instance, AuthorizeError> {
    let instance = config
        .instance(name)
        .ok_or_else(|| AuthorizeError::UnknownInstance(name.to_owned()))?;
    if instance.events != EventsMode::Changes {
        return Err(AuthorizeError::NotChanges(name.to_owned()));
    }
    Ok(instance)
}

/// Exchanges `code`, finds the account, takes its latest cursor and stores the credentials.
pub async fn authorize(
    api: &Api,
    store: &Store,
    config: &Config,
    name: &str,
    code: &str,
) -> Result<Authorized, AuthorizeError> {
    let instance = changes_instance(config, name)?;
    let redirect_uri = instance
        .oauth_callback_url
        .as_ref()
        .ok_or_else(|| AuthorizeError::NoRedirectUri(name.to_owned()))?;
    let base = &config.dropbox.api_url;
    let token = api
        .exchange_code(
            base,
            &instance.app_key,
            instance.app_secret.expose(),
            code.trim(),
            redirect_uri.as_str(),
        )
        .await
        .map_err(|err| match err {
            ApiError::InvalidGrant => AuthorizeError::CodeRefused,
            other => AuthorizeError::Dropbox(other),
        })?;
    let refresh_token = token
        .refresh_token
        .clone()
        .ok_or(AuthorizeError::NoRefreshToken)?;
    let access_token = token.access_token.clone();
    let account = match token.account_id.clone() {
        Some(account) => account,
        None => api
            .current_account(base, &access_token)
            .await
            .map_err(AuthorizeError::Dropbox)?,
    };
    let cursor = api
        .latest_cursor(base, &access_token)
        .await
        .map_err(AuthorizeError::Dropbox)?;
    let authorization = AuthorizationV1 {
        account: account.clone(),
        refresh_token,
        authorized_ms: time::now_ms(),
    };
    let cursor_taken = store.authorize(name, authorization, &cursor).await?;
    Ok(Authorized {
        account,
        cursor_taken,
        access_token,
        expires_in: token.lifetime(),
    })
}
