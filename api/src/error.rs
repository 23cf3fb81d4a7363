//! The crate's one error type. Each variant maps to an HTTP status and a
//! stable problem `type` (see `http::problem`); `Unexpected` carries the
//! cause chain for the log and shows nothing of it to the client.

use std::fmt;

/// Everything that can go wrong while serving a request.
#[derive(thiserror::Error)]
pub enum Error {
    /// No credentials, or credentials that are not valid.
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    /// Valid credentials without the permission needed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The resource does not exist, or belongs to another tenant.
    #[error("not found")]
    NotFound,
    /// No such method on an existing path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A field failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// Name of the offending field.
        field: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// The request body is not syntactically valid JSON.
    #[error("malformed JSON at line {line}, column {column}: {detail}")]
    MalformedJson {
        /// serde_json's explanation.
        detail: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The body is JSON but not of the expected shape (unknown or missing
    /// field, wrong type).
    #[error("unexpected JSON at line {line}, column {column}: {detail}")]
    UnexpectedJson {
        /// serde_json's explanation.
        detail: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A query-string parameter is not valid.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The body is larger than allowed.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body has the wrong media type.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The change conflicts with one made meanwhile (e.g. a concurrent
    /// memory commit); retry from the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data failed its integrity check (tampering or corruption);
    /// it is never served.
    #[error("stored data failed its integrity check")]
    Integrity(String),
    /// A plan or safety limit was reached.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// Too many requests of this kind from this client for now: retry
    /// after the given seconds.
    #[error("too many requests: {0}")]
    RateLimited(String, u64),
    /// A dependency (database, object store) is not answering.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an outage. Logged with its causes, never
    /// shown to the client.
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `{:#}` prints anyhow's whole cause chain on one line.
            Error::Unexpected(cause) => write!(f, "internal error: {cause:#}"),
            Error::Integrity(what) => write!(f, "integrity failure: {what}"),
            other => write!(f, "{other}"),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        Error::Unexpected(anyhow::Error::new(e).context("database request failed"))
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(e: sea_orm::TransactionError<Error>) -> Self {
        match e {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(inner) => inner,
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
