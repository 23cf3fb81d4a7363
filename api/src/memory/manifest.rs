//! The manifest of one memory version: which files it holds and where
//! their content is. Stored encrypted; this is its plaintext format (`v1`),
//! versioned through the associated data.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Where the content is.
    pub content: Content,
}

/// Where a file's content is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// Small files live inside the (encrypted) manifest itself, base64:
    /// committing a hundred notes is one object write, not a hundred.
    Inline {
        /// The content, base64.
        data: String,
    },
    /// Larger files are chunk objects.
    Chunks {
        /// Random id of the file's chunk objects.
        blob: String,
        /// The version the chunks were written for (bound into their
        /// associated data; a file unchanged since keeps it).
        written_in: u64,
        /// Number of chunks (at least one; the last is marked as last).
        chunks: u32,
    },
}

/// One version of an agent's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The version number, from 1.
    pub version: u64,
    /// The version it was made from.
    pub parent: Option<u64>,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
    /// Files by path.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Bytes held inline.
    pub fn inline_bytes(&self) -> u64 {
        self.files
            .values()
            .filter(|f| matches!(f.content, Content::Inline { .. }))
            .map(|f| f.size)
            .sum()
    }
}
