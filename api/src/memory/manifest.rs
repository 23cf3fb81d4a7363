//! The manifest of one memory version: which files it holds and where
//! their encrypted chunks are. Stored encrypted; this is its plaintext
//! format (`v1`), versioned through the associated data.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Random id of the file's chunk objects.
    pub blob: String,
    /// The version the chunks were written for (bound into their
    /// associated data; a file unchanged since keeps it).
    pub written_in: u64,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks (at least one; the last is marked as last).
    pub chunks: u32,
    /// SHA-256 of the content, hex.
    pub sha256: String,
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
