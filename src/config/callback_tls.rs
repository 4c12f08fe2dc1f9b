//! A `[delivery]` table's TLS settings towards consumers: `client_cert` and `client_key` (a
//! client certificate: both or neither) and `ca_file` (roots trusted in addition to the
//! system's), read and checked at load, so `check`, start and reload refuse a bad file alike.
//!
//! `client_cert` and `ca_file` are paths, from the config's folder. `client_key` is a path too,
//! or `{ file = … }`, whose file (found in the credentials directory first) holds the PEM key.
//! A table that sets none of a setting's keys inherits it.

use std::path::PathBuf;

use crate::tls::client::{
    CA_FILE, CLIENT_CERT, CLIENT_KEY, ClientIdentity, ClientTlsError, ExtraRoots,
};

use super::check::{Checker, Reported};
use super::file_value;
use super::problem::{child, quoted};
use super::raw::{RawDelivery, RawText};

/// `client_cert` and `client_key` of the table at `path`, or `inherited` when it sets neither.
pub(crate) fn identity(
    c: &mut Checker,
    raw: &RawDelivery,
    path: &str,
    inherited: Option<&ClientIdentity>,
) -> Result<Option<ClientIdentity>, Reported> {
    let cert_key = child(path, CLIENT_CERT);
    let key_key = child(path, CLIENT_KEY);
    let both = format!("is required: both {CLIENT_CERT} and {CLIENT_KEY}, or neither, must be set");
    match (raw.client_cert.as_ref(), raw.client_key.as_ref()) {
        (None, None) => Ok(inherited.cloned()),
        (Some(_), None) => Err(c.report(&key_key, both, None)),
        (None, Some(_)) => Err(c.report(&cert_key, both, None)),
        (Some(cert), Some(key)) => {
            let cert = read_path(c, Some(cert), &cert_key, false);
            let key = private_key(c, key, &key_key);
            let (Some((cert_path, cert_pem)), Some((key_pem, source))) = (cert?, key?) else {
                return Err(Reported);
            };
            ClientIdentity::from_pem(&cert_path, &cert_pem, &key_pem, &source)
                .map(Some)
                .map_err(|err| report(c, path, &err))
        }
    }
}

/// `ca_file` of the table at `path`, or `inherited` when it is not set.
pub(crate) fn roots(
    c: &mut Checker,
    raw: &RawDelivery,
    path: &str,
    inherited: Option<&ExtraRoots>,
) -> Result<Option<ExtraRoots>, Reported> {
    let key = child(path, CA_FILE);
    match read_path(c, raw.ca_file.as_ref(), &key, false)? {
        None => Ok(inherited.cloned()),
        Some((file, bytes)) => ExtraRoots::from_pem(&file, &bytes)
            .map(Some)
            .map_err(|err| report(c, path, &err)),
    }
}

fn report(c: &mut Checker, path: &str, err: &ClientTlsError) -> Reported {
    c.report(&child(path, err.key()), err.to_string(), None)
}

/// The file a path key names (from the config's folder), and its bytes. Problems show the
/// path as written unless `secret` (a key written inline by mistake must not be echoed).
fn read_path(
    c: &mut Checker,
    raw: Option<&RawText>,
    key: &str,
    secret: bool,
) -> Result<Option<(PathBuf, Vec<u8>)>, Reported> {
    let Some(text) = c.text(raw, key)? else {
        return Ok(None);
    };
    if text.is_empty() {
        return Err(c.report(key, "must not be empty", None));
    }
    let file = c.context().base_dir.join(&text);
    match std::fs::read(&file) {
        Ok(bytes) => Ok(Some((file, bytes))),
        Err(err) if secret => {
            let rule = format!("cannot read the file it names: {}", err.kind());
            Err(c.report(key, rule, None))
        }
        Err(err) => {
            let rule = format!("cannot read file {}: {err}", file.display());
            Err(c.report(key, rule, Some(quoted(&text))))
        }
    }
}

/// The PEM key, and where it came from as messages name it: a path (whose file must not be
/// readable by every user), or a `{ file = … }` secret.
fn private_key(
    c: &mut Checker,
    raw: &RawText,
    key: &str,
) -> Result<Option<(Vec<u8>, String)>, Reported> {
    match raw {
        RawText::File(file) => {
            let source = format!("{{ file = {} }}", quoted(file));
            let secret = c.secret(Some(raw), key)?;
            Ok(secret.map(|pem| (pem.expose().as_bytes().to_vec(), source)))
        }
        RawText::Inline(_) => {
            let Some((file, bytes)) = read_path(c, Some(raw), key, true)? else {
                return Ok(None);
            };
            c.warnings
                .extend(file_value::world_readable_warning(key, &file));
            Ok(Some((bytes, file.display().to_string())))
        }
    }
}
