//! `GET /v1/audit`: the tenant's audit log, newest first.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditFilter, AuditRecord, Outcome};
use crate::auth::extract::{Caller, ReadAudit};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::state::AppState;

/// Default page size.
const DEFAULT_LIMIT: u64 = 100;
/// Largest page size.
const MAX_LIMIT: u64 = 1000;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/audit")
            .route(web::get().to(list_audit))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Filters; all optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only records before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Only records by this principal, e.g. `api_key:key_…`.
    principal: Option<String>,
    /// Only `success` or `denied` records.
    outcome: Option<Outcome>,
    /// Only records of this action, e.g. `api_key.create`.
    action: Option<String>,
    /// Only records older than this id: pass the previous page's `next_before`.
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u64>,
}

/// One audit record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    /// Position in the log.
    id: i64,
    /// When.
    occurred_at: DateTime<Utc>,
    /// Who.
    principal: String,
    /// What.
    action: String,
    /// Allowed or refused.
    outcome: Outcome,
    /// Why it was refused.
    reason: Option<String>,
    /// The resource acted on.
    target: Option<String>,
    /// Client address.
    client_ip: Option<String>,
    /// Request id.
    request_id: Option<String>,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        AuditView {
            id: r.id,
            occurred_at: r.occurred_at,
            principal: r.principal,
            action: r.action,
            outcome: r.outcome,
            reason: r.reason,
            target: r.target,
            client_ip: r.client_ip,
            request_id: r.request_id,
        }
    }
}

/// A page of records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Records, newest first.
    data: Vec<AuditView>,
    /// Pass as `before` to get the next page; absent on the last page.
    next_before: Option<i64>,
}

/// Read the tenant's audit log.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, description = "Invalid filter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_audit(
    caller: Caller<ReadAudit>,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Error> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    for (name, value) in [("principal", &q.principal), ("action", &q.action)] {
        if value.as_ref().is_some_and(|v| v.len() > 200) {
            return Err(Error::InvalidQuery(format!("{name} is too long")));
        }
    }
    let filter = AuditFilter {
        since: q.since,
        until: q.until,
        principal: q.principal,
        outcome: q.outcome,
        action: q.action,
        before: q.before,
        limit,
    };
    let records = caller.scope(&state.db).audit_events(&filter).await?;
    let next_before = (records.len() as u64 == limit)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    Ok(HttpResponse::Ok().json(AuditPage {
        data: records.into_iter().map(AuditView::from).collect(),
        next_before,
    }))
}
