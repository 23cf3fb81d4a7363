//! API key secrets: how they look, how they are made, and how they are
//! stored (as a hash only).
//!
//! A key is `cpk_` followed by 43 base64url characters (256 random bits).
//! Because the secret part is uniformly random and that long, a single
//! SHA-256 is a sound way to store it: there is nothing to brute-force, so a
//! deliberately slow password hash would only cost CPU on every request.
//! The first 12 characters are kept in clear as the key's visible prefix so
//! that people can tell their keys apart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const TAG: &str = "cpk_";
const SECRET_CHARS: usize = 43;
/// Number of leading characters shown as the key's prefix.
pub const PREFIX_CHARS: usize = 12;

/// The SHA-256 of a key, the only form in which keys are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Lowercase hex, as stored.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A complete API key as presented by a client or shown once at creation.
pub struct ApiKeySecret(Secret<String>);

impl ApiKeySecret {
    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("failed to get random bytes for an API key: {e}"))?;
        Ok(Self(Secret::new(format!(
            "{TAG}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        ))))
    }

    /// Accepts only strings of the exact shape of a key, so that garbage is
    /// refused before any lookup.
    pub fn parse(presented: &str) -> Option<Self> {
        let body = presented.strip_prefix(TAG)?;
        let well_formed = body.len() == SECRET_CHARS
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Self(Secret::new(presented.to_owned())))
    }

    /// The stored hash.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.expose().as_bytes()).into())
    }

    /// The visible prefix.
    pub fn prefix(&self) -> &str {
        &self.0.expose()[..PREFIX_CHARS]
    }

    /// The whole key, for the one response that shows it.
    pub fn reveal(&self) -> &str {
        self.0.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let key = ApiKeySecret::generate().unwrap();
        assert_eq!(key.reveal().len(), TAG.len() + SECRET_CHARS);
        let again = ApiKeySecret::parse(key.reveal()).unwrap();
        assert!(again.hash() == key.hash());
        assert!(key.prefix().starts_with("cpk_"));
        assert_ne!(
            ApiKeySecret::generate().unwrap().hash().to_hex(),
            key.hash().to_hex()
        );
    }

    #[test]
    fn anything_not_shaped_like_a_key_is_refused() {
        let key = ApiKeySecret::generate().unwrap();
        let good = key.reveal();
        for bad in [
            "",
            "cpk_",
            &good[..good.len() - 1],
            &format!("{good}A"),
            &good.replace("cpk_", "xpk_"),
            &format!("cpk_{}", "%".repeat(SECRET_CHARS)),
        ] {
            assert!(ApiKeySecret::parse(bad).is_none(), "{bad:?}");
        }
    }
}
