//! The master key: 256 bits that wrap every tenant's data key (the memory
//! issue builds on it). Kept in a file that Carapace creates with mode 0600
//! and never overwrites; a key file that others can read is refused.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

use crate::secret::Secret;

/// The master key, held only in memory (a clone is another zeroized copy,
/// for the background writers that seal with tenant keys).
#[derive(Clone)]
pub struct MasterKey(Secret<[u8; 32]>);

impl MasterKey {
    /// Reads the key file, or creates it with a fresh random key if it does
    /// not exist. Never overwrites an existing file.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(Self, bool)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("failed to get random bytes for the master key: {e}"))?;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut file) => {
                let mut text = hex(&bytes);
                text.push('\n');
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("failed to write {}", path.display()))?;
                Ok((Self(Secret::new(bytes)), true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::read(path)?, false))
            }
            Err(e) => Err(e)
                .with_context(|| format!("failed to create master key file {}", path.display())),
        }
    }

    /// Reads an existing key file; never creates one.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::read(path)
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "master key file {} is readable by group or others; run `chmod 600` on it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let text = text.trim();
        let mut bytes = [0u8; 32];
        if text.len() != 64 || !text.is_ascii() {
            bail!("master key file {} must hold 64 hex digits", path.display());
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).with_context(|| {
                format!("master key file {} must hold 64 hex digits", path.display())
            })?;
        }
        Ok(Self(Secret::new(bytes)))
    }

    /// The key itself, for `crypto` only.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// A non-secret fingerprint for logs: the first 8 hex digits of
    /// SHA-256 over the key.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(self.0.expose())[..4])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (first, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn a_world_readable_or_garbled_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_ok());
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_err());
    }
}
