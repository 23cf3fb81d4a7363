//! `MemoryPath`: a file path inside an agent's memory, validated so that it
//! can never name anything outside it.

use std::fmt;

/// Longest path, in bytes.
pub const MAX_PATH: usize = 512;

/// The prefix of a name that, in a memory archive, deletes the file named
/// by the rest (as in OCI image layers).
pub const WHITEOUT: &str = ".wh.";

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid memory path: {0}")]
pub struct InvalidPath(pub &'static str);

/// A relative path of `/`-separated components: no empty, `.` or `..`
/// components, no leading `/`, no backslashes or control characters, no
/// component beginning with `.wh.` (in memory archives such a name means
/// "delete", see `routes::memory_sync`), at most 512 bytes and 255 per
/// component.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryPath(String);

impl MemoryPath {
    /// Validates.
    pub fn parse(value: &str) -> Result<Self, InvalidPath> {
        if value.is_empty() {
            return Err(InvalidPath("empty"));
        }
        if value.len() > MAX_PATH {
            return Err(InvalidPath("longer than 512 bytes"));
        }
        if value.starts_with('/') {
            return Err(InvalidPath("absolute"));
        }
        if value.chars().any(|c| c.is_control() || c == '\\') {
            return Err(InvalidPath("control character or backslash"));
        }
        for component in value.split('/') {
            match component {
                "" => return Err(InvalidPath("empty component")),
                "." | ".." => return Err(InvalidPath("`.` or `..` component")),
                c if c.len() > 255 => return Err(InvalidPath("component longer than 255 bytes")),
                c if c.starts_with(WHITEOUT) => {
                    return Err(InvalidPath("`.wh.` names are reserved"));
                }
                _ => {}
            }
        }
        Ok(Self(value.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemoryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MemoryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_are_accepted() {
        for ok in [
            "MEMORY.md",
            "memory/2026-11-26.md",
            "a/b/c.txt",
            "sessions/é.json",
            ".hidden",
        ] {
            assert!(MemoryPath::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn escapes_and_oddities_are_refused() {
        let long = "a".repeat(513);
        let long_component = format!("{}/x", "b".repeat(256));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            long.as_str(),
            long_component.as_str(),
            ".wh.notes.md",
            "a/.wh..wh..opq",
        ] {
            assert!(MemoryPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
