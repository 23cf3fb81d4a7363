//! Operator endpoints: `GET /v1/admin/workers` (the fleet and its load),
//! `POST /v1/admin/workers/{id}/drain` and `.../resume`,
//! `DELETE /v1/admin/workers/{id}` (revoke), `PUT /v1/admin/tenants/{id}/plan`
//! (a tenant's plan). They answer only the operator's
//! `admin_token` — no tenant's key, whatever its role — and are off (403)
//! when no token is configured.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use carapace_scheduler::store::{self, WorkerInfo};
use chrono::{DateTime, Utc};
use serde::Serialize;
use subtle::ConstantTimeEq;

use actix_web::HttpMessage;

use crate::audit::{Actor, Outcome};
use crate::auth::extract::client_ip;
use crate::db::{TenantScope, store_error};
use crate::error::Error;
use crate::http::observe::RequestId;
use crate::http::problem::method_not_allowed;
use crate::ids::{TenantId, WorkerId};
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/admin/workers")
            .route(web::get().to(list_workers))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/admin/workers/{id}")
            .route(web::delete().to(revoke_worker))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/admin/workers/{id}/drain")
            .route(web::post().to(drain_worker))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/admin/tenants/{id}/plan")
            .route(web::put().to(set_plan))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/admin/workers/{id}/resume")
            .route(web::post().to(resume_worker))
            .default_service(web::to(method_not_allowed)),
    );
}

/// CPU, memory and sandbox slots.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResourcesView {
    cpu_millis: u64,
    memory_mib: u64,
    slots: u64,
}

/// A worker and its load.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// Worker id.
    #[schema(example = "wrk_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    name: String,
    /// `active`, `draining` (no new runs) or `lost` (missed heartbeats).
    state: String,
    /// Connected to the replica that answered.
    connected_here: bool,
    capacity: ResourcesView,
    /// Taken by its placed, starting and running runs.
    used: ResourcesView,
    images: Vec<String>,
    last_heartbeat_at: Option<DateTime<Utc>>,
    connected_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// The fleet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerList {
    /// By name.
    data: Vec<WorkerView>,
}

fn view(w: WorkerInfo, here: &[String]) -> WorkerView {
    let r = |r: carapace_scheduler::protocol::Resources| ResourcesView {
        cpu_millis: r.cpu_millis,
        memory_mib: r.memory_mib,
        slots: r.slots,
    };
    WorkerView {
        connected_here: here.contains(&w.id),
        id: w.id,
        name: w.name,
        state: w.state.as_str().to_owned(),
        capacity: r(w.capacity),
        used: r(w.used),
        images: w.images,
        last_heartbeat_at: w.last_heartbeat_at,
        connected_at: w.connected_at,
        created_at: w.created_at,
    }
}

/// 403 unless the request carries the operator's token.
fn operator(req: &HttpRequest, state: &AppState) -> Result<(), Error> {
    let Some(expected) = &state.admin_token else {
        return Err(Error::Forbidden(
            "operator endpoints are off: no admin_token is configured".into(),
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches: bool = presented
        .as_bytes()
        .ct_eq(expected.expose().as_bytes())
        .into();
    if matches {
        Ok(())
    } else {
        tracing::warn!("operator endpoint refused: wrong or missing admin token");
        Err(Error::Forbidden(
            "the operator's admin token is required".into(),
        ))
    }
}

/// The operator's check, then the worker id of the path (404 if it is not
/// one).
fn operator_on(req: &HttpRequest, state: &AppState, raw: &str) -> Result<WorkerId, Error> {
    operator(req, state)?;
    WorkerId::parse(raw).map_err(|_| Error::NotFound)
}

/// A tenant's new plan.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    /// One of the configured plans (`[plans.NAME]`, or `default`).
    plan: String,
}

/// Move a tenant to another plan (operator only; audited in the tenant's
/// log). Takes effect within the authentication cache's lifetime.
#[utoipa::path(put, path = "/v1/admin/tenants/{id}/plan", tag = "operations",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = PlanChange,
    responses(
        (status = 200, description = "The tenant's plan now", body = crate::plans::PlanView),
        (status = 403, description = "Not the operator", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such plan", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn set_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<PlanChange>,
) -> Result<HttpResponse, Error> {
    operator(&req, &state)?;
    let tenant = TenantId::parse(&id).map_err(|_| Error::NotFound)?;
    if !state.plans.contains(&body.plan) {
        return Err(Error::Invalid {
            field: "plan",
            message: format!(
                "no such plan; configured: {}",
                state.plans.names().join(", ")
            ),
        });
    }
    let actor = Actor {
        principal: "operator".to_owned(),
        client_ip: client_ip(&req),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    };
    let audit = actor
        .event("tenant.plan", Outcome::Success)
        .reason(format!("plan = {}", body.plan));
    TenantScope::new(&state.db, &tenant)
        .set_plan(&body.plan, audit)
        .await?;
    tracing::info!(tenant_id = %tenant, plan = %body.plan, "tenant moved to another plan by the operator");
    Ok(HttpResponse::Ok().json(state.plans.view(&body.plan)))
}

/// The workers and their load (operator only).
#[utoipa::path(get, path = "/v1/admin/workers", tag = "operations",
    responses(
        (status = 200, description = "The fleet", body = WorkerList),
        (status = 403, description = "Not the operator", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn list_workers(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    operator(&req, &state)?;
    let here = state.fleet.connected();
    let workers = store::list_workers(&state.db).await.map_err(store_error)?;
    Ok(HttpResponse::Ok().json(WorkerList {
        data: workers.into_iter().map(|w| view(w, &here)).collect(),
    }))
}

/// Drain a worker: it gets no new runs; those it holds go on (operator
/// only).
#[utoipa::path(post, path = "/v1/admin/workers/{id}/drain", tag = "operations",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 202, description = "Draining", body = WorkerView),
        (status = 403, description = "Not the operator", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such worker", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn drain_worker(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = operator_on(&req, &state, &id)?;
    store::drain(&state.db, id.as_str())
        .await
        .map_err(store_error)?;
    state.fleet.tell_drained(id.as_str()).await;
    tracing::info!(worker = %id, "worker drained by the operator");
    Ok(HttpResponse::Accepted().json(current(&state, &id).await?))
}

async fn current(state: &AppState, id: &WorkerId) -> Result<WorkerView, Error> {
    let worker = store::workers::worker_info(&state.db, id.as_str())
        .await
        .map_err(store_error)?;
    Ok(view(worker, &state.fleet.connected()))
}

/// Take a drained worker back: it gets new runs again (operator only).
#[utoipa::path(post, path = "/v1/admin/workers/{id}/resume", tag = "operations",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 200, description = "The worker", body = WorkerView),
        (status = 403, description = "Not the operator", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such worker", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn resume_worker(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = operator_on(&req, &state, &id)?;
    store::resume(&state.db, id.as_str())
        .await
        .map_err(store_error)?;
    tracing::info!(worker = %id, "worker resumed by the operator");
    state.fleet.wake();
    Ok(HttpResponse::Ok().json(current(&state, &id).await?))
}

/// Revoke a worker: its credential stops working, it is lost at once and
/// its runs are requeued or failed by their policy (operator only). To
/// bring the machine back, give it a new join token and a new name.
#[utoipa::path(delete, path = "/v1/admin/workers/{id}", tag = "operations",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not the operator", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such worker", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn revoke_worker(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = operator_on(&req, &state, &id)?;
    store::revoke(&state.db, id.as_str())
        .await
        .map_err(store_error)?;
    state.fleet.disconnect_worker(id.as_str());
    tracing::warn!(worker = %id, "worker revoked by the operator");
    Ok(HttpResponse::NoContent().finish())
}
