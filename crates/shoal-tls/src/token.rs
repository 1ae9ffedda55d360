//! Join tokens: `SHOAL1<ca fingerprint hex>::<id>.<secret>`, as k3s's `K10<hash>::...` form.
//!
//! The first part pins the cluster CA, so a joiner that knows only the token can tell the real
//! cluster from an impostor before it sends anything secret; the second is a Kubernetes
//! bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, stored as the Secret
//! `kube-system/bootstrap-token-<id>`), the bearer credential itself.

use rand::Rng;

use crate::TlsError;

const PREFIX: &str = "SHOAL1";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token (`<id>.<secret>`).
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn random(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    /// A new random token.
    pub fn generate() -> BootstrapToken {
        BootstrapToken {
            id: random(6),
            secret: random(16),
        }
    }

    /// Parses `<id>.<secret>`.
    pub fn parse(s: &str) -> Result<BootstrapToken, TlsError> {
        let (id, secret) = s
            .split_once('.')
            .ok_or_else(|| TlsError::Token("expected <id>.<secret>".into()))?;
        if !is_token_part(id, 6) || !is_token_part(secret, 16) {
            return Err(TlsError::Token(
                "a bootstrap token is 6 and 16 characters of [a-z0-9] joined by '.'".into(),
            ));
        }
        Ok(BootstrapToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// `<id>.<secret>`, the bearer credential.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// Compares secrets in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// A full join token: the CA pin and a bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// `sha256:<hex>` of the cluster CA certificate.
    pub ca_fingerprint: String,
    pub token: BootstrapToken,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("token", &self.token)
            .finish()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hash = self
            .ca_fingerprint
            .strip_prefix("sha256:")
            .unwrap_or(&self.ca_fingerprint);
        write!(f, "{PREFIX}{hash}::{}", self.token.bearer())
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<JoinToken, TlsError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| TlsError::Token(format!("a join token starts with {PREFIX}")))?;
        let (hash, token) = rest
            .split_once("::")
            .ok_or_else(|| TlsError::Token("expected <ca hash>::<id>.<secret>".into()))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TlsError::Token(
                "the CA hash is 64 hexadecimal characters".into(),
            ));
        }
        Ok(JoinToken {
            ca_fingerprint: format!("sha256:{}", hash.to_ascii_lowercase()),
            token: BootstrapToken::parse(token)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip() {
        let token = JoinToken {
            ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
            token: BootstrapToken::generate(),
        };
        let text = token.to_string();
        assert!(text.starts_with("SHOAL1abab"));
        assert_eq!(text.parse::<JoinToken>().expect("parses"), token);
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        for (bad, why) in [
            ("K10abc::server:pw", "starts with SHOAL1"),
            ("SHOAL1abc::abcdef.0123456789abcdef", "64 hexadecimal"),
            (
                "SHOAL1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::abc.def",
                "6 and 16 characters",
            ),
            (
                "SHOAL1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "<ca hash>::",
            ),
        ] {
            let err = bad.parse::<JoinToken>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").expect("parses");
        assert!(t.secret_matches("0123456789abcdef"));
        assert!(!t.secret_matches("0123456789abcdeg"));
        assert!(!t.secret_matches("0123456789abcde"));
    }
}
