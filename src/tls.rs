//! TLS for the Dropbox-facing listener: a PEM certificate chain and private key, read and
//! checked into a ready `rustls::ServerConfig` (ring provider, TLS 1.2 and 1.3, ALPN
//! `http/1.1`).
//!
//! Loading happens while the configuration is validated (`config::validate`), so `check`,
//! start-up and every SIGHUP reload go through the same checks: a file that cannot be read,
//! holds no certificate or no key, or a key that does not match the certificate is a config
//! problem naming the key and the file. A reload that fails keeps the old configuration, and so
//! the old certificate; one that succeeds swaps the whole configuration, and the listener takes
//! the new `ServerConfig` for every connection accepted after the swap.
//!
//! `client` holds the other direction: the client certificate and extra roots of the
//! connections to consumers.

pub mod client;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The config key of the certificate chain file.
pub const CERT_KEY: &str = "server.tls_cert";
/// The config key of the private key file.
pub const KEY_KEY: &str = "server.tls_key";

/// A certificate chain and its key, loaded and checked, as the server config rustls serves.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_path: PathBuf,
    key_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    server_config: Arc<ServerConfig>,
}

/// Why a certificate and key could not be loaded. [`TlsError::key`] tells which config key it
/// is about; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{} holds no PEM certificate (\"BEGIN CERTIFICATE\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no PEM private key (PKCS#8 \"BEGIN PRIVATE KEY\", PKCS#1 \"BEGIN RSA PRIVATE KEY\" or SEC1 \"BEGIN EC PRIVATE KEY\")",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the private key in {} does not match the certificate in {} (the first certificate of the chain must be the server's)",
        key_path.display(),
        cert_path.display()
    )]
    Mismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("the key in {} is not usable ({detail})", key_path.display())]
    Unusable { key_path: PathBuf, detail: String },
}

impl TlsError {
    /// The config key the problem is about: `server.tls_cert` or `server.tls_key`.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Pem { key, .. } => key,
            TlsError::NoCertificate { .. } => CERT_KEY,
            TlsError::NoKey { .. } | TlsError::Mismatch { .. } | TlsError::Unusable { .. } => {
                KEY_KEY
            }
        }
    }
}

impl TlsIdentity {
    /// Reads the certificate chain (leaf first, then intermediates) from `cert_path` and the
    /// private key from `key_path`, both PEM, and builds the server config.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file and the config key at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, TlsError> {
        let chain = read_chain(cert_path)?;
        let key = read_key(key_path)?;
        let server_config = server_config(chain.clone(), key, cert_path, key_path)?;
        Ok(TlsIdentity {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            chain,
            server_config,
        })
    }

    /// The certificate chain file, absolute.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file, absolute.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The certificates served, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// What the listener hands to each new connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// When the leaf certificate stops being valid, in Unix seconds; `None` when its DER does
    /// not parse as X.509 (rustls served it all the same).
    pub fn leaf_not_after(&self) -> Option<i64> {
        not_after(self.chain.first()?)
    }
}

/// When `cert` stops being valid, in Unix seconds; `None` when it does not parse as X.509.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Equal when the same files held the same certificates (the key is not kept apart from
/// rustls, and a key that changed without its certificate would not have loaded).
impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.chain == other.chain
    }
}

/// Paths and chain length only: never key material.
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(key: &'static str, path: &Path, err: &pem::Error) -> TlsError {
    TlsError::Pem {
        key,
        path: path.to_path_buf(),
        detail: err.to_string(),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(CERT_KEY, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(CERT_KEY, path, &err))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(KEY_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| match err {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        err => pem_error(KEY_KEY, path, &err),
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    // The provider is named here rather than taken from the process default, so that `check`
    // and unit tests, which install none, build the same config as the daemon.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let unusable = |detail: String| TlsError::Unusable {
        key_path: key_path.to_path_buf(),
        detail,
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| unusable(err.to_string()))?
        .with_no_client_auth();
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
            },
            err => unusable(err.to_string()),
        })?;
    // Both listeners speak HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert_pem: String,
        key_pem: String,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    #[test]
    fn a_matching_pair_loads_with_its_chain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let leaf = self_signed("localhost");
        let other = self_signed("intermediate.test");
        // A chain: the leaf, then another certificate (rustls does not check the chain here).
        let chain = format!("{}{}", leaf.cert_pem, other.cert_pem);
        let cert = write(dir.path(), "cert.pem", &chain);
        let key = write(dir.path(), "key.pem", &leaf.key_pem);
        let identity = TlsIdentity::load(&cert, &key).expect("loads");
        assert_eq!(identity.chain().len(), 2);
        assert_eq!(identity.cert_path(), cert);
        assert_eq!(identity.key_path(), key);
        assert_eq!(identity.server_config().alpn_protocols, [b"http/1.1"]);
        let shown = format!("{identity:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }

    #[test]
    fn a_missing_file_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed("localhost");
        let cert = write(dir.path(), "cert.pem", &pair.cert_pem);
        let key = write(dir.path(), "key.pem", &pair.key_pem);
        let missing = dir.path().join("nope.pem");

        let err = TlsIdentity::load(&missing, &key).expect_err("missing cert");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert_eq!(err.key(), CERT_KEY);
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let err = TlsIdentity::load(&cert, &missing).expect_err("missing key");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert_eq!(err.key(), KEY_KEY);
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed("localhost");
        let key = write(dir.path(), "key.pem", &pair.key_pem);
        for (name, contents) in [
            ("empty.pem", ""),
            ("text.pem", "not a certificate\n"),
            ("only-key.pem", pair.key_pem.as_str()),
        ] {
            let cert = write(dir.path(), name, contents);
            let err = TlsIdentity::load(&cert, &key).expect_err(name);
            assert!(
                matches!(err, TlsError::NoCertificate { .. }),
                "{name}: {err:?}"
            );
            assert_eq!(err.key(), CERT_KEY);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn broken_pem_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed("localhost");
        let key = write(dir.path(), "key.pem", &pair.key_pem);
        let truncated = &pair.cert_pem[..pair.cert_pem.len() / 2];
        let cert = write(dir.path(), "truncated.pem", truncated);
        let err = TlsIdentity::load(&cert, &key).expect_err("truncated");
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert_eq!(err.key(), CERT_KEY);
    }

    #[test]
    fn a_file_without_a_key_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed("localhost");
        let cert = write(dir.path(), "cert.pem", &pair.cert_pem);
        // A certificate where the key should be (a classic mix-up), and garbage.
        for (name, contents) in [
            ("cert-as-key.pem", pair.cert_pem.as_str()),
            ("garbage.pem", "garbage"),
        ] {
            let key = write(dir.path(), name, contents);
            let err = TlsIdentity::load(&cert, &key).expect_err(name);
            assert!(matches!(err, TlsError::NoKey { .. }), "{name}: {err:?}");
            assert_eq!(err.key(), KEY_KEY);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = self_signed("localhost");
        let two = self_signed("localhost");
        let cert = write(dir.path(), "cert.pem", &one.cert_pem);
        let key = write(dir.path(), "other-key.pem", &two.key_pem);
        let err = TlsIdentity::load(&cert, &key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
        assert_eq!(err.key(), KEY_KEY);
        let message = err.to_string();
        assert!(
            message.contains("other-key.pem") && message.contains("cert.pem"),
            "{message}"
        );
    }

    #[test]
    fn identities_compare_by_files_and_certificates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = self_signed("localhost");
        let cert = write(dir.path(), "cert.pem", &one.cert_pem);
        let key = write(dir.path(), "key.pem", &one.key_pem);
        let a = TlsIdentity::load(&cert, &key).expect("loads");
        let b = TlsIdentity::load(&cert, &key).expect("loads");
        assert_eq!(a, b);
        let two = self_signed("localhost");
        write(dir.path(), "cert.pem", &two.cert_pem);
        write(dir.path(), "key.pem", &two.key_pem);
        let renewed = TlsIdentity::load(&cert, &key).expect("loads");
        assert_ne!(a, renewed);
    }
}
