//! TLS and passwords for every connection a node opens (pool, listener, lock sessions): libpq's
//! `sslmode` semantics over rustls, and libpq's password sources.
//!
//! Owns: reading the settings tokio-postgres does not know (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`, in a URL's query or a `key=value` string, else the
//! `PGSSLMODE`/`PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY` variables), building the rustls client
//! configuration each mode needs, and filling a missing password from `PGPASSWORD`, else the
//! password file (`PGPASSFILE`, else `~/.pgpass`, matched as libpq does).
//! Modes, as libpq: `disable` (no TLS), `prefer` (the default: TLS when the server offers it,
//! the certificate not checked), `require` (TLS or no connection; the certificate checked
//! against `sslrootcert` only when one is given), `verify-ca` (the chain must lead to
//! `sslrootcert`), `verify-full` (and the certificate must name the host).
//! Must never print a password or a key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector of every connection.
pub type Connector = MakeRustlsConnect;

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode={0} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslmode={0} needs a root certificate: set sslrootcert (or PGSSLROOTCERT)")]
    NoRootCert(&'static str),
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("sslcert and sslkey go together")]
    HalfClientCert,
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The `sslmode` values of libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode, TlsError> {
        Ok(match text {
            "disable" => Mode::Disable,
            "allow" => Mode::Allow,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => return Err(TlsError::Mode(other.to_owned())),
        })
    }

    /// What tokio-postgres is told (it checks nothing itself: the connector verifies).
    fn wire(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Allow | Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits a connection string into what tokio-postgres parses and the TLS settings (taken out of
/// it, then from the environment where the string has none).
pub fn split(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, TlsSettings), TlsError> {
    let (rest, found) = if url.contains("://") {
        split_url(url)
    } else {
        split_key_values(url)
    };
    let get = |key: &str, var: &str| {
        found
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| env(var).filter(|v| !v.is_empty()))
    };
    let settings = TlsSettings {
        mode: match get("sslmode", "PGSSLMODE") {
            Some(text) => Mode::parse(&text)?,
            None => Mode::Prefer,
        },
        root_cert: get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
        client_cert: get("sslcert", "PGSSLCERT").map(PathBuf::from),
        client_key: get("sslkey", "PGSSLKEY").map(PathBuf::from),
    };
    Ok((rest, settings))
}

fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if OURS.contains(&key) {
            let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
            found.push((key.to_owned(), value));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, found)
}

/// `key=value` pairs (values may be single-quoted, with `\` escapes), as libpq reads them.
fn split_key_values(text: &str) -> (String, Vec<(String, String)>) {
    let mut kept: Vec<&str> = Vec::new();
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let ch = text[i..].chars().next().unwrap_or('\0');
                value.push(ch);
                i += ch.len_utf8();
            }
            i += 1; // the closing quote
        } else {
            let value_start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            value.push_str(&text[value_start..i]);
        }
        if OURS.contains(&key) {
            found.push((key.to_owned(), value));
        } else {
            kept.push(&text[start..i.min(text.len())]);
        }
    }
    (kept.join(" "), found)
}

impl TlsSettings {
    /// The rustls connector these settings call for.
    pub fn connector(&self) -> Result<Connector, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let roots = match (&self.root_cert, self.mode) {
            (Some(path), _) => Some(Arc::new(load_roots(path)?)),
            (None, Mode::VerifyCa) => return Err(TlsError::NoRootCert("verify-ca")),
            (None, Mode::VerifyFull) => return Err(TlsError::NoRootCert("verify-full")),
            (None, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (roots, self.mode) {
            // libpq: prefer and allow never check the certificate
            (_, Mode::Disable | Mode::Allow | Mode::Prefer) | (None, _) => {
                Arc::new(Unverified(provider.clone()))
            }
            (Some(roots), mode) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
                if mode == Mode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                    what: "sslkey",
                    path: key.clone(),
                    message: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Rustls(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientCert),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The PEM certificates of `path` (at least one), errors naming `what` (the setting) and the file.
pub(crate) fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "sslrootcert")? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "sslrootcert",
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate, as libpq: encrypted, not authenticated (the
/// handshake's signatures are still checked).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A parsed connection: tokio-postgres' settings (the TLS mode set, a missing password filled
/// from `PGPASSWORD` or the password file) and the connector.
pub fn prepare(url: &str) -> Result<(tokio_postgres::Config, Connector), super::DbError> {
    let env = |name: &str| std::env::var(name).ok();
    let (rest, tls) = split(url, env).map_err(super::DbError::Tls)?;
    let mut cfg: tokio_postgres::Config = rest.parse().map_err(super::DbError::Url)?;
    cfg.ssl_mode(tls.mode.wire());
    if cfg.get_password().is_none() {
        if let Some(password) = password_for(&cfg, env) {
            cfg.password(password);
        }
    }
    let connector = tls.connector().map_err(super::DbError::Tls)?;
    Ok((cfg, connector))
}

/// libpq's password sources for a connection without one: `PGPASSWORD`, else the first line of
/// the password file (`PGPASSFILE`, else `~/.pgpass`; `hostname:port:database:username:password`,
/// `*` matching anything, `\` escaping `:` and `\`) that matches the first host, port, database
/// and user. A password file readable by group or others is ignored, as libpq does.
fn password_for(
    cfg: &tokio_postgres::Config,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(password);
    }
    let file = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pgpass")))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&file).ok()?;
        if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().map(str::to_owned).or_else(|| env("USER"))?;
    let dbname = cfg
        .get_dbname()
        .map(str::to_owned)
        .unwrap_or_else(|| user.clone());
    pgpass_lookup(&text, &host, &port, &dbname, &user)
}

/// The password of the first matching line of a password file's text.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields.swap_remove(4));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_tls_settings_are_taken_out() {
        let (rest, tls) = split(
            "postgresql://u@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            no_env,
        )
        .expect("split");
        assert_eq!(rest, "postgresql://u@db:5432/app?application_name=x");
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (rest, tls) = split("postgresql://u@db/app?sslmode=require", no_env).expect("split");
        assert_eq!(rest, "postgresql://u@db/app");
        assert_eq!(tls.mode, Mode::Require);
    }

    #[test]
    fn key_value_tls_settings_are_taken_out() {
        let (rest, tls) = split(
            "host=db user=u sslmode='verify-ca' sslrootcert = '/a b/ca.pem' dbname=app",
            no_env,
        )
        .expect("split");
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(tls.mode, Mode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/a b/ca.pem")));
    }

    #[test]
    fn the_environment_fills_what_the_string_lacks() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("require".to_owned()),
            "PGSSLROOTCERT" => Some("/ca.pem".to_owned()),
            _ => None,
        };
        let (_, tls) = split("postgresql://u@db/app", env).expect("split");
        assert_eq!(tls.mode, Mode::Require);
        let (_, tls) = split("postgresql://u@db/app?sslmode=disable", env).expect("split");
        assert_eq!(tls.mode, Mode::Disable, "the string wins");
    }

    #[test]
    fn bad_modes_and_missing_roots_are_clear_errors() {
        let err = split("postgresql://db/app?sslmode=always", no_env).unwrap_err();
        assert!(err.to_string().contains("always"), "{err}");
        let tls = TlsSettings {
            mode: Mode::VerifyFull,
            ..TlsSettings::default()
        };
        let err = tls.connector().err().expect("no root");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let tls = TlsSettings {
            mode: Mode::VerifyCa,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let err = tls.connector().err().expect("no file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        TlsSettings::default()
            .connector()
            .expect("prefer needs nothing");
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let text = "# comment\ndb:5432:app:u:first\n*:*:*:u:any\\:thing\n";
        assert_eq!(
            pgpass_lookup(text, "db", "5432", "app", "u").as_deref(),
            Some("first")
        );
        assert_eq!(
            pgpass_lookup(text, "x", "1", "y", "u").as_deref(),
            Some("any:thing")
        );
        assert_eq!(pgpass_lookup(text, "x", "1", "y", "v"), None);
    }
}
