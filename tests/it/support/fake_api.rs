//! `FakeDropboxApi`: the Dropbox API routes change events use (docs/change-events.md), on
//! `127.0.0.1:0`, over a scripted entry feed. A cursor is `c<N>`: the position in the feed.
//! Scripts: the next `list_folder/continue` answers a 409 reset, a 429 or a 500; the access
//! token can be expired (every call then answers 401 until a refresh); the refresh token can
//! be revoked (`invalid_grant`), or a refresh token's token calls made to hang. `issue_code` hands out a one-time OAuth code that
//! `grant_type=authorization_code` exchanges (with the matching `redirect_uri`) for a new
//! refresh token, which the fake then accepts besides [`REFRESH_TOKEN`].

use std::collections::{BTreeMap, HashMap};

use std::sync::{Arc, Mutex};

use super::server::{TestResponse, TestServer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use hyper::{Request, Response};

use serde_json::{Value, json};

/// The refresh token the fake accepts.
pub const REFRESH_TOKEN: &str = "rt-test-refresh";

#[derive(Default)]
struct Inner {
    account: String,
    feed: Vec<Value>,
    /// path_lower → (id, tag, path_display).
    tree: HashMap<String, (String, String, String)>,
    next_id: u64,
    page_size: usize,
    access: Option<String>,
    issued: u64,
    revoked: bool,
    account_in_token: bool,
    reset_next: bool,
    rate_limit_next: bool,
    fail_next: u32,
    calls: BTreeMap<String, u64>,
    /// The cursor of each answered `list_folder/continue`, in order.
    continued_from: Vec<String>,
    /// The code `issue_code` handed out and the redirect URI it is bound to; spent on use.
    code: Option<(String, String)>,
    /// Refresh tokens granted by code exchanges.
    granted: Vec<String>,
    /// The refresh token of the last `grant_type=refresh_token` call.
    last_refresh_token: Option<String>,
    /// Refresh tokens whose `oauth2/token` calls are never answered (a hanging endpoint).
    hanging: Vec<String>,
    /// How many such calls arrived.
    hung: u64,
}

pub struct FakeDropboxApi {
    inner: Arc<Mutex<Inner>>,
    server: TestServer,
}

impl FakeDropboxApi {
    pub async fn start(account: &str) -> FakeDropboxApi {
        let inner = Arc::new(Mutex::new(Inner {
            account: account.to_owned(),
            page_size: 2000,
            ..Inner::default()
        }));
        let state = inner.clone();
        let server = TestServer::start("the fake Dropbox API", move |req| {
            handle(state.clone(), req)
        })
        .await;
        FakeDropboxApi { inner, server }
    }

    /// `http://127.0.0.1:PORT`, for `[dropbox] api_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The `[dropbox]` table pointing at this fake.
    pub fn toml(&self) -> String {
        format!("[dropbox]\napi_url = \"{}\"", self.url())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// How many times a route was called (`2/files/list_folder/continue`, `oauth2/token`, …).
    pub fn calls(&self, route: &str) -> u64 {
        self.with(|i| i.calls.get(route).copied().unwrap_or(0))
    }

    /// The cursors `list_folder/continue` was answered for, in order (`c<N>`: after N entries).
    pub fn continued_from(&self) -> Vec<String> {
        self.with(|i| i.continued_from.clone())
    }

    pub fn set_page_size(&self, size: usize) {
        self.with(|i| i.page_size = size);
    }

    /// Whether the token answer names `account_id` (else the daemon must ask
    /// `users/get_current_account`).
    pub fn set_account_in_token(&self, yes: bool) {
        self.with(|i| i.account_in_token = yes);
    }

    pub fn expire_token(&self) {
        self.with(|i| i.access = None);
    }

    pub fn revoke_refresh_token(&self, revoked: bool) {
        self.with(|i| i.revoked = revoked);
    }

    pub fn reset_next(&self) {
        self.with(|i| i.reset_next = true);
    }

    pub fn rate_limit_next(&self) {
        self.with(|i| i.rate_limit_next = true);
    }

    pub fn fail_next(&self, times: u32) {
        self.with(|i| i.fail_next = times);
    }

    /// A one-time OAuth code bound to `redirect_uri`, as Dropbox shows after the consent page.
    pub fn issue_code(&self, redirect_uri: &str) -> String {
        let code = format!("ac-{}", ulid::Ulid::generate());
        self.with(|i| i.code = Some((code.clone(), redirect_uri.to_owned())));
        code
    }

    /// Every later `oauth2/token` call presenting `refresh_token` hangs: it is read and never
    /// answered (the connection stays open).
    pub fn hang_refresh(&self, refresh_token: &str) {
        self.with(|i| i.hanging.push(refresh_token.to_owned()));
    }

    /// How many token calls hang now (see [`FakeDropboxApi::hang_refresh`]).
    pub fn hung_refreshes(&self) -> u64 {
        self.with(|i| i.hung)
    }

    /// The refresh token the last refresh used.
    pub fn last_refresh_token(&self) -> Option<String> {
        self.with(|i| i.last_refresh_token.clone())
    }

    fn push(&self, entry: Value) {
        self.with(|i| i.feed.push(entry));
    }

    fn entry(tag: &str, id: &str, path: &str) -> Value {
        let name = path.rsplit('/').next().unwrap_or_default();
        let mut e = json!({".tag": tag, "name": name, "path_lower": path.to_lowercase(), "path_display": path});
        if tag != "deleted" {
            e["id"] = json!(id);
        }
        if tag == "file" {
            e["rev"] = json!("a1c10ce0dd78");
            e["size"] = json!(1);
            e["server_modified"] = json!("2026-01-01T00:00:00Z");
        }
        e
    }

    fn put(&self, tag: &str, path: &str) -> String {
        let id = self.with(|i| {
            let lower = path.to_lowercase();
            match i.tree.get(&lower) {
                Some((id, _, _)) => id.clone(),
                None => {
                    i.next_id += 1;
                    let id = format!("id:fake{}", i.next_id);
                    i.tree
                        .insert(lower, (id.clone(), tag.to_owned(), path.to_owned()));
                    id
                }
            }
        });
        self.push(Self::entry(tag, &id, path));
        id
    }

    /// A file created or modified at `path`; returns its id.
    pub fn write_file(&self, path: &str) -> String {
        self.put("file", path)
    }

    pub fn create_folder(&self, path: &str) -> String {
        self.put("folder", path)
    }

    /// A move: `deleted` at the old path, then the object at the new one (same id).
    pub fn rename(&self, from: &str, to: &str) -> String {
        let (id, tag, _) = self.with(|i| {
            i.tree
                .remove(&from.to_lowercase())
                .expect("renaming a path that does not exist")
        });
        self.with(|i| {
            i.tree
                .insert(to.to_lowercase(), (id.clone(), tag.clone(), to.to_owned()))
        });
        self.push(Self::entry("deleted", "", from));
        self.push(Self::entry(&tag, &id, to));
        id
    }

    /// A folder and everything under it moved from `from` to `to`, as a move of each object:
    /// for the folder, then for each object under it in path order, `deleted` at its old path
    /// followed by the object at its new path (same id). Returns (id, old path, new path) of
    /// each object under the folder, in feed order.
    pub fn move_folder(&self, from: &str, to: &str) -> Vec<(String, String, String)> {
        let (from_lower, to_lower) = (from.to_lowercase(), to.to_lowercase());
        self.with(|i| {
            let (id, tag, _) = i
                .tree
                .remove(&from_lower)
                .expect("moving a folder that does not exist");
            i.feed.push(Self::entry("deleted", "", from));
            i.feed.push(Self::entry(&tag, &id, to));
            i.tree.insert(to_lower.clone(), (id, tag, to.to_owned()));
            let below = format!("{from_lower}/");
            let mut children: Vec<String> = i
                .tree
                .keys()
                .filter(|p| p.starts_with(&below))
                .cloned()
                .collect();
            children.sort();
            let mut moved = Vec::with_capacity(children.len());
            for old_lower in children {
                let (id, tag, old) = i.tree.remove(&old_lower).expect("a listed child");
                let new = format!("{to}{}", &old[from.len()..]);
                i.feed.push(Self::entry("deleted", "", &old));
                i.feed.push(Self::entry(&tag, &id, &new));
                i.tree
                    .insert(new.to_lowercase(), (id.clone(), tag, new.clone()));
                moved.push((id, old, new));
            }
            moved
        })
    }

    pub fn delete(&self, path: &str) {
        self.with(|i| i.tree.remove(&path.to_lowercase()));
        self.push(Self::entry("deleted", "", path));
    }
}

fn reply(status: u16, body: Value, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (k, v) in headers {
        resp.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            hyper::header::HeaderValue::from_str(v).expect("value"),
        );
    }
    resp
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' if at + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).expect("a %XX escape"));
                at += 2;
            }
            other => out.push(other),
        }
        at += 1;
    }
    String::from_utf8(out).expect("UTF-8 form values")
}

/// `grant_type=authorization_code`: the issued code with its redirect URI, once.
fn exchange_code(i: &mut Inner, form: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let presented = (
        form.get("code").cloned().unwrap_or_default(),
        form.get("redirect_uri").cloned().unwrap_or_default(),
    );
    if i.code.as_ref() != Some(&presented) || form.get("client_secret").is_none() {
        return reply(
            400,
            json!({"error": "invalid_grant", "error_description": "code doesn't exist or has expired"}),
            &[],
        );
    }
    i.code = None;
    i.issued += 1;
    let refresh = format!("rt-granted-{}", i.issued);
    i.granted.push(refresh.clone());
    let token = format!("sl.fake-{}", i.issued);
    i.access = Some(token.clone());
    reply(
        200,
        json!({"access_token": token, "token_type": "bearer", "expires_in": 14400,
               "refresh_token": refresh, "account_id": i.account, "uid": "12345"}),
        &[],
    )
}

async fn handle(state: Arc<Mutex<Inner>>, req: Request<Incoming>) -> TestResponse {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let route = parts.uri.path().trim_start_matches('/').to_owned();
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if route == "oauth2/token" {
        let presented = form(&body).get("refresh_token").cloned();
        let hang = {
            let mut i = state.lock().unwrap();
            let hang = presented.is_some_and(|t| i.hanging.contains(&t));
            i.hung += u64::from(hang);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
    }
    let mut i = state.lock().unwrap();
    *i.calls.entry(route.clone()).or_insert(0) += 1;
    if route == "oauth2/token" {
        let form = form(&body);
        if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
            return Ok(exchange_code(&mut i, &form));
        }
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        i.last_refresh_token = Some(presented.clone());
        if i.revoked || (presented != REFRESH_TOKEN && !i.granted.contains(&presented)) {
            return Ok(reply(
                400,
                json!({"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}),
                &[],
            ));
        }
        i.issued += 1;
        let token = format!("sl.fake-{}", i.issued);
        i.access = Some(token.clone());
        let mut answer =
            json!({"access_token": token, "token_type": "bearer", "expires_in": 14400});
        if i.account_in_token {
            answer["account_id"] = json!(i.account);
        }
        return Ok(reply(200, answer, &[]));
    }
    if bearer.is_none() || bearer != i.access {
        return Ok(reply(
            401,
            json!({"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}),
            &[],
        ));
    }
    let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match route.as_str() {
        "2/users/get_current_account" => Ok(reply(200, json!({"account_id": i.account}), &[])),
        "2/files/list_folder/get_latest_cursor" => {
            assert_eq!(args["path"], "", "get_latest_cursor of the whole account");
            assert_eq!(args["recursive"], true, "get_latest_cursor recursive");
            Ok(reply(
                200,
                json!({"cursor": format!("c{}", i.feed.len())}),
                &[],
            ))
        }
        "2/files/list_folder/continue" => {
            if i.reset_next {
                i.reset_next = false;
                return Ok(reply(
                    409,
                    json!({"error_summary": "reset/..", "error": {".tag": "reset"}}),
                    &[],
                ));
            }
            if i.rate_limit_next {
                i.rate_limit_next = false;
                return Ok(reply(
                    429,
                    json!({"error_summary": "too_many_requests/", "error": {"reason": {".tag": "too_many_requests"}, "retry_after": 1}}),
                    &[("Retry-After", "1")],
                ));
            }
            if i.fail_next > 0 {
                i.fail_next -= 1;
                return Ok(reply(500, json!({"error": "internal"}), &[]));
            }
            let from: usize = args["cursor"]
                .as_str()
                .and_then(|c| c.strip_prefix('c'))
                .and_then(|n| n.parse().ok())
                .expect("a fake cursor");
            i.continued_from.push(format!("c{from}"));
            let end = (from + i.page_size).min(i.feed.len());
            let entries = i.feed[from.min(end)..end].to_vec();
            Ok(reply(
                200,
                json!({"entries": entries, "cursor": format!("c{end}"), "has_more": end < i.feed.len()}),
                &[],
            ))
        }
        _ => Ok(reply(404, json!({"error": "no such route"}), &[])),
    }
}
