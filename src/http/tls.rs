//! TLS for the node's HTTP server (`http_tls_cert`, `http_tls_key`; docs/security.md): a rustls
//! server configuration from PEM files, with the same crypto provider (ring) as the node's TLS to
//! PostgreSQL. Owns loading and checking the files; must never log a key's contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// A certificate or key that cannot serve HTTPS.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {message}", path.display())]
pub struct HttpTlsError {
    pub what: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// The server configuration for `cert` (a PEM chain, the server's certificate first) and `key`
/// (a PEM private key: PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, HttpTlsError> {
    let failed = |what, path: &Path, message: String| HttpTlsError {
        what,
        path: path.to_owned(),
        message,
    };
    // the same loader as the node's TLS to PostgreSQL (at least one PEM certificate)
    let chain = crate::db::tls::load_certs(cert, "http_tls_cert").map_err(|e| match e {
        crate::db::tls::TlsError::File {
            what,
            path,
            message,
        } => HttpTlsError {
            what,
            path,
            message,
        },
        other => failed("http_tls_cert", cert, other.to_string()),
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(key).map_err(|e| failed("http_tls_key", key, e.to_string()))?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(failed(
                "http_tls_key",
                key,
                "is readable by every user of this host: chmod 600 it".into(),
            ));
        }
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| failed("http_tls_key", key, format!("no usable private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed("http_tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            failed(
                "http_tls_key",
                key,
                format!("does not match the certificate: {e}"),
            )
        })
}
