//! Gateway errors in the shape each SDK expects: OpenAI's
//! `{"error": {"message", "type", "code"}}` on `/chat/completions` and
//! `/models`, Anthropic's `{"type": "error", "error": {"type", "message"}}`
//! on `/messages`. The official clients turn these into their own
//! exception types.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

use super::config::WireFormat;
use crate::error::Error;

/// A gateway error.
#[derive(Debug)]
pub struct GatewayError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `model_not_found`.
    pub code: &'static str,
    /// For a person.
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The response in `format`'s shape.
    pub fn respond(&self, format: WireFormat) -> HttpResponse {
        let kind = match (format, self.status.as_u16()) {
            (_, 401) => "authentication_error",
            (WireFormat::Anthropic, 403) => "permission_error",
            (WireFormat::OpenAi, 403) => "permission_denied",
            (WireFormat::Anthropic, 404) => "not_found_error",
            (_, 429) => "rate_limit_error",
            (WireFormat::Anthropic, 413) => "request_too_large",
            (_, 400..=499) => "invalid_request_error",
            _ => "api_error",
        };
        let body = match format {
            WireFormat::OpenAi => json!({"error": {
                "message": self.message, "type": kind, "param": null, "code": self.code,
            }}),
            WireFormat::Anthropic => json!({"type": "error", "error": {
                "type": kind, "message": self.message,
            }}),
        };
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header(("retry-after", secs.to_string()));
        }
        res.json(body)
    }
}

impl From<Error> for GatewayError {
    fn from(e: Error) -> Self {
        let problem = e.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = ?e, "gateway request failed");
        }
        GatewayError::new(status, problem.code, problem.detail)
    }
}
