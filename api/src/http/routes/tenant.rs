//! `GET /v1/tenant`: who the caller is.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::{Role, Scope};
use crate::auth::extract::{Caller, ReadTenant};
use crate::error::Error;
use crate::http::problem::method_not_allowed;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/tenant")
            .route(web::get().to(get_tenant))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The caller's tenant and role.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    /// Tenant id.
    #[schema(example = "tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    /// Display name.
    name: String,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// The caller's role in the tenant.
    role: Role,
    /// The caller.
    principal: PrincipalView,
    /// The tenant's plan and what it allows.
    plan: crate::plans::PlanView,
}

/// The authenticated principal.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PrincipalView {
    /// `api_key`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The key's id.
    id: String,
    /// The key's scopes.
    scopes: Vec<Scope>,
}

/// The caller's tenant and role.
#[utoipa::path(
    get, path = "/v1/tenant", tag = "tenant",
    responses(
        (status = 200, description = "The caller's tenant", body = TenantView),
        (status = 401, description = "Missing or invalid credentials", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_tenant(
    caller: Caller<ReadTenant>,
    state: actix_web::web::Data<crate::state::AppState>,
) -> Result<HttpResponse, Error> {
    // Read with the key at verification (at most the cache TTL old).
    let principal = caller.principal();
    let tenant = principal.tenant();
    Ok(HttpResponse::Ok().json(TenantView {
        id: tenant.id.to_string(),
        name: tenant.name.clone(),
        created_at: tenant.created_at,
        role: caller.role(),
        principal: PrincipalView {
            kind: principal.credential.kind(),
            id: principal.credential.id(),
            scopes: principal.scopes.as_slice().to_vec(),
        },
        plan: state.plans.view(&tenant.plan),
    }))
}
