//! TLS material for the connections to consumers: a client certificate and its key
//! (`client_cert`, `client_key`) and roots trusted in addition to the system's (`ca_file`),
//! read and checked while the configuration is validated.
//!
//! As for the listener's pair, `check`, start-up and every reload run the same checks: a file
//! that holds no certificate or no key, a key that does not match the certificate, or a root
//! that cannot anchor a chain is a config problem naming the key. What passes is kept as
//! normalised PEM (the parsed items only, re-encoded) with a SHA-256 of its bytes, so that the
//! delivery side builds one HTTP client per distinct material and can tell, at a reload,
//! whether the material changed. Neither type shows key material in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// The last segment of the certificate's config key (`delivery.client_cert`).
pub const CLIENT_CERT: &str = "client_cert";
/// The last segment of the private key's config key (`delivery.client_key`).
pub const CLIENT_KEY: &str = "client_key";
/// The last segment of the extra roots' config key (`delivery.ca_file`).
pub const CA_FILE: &str = "ca_file";

/// A SHA-256 of TLS material: what tells two settings apart without keeping the material.
pub type MaterialDigest = [u8; 32];

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    cert_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    /// The key, then the chain, as PEM: what the HTTP client is built with. Secret.
    pem: Arc<[u8]>,
    digest: MaterialDigest,
}

/// Certificates trusted as roots for callbacks, in addition to the system's.
#[derive(Clone)]
pub struct ExtraRoots {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
    digest: MaterialDigest,
}

/// Why client TLS material was refused. [`ClientTlsError::key`] tells which key it is about
/// (`client_cert`, `client_key` or `ca_file`); the message names the file when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{what} is not valid PEM: {detail}")]
    Pem {
        key: &'static str,
        what: String,
        detail: String,
    },
    #[error("{what} holds no PEM certificate (\"BEGIN CERTIFICATE\")")]
    NoCertificate { key: &'static str, what: String },
    #[error(
        "{what} holds no PEM private key (PKCS#8 \"BEGIN PRIVATE KEY\", PKCS#1 \"BEGIN RSA PRIVATE KEY\" or SEC1 \"BEGIN EC PRIVATE KEY\")"
    )]
    NoKey { what: String },
    #[error(
        "the private key ({what}) does not match the certificate in {} (the first certificate of the chain must be the client's)",
        cert_path.display()
    )]
    Mismatch { what: String, cert_path: PathBuf },
    #[error("the key ({what}) is not usable ({detail})")]
    Unusable { what: String, detail: String },
    #[error("{what} holds a certificate that cannot be a trusted root ({detail})")]
    BadRoot { what: String, detail: String },
}

impl ClientTlsError {
    /// The last segment of the config key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            ClientTlsError::Pem { key, .. } | ClientTlsError::NoCertificate { key, .. } => key,
            ClientTlsError::NoKey { .. }
            | ClientTlsError::Mismatch { .. }
            | ClientTlsError::Unusable { .. } => CLIENT_KEY,
            ClientTlsError::BadRoot { .. } => CA_FILE,
        }
    }
}

impl ClientIdentity {
    /// Checks the chain in `cert_pem` (read from `cert_path`; leaf first) against the key in
    /// `key_pem`; `key_source` names where the key came from in messages (a file, never the key).
    ///
    /// # Errors
    /// A [`ClientTlsError`] naming the key at fault.
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_pem: &[u8],
        key_source: &str,
    ) -> Result<ClientIdentity, ClientTlsError> {
        let what = cert_path.display().to_string();
        let chain = certificates(CLIENT_CERT, &what, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| match err {
            pem::Error::NoItemsFound => ClientTlsError::NoKey {
                what: key_source.to_owned(),
            },
            err => ClientTlsError::Pem {
                key: CLIENT_KEY,
                what: key_source.to_owned(),
                detail: err.to_string(),
            },
        })?;
        check_pair(&chain, &key, cert_path, key_source)?;
        let mut text = pem_block(key_label(&key), key.secret_der());
        for cert in &chain {
            text.push_str(&pem_block("CERTIFICATE", cert.as_ref()));
        }
        let pem: Arc<[u8]> = Arc::from(text.into_bytes());
        Ok(ClientIdentity {
            cert_path: cert_path.to_path_buf(),
            chain,
            digest: Sha256::digest(&pem).into(),
            pem,
        })
    }

    /// The certificate file, absolute.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key, then the chain, as PEM: the identity the HTTP client presents. It holds the
    /// private key: hand it to the client builder only.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// Tells this material apart from other material (a SHA-256 of [`ClientIdentity::pem`]).
    pub fn digest(&self) -> MaterialDigest {
        self.digest
    }

    /// When the client certificate stops being valid, in Unix seconds; `None` when its DER does
    /// not parse as X.509.
    pub fn leaf_not_after(&self) -> Option<i64> {
        super::not_after(self.chain.first()?)
    }
}

impl ExtraRoots {
    /// Reads the PEM certificates at `path` (`bytes`, already read), each of which must be
    /// usable as a trust anchor.
    ///
    /// # Errors
    /// A [`ClientTlsError`] about `ca_file`.
    pub fn from_pem(path: &Path, bytes: &[u8]) -> Result<ExtraRoots, ClientTlsError> {
        let what = path.display().to_string();
        let certs = certificates(CA_FILE, &what, bytes)?;
        let mut store = rustls::RootCertStore::empty();
        let mut hasher = Sha256::new();
        for cert in &certs {
            store
                .add(cert.clone())
                .map_err(|err| ClientTlsError::BadRoot {
                    what: what.clone(),
                    detail: err.to_string(),
                })?;
            hasher.update(cert.as_ref());
        }
        Ok(ExtraRoots {
            path: path.to_path_buf(),
            certs,
            digest: hasher.finalize().into(),
        })
    }

    /// The roots file, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The roots, as DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Tells these roots apart from others (a SHA-256 of their DER).
    pub fn digest(&self) -> MaterialDigest {
        self.digest
    }
}

/// Equal when the same certificate file gave the same material.
impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.digest == other.digest
    }
}

impl PartialEq for ExtraRoots {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.digest == other.digest
    }
}

/// The certificate file and chain length only: never key material.
impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_path", &self.cert_path)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish_non_exhaustive()
    }
}

fn certificates(
    key: &'static str,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ClientTlsError::Pem {
            key,
            what: what.to_owned(),
            detail: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientTlsError::NoCertificate {
            key,
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds a client config with the pair, which checks that the key is usable and matches.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_source: &str,
) -> Result<(), ClientTlsError> {
    // The provider is named here (as for the listener) so `check` builds the same as the daemon.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let unusable = |detail: String| ClientTlsError::Unusable {
        what: key_source.to_owned(),
        detail,
    };
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| unusable(err.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain.to_vec(), key.clone_key())
        .map(|_| ())
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => ClientTlsError::Mismatch {
                what: key_source.to_owned(),
                cert_path: cert_path.to_path_buf(),
            },
            err => unusable(err.to_string()),
        })
}

fn key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    }
}

/// One PEM block: base64 in lines of 64 characters between the BEGIN and END lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert_pem: String,
        key_pem: String,
    }

    fn self_signed() -> Pair {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn identity(cert: &str, key: &str) -> Result<ClientIdentity, ClientTlsError> {
        ClientIdentity::from_pem(
            Path::new("/etc/hookrelay/client.pem"),
            cert.as_bytes(),
            key.as_bytes(),
            "/etc/hookrelay/client.key",
        )
    }

    #[test]
    fn a_pair_is_kept_as_clean_pem_that_reqwest_accepts() {
        let pair = self_signed();
        // Text around the PEM blocks (as openssl writes) is dropped.
        let noisy_key = format!("Key attributes\n{}", pair.key_pem);
        let id = identity(&pair.cert_pem, &noisy_key).expect("a matching pair");
        let pem = String::from_utf8(id.pem().to_vec()).expect("PEM is text");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(pem.contains("-----BEGIN CERTIFICATE-----\n"));
        assert!(!pem.contains("attributes"));
        assert!(reqwest::Identity::from_pem(id.pem()).is_ok());
        assert!(id.leaf_not_after().is_some());
        let shown = format!("{id:?}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("MII"),
            "{shown}"
        );
    }

    #[test]
    fn the_digest_follows_the_material() {
        let (one, two) = (self_signed(), self_signed());
        let a = identity(&one.cert_pem, &one.key_pem).expect("one");
        let again = identity(&one.cert_pem, &one.key_pem).expect("one again");
        let b = identity(&two.cert_pem, &two.key_pem).expect("two");
        assert_eq!(a.digest(), again.digest());
        assert_eq!(a, again);
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a, b);
    }

    #[test]
    fn bad_material_names_the_key_at_fault() {
        let (one, two) = (self_signed(), self_signed());
        let cases = [
            (
                one.cert_pem.as_str(),
                two.key_pem.as_str(),
                CLIENT_KEY,
                "does not match",
            ),
            ("", one.key_pem.as_str(), CLIENT_CERT, "no PEM certificate"),
            (
                one.key_pem.as_str(),
                one.key_pem.as_str(),
                CLIENT_CERT,
                "no PEM certificate",
            ),
            (
                one.cert_pem.as_str(),
                one.cert_pem.as_str(),
                CLIENT_KEY,
                "no PEM private key",
            ),
            (
                &one.cert_pem[..one.cert_pem.len() / 2],
                one.key_pem.as_str(),
                CLIENT_CERT,
                "not valid PEM",
            ),
        ];
        for (cert, key, at, says) in cases {
            let err = identity(cert, key).expect_err(says);
            assert_eq!(err.key(), at, "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(!err.to_string().contains("MII"), "{err}");
        }
    }

    #[test]
    fn roots_load_and_refuse_what_cannot_anchor() {
        let (one, two) = (self_signed(), self_signed());
        let path = Path::new("/etc/hookrelay/ca.pem");
        let both = format!("{}{}", one.cert_pem, two.cert_pem);
        let roots = ExtraRoots::from_pem(path, both.as_bytes()).expect("two roots");
        assert_eq!(roots.certificates().len(), 2);
        let only_one = ExtraRoots::from_pem(path, one.cert_pem.as_bytes()).expect("one root");
        assert_ne!(roots.digest(), only_one.digest());
        let err = ExtraRoots::from_pem(path, b"").expect_err("empty");
        assert_eq!(err.key(), CA_FILE);
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = ExtraRoots::from_pem(path, garbage.as_bytes()).expect_err("garbage");
        assert_eq!(err.key(), CA_FILE);
        assert!(err.to_string().contains("trusted root"), "{err}");
    }
}
