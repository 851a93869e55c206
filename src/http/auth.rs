//! HTTP authentication: bearer tokens with two scopes, checked by one middleware before any
//! route runs (docs/security.md).
//!
//! Owns: the tokens (from the config's `http_tokens` and the file `http_token_file`, never from
//! the command line), which scope a route needs (`/healthz` none; `/metrics` none when
//! `http_metrics_open`, else `read`; other `GET`/`HEAD` routes — the status page included —
//! `read`; `/` (the console, which holds no data) none; everything else `write`, which also grants
//! `read`), and the constant-time comparison.
//! With no token configured every route is open, which the node allows on a loopback address
//! only (`NodeConfig::validate`). Must never log, echo or compare a token in variable time.

use std::path::Path;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::HttpState;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET` routes, the status page, `/metrics`.
    Read,
    /// Submit, cancel, re-queue (and everything `read` may).
    Write,
}

/// One configured token (a `[[http_tokens]]` entry, or a line `read <token>` / `write <token>`
/// of the token file).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    pub scope: Scope,
    pub token: String,
}

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpToken")
            .field("scope", &self.scope)
            .field("token", &"***")
            .finish()
    }
}

/// The shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bad token or token file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// Every token the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<HttpToken>,
    metrics_open: bool,
}

impl Tokens {
    /// The config's tokens plus those of `file` (when given).
    pub fn load(
        inline: &[HttpToken],
        file: Option<&Path>,
        metrics_open: bool,
    ) -> Result<Tokens, TokenError> {
        let mut tokens = inline.to_vec();
        if let Some(path) = file {
            tokens.extend(read_token_file(path)?);
        }
        for t in &tokens {
            check_token(&t.token)?;
        }
        Ok(Tokens {
            tokens,
            metrics_open,
        })
    }

    /// No token configured: every route is open.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scope of a presented token, comparing it with every configured one in constant time
    /// (no early exit, so the time taken says nothing about which token or prefix matched).
    fn scope_of(&self, presented: &str) -> Option<Scope> {
        let mut granted = None;
        for t in &self.tokens {
            let equal: bool = t.token.as_bytes().ct_eq(presented.as_bytes()).into();
            if equal {
                granted = granted.max(Some(t.scope));
            }
        }
        granted
    }

    /// The scope a request needs, or `None` for an open route.
    fn required(&self, method: &Method, path: &str) -> Option<Scope> {
        if self.is_empty() || path == "/healthz" {
            return None;
        }
        if path == "/metrics" && self.metrics_open {
            return None;
        }
        // the console holds no data: its script asks the browser for a token and reads the API with it
        if path == "/" {
            return None;
        }
        if method == Method::GET || method == Method::HEAD {
            Some(Scope::Read)
        } else {
            Some(Scope::Write)
        }
    }
}

fn check_token(token: &str) -> Result<(), TokenError> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(TokenError(format!(
            "an HTTP token is shorter than {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError(
            "an HTTP token holds whitespace or a control character".to_owned(),
        ));
    }
    Ok(())
}

/// Reads `read <token>` / `write <token>` lines (blank lines and `#` comments ignored). The file
/// must not be readable by every user of the host.
fn read_token_file(path: &Path) -> Result<Vec<HttpToken>, TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| TokenError(format!("http_token_file {shown}: {e}")))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(TokenError(format!(
            "http_token_file {shown} is readable by every user of this host: chmod 600 it"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenError(format!("http_token_file {shown}: {e}")))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let scope = match line.split_once(char::is_whitespace) {
            Some(("read", token)) => (Scope::Read, token.trim()),
            Some(("write", token)) => (Scope::Write, token.trim()),
            _ => {
                return Err(TokenError(format!(
                    "http_token_file {shown} line {}: expected `read <token>` or `write <token>`",
                    n + 1
                )))
            }
        };
        tokens.push(HttpToken {
            scope: scope.0,
            token: scope.1.to_owned(),
        });
    }
    Ok(tokens)
}

/// The middleware: 401 without a valid token, 403 when its scope is too small; the route is not
/// run in either case.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<HttpState>>().cloned() else {
        return Ok(req.into_response(refusal(StatusCode::INTERNAL_SERVER_ERROR, "no state")));
    };
    let tokens = &state.tokens;
    let Some(needed) = tokens.required(req.method(), req.path()) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| tokens.scope_of(t)) {
        None => Ok(req.into_response(refusal(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <token>)",
        ))),
        Some(scope) if scope < needed => Ok(req.into_response(refusal(
            StatusCode::FORBIDDEN,
            "this token may only read; the route needs a write token",
        ))),
        Some(_) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
    }
}

fn refusal(status: StatusCode, message: &str) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"pgtaskd\""));
    }
    response.json(serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(metrics_open: bool) -> Tokens {
        Tokens::load(
            &[
                HttpToken {
                    scope: Scope::Read,
                    token: "r".repeat(20),
                },
                HttpToken {
                    scope: Scope::Write,
                    token: "w".repeat(20),
                },
            ],
            None,
            metrics_open,
        )
        .expect("tokens")
    }

    #[test]
    fn scopes_and_open_routes() {
        let t = tokens(false);
        assert_eq!(t.required(&Method::GET, "/healthz"), None);
        assert_eq!(t.required(&Method::GET, "/metrics"), Some(Scope::Read));
        assert_eq!(tokens(true).required(&Method::GET, "/metrics"), None);
        assert_eq!(t.required(&Method::GET, "/tasks"), Some(Scope::Read));
        assert_eq!(t.required(&Method::POST, "/tasks"), Some(Scope::Write));
        assert_eq!(t.scope_of(&"r".repeat(20)), Some(Scope::Read));
        assert_eq!(t.scope_of(&"w".repeat(20)), Some(Scope::Write));
        assert_eq!(t.scope_of(&"w".repeat(19)), None);
        assert_eq!(t.scope_of(""), None);
        assert_eq!(Tokens::default().required(&Method::POST, "/tasks"), None);
    }

    #[test]
    fn short_tokens_and_open_files_are_refused() {
        let short = HttpToken {
            scope: Scope::Read,
            token: "short".into(),
        };
        assert!(Tokens::load(&[short], None, false).is_err());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# ops\nwrite 0123456789abcdef0123\n\nread fedcba9876543210fedc\n",
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let t = Tokens::load(&[], Some(&path), false).expect("file");
        assert_eq!(t.scope_of("0123456789abcdef0123"), Some(Scope::Write));
        assert_eq!(t.scope_of("fedcba9876543210fedc"), Some(Scope::Read));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Tokens::load(&[], Some(&path), false).unwrap_err();
        assert!(err.0.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "admin 0123456789abcdef0123\n").expect("write");
        let err = Tokens::load(&[], Some(&path), false).unwrap_err();
        assert!(err.0.contains("line 1"), "{err}");
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let t = HttpToken {
            scope: Scope::Write,
            token: "supersecret-token-value".into(),
        };
        assert!(!format!("{t:?}").contains("supersecret"));
    }
}
