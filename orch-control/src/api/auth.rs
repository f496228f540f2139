//! Who may call the API: a client certificate signed by the cluster CA
//! (verified by TLS), or a bearer token from the token file. Anyone else
//! gets Unauthenticated. (Roles and bindings come later: until then an
//! authenticated caller may do everything.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected token,user[,uid[,\"group1,group2\"]]")]
    Malformed { path: PathBuf, line: usize },
}

/// Kubernetes' static token file: one `token,user[,uid[,groups]]` a line.
pub fn load_token_file(path: &Path) -> Result<HashMap<String, String>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tokens = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, ',');
        match (fields.next(), fields.next()) {
            (Some(token), Some(user)) if !token.trim().is_empty() && !user.trim().is_empty() => {
                tokens.insert(token.trim().to_string(), user.trim().to_string());
            }
            _ => {
                return Err(AuthError::Malformed {
                    path: path.to_path_buf(),
                    line: number + 1,
                });
            }
        }
    }
    Ok(tokens)
}

/// Checks every API call before it reaches the service.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// Token -> user.
    tokens: Arc<HashMap<String, String>>,
}

impl Authenticator {
    pub fn new(tokens: HashMap<String, String>) -> Self {
        Self {
            tokens: Arc::new(tokens),
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        // TLS verified any certificate presented against the cluster CA.
        if request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            return Ok(request);
        }
        let Some(header) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "no client certificate and no bearer token: use the client config's certificate or a token from the API server's --token-file",
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?;
        if self.tokens.contains_key(token.trim()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_follow_kubernetes_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nabc,alice,1,\"admins,devs\"\n\ndef,bob\n")
            .expect("write");
        let tokens = load_token_file(&path).expect("load");
        assert_eq!(tokens.get("abc").map(String::as_str), Some("alice"));
        assert_eq!(tokens.get("def").map(String::as_str), Some("bob"));
        std::fs::write(&path, "lonely\n").expect("write");
        let error = load_token_file(&path).expect_err("malformed");
        assert!(
            error
                .to_string()
                .ends_with(":1: expected token,user[,uid[,\"group1,group2\"]]"),
            "{error}"
        );
    }

    #[test]
    fn calls_without_credentials_are_refused() {
        let mut auth = Authenticator::new(HashMap::from([("good".into(), "alice".into())]));
        let status = auth.call(Request::new(())).expect_err("anonymous");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().expect("header"));
        assert_eq!(
            auth.call(bad).expect_err("bad").message(),
            "invalid bearer token"
        );
        let mut good = Request::new(());
        good.metadata_mut()
            .insert("authorization", "Bearer good".parse().expect("header"));
        assert!(auth.call(good).is_ok());
    }
}
