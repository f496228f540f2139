//! Bootstrap tokens, as kubeadm's: `<id>.<secret>` (6 and 16 characters
//! of `[a-z0-9]`), kept as a Secret `kube-system/bootstrap-token-<id>` of
//! type `bootstrap.kubernetes.io/token`. A node that presents one (with
//! `orch-node --join`) gets its client certificate; the secret half never
//! appears in the Secret's name, so listing Secrets does not reveal it.
//!
//! A joining node trusts the cluster CA it is shown only if the CA's
//! certificate hashes to the `--ca-cert-hash` it was given
//! (`sha256:<hex of the DER certificate>`).

use sha2::{Digest, Sha256};
use thiserror::Error;

pub const SECRET_NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// The Secret's keys (Kubernetes' own).
pub const TOKEN_ID: &str = "token-id";
pub const TOKEN_SECRET: &str = "token-secret";
pub const EXPIRATION: &str = "expiration";
pub const USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
pub const DESCRIPTION: &str = "description";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "a bootstrap token is <6 characters>.<16 characters> of [a-z0-9], e.g. abcdef.0123456789abcdef"
    )]
    Malformed,
    #[error("--ca-cert-hash {0:?}: expected sha256:<64 hex digits>")]
    MalformedHash(String),
    #[error("reading random bytes: {0}")]
    Random(String),
}

/// A bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    /// The secret half stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.****)", self.id)
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn well_formed(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let (id, secret) = text.trim().split_once('.').ok_or(TokenError::Malformed)?;
        if !well_formed(id, ID_LEN) || !well_formed(secret, SECRET_LEN) {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token (from the kernel's random source).
    pub fn generate() -> Result<Self, TokenError> {
        use std::io::Read as _;
        let mut random =
            std::fs::File::open("/dev/urandom").map_err(|e| TokenError::Random(e.to_string()))?;
        let mut chars = String::with_capacity(ID_LEN + SECRET_LEN);
        let mut byte = [0u8; 1];
        while chars.len() < ID_LEN + SECRET_LEN {
            random
                .read_exact(&mut byte)
                .map_err(|e| TokenError::Random(e.to_string()))?;
            // Rejection sampling keeps every character equally likely.
            if usize::from(byte[0]) < 252 {
                chars.push(char::from(ALPHABET[usize::from(byte[0]) % 36]));
            }
        }
        let (id, secret) = chars.split_at(ID_LEN);
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The name of the Secret that holds it.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    /// Whether `secret` is this token's secret half, compared in constant
    /// time (a caller learns nothing from how long a refusal takes).
    pub fn secret_matches(&self, secret: &[u8]) -> bool {
        let mine = self.secret.as_bytes();
        mine.len() == secret.len()
            && mine
                .iter()
                .zip(secret)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// `sha256:<hex>` of a DER certificate: what `--ca-cert-hash` pins.
pub fn ca_cert_hash(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks the form of a `--ca-cert-hash` value; returns it lowercased.
pub fn parse_ca_cert_hash(text: &str) -> Result<String, TokenError> {
    let lower = text.trim().to_ascii_lowercase();
    match lower.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(lower),
        _ => Err(TokenError::MalformedHash(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_form() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").expect("valid");
        assert_eq!(token.secret_name(), "bootstrap-token-abcdef");
        assert_eq!(token.to_string(), "abcdef.0123456789abcdef");
        assert_eq!(format!("{token:?}"), "BootstrapToken(abcdef.****)");
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "abcdef.0123456789abcde!",
        ] {
            assert_eq!(
                BootstrapToken::parse(bad),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let made = BootstrapToken::generate().expect("random");
        assert_eq!(BootstrapToken::parse(&made.to_string()), Ok(made.clone()));
        assert_ne!(BootstrapToken::generate().expect("random"), made);
    }

    #[test]
    fn secrets_compare_whole() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").expect("valid");
        assert!(token.secret_matches(b"0123456789abcdef"));
        assert!(!token.secret_matches(b"0123456789abcdee"));
        assert!(!token.secret_matches(b"0123456789abcde"));
        assert!(!token.secret_matches(b""));
    }

    #[test]
    fn ca_hashes_are_sha256_of_the_der() {
        let hash = ca_cert_hash(b"");
        assert_eq!(
            hash,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            parse_ca_cert_hash(&hash.to_uppercase().replace("SHA256", "sha256")),
            Ok(hash)
        );
        assert!(parse_ca_cert_hash("sha256:abc").is_err());
        assert!(parse_ca_cert_hash("md5:00").is_err());
    }
}
