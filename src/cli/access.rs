//! How `status` and `dead …` reach the queue: through the running daemon's admin API, or,
//! when nothing listens on `admin.listen`, by opening the store directly (sled lets one
//! process at a time open it).
//!
//! | admin.listen | store | path |
//! |---|---|---|
//! | accepts a connection | – | admin API (`Authorization: Bearer` when `admin.token` is set; 401 → 77) |
//! | refused or silent | opens | offline, then closed again |
//! | refused or silent | locked by another process | exit 69: the daemon is needed but unreachable |
//! | refused or silent | does not exist yet | offline with nothing in it |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{EXIT_FAILURE, EXIT_NOPERM, EXIT_UNAVAILABLE, Failure};
use crate::config::{Config, Secret};
use crate::store::{self, Store};

/// How long to wait for the admin listener to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one admin request may take (a replay of many letters is a few batches).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound of [`AdminClient::post_long`].
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// The way in.
pub enum Access {
    Daemon(AdminClient),
    Offline(Offline),
}

/// The admin API of a running daemon.
pub struct AdminClient {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

/// The store of a stopped daemon; `None` when there is none yet (never started).
pub struct Offline {
    pub store: Option<Store>,
    pub path: PathBuf,
}

impl Access {
    /// The daemon if it accepts connections on `admin.listen`, else the store.
    ///
    /// # Errors
    /// 69 when the daemon does not answer but holds the store; 1 when the store cannot be
    /// opened for another reason or the client cannot be built.
    pub async fn open(config: &Config) -> Result<Access, Failure> {
        let addr = dialable(config.admin.listen);
        let refused =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(_connection)) => return AdminClient::new(addr, config).map(Access::Daemon),
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            };
        let path = config.storage.path.clone();
        if !path.join("db").exists() {
            return Ok(Access::Offline(Offline { store: None, path }));
        }
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || store::open_offline(&path)).await
        };
        match opened {
            Ok(Ok(store)) => Ok(Access::Offline(Offline {
                store: Some(store),
                path,
            })),
            Ok(Err(err)) if err.is_locked() => Err(Failure::new(
                EXIT_UNAVAILABLE,
                format!(
                    "the daemon does not answer on admin.listen {addr} ({refused}), but another \
                     process holds the store at {} (hookrelay starting or stopping, or another \
                     command); try again in a moment, or see `systemctl status hookrelay`",
                    path.display()
                ),
            )),
            Ok(Err(err)) => Err(Failure::new(EXIT_FAILURE, err.to_string())),
            Err(err) => Err(Failure::new(EXIT_FAILURE, err.to_string())),
        }
    }

    /// Lets go of the store (offline), so the daemon can start.
    pub async fn close(self) -> Result<(), Failure> {
        match self {
            Access::Daemon(_) => Ok(()),
            Access::Offline(Offline {
                store: Some(store), ..
            }) => store
                .close()
                .await
                .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string())),
            Access::Offline(Offline { store: None, .. }) => Ok(()),
        }
    }
}

/// Where to connect for a listen address: a wildcard listener is reached on loopback.
pub(super) fn dialable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

impl AdminClient {
    fn new(addr: SocketAddr, config: &Config) -> Result<AdminClient, Failure> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Failure::new(EXIT_FAILURE, format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(AdminClient {
            base: format!("http://{addr}"),
            token: config.admin.token.clone(),
            http,
        })
    }

    /// Where the daemon was reached, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (with its query) → JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `GET path` → JSON, or `None` when the daemon answers 404 (it has no such thing).
    pub async fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, Failure> {
        self.send_or_missing(self.http.get(format!("{}{path}", self.base)), true)
            .await
    }

    /// `POST path` with a JSON body → JSON, for work whose length grows with the store (a
    /// replay or purge of many dead letters, done a page at a time): waits up to
    /// [`LONG_REQUEST_TIMEOUT`].
    pub async fn post_long<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(LONG_REQUEST_TIMEOUT)
            .json(body);
        self.send(request).await
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        self.send_or_missing(request, false)
            .await?
            .ok_or_else(|| Failure::new(EXIT_FAILURE, format!("no answer from {}", self.base)))
    }

    /// Sends `request`; with `missing_is_none`, a 404 is `Ok(None)` rather than a failure.
    async fn send_or_missing<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
        missing_is_none: bool,
    ) -> Result<Option<T>, Failure> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let unreachable = |e: reqwest::Error| {
            Failure::new(
                EXIT_UNAVAILABLE,
                format!("the daemon at {} stopped answering: {e}", self.base),
            )
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let hint = if self.token.is_some() {
                "the daemon rejected admin.token of this config"
            } else {
                "the daemon requires an admin token, and this config sets no admin.token"
            };
            return Err(Failure::new(
                EXIT_NOPERM,
                format!("{hint} (401 from {})", self.base),
            ));
        }
        if missing_is_none && status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(Failure::new(
                EXIT_FAILURE,
                format!("the daemon answered {status}: {detail}"),
            ));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Failure::new(
                EXIT_FAILURE,
                format!("unexpected answer from {}: {e}", self.base),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_dialled_on_loopback() {
        let dial = |s: &str| dialable(s.parse().unwrap_or_else(|e| panic!("{e}"))).to_string();
        assert_eq!(dial("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(dial("[::]:9464"), "[::1]:9464");
        assert_eq!(dial("10.1.2.3:9464"), "10.1.2.3:9464");
    }
}
