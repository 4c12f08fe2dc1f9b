//! Raw sections → a validated [`Config`]: the sections other than `[[instance]]` (see
//! `instance.rs`; a `[delivery]` table is checked by `delivery.rs`), and the final verdict.

use std::path::PathBuf;

use crate::tls::{self, TlsIdentity};

use super::check::{Checker, Reported};
use super::defaults::{
    DROPBOX_API_URL, DROPBOX_CONTENT_URL, DROPBOX_NOTIFY_URL, SERVER_MAX_BODY_BYTES,
    SERVER_MAX_BODY_BYTES_LIMIT, SERVER_SHUTDOWN_TIMEOUT, STORAGE_CACHE_BYTES, STORAGE_MAX_BYTES,
};
use super::document::{self, Sections};
use super::problem::quoted;
use super::raw::{RawAdmin, RawDropbox, RawServer, RawStorage, RawText};
use super::{
    Admin, Config, ConfigError, Delivery, DropboxApi, LoadContext, Loaded, Server, Storage, alerts,
    delivery, file_value, instance,
};

/// Parses and validates `text`; every problem found is in the error.
pub(crate) fn load_str(text: &str, ctx: &LoadContext) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let sections = document::read(text, &mut problems);
    let mut checker = Checker::new(ctx, problems);
    let config = match sections {
        Some(sections) => config(&mut checker, &sections, ctx),
        None => Err(Reported),
    };
    match config {
        Ok(config) if checker.problems.is_empty() => Ok(Loaded {
            config,
            warnings: checker.warnings,
        }),
        _ => {
            let mut problems = checker.problems;
            problems.sort_by_key(|problem| section_order(&problem.key));
            Err(ConfigError::Invalid {
                file: ctx.file.clone(),
                problems,
            })
        }
    }
}

/// Problems are listed section by section, in the order of docs/configuration.md (a stable sort
/// keeps the order within a section); keys outside any section come first.
fn section_order(key: &str) -> (usize, usize) {
    const SECTIONS: [&str; 6] = [
        "server", "admin", "storage", "delivery", "alerts", "dropbox",
    ];
    let section = key.split(['.', '[']).next().unwrap_or(key);
    if let Some(position) = SECTIONS.iter().position(|name| *name == section) {
        return (position + 1, 0);
    }
    let instance = key
        .strip_prefix("instance[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|index| index.parse::<usize>().ok());
    match instance {
        Some(index) => (SECTIONS.len() + 1, index),
        None => (0, 0),
    }
}

fn config(c: &mut Checker, sections: &Sections, ctx: &LoadContext) -> Result<Config, Reported> {
    let server = server(c, &sections.server, ctx);
    let admin = admin(c, &sections.admin);
    let storage = storage(c, &sections.storage, ctx);
    let delivery = delivery::check(c, &sections.delivery, "delivery", &Delivery::default());
    let dropbox = dropbox(c, &sections.dropbox);
    // With a broken `[delivery]`, instances are still checked, against the default values.
    let base = delivery.clone().unwrap_or_default();
    let alerts = alerts::check(c, &sections.alerts, &base);
    let instances = instance::all(c, &sections.instances, &base);
    delivery?;
    Ok(Config {
        source: ctx.file.clone(),
        server: server?,
        admin: admin?,
        storage: storage?,
        dropbox: dropbox?,
        alerts: alerts?,
        instances: instances?,
    })
}

fn server(c: &mut Checker, raw: &RawServer, ctx: &LoadContext) -> Result<Server, Reported> {
    let listen = c.socket_addr(raw.listen.as_ref(), "server.listen");
    let listen = c.required(listen, "server.listen");
    let key = "server.max_body_bytes";
    let max_body_bytes = c
        .size(raw.max_body_bytes.as_ref(), key, SERVER_MAX_BODY_BYTES)
        .and_then(|bytes| {
            if bytes > SERVER_MAX_BODY_BYTES_LIMIT {
                return Err(c.report(
                    key,
                    "must be at most 96KiB (larger records would reach sled's unsynced blob files)",
                    Some(bytes.to_string()),
                ));
            }
            Ok(bytes)
        });
    let shutdown_timeout = c.duration(
        raw.shutdown_timeout.as_ref(),
        "server.shutdown_timeout",
        SERVER_SHUTDOWN_TIMEOUT,
    );
    let tls = server_tls(c, raw, ctx);
    Ok(Server {
        listen: listen?,
        max_body_bytes: max_body_bytes?,
        shutdown_timeout: shutdown_timeout?,
        tls: tls?,
    })
}

/// `server.tls_cert` and `server.tls_key`: both or neither; when both, the files are read and
/// checked now (at `check`, at start and at every reload), so a bad pair is a config problem.
fn server_tls(
    c: &mut Checker,
    raw: &RawServer,
    ctx: &LoadContext,
) -> Result<Option<TlsIdentity>, Reported> {
    let cert = tls_path(c, raw.tls_cert.as_ref(), tls::CERT_KEY, ctx);
    let key = tls_path(c, raw.tls_key.as_ref(), tls::KEY_KEY, ctx);
    let both = "both server.tls_cert and server.tls_key, or neither, must be set";
    match (cert?, key?) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(c.report(tls::KEY_KEY, format!("is required: {both}"), None)),
        (None, Some(_)) => Err(c.report(tls::CERT_KEY, format!("is required: {both}"), None)),
        (Some((cert, cert_text)), Some((key, key_text))) => match TlsIdentity::load(&cert, &key) {
            Ok(identity) => {
                c.warnings
                    .extend(file_value::world_readable_warning(tls::KEY_KEY, &key));
                Ok(Some(identity))
            }
            Err(err) => {
                let shown = if err.key() == tls::CERT_KEY {
                    cert_text
                } else {
                    key_text
                };
                Err(c.report(err.key(), err.to_string(), Some(quoted(&shown))))
            }
        },
    }
}

/// A PEM file's path as written, and resolved from the config's folder (not from
/// `$CREDENTIALS_DIRECTORY`: those files are fixed at start, and reloads must see renewals).
fn tls_path(
    c: &mut Checker,
    raw: Option<&RawText>,
    key: &str,
    ctx: &LoadContext,
) -> Result<Option<(PathBuf, String)>, Reported> {
    let Some(text) = c.text(raw, key)? else {
        return Ok(None);
    };
    if text.is_empty() {
        return Err(c.report(key, "must not be empty", Some(quoted(&text))));
    }
    Ok(Some((ctx.base_dir.join(&text), text)))
}

fn admin(c: &mut Checker, raw: &RawAdmin) -> Result<Admin, Reported> {
    let listen = c.socket_addr(raw.listen.as_ref(), "admin.listen");
    let listen = c.required(listen, "admin.listen");
    let token = c.secret(raw.token.as_ref(), "admin.token");
    if let (Ok(address), Ok(None)) = (&listen, &token)
        && !address.ip().is_loopback()
    {
        let rule = "a non-loopback address requires admin.token";
        return Err(c.report("admin.listen", rule, Some(quoted(&address.to_string()))));
    }
    Ok(Admin {
        listen: listen?,
        token: token?,
    })
}

fn storage(c: &mut Checker, raw: &RawStorage, ctx: &LoadContext) -> Result<Storage, Reported> {
    let path = c.text(raw.path.as_ref(), "storage.path");
    let path = c.required(path, "storage.path").and_then(|path| {
        if path.is_empty() {
            return Err(c.report("storage.path", "must not be empty", Some(quoted(&path))));
        }
        Ok(ctx.base_dir.join(PathBuf::from(path)))
    });
    let max_bytes = c.size(
        raw.max_bytes.as_ref(),
        "storage.max_bytes",
        STORAGE_MAX_BYTES,
    );
    let cache_bytes = c.size(
        raw.cache_bytes.as_ref(),
        "storage.cache_bytes",
        STORAGE_CACHE_BYTES,
    );
    Ok(Storage {
        path: path?,
        max_bytes: max_bytes?,
        cache_bytes: cache_bytes?,
    })
}

fn dropbox(c: &mut Checker, raw: &RawDropbox) -> Result<DropboxApi, Reported> {
    let mut url = |raw: &Option<RawText>, key: &str, default: &str| {
        let fallback = RawText::Inline(default.to_owned());
        let checked = c.url(Some(raw.as_ref().unwrap_or(&fallback)), key);
        c.required(checked, key)
    };
    let api_url = url(&raw.api_url, "dropbox.api_url", DROPBOX_API_URL);
    let content_url = url(&raw.content_url, "dropbox.content_url", DROPBOX_CONTENT_URL);
    let notify_url = url(&raw.notify_url, "dropbox.notify_url", DROPBOX_NOTIFY_URL);
    Ok(DropboxApi {
        api_url: api_url?,
        content_url: content_url?,
        notify_url: notify_url?,
    })
}
