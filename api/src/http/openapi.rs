//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{
    access_policy, admin, agents, api_keys, audit, conversations, members, memory, memory_sync,
    ops, providers, run_logs, runs, sandbox_calls, sandbox_exec, sandboxes, service_tokens,
    sessions, tenant, transcripts, usage, workers,
};

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Carapace API",
        description = "Run autonomous AI agents for many tenants, each in a hardened sandbox. \
            Authenticate with `Authorization: Bearer <API key>`. Errors are \
            `application/problem+json` documents whose `type` is \
            `urn:carapace:problem:<code>`.",
    ),
    paths(
        tenant::get_tenant,
        api_keys::create_key,
        api_keys::list_keys,
        api_keys::revoke_key,
        audit::list_audit,
        usage::get_usage,
        providers::list_providers,
        providers::put_provider,
        providers::delete_provider,
        agents::create_agent,
        agents::list_agents,
        agents::get_agent,
        agents::update_agent,
        agents::delete_agent,
        conversations::post_message,
        conversations::list_conversations,
        conversations::get_conversation,
        conversations::list_messages,
        conversations::events,
        memory::list_files,
        memory::list_versions,
        memory::restore,
        memory::read_file,
        memory::write_file,
        memory::delete_file,
        memory_sync::archive,
        memory_sync::commit,
        memory_sync::commit_run_memory,
        admin::set_plan,
        sessions::list_sessions,
        access_policy::get_policy,
        access_policy::put_policy,
        members::list_members,
        members::remove_member,
        members::invite,
        members::list_invitations,
        members::withdraw,
        service_tokens::create_service_token,
        sessions::revoke_session,
        sessions::revoke_all_sessions,
        transcripts::get_settings,
        transcripts::put_settings,
        transcripts::list_transcripts,
        transcripts::get_transcript,
        sandboxes::create_sandbox,
        sandboxes::list_sandboxes,
        sandboxes::get_sandbox,
        sandboxes::delete_sandbox,
        sandbox_exec::exec,
        sandbox_calls::upload,
        sandbox_calls::download,
        runs::create_run,
        runs::list_runs,
        runs::get_run,
        runs::cancel_run,
        run_logs::logs,
        workers::join,
        admin::list_workers,
        admin::drain_worker,
        admin::resume_worker,
        admin::revoke_worker,
        crate::gateway::proxy::chat_completions,
        crate::gateway::proxy::messages,
        crate::gateway::proxy::models,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(crate::http::problem::Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "tenant", description = "The caller's tenant"),
        (name = "api-keys", description = "API keys: created, listed, revoked"),
        (name = "audit", description = "The append-only audit log"),
        (name = "usage", description = "Model gateway usage"),
        (name = "agents", description = "A tenant's agents"),
        (name = "conversations", description = "Talking to agents: messages answered in turn by the agent in its sandbox, and their events"),
        (name = "memory", description = "An agent's encrypted, versioned memory: raw bytes in and out"),
        (name = "sandboxes", description = "Hardened containers: run commands, move files in and out of /workspace"),
        (name = "runs", description = "Commands in fresh sandboxes, queued durably and placed on workers"),
        (name = "workers", description = "Worker nodes joining the control plane (not for tenants)"),
        (name = "providers", description = "A tenant's own model provider keys, stored encrypted"),
        (name = "gateway", description = "OpenAI- and Anthropic-compatible model gateway; \
            authenticate with a key holding the `gateway` scope (Bearer or `x-api-key`)"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key, `cpk_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "run_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A run's token, `crt_…`, given to its sandbox: the gateway, and its agent's memory",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's `admin_token`"))
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
pub fn render() -> anyhow::Result<String> {
    Ok(ApiDoc::openapi().to_pretty_json()?)
}
