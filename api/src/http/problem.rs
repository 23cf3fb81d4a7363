//! Errors on the wire: every error is an RFC 9457 problem document
//! (`application/problem+json`) whose `type` and `code` are stable and
//! listed in [`PROBLEMS`]. Extractor failures (bad JSON, bad path, bad
//! query) are mapped into the same shape here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::error::Error;

/// Every problem code, its HTTP status and its title. The `type` of a
/// problem is `urn:carapace:problem:<code>`.
pub const PROBLEMS: &[(&str, u16, &str)] = &[
    ("unauthenticated", 401, "Authentication required"),
    ("forbidden", 403, "Forbidden"),
    ("not_found", 404, "Not found"),
    ("method_not_allowed", 405, "Method not allowed"),
    ("limit_reached", 409, "Limit reached"),
    ("conflict", 409, "Conflict"),
    (
        "integrity_failure",
        500,
        "Stored data failed its integrity check",
    ),
    ("payload_too_large", 413, "Request body too large"),
    ("unsupported_media_type", 415, "Unsupported media type"),
    ("malformed_json", 400, "Malformed JSON"),
    ("invalid_query", 400, "Invalid query parameter"),
    (
        "unexpected_json",
        422,
        "Request body does not match the schema",
    ),
    ("invalid_field", 422, "Invalid field"),
    ("rate_limited", 429, "Too many requests"),
    ("unavailable", 503, "Service unavailable"),
    ("internal", 500, "Internal error"),
];

/// A problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:carapace:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed summary of the problem type.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl Error {
    fn code(&self) -> &'static str {
        match self {
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::LimitReached(_) => "limit_reached",
            Error::RateLimited(..) => "rate_limited",
            Error::Conflict(_) => "conflict",
            Error::Integrity(_) => "integrity_failure",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::MalformedJson { .. } => "malformed_json",
            Error::InvalidQuery(_) => "invalid_query",
            Error::UnexpectedJson { .. } => "unexpected_json",
            Error::Invalid { .. } => "invalid_field",
            Error::Unavailable(_) => "unavailable",
            Error::Unexpected(_) => "internal",
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let code = self.code();
        let (status, title) = PROBLEMS
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or((500, "Internal error"), |(_, s, t)| (*s, *t));
        Problem {
            kind: format!("urn:carapace:problem:{code}"),
            title,
            status,
            // `Unexpected`'s Display is a fixed text: causes stay in the log.
            detail: self.to_string(),
            code,
            field: match self {
                Error::Invalid { field, .. } => Some(field),
                _ => None,
            },
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.problem().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::error!(error = ?self, "request failed");
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Error::RateLimited(_, secs) = self {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Error::Unauthenticated(_) = self {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"carapace\""),
            ));
        }
        match serde_json::to_vec(&problem) {
            Ok(body) => res.body(body),
            Err(_) => res.finish(),
        }
    }
}

/// Maps actix's JSON extractor failures into problems.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use actix_web::error::{JsonPayloadError as J, PayloadError};
    use serde_json::error::Category;
    let error = match err {
        J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => {
            Error::PayloadTooLarge { limit }
        }
        J::Payload(PayloadError::Overflow) => Error::PayloadTooLarge { limit: 0 },
        J::ContentType => {
            Error::UnsupportedMediaType("the body must be sent as application/json".to_owned())
        }
        J::Deserialize(e) => {
            let (line, column) = (e.line(), e.column());
            let detail = strip_position(&e.to_string());
            match e.classify() {
                Category::Data => Error::UnexpectedJson {
                    detail,
                    line,
                    column,
                },
                Category::Syntax | Category::Eof | Category::Io => Error::MalformedJson {
                    detail,
                    line,
                    column,
                },
            }
        }
        other => Error::MalformedJson {
            detail: other.to_string(),
            line: 0,
            column: 0,
        },
    };
    error.into()
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Maps path extractor failures: an id that does not parse names nothing.
pub fn path_error(_: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    Error::NotFound.into()
}

/// Maps query-string failures.
pub fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    Error::InvalidQuery(err.to_string()).into()
}

/// The JSON extractor configuration for every `/v1` route.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type_required(true)
        .error_handler(json_error)
}

/// Fallback for paths that exist with other methods.
pub async fn method_not_allowed() -> Result<HttpResponse, Error> {
    Err(Error::MethodNotAllowed)
}

/// Fallback for unknown paths.
pub async fn not_found() -> Result<HttpResponse, Error> {
    Err(Error::NotFound)
}
