//! `POST/GET /v1/sandboxes`, `GET/DELETE /v1/sandboxes/{id}`,
//! `POST /v1/sandboxes/{id}/exec`, `PUT/GET /v1/sandboxes/{id}/files/{path}`:
//! a tenant's sandboxes, commands run in them and files moved in and out of
//! their `/workspace`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use carapace_scheduler::RunState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::Outcome;
use crate::auth::extract::{Caller, UseSandboxes};
use crate::db::{NewSandbox, Sandbox, SandboxState};
use crate::error::Error;
use crate::http::problem::{self, method_not_allowed};
use crate::http::validate;
use crate::ids::{RunId, SandboxId};
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/sandboxes")
            .route(web::post().to(create_sandbox))
            .route(web::get().to(list_sandboxes))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/sandboxes/{id}")
            .route(web::get().to(get_sandbox))
            .route(web::delete().to(delete_sandbox))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/sandboxes/{id}/exec")
            .app_data(problem::json_config(super::sandbox_exec::MAX_EXEC_BODY))
            .route(web::post().to(super::sandbox_exec::exec))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/sandboxes/{id}/files/{path:.*}")
            .route(web::put().to(super::sandbox_calls::upload))
            .route(web::get().to(super::sandbox_calls::download))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Resource limits of a new sandbox; absent fields take the defaults.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Memory in MiB, 16-4096 (no swap). [default: 256]
    memory_mib: Option<u32>,
    /// CPU in thousandths of a core, 10-2000. [default: 1000]
    cpu_millis: Option<u32>,
    /// Processes and threads, 8-1024. [default: 128]
    pids: Option<u32>,
    /// Size of `/workspace` in MiB, 1-1024. [default: 64]
    workspace_mib: Option<u32>,
    /// Size of `/tmp` in MiB, 1-256. [default: 16]
    tmp_mib: Option<u32>,
}

/// A new sandbox.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// `builtin` (busybox and the Carapace agent; the default), or one of
    /// the OCI images the server offers (its `[sandbox] images`; a
    /// reference it does not offer is refused with 422).
    #[serde(default)]
    image: Option<String>,
    /// Host names reachable through the sandbox's egress proxy
    /// (`HTTP_PROXY`), e.g. `api.github.com` or `*.example.com`.
    #[serde(default)]
    egress_allow: Option<Vec<String>>,
    #[serde(default)]
    limits: Option<LimitsBody>,
}

/// Resource limits in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    memory_mib: u32,
    cpu_millis: u32,
    pids: u32,
    workspace_mib: u32,
    tmp_mib: u32,
}

impl From<carapace_runtime::Limits> for LimitsView {
    fn from(l: carapace_runtime::Limits) -> Self {
        LimitsView {
            memory_mib: l.memory_mib,
            cpu_millis: l.cpu_millis,
            pids: l.pids,
            workspace_mib: l.workspace_mib,
            tmp_mib: l.tmp_mib,
        }
    }
}

/// A sandbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SandboxView {
    /// Sandbox id.
    #[schema(example = "sbx_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    image: String,
    egress_allow: Vec<String>,
    limits: LimitsView,
    /// `starting`, `running`, or `lost` (its worker restarted or was lost:
    /// delete it).
    state: String,
    /// The interactive run that holds it on a worker (`GET /v1/runs/{id}`).
    run_id: Option<String>,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    /// Deleted after this long without an exec or file transfer.
    idle_timeout_s: u64,
    /// The agent this sandbox keeps warm (made by a message to it).
    agent_id: Option<String>,
}

impl SandboxView {
    fn new(s: Sandbox, idle_timeout: Duration) -> Self {
        SandboxView {
            id: s.id.to_string(),
            image: s.image,
            egress_allow: s.egress_allow,
            limits: LimitsView::from(s.limits),
            state: s.state.as_str().to_owned(),
            run_id: s.run_id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            idle_timeout_s: s.idle_timeout_s.map_or(idle_timeout.as_secs(), u64::from),
            agent_id: s.agent_id.map(|a| a.to_string()),
        }
    }
}

/// A list of sandboxes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SandboxList {
    /// Newest first.
    data: Vec<SandboxView>,
}

pub(super) fn sandbox_id(raw: &str) -> Result<SandboxId, Error> {
    SandboxId::parse(raw).map_err(|_| Error::NotFound)
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

pub(super) fn limits(body: Option<LimitsBody>) -> Result<carapace_runtime::Limits, Error> {
    let body = body.unwrap_or_default();
    let d = carapace_runtime::Limits::default();
    let limits = carapace_runtime::Limits {
        memory_mib: body.memory_mib.unwrap_or(d.memory_mib),
        cpu_millis: body.cpu_millis.unwrap_or(d.cpu_millis),
        pids: body.pids.unwrap_or(d.pids),
        workspace_mib: body.workspace_mib.unwrap_or(d.workspace_mib),
        tmp_mib: body.tmp_mib.unwrap_or(d.tmp_mib),
    };
    match limits.out_of_bounds() {
        Some((field, lo, hi)) => Err(invalid(
            "limits",
            format!("{field} must be between {lo} and {hi}"),
        )),
        None => Ok(limits),
    }
}

/// Create a sandbox and start it: an interactive run, placed by the
/// scheduler on a worker that offers its image.
#[utoipa::path(
    post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Created and running", body = SandboxView),
        (status = 409, description = "Too many sandboxes", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No worker can run it, or it could not start", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_sandbox(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    body: web::Json<CreateSandbox>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let image = validate::image(body.image.as_deref().unwrap_or("builtin"))?;
    let egress_allow = validate::hosts(body.egress_allow.unwrap_or_default())?;
    let limits = limits(body.limits)?;
    let new = NewSandbox {
        image,
        egress_allow,
        limits,
        agent: None,
        idle_timeout_s: None,
    };
    let sandbox = crate::sandboxes::start_sandbox(
        &state,
        caller.tenant_id().clone(),
        caller.actor().clone(),
        new,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/sandboxes/{}", sandbox.id)))
        .json(SandboxView::new(
            sandbox,
            state.sandboxes.config().idle_timeout,
        )))
}

/// List the tenant's sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "The sandboxes", body = SandboxList)),
    security(("api_key" = [])))]
pub async fn list_sandboxes(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let idle = state.sandboxes.config().idle_timeout;
    let scope = caller.scope(&state.db);
    let mut data = Vec::new();
    for sandbox in scope.sandboxes().await? {
        data.push(SandboxView::new(refresh(&scope, sandbox).await?, idle));
    }
    Ok(HttpResponse::Ok().json(SandboxList { data }))
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxView),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_sandbox(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let scope = caller.scope(&state.db);
    let sandbox = scope.sandbox(&sandbox_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(SandboxView::new(
        refresh(&scope, sandbox).await?,
        state.sandboxes.config().idle_timeout,
    )))
}

/// The sandbox with its state brought up to date: a running sandbox whose
/// run has ended is lost (and recorded so).
pub(super) async fn refresh(
    scope: &crate::db::TenantScope<'_>,
    sandbox: Sandbox,
) -> Result<Sandbox, Error> {
    if sandbox.state != SandboxState::Running {
        return Ok(sandbox);
    }
    let run = match sandbox.run_id.as_deref().map(RunId::parse) {
        Some(Ok(run)) => Some(scope.run(&run).await?),
        _ => None,
    };
    if run.is_some_and(|r| r.state == RunState::Running) {
        return Ok(sandbox);
    }
    scope
        .set_sandbox_state(&sandbox.id, SandboxState::Lost)
        .await?;
    Ok(Sandbox {
        state: SandboxState::Lost,
        ..sandbox
    })
}

/// Delete a sandbox: its processes are killed and its workspace is gone.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn delete_sandbox(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = sandbox_id(&id)?;
    let scope = caller.scope(&state.db);
    // Only a sandbox of this tenant is touched on the worker, and only
    // once its creation has finished one way or the other.
    let sandbox = scope.sandbox(&id).await?;
    if sandbox.state == SandboxState::Starting {
        return Err(Error::Conflict(
            "the sandbox is still starting; delete it once it runs".into(),
        ));
    }
    let event = caller.actor().event("sandbox.delete", Outcome::Success);
    if !crate::sandboxes::stop_sandbox(&state, &scope, &sandbox, event).await? {
        return Err(Error::NotFound);
    }
    Ok(HttpResponse::NoContent().finish())
}
