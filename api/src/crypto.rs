//! Envelope encryption. Each tenant has one random 256-bit data key; it is
//! stored only wrapped (encrypted) by a [`KeyWrapper`] — today the master
//! key, tomorrow a KMS or Vault Transit behind the same trait. Tenant
//! secrets (provider keys now, memory later) are sealed with the tenant's
//! data key using AES-256-GCM, a fresh random nonce per seal, and
//! associated data naming exactly what the ciphertext is (tenant, kind,
//! name), so that a ciphertext moved to another tenant or row fails to open.
//!
//! Sealed format: `1 || nonce (12 bytes) || ciphertext and tag`. The AEAD
//! is `ring`'s (already linked for TLS; its assembly runs several times
//! faster than a portable implementation).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::master_key::MasterKey;
use crate::secret::Secret;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// A ciphertext did not open: wrong key, wrong associated data, or
/// tampering. Deliberately says nothing more.
#[derive(Debug, thiserror::Error)]
#[error("decryption failed")]
pub struct DecryptError;

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("failed to get random bytes: {e}"))?;
    Ok(bytes)
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!()))
}

fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
    let nonce = random::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| anyhow::anyhow!("encryption failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let (&version, rest) = sealed.split_first().ok_or(DecryptError)?;
    if version != VERSION || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(DecryptError);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| DecryptError)?;
    let mut buffer = ciphertext.to_vec();
    let plain_len = cipher(key)
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .map_err(|_| DecryptError)?
        .len();
    buffer.truncate(plain_len);
    Ok(buffer)
}

/// A tenant's data key, in memory only while in use.
pub struct DataKey(Secret<[u8; 32]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        Ok(Self(Secret::new(random()?)))
    }

    /// Encrypts `plaintext`, binding `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        seal_with(self.0.expose(), plaintext, aad)
    }

    /// A stable identifier derived from the key and `context` (hex of
    /// SHA-256 over both): names objects without revealing what they
    /// belong to to anyone who lacks the key.
    pub fn derive_id(&self, context: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.0.expose());
        hasher.update(context.as_bytes());
        hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Decrypts what [`seal`](Self::seal) made with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecryptError> {
        open_with(self.0.expose(), sealed, aad)
    }
}

/// Wraps and unwraps tenant data keys. `context` is bound as associated
/// data (it names the tenant), so a wrapped key copied to another tenant's
/// row does not unwrap.
pub trait KeyWrapper: Send + Sync {
    /// Identifies the wrapping key (stored beside each wrapped key, for
    /// rotation).
    fn id(&self) -> String;
    /// Encrypts a data key.
    fn wrap(&self, key: &DataKey, context: &str) -> anyhow::Result<Vec<u8>>;
    /// Decrypts a data key.
    fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<DataKey, DecryptError>;
}

impl KeyWrapper for MasterKey {
    fn id(&self) -> String {
        format!("master:{}", self.fingerprint())
    }

    fn wrap(&self, key: &DataKey, context: &str) -> anyhow::Result<Vec<u8>> {
        seal_with(self.bytes(), key.0.expose(), context.as_bytes())
    }

    fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<DataKey, DecryptError> {
        let bytes = open_with(self.bytes(), wrapped, context.as_bytes())?;
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| DecryptError)?;
        Ok(DataKey(Secret::new(array)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_associated_data() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"sk-live-123", b"tenant-a/openai").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(
            key.open(&sealed, b"tenant-a/openai").unwrap(),
            b"sk-live-123"
        );
        assert!(
            key.open(&sealed, b"tenant-b/openai").is_err(),
            "moved to another tenant"
        );
        assert!(
            DataKey::generate()
                .unwrap()
                .open(&sealed, b"tenant-a/openai")
                .is_err()
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(&tampered, b"tenant-a/openai").is_err());
        assert!(key.open(&sealed[..10], b"tenant-a/openai").is_err());
        assert!(key.open(&[], b"").is_err());
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            key.seal(b"sk-live-123", b"tenant-a/openai").unwrap()
        );
    }

    #[test]
    fn wrapped_data_keys_unwrap_only_in_their_own_context() {
        let dir = tempfile::tempdir().unwrap();
        let (master, _) = MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        let key = DataKey::generate().unwrap();
        let wrapped = master.wrap(&key, "tenant:a").unwrap();
        let unwrapped = master.unwrap(&wrapped, "tenant:a").unwrap();
        let sealed = key.seal(b"x", b"").unwrap();
        assert_eq!(unwrapped.open(&sealed, b"").unwrap(), b"x");
        assert!(master.unwrap(&wrapped, "tenant:b").is_err());
        let (other, _) = MasterKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.unwrap(&wrapped, "tenant:a").is_err());
    }
}
