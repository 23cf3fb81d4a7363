//! `POST/GET /v1/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/cancel`:
//! a tenant's runs — one command in a fresh sandbox, queued durably,
//! placed on a worker by the scheduler, its result kept.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use carapace_scheduler::RunState;
use carapace_scheduler::protocol::{MemorySync, RunSpec};
use carapace_scheduler::store::{NewRun, Run, RunFilter};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sandboxes::{LimitsBody, LimitsView, invalid, limits};
use crate::audit::Outcome;
use crate::auth::extract::{Caller, UseRuns};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::http::validate;
use crate::ids::{AgentId, RunId};
use crate::state::AppState;

/// Command timeout when the request names none.
const DEFAULT_TIMEOUT_S: u32 = 60;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/runs")
            .route(web::post().to(create_run))
            .route(web::get().to(list_runs))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/runs/{id}")
            .route(web::get().to(get_run))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/runs/{id}/logs")
            .route(web::get().to(super::run_logs::logs))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/runs/{id}/cancel")
            .route(web::post().to(cancel_run))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A new run: a command in a fresh sandbox.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The program and its arguments (no shell: use `["sh", "-c", "..."]`).
    command: Vec<String>,
    /// `builtin` (the default) or an image this control plane offers (its
    /// `[sandbox] images`); the run goes only to a worker that has it.
    #[serde(default)]
    image: Option<String>,
    /// Environment variables.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Seconds the command may run. [default: 60; at most the server's
    /// `max_exec_timeout_secs`]
    #[serde(default)]
    timeout_s: Option<u32>,
    /// Host names reachable through the sandbox's egress proxy.
    #[serde(default)]
    egress_allow: Option<Vec<String>>,
    #[serde(default)]
    limits: Option<LimitsBody>,
    /// Placements allowed: a run whose worker is lost is placed again
    /// while attempts remain, otherwise it fails. 1 to 10. [default: 1 —
    /// a command is not assumed safe to run twice]
    #[serde(default)]
    max_attempts: Option<u32>,
    /// One of the tenant's agents whose memory the run works on: its
    /// current version is in the sandbox's `/memory` when the command
    /// starts, and what changes there is committed back as one new version
    /// every `memory_sync_interval_s` seconds and when the run ends. The
    /// run's token (`CARAPACE_RUN_TOKEN`) then also opens that agent's
    /// memory API, and only that agent's.
    #[serde(default)]
    agent_id: Option<String>,
    /// Seconds between memory commits while the run goes on (1 to 3600).
    /// [default: the server's `[memory] sync_interval_secs`, 30]
    #[serde(default)]
    memory_sync_interval_s: Option<u32>,
}

/// A run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// Run id.
    #[schema(example = "run_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    /// `queued`, `placed`, `starting`, `running`, `succeeded`, `failed`,
    /// `cancelled` or `lost` (its worker vanished; about to be requeued or
    /// failed).
    state: String,
    /// Why it is in its state (failures, losses, cancellation).
    reason: Option<String>,
    image: String,
    command: Vec<String>,
    timeout_s: u32,
    limits: LimitsView,
    egress_allow: Vec<String>,
    /// The agent whose memory the run works on, if any.
    agent_id: Option<String>,
    /// Placements so far, and allowed.
    attempts: u32,
    max_attempts: u32,
    /// The worker of its current or last placement.
    worker_id: Option<String>,
    /// The command's exit code, once it exited.
    exit_code: Option<i32>,
    /// Standard output, at most 64 KiB (UTF-8, invalid bytes replaced).
    stdout: Option<String>,
    /// Standard error, likewise.
    stderr: Option<String>,
    /// Whether a cancellation was asked for.
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    placed_at: Option<DateTime<Utc>>,
    starting_at: Option<DateTime<Utc>>,
    running_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lost_at: Option<DateTime<Utc>>,
}

impl From<Run> for RunView {
    fn from(run: Run) -> Self {
        let l = run.spec.limits;
        RunView {
            id: run.id,
            state: run.state.as_str().to_owned(),
            reason: run.reason,
            image: run.spec.image,
            command: run.spec.command,
            timeout_s: run.spec.timeout_s,
            limits: LimitsView::from(l),
            egress_allow: run.spec.egress_allow,
            agent_id: run.spec.memory.map(|m| m.agent),
            attempts: run.attempts,
            max_attempts: run.max_attempts,
            worker_id: run.worker,
            exit_code: run.exit_code,
            stdout: run.stdout,
            stderr: run.stderr,
            cancel_requested: run.cancel_requested_at.is_some(),
            created_at: run.created_at,
            placed_at: run.placed_at,
            starting_at: run.starting_at,
            running_at: run.running_at,
            finished_at: run.finished_at,
            lost_at: run.lost_at,
        }
    }
}

/// A page of runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    /// Newest first.
    data: Vec<RunView>,
}

/// Which runs to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only runs in this state.
    state: Option<String>,
    /// Only runs older than this run id (the last id of the previous page).
    before: Option<String>,
    /// 1 to 500. [default: 100]
    limit: Option<u64>,
}

pub(super) fn run_id(raw: &str) -> Result<RunId, Error> {
    RunId::parse(raw).map_err(|_| Error::NotFound)
}

/// Queue a run. Answered once the run is committed: it will not be lost.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    request_body = CreateRun,
    responses(
        (status = 201, description = "Queued", body = RunView),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many runs waiting", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_run(
    caller: Caller<UseRuns>,
    state: web::Data<AppState>,
    body: web::Json<CreateRun>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    validate::command(&body.command)?;
    let env = body.env.unwrap_or_default();
    validate::env(&env)?;
    let image = validate::image(body.image.as_deref().unwrap_or("builtin"))?;
    let egress_allow = validate::hosts(body.egress_allow.unwrap_or_default())?;
    let limits = limits(body.limits)?;
    state.sandboxes.check_offered(&image)?;
    let max_timeout = state.sandboxes.config().max_exec_timeout.as_secs();
    let timeout_s = body.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
    if timeout_s == 0 || u64::from(timeout_s) > max_timeout {
        return Err(invalid(
            "timeout_s",
            format!("must be between 1 and {max_timeout}"),
        ));
    }
    let max_attempts = body.max_attempts.unwrap_or(1);
    if !(1..=carapace_scheduler::store::runs::MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(invalid(
            "max_attempts",
            format!(
                "must be between 1 and {}",
                carapace_scheduler::store::runs::MAX_ATTEMPTS
            ),
        ));
    }
    let memory = match body.agent_id {
        None if body.memory_sync_interval_s.is_some() => {
            return Err(invalid(
                "memory_sync_interval_s",
                "applies only to a run with an agent_id".to_owned(),
            ));
        }
        None => None,
        Some(raw) => {
            let agent = AgentId::parse(&raw)
                .map_err(|_| invalid("agent_id", "no such agent".to_owned()))?;
            match caller.scope(&state.db).agent(&agent).await {
                Ok(_) => {}
                Err(Error::NotFound) => {
                    return Err(invalid("agent_id", "no such agent".to_owned()));
                }
                Err(e) => return Err(e),
            }
            let limits = state.plans.get(&caller.principal().tenant().plan).memory;
            let interval_s = body
                .memory_sync_interval_s
                .unwrap_or(limits.sync_interval_s);
            if !(1..=3600).contains(&interval_s) {
                return Err(invalid(
                    "memory_sync_interval_s",
                    "must be between 1 and 3600".to_owned(),
                ));
            }
            Some(MemorySync {
                agent: agent.as_str().to_owned(),
                interval_s,
                max_files: u32::try_from(limits.max_files).unwrap_or(u32::MAX),
                max_bytes: limits.max_total_bytes,
                exclude: Vec::new(),
            })
        }
    };
    let new = NewRun {
        spec: RunSpec {
            image,
            command: body.command,
            env: env.into_iter().collect(),
            timeout_s,
            limits,
            egress_allow,
            interactive: false,
            memory,
        },
        max_attempts,
    };
    let run = caller
        .scope(&state.db)
        .enqueue_run(
            new,
            state.fleet.config().max_queued_per_tenant,
            caller.actor().event("run.create", Outcome::Success),
        )
        .await?;
    state.fleet.wake();
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/runs/{}", run.id)))
        .json(RunView::from(run)))
}

/// List the tenant's runs.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(ListQuery),
    responses(
        (status = 200, description = "The runs", body = RunList),
        (status = 400, description = "Invalid query", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_runs(
    caller: Caller<UseRuns>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    let run_state = query
        .state
        .as_deref()
        .map(|s| s.parse::<RunState>())
        .transpose()
        .map_err(|_| Error::InvalidQuery("state: not a run state".into()))?;
    let before = query
        .before
        .as_deref()
        .map(|b| RunId::parse(b).map(|id| id.as_str().to_owned()))
        .transpose()
        .map_err(|_| Error::InvalidQuery("before: not a run id".into()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Error::InvalidQuery(
            "limit: must be between 1 and 500".into(),
        ));
    }
    let runs = caller
        .scope(&state.db)
        .runs(&RunFilter {
            state: run_state,
            before,
            limit,
        })
        .await?;
    Ok(HttpResponse::Ok().json(RunList {
        data: runs.into_iter().map(RunView::from).collect(),
    }))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "No such run in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_run(
    caller: Caller<UseRuns>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let run = caller.scope(&state.db).run(&run_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(RunView::from(run)))
}

/// Cancel a run. A queued run is cancelled at once; a placed, starting or
/// running one is stopped by its worker (its sandbox killed) within about
/// a second, then shows `cancelled`. A finished run is left as it is.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, description = "The run as it now is", body = RunView),
        (status = 404, description = "No such run in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn cancel_run(
    caller: Caller<UseRuns>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = run_id(&id)?;
    let scope = caller.scope(&state.db);
    // 404 before anything is recorded.
    scope.run(&id).await?;
    let run = scope
        .cancel_run(&id, caller.actor().event("run.cancel", Outcome::Success))
        .await?;
    state.fleet.deliver_cancel(&run).await;
    Ok(HttpResponse::Accepted().json(RunView::from(run)))
}
