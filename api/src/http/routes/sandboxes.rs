//! `POST/GET /v1/sandboxes`, `GET/DELETE /v1/sandboxes/{id}`,
//! `POST /v1/sandboxes/{id}/exec`, `PUT/GET /v1/sandboxes/{id}/files/{path}`:
//! a tenant's sandboxes, commands run in them and files moved in and out of
//! their `/workspace`.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::audit::Outcome;
use crate::auth::extract::{Caller, UseSandboxes};
use crate::db::{NewSandbox, Sandbox, SandboxState};
use crate::error::Error;
use crate::http::problem::{self, method_not_allowed};
use crate::http::validate;
use crate::ids::SandboxId;
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
            .route(web::put().to(upload))
            .route(web::get().to(download))
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
    /// `starting`, `running`, or `lost` (its worker restarted: delete it).
    state: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    /// Deleted after this long without an exec or file transfer.
    idle_timeout_s: u64,
}

impl SandboxView {
    fn new(s: Sandbox, idle_timeout: Duration) -> Self {
        SandboxView {
            id: s.id.to_string(),
            image: s.image,
            egress_allow: s.egress_allow,
            limits: LimitsView::from(s.limits),
            state: s.state.as_str().to_owned(),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            idle_timeout_s: idle_timeout.as_secs(),
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

/// Create a sandbox and start it.
#[utoipa::path(
    post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Created and running", body = SandboxView),
        (status = 409, description = "Too many sandboxes", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "This server runs no sandboxes, or none could start", body = crate::http::problem::Problem, content_type = "application/problem+json"),
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
    let service = state.sandboxes.clone();
    let runtime = service.runtime_arc()?;
    service.check_offered(&image)?;
    let scope = caller.scope(&state.db);
    let new = NewSandbox {
        image: image.clone(),
        egress_allow,
        limits,
        worker: service.worker().to_owned(),
    };
    // The record first: the quota holds before anything is prepared.
    let sandbox = scope
        .create_sandbox(new, service.config().max_per_tenant)
        .await?;
    // The rest runs to its end even if the client goes away, so that the
    // record always ends running or deleted and nothing is left half made.
    let (db, tenant, actor) = (
        state.db.clone(),
        caller.tenant_id().clone(),
        caller.actor().clone(),
    );
    let id = sandbox.id.clone();
    let (limits, egress) = (sandbox.limits, sandbox.egress_allow.clone());
    // On the worker's runtime: the sandbox's sockets and tasks belong there,
    // not to this HTTP worker thread.
    let handle = runtime.handle().clone();
    let started = handle.spawn(async move {
        let scope = crate::db::TenantScope::new(&db, &tenant);
        let begun = Instant::now();
        let result = match service.image(&image).await {
            Ok(rootfs) => runtime
                .create(id.as_str(), service.spec(limits, &egress, rootfs))
                .await
                .map_err(|e| {
                    tracing::error!(sandbox = %id, error = %e, "sandbox failed to start");
                    match e {
                        carapace_runtime::Error::Full => Error::Unavailable(
                            "this server runs as many sandboxes as it can".into(),
                        ),
                        _ => Error::Unavailable("the sandbox could not be started".into()),
                    }
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                scope
                    .sandbox_started(&id, actor.event("sandbox.create", Outcome::Success))
                    .await?;
                tracing::info!(sandbox = %id, tenant = %tenant, ms = begun.elapsed().as_millis() as u64, "sandbox started");
                Ok(())
            }
            Err(e) => {
                let event = actor
                    .event("sandbox.create", Outcome::Failed)
                    .reason("the sandbox could not be started");
                scope.delete_sandbox(&id, Some(event)).await?;
                Err(e)
            }
        }
    });
    started
        .await
        .map_err(|e| Error::Unexpected(anyhow::anyhow!("sandbox start task: {e}")))??;
    let sandbox = Sandbox {
        state: SandboxState::Running,
        ..sandbox
    };
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
    let sandboxes = caller.scope(&state.db).sandboxes().await?;
    Ok(HttpResponse::Ok().json(SandboxList {
        data: sandboxes
            .into_iter()
            .map(|s| SandboxView::new(s, idle))
            .collect(),
    }))
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
    let sandbox = caller.scope(&state.db).sandbox(&sandbox_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(SandboxView::new(
        sandbox,
        state.sandboxes.config().idle_timeout,
    )))
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
    if scope.sandbox(&id).await?.state == SandboxState::Starting {
        return Err(Error::Conflict(
            "the sandbox is still starting; delete it once it runs".into(),
        ));
    }
    state.sandboxes.remove(&id).await;
    let event = caller.actor().event("sandbox.delete", Outcome::Success);
    if !scope.delete_sandbox(&id, Some(event)).await? {
        return Err(Error::NotFound);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The tenant's running sandbox `raw`, ready for a command or a transfer.
pub(super) async fn running(
    caller: &Caller<UseSandboxes>,
    state: &AppState,
    raw: &str,
) -> Result<SandboxId, Error> {
    let id = sandbox_id(raw)?;
    let scope = caller.scope(&state.db);
    let sandbox = scope.sandbox(&id).await?;
    match sandbox.state {
        SandboxState::Running => {}
        SandboxState::Starting => {
            return Err(Error::Conflict("the sandbox is still starting".into()));
        }
        SandboxState::Lost => {
            return Err(Error::Conflict(
                "the sandbox was lost when its worker restarted; delete it and create another"
                    .into(),
            ));
        }
    }
    // The idle timeout cannot take it while the request runs (the worker
    // counts it busy); its clock restarts when the request ends.
    Ok(id)
}

/// Maps a worker error on a running sandbox to the answer, recording a
/// sandbox whose agent has gone as lost.
pub(super) async fn worker_error(
    caller: &Caller<UseSandboxes>,
    state: &AppState,
    id: &SandboxId,
    e: carapace_runtime::Error,
) -> Error {
    match e {
        carapace_runtime::Error::SandboxGone => {
            let _ = caller
                .scope(&state.db)
                .set_sandbox_state(id, SandboxState::Lost)
                .await;
            Error::Conflict("the sandbox has stopped; delete it and create another".into())
        }
        carapace_runtime::Error::File(message) => invalid("path", message),
        carapace_runtime::Error::Limits(message) => Error::LimitReached(message),
        other => {
            tracing::error!(sandbox = %id, error = %other, "sandbox request failed");
            Error::Unavailable("the sandbox did not answer".into())
        }
    }
}

/// Write a file into the sandbox's `/workspace` (the body, raw bytes, at
/// most 32 MiB; parent directories are created).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path under /workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 32 MiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid path, or the sandbox could not write it", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn upload(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
) -> Result<HttpResponse, Error> {
    let (raw_id, file) = path.into_inner();
    let runtime = state.sandboxes.runtime()?;
    let id = running(&caller, &state, &raw_id).await?;
    let limit = carapace_runtime::sandbox::MAX_FILE as usize;
    let mut data = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| Error::InvalidQuery(format!("failed to read the body: {e}")))?;
        if data.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        data.extend_from_slice(&chunk);
    }
    match runtime.write_file(id.as_str(), &file, data).await {
        Ok(()) => {
            caller.scope(&state.db).touch_sandbox(&id).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        Err(e) => Err(worker_error(&caller, &state, &id, e).await),
    }
}

/// Read a file from the sandbox's `/workspace` (raw bytes).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path under /workspace")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid path, missing file, or larger than 32 MiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn download(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (raw_id, file) = path.into_inner();
    let runtime = state.sandboxes.runtime()?;
    let id = running(&caller, &state, &raw_id).await?;
    match runtime.read_file(id.as_str(), &file).await {
        Ok(data) => {
            caller.scope(&state.db).touch_sandbox(&id).await?;
            Ok(HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(Bytes::from(data)))
        }
        Err(e) => Err(worker_error(&caller, &state, &id, e).await),
    }
}
