//! The scheduler's rows: the durable run queue, workers, join tokens and
//! the placement round counter, on SQLite or PostgreSQL through sea-orm.
//!
//! Every change of a run's state is one conditional `UPDATE` (`... WHERE
//! id = ? AND state IN (...) AND epoch = ?`): whoever loses a race affects
//! no row and learns it, so no update is ever lost or applied twice.
//! Placement rounds are serialised across control-plane replicas by the
//! row lock of the round counter, taken first in each round's transaction.
//!
//! Tenant-owned queries ([`runs`]) take the tenant's id and filter by it;
//! the API reaches them only through its tenant scope.

mod entities;
pub mod reports;
pub mod rounds;
pub mod runs;
pub mod workers;

use sea_orm::DbErr;

pub use reports::{ReportOutcome, apply_report};
pub use rounds::{Placed, place_round};
pub use runs::{NewRun, Run, RunFilter};
pub use workers::{
    Credential, HelloOutcome, JoinToken, WorkerInfo, WorkerState, authenticate, create_join_token,
    drain, expire_workers, heartbeat, hello, join, list_workers, register_local, resume, revoke,
};

/// What went wrong in the scheduler's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// No such row (or not the caller's).
    #[error("not found")]
    NotFound,
    /// A credential or join token is wrong, used or expired.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A stored row does not parse: a bug or tampering.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Result with the store's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// States in which a run holds a worker's resources.
pub(crate) const ACTIVE: [&str; 3] = ["placed", "starting", "running"];

/// A random secret with a prefix, as lowercase hex.
pub(crate) fn random_secret(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}_{}", hex(&bytes)))
}

/// SHA-256 of a secret, as hex: what is stored instead of the secret.
pub(crate) fn digest(secret: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new id: prefix, underscore, UUIDv7 hex (the API's id format).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
