//! `POST/GET /v1/agents`, `GET/PATCH/DELETE /v1/agents/{id}`: a tenant's
//! agents. An agent's instructions are written into its memory as
//! `AGENTS.md` when it is created; deleting an agent deletes its memory.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::Outcome;
use crate::auth::extract::{Caller, ManageAgents, UseAgents};
use crate::db::{Agent, AgentSettings, AgentSpec, Flavor, TOOLS};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::http::validate;
use crate::ids::AgentId;
use crate::memory::MemoryPath;
use crate::state::AppState;

/// Most agents one tenant may have.
pub const MAX_AGENTS: u64 = 100;
/// Longest instructions, in bytes.
const MAX_INSTRUCTIONS: usize = 32 * 1024;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/agents")
            .route(web::post().to(create_agent))
            .route(web::get().to(list_agents))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/agents/{id}")
            .route(web::get().to(get_agent))
            .route(web::patch().to(update_agent))
            .route(web::delete().to(delete_agent))
            .default_service(web::to(method_not_allowed)),
    );
}

/// An agent's fields: on creation `name` and `model` are required and the
/// rest take their defaults; on a change absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentBody {
    /// Display name, 1-100 characters (required on creation).
    #[serde(default)]
    name: Option<String>,
    /// Model alias (e.g. `fast`) or model name, called through the gateway
    /// (required on creation).
    #[serde(default)]
    model: Option<String>,
    /// `builtin` (default) or an OCI image reference.
    #[serde(default)]
    image: Option<String>,
    /// Persona and standing instructions; written to `AGENTS.md` in the
    /// agent's memory on creation.
    #[serde(default)]
    instructions: Option<String>,
    /// Host names the agent may reach (e.g. `api.github.com`, `*.example.com`).
    #[serde(default)]
    egress_allow: Option<Vec<String>>,
    /// What answers its messages: `carapace` (the built-in tool loop; the
    /// default) or `openclaw` (OpenClaw from the agent's image, which must
    /// then be an OCI image holding an `openclaw` command).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    flavor: Option<Flavor>,
    /// Tools the model may call: `shell`, `read_file`, `write_file`,
    /// `list_files`, `http_fetch` (`reply` is always offered). [default: all]
    #[serde(default)]
    tools: Option<Vec<String>>,
    /// Its sandbox's resource limits (as for `POST /v1/sandboxes`).
    #[serde(default)]
    limits: Option<super::sandboxes::LimitsBody>,
    /// Longest time one message may take, 1 s to the server's longest
    /// command time. [default: 300]
    #[serde(default)]
    message_timeout_s: Option<u32>,
    /// Seconds its sandbox stays warm after a message, 1-86400; then its
    /// memory is committed and the sandbox deleted. [default: 300]
    #[serde(default)]
    idle_timeout_s: Option<u32>,
    /// Most model calls for one message, 1-100. [default: 16]
    #[serde(default)]
    max_steps: Option<u32>,
    /// Most tokens for one message, 1-10,000,000. [default: 200,000]
    #[serde(default)]
    max_tokens_per_message: Option<u64>,
    /// Longest time one `shell` call may take, 1-3600 s. [default: 60]
    #[serde(default)]
    shell_timeout_s: Option<u32>,
}

/// Stops the agent's warm sandboxes (their memory committed first).
async fn stop_warm_sandboxes<P: crate::auth::extract::Permission>(
    state: &AppState,
    caller: &Caller<P>,
    scope: &crate::db::TenantScope<'_>,
    agent: &AgentId,
    why: &str,
) -> Result<(), Error> {
    for sandbox in scope.sandboxes().await? {
        if sandbox.agent_id.as_ref() == Some(agent) {
            let event = caller
                .actor()
                .event("sandbox.delete", Outcome::Success)
                .reason(why);
            crate::sandboxes::stop_sandbox(state, scope, &sandbox, event).await?;
        }
    }
    Ok(())
}

/// An OpenClaw agent runs OpenClaw from its own image.
fn check_flavor(spec: &AgentSpec) -> Result<(), Error> {
    if spec.settings.flavor == Flavor::Openclaw && spec.image == "builtin" {
        return Err(invalid(
            "flavor",
            "an openclaw agent needs an OCI image that holds OpenClaw, not builtin",
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    value: Option<T>,
    current: T,
    lo: T,
    hi: T,
) -> Result<T, Error> {
    let value = value.unwrap_or(current);
    if value < lo || value > hi {
        return Err(invalid(field, format!("must be between {lo} and {hi}")));
    }
    Ok(value)
}

/// The settings `body` asks for over `current`, checked.
fn settings(
    body: &mut AgentBody,
    current: AgentSettings,
    max_timeout: std::time::Duration,
) -> Result<AgentSettings, Error> {
    let tools = match body.tools.take() {
        None => current.tools,
        Some(tools) => {
            let mut out: Vec<String> = Vec::new();
            for tool in tools {
                if !TOOLS.contains(&tool.as_str()) {
                    return Err(invalid(
                        "tools",
                        format!("unknown tool {tool:?}; known: {}", TOOLS.join(", ")),
                    ));
                }
                if !out.contains(&tool) {
                    out.push(tool);
                }
            }
            out
        }
    };
    let max_timeout = u32::try_from(max_timeout.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    Ok(AgentSettings {
        flavor: body.flavor.unwrap_or(current.flavor),
        tools,
        limits: match body.limits.take() {
            Some(limits) => super::sandboxes::limits(Some(limits))?,
            None => current.limits,
        },
        message_timeout_s: in_range(
            "message_timeout_s",
            body.message_timeout_s,
            current.message_timeout_s.min(max_timeout),
            1,
            max_timeout,
        )?,
        idle_timeout_s: in_range(
            "idle_timeout_s",
            body.idle_timeout_s,
            current.idle_timeout_s,
            1,
            86_400,
        )?,
        max_steps: in_range("max_steps", body.max_steps, current.max_steps, 1, 100)?,
        max_tokens_per_message: in_range(
            "max_tokens_per_message",
            body.max_tokens_per_message,
            current.max_tokens_per_message,
            1,
            10_000_000,
        )?,
        shell_timeout_s: in_range(
            "shell_timeout_s",
            body.shell_timeout_s,
            current.shell_timeout_s,
            1,
            3600,
        )?,
    })
}

/// An agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// Agent id.
    #[schema(example = "agt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    name: String,
    model: String,
    image: String,
    instructions: String,
    egress_allow: Vec<String>,
    /// `carapace` or `openclaw`.
    #[schema(value_type = String)]
    flavor: Flavor,
    tools: Vec<String>,
    limits: super::sandboxes::LimitsView,
    message_timeout_s: u32,
    idle_timeout_s: u32,
    max_steps: u32,
    max_tokens_per_message: u64,
    shell_timeout_s: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Agent> for AgentView {
    fn from(a: Agent) -> Self {
        AgentView {
            id: a.id.to_string(),
            name: a.name,
            model: a.model,
            image: a.image,
            instructions: a.instructions,
            egress_allow: a.egress_allow,
            flavor: a.settings.flavor,
            tools: a.settings.tools,
            limits: a.settings.limits.into(),
            message_timeout_s: a.settings.message_timeout_s,
            idle_timeout_s: a.settings.idle_timeout_s,
            max_steps: a.settings.max_steps,
            max_tokens_per_message: a.settings.max_tokens_per_message,
            shell_timeout_s: a.settings.shell_timeout_s,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A list of agents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// Newest first.
    data: Vec<AgentView>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

fn validate_model(model: &str) -> Result<String, Error> {
    let ok = (1..=200).contains(&model.len()) && model.chars().all(|c| c.is_ascii_graphic());
    ok.then(|| model.to_owned())
        .ok_or_else(|| invalid("model", "must be 1-200 printable characters without spaces"))
}

fn validate_instructions(text: String) -> Result<String, Error> {
    if text.len() > MAX_INSTRUCTIONS {
        return Err(invalid(
            "instructions",
            format!("at most {MAX_INSTRUCTIONS} bytes"),
        ));
    }
    Ok(text)
}

/// Create an agent.
#[utoipa::path(
    post, path = "/v1/agents", tag = "agents",
    request_body = AgentBody,
    responses(
        (status = 201, description = "Created", body = AgentView),
        (status = 409, description = "Too many agents", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_agent(
    caller: Caller<ManageAgents>,
    state: web::Data<AppState>,
    body: web::Json<AgentBody>,
) -> Result<HttpResponse, Error> {
    let mut body = body.into_inner();
    let name = body
        .name
        .take()
        .ok_or_else(|| invalid("name", "is required"))?;
    let model = body
        .model
        .take()
        .ok_or_else(|| invalid("model", "is required"))?;
    let settings = settings(
        &mut body,
        AgentSettings::default(),
        state.sandboxes.config().max_exec_timeout,
    )?;
    let spec = AgentSpec {
        name: validate::label("name", &name, 100)?,
        model: validate_model(&model)?,
        image: validate::image(body.image.as_deref().unwrap_or("builtin"))?,
        instructions: validate_instructions(body.instructions.unwrap_or_default())?,
        egress_allow: validate::hosts(body.egress_allow.unwrap_or_default())?,
        settings,
    };
    check_flavor(&spec)?;
    let scope = caller.scope(&state.db);
    if scope.agent_count().await? >= MAX_AGENTS {
        return Err(Error::LimitReached(format!(
            "a tenant may have at most {MAX_AGENTS} agents"
        )));
    }
    let agent = scope
        .create_agent(spec, caller.actor().event("agent.create", Outcome::Success))
        .await?;
    if !agent.instructions.is_empty() {
        let ns = super::memory::namespace(&state, caller.tenant_id(), &agent.id).await?;
        let path = MemoryPath::parse("AGENTS.md").map_err(anyhow::Error::from)?;
        let puts = state
            .memory
            .write_files(
                &ns,
                None,
                vec![(path, agent.instructions.clone().into_bytes())],
            )
            .await?;
        let manifest = state.memory.commit(&ns, None, puts, &[]).await?;
        scope
            .record_memory_head(&agent.id, manifest.version)
            .await?;
    }
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/agents/{}", agent.id)))
        .json(AgentView::from(agent)))
}

/// List the tenant's agents.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "The agents", body = AgentList)),
    security(("api_key" = [])))]
pub async fn list_agents(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let agents = caller.scope(&state.db).agents().await?;
    Ok(HttpResponse::Ok().json(AgentList {
        data: agents.into_iter().map(AgentView::from).collect(),
    }))
}

fn agent_id(raw: &str) -> Result<AgentId, Error> {
    AgentId::parse(raw).map_err(|_| Error::NotFound)
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 404, description = "No such agent in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_agent(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let agent = caller.scope(&state.db).agent(&agent_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(AgentView::from(agent)))
}

/// Change an agent.
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = AgentBody,
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 404, description = "No such agent in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn update_agent(
    caller: Caller<ManageAgents>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<AgentBody>,
) -> Result<HttpResponse, Error> {
    let id = agent_id(&id)?;
    let scope = caller.scope(&state.db);
    let current = scope.agent(&id).await?;
    let mut body = body.into_inner();
    let settings = settings(
        &mut body,
        current.settings,
        state.sandboxes.config().max_exec_timeout,
    )?;
    let spec = AgentSpec {
        name: match body.name {
            Some(name) => validate::label("name", &name, 100)?,
            None => current.name,
        },
        model: body
            .model
            .as_deref()
            .map_or(Ok(current.model), validate_model)?,
        image: body
            .image
            .as_deref()
            .map_or(Ok(current.image), validate::image)?,
        instructions: body
            .instructions
            .map_or(Ok(current.instructions), validate_instructions)?,
        egress_allow: body
            .egress_allow
            .map_or(Ok(current.egress_allow), validate::hosts)?,
        settings,
    };
    check_flavor(&spec)?;
    let agent = scope
        .update_agent(
            &id,
            spec,
            caller.actor().event("agent.update", Outcome::Success),
        )
        .await?;
    // A warm sandbox runs with the settings it was started with: it goes,
    // its memory committed, and the next message starts one with these.
    stop_warm_sandboxes(&state, &caller, &scope, &id, "its agent was changed").await?;
    Ok(HttpResponse::Ok().json(AgentView::from(agent)))
}

/// Delete an agent and its memory.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such agent in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn delete_agent(
    caller: Caller<ManageAgents>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = agent_id(&id)?;
    let scope = caller.scope(&state.db);
    scope.agent(&id).await?;
    // Its warm sandbox first, so that nothing commits to its memory after.
    stop_warm_sandboxes(&state, &caller, &scope, &id, "its agent was deleted").await?;
    let deleted = scope
        .delete_agent(&id, caller.actor().event("agent.delete", Outcome::Success))
        .await?;
    if !deleted {
        return Err(Error::NotFound);
    }
    let ns = super::memory::namespace(&state, caller.tenant_id(), &id).await?;
    let removed = state.memory.destroy(&ns).await?;
    tracing::info!(tenant_id = %caller.tenant_id(), agent_id = %id, objects = removed, "agent deleted with its memory");
    Ok(HttpResponse::NoContent().finish())
}
