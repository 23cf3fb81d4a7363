//! The gateway's opt-in transcripts: `GET/PUT /v1/gateway/settings` (the
//! tenant's switch) and `GET /v1/gateway/transcripts[/{id}]` (the sealed
//! records, opened for the tenant's admins). See `gateway::transcripts`.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::Outcome;
use crate::auth::extract::{Caller, ManageGateway, ReadTenant, ReadTranscripts};
use crate::db::{StoredTranscript, TranscriptFilter};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::ids::{AgentId, RunId, TranscriptId};
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/gateway/settings")
            .route(web::get().to(get_settings))
            .route(web::put().to(put_settings))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/gateway/transcripts")
            .route(web::get().to(list_transcripts))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/gateway/transcripts/{id}")
            .route(web::get().to(get_transcript))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The tenant's gateway settings.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Keep each call's prompt and completion (at most 1 MiB of each),
    /// sealed with the tenant's data key. Off unless turned on.
    record_bodies: bool,
}

/// The gateway settings.
#[utoipa::path(get, path = "/v1/gateway/settings", tag = "gateway",
    responses((status = 200, description = "Settings", body = GatewaySettings)),
    security(("api_key" = [])))]
pub async fn get_settings(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let tenant = caller.scope(&state.db).tenant().await?;
    Ok(HttpResponse::Ok().json(GatewaySettings {
        record_bodies: tenant.record_gateway_bodies,
    }))
}

/// Change the gateway settings (admins; audited). Takes effect within the
/// authentication cache's lifetime (1 s by default) on every replica.
#[utoipa::path(put, path = "/v1/gateway/settings", tag = "gateway",
    request_body = GatewaySettings,
    responses((status = 200, description = "Settings as they now are", body = GatewaySettings)),
    security(("api_key" = [])))]
pub async fn put_settings(
    caller: Caller<ManageGateway>,
    state: web::Data<AppState>,
    body: web::Json<GatewaySettings>,
) -> Result<HttpResponse, Error> {
    let on = body.record_bodies;
    let audit = caller
        .actor()
        .event("gateway.settings", Outcome::Success)
        .reason(format!("record_bodies = {on}"));
    caller
        .scope(&state.db)
        .set_record_gateway_bodies(on, audit)
        .await?;
    Ok(HttpResponse::Ok().json(GatewaySettings { record_bodies: on }))
}

/// Which transcripts to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TranscriptQuery {
    /// Only calls made by this run.
    run_id: Option<String>,
    /// Only calls made for this agent.
    agent_id: Option<String>,
    /// Only records older than this id (the last of the previous page).
    before: Option<String>,
    /// 1 to 200. [default: 50]
    limit: Option<u64>,
}

/// A transcript without its bodies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptSummary {
    id: String,
    created_at: DateTime<Utc>,
    run_id: Option<String>,
    agent_id: Option<String>,
    /// The upstream model.
    model: String,
    /// The HTTP status the client got.
    status: u16,
}

impl From<&StoredTranscript> for TranscriptSummary {
    fn from(t: &StoredTranscript) -> Self {
        TranscriptSummary {
            id: t.id.to_string(),
            created_at: t.created_at,
            run_id: t.run.clone(),
            agent_id: t.agent.clone(),
            model: t.model.clone(),
            status: t.status,
        }
    }
}

/// Transcripts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptList {
    data: Vec<TranscriptSummary>,
}

/// One call's prompt and completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptView {
    #[serde(flatten)]
    summary: TranscriptSummary,
    /// The request body as the client sent it (JSON, or a string if it was
    /// cut short).
    #[schema(value_type = Object)]
    request: Value,
    /// The answer as the client got it: a JSON body, or the text of an
    /// event stream.
    #[schema(value_type = Object)]
    response: Value,
    /// Whether either side was cut at 1 MiB.
    truncated: bool,
}

fn as_json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// List the tenant's gateway transcripts (admins).
#[utoipa::path(get, path = "/v1/gateway/transcripts", tag = "gateway", params(TranscriptQuery),
    responses((status = 200, description = "Transcripts", body = TranscriptList)),
    security(("api_key" = [])))]
pub async fn list_transcripts(
    caller: Caller<ReadTranscripts>,
    state: web::Data<AppState>,
    query: web::Query<TranscriptQuery>,
) -> Result<HttpResponse, Error> {
    let q = query.into_inner();
    let bad = |what: &str| Error::InvalidQuery(format!("{what}: not a valid id"));
    let filter = TranscriptFilter {
        run: q
            .run_id
            .as_deref()
            .map(RunId::parse)
            .transpose()
            .map_err(|_| bad("run_id"))?,
        agent: q
            .agent_id
            .as_deref()
            .map(AgentId::parse)
            .transpose()
            .map_err(|_| bad("agent_id"))?,
        before: q
            .before
            .as_deref()
            .map(TranscriptId::parse)
            .transpose()
            .map_err(|_| bad("before"))?,
        limit: match q.limit.unwrap_or(50) {
            n @ 1..=200 => n,
            _ => {
                return Err(Error::InvalidQuery(
                    "limit: must be between 1 and 200".into(),
                ));
            }
        },
    };
    let rows = caller.scope(&state.db).transcripts(&filter).await?;
    Ok(HttpResponse::Ok().json(TranscriptList {
        data: rows.iter().map(TranscriptSummary::from).collect(),
    }))
}

/// One transcript, opened (admins).
#[utoipa::path(get, path = "/v1/gateway/transcripts/{id}", tag = "gateway",
    params(("id" = String, Path, description = "Transcript id")),
    responses(
        (status = 200, description = "The transcript", body = TranscriptView),
        (status = 404, description = "No such transcript in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_transcript(
    caller: Caller<ReadTranscripts>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = TranscriptId::parse(&id).map_err(|_| Error::NotFound)?;
    let scope = caller.scope(&state.db);
    let stored = scope.transcript(&id).await?;
    let key = scope.data_key(&state.master_key).await?;
    let opened = crate::gateway::transcripts::open(&key, caller.tenant_id(), &stored)?;
    // Reading a prompt in the clear leaves a trace.
    let event = caller
        .actor()
        .event("gateway.transcript.read", Outcome::Success)
        .in_tenant(caller.tenant_id())
        .target(stored.id.to_string());
    crate::db::platform::record_audit(&state.db, event).await?;
    Ok(HttpResponse::Ok().json(TranscriptView {
        summary: TranscriptSummary::from(&stored),
        request: as_json_or_text(&opened.request),
        response: as_json_or_text(&opened.response),
        truncated: opened.truncated,
    }))
}
