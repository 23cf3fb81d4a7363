//! `POST /v1/agents/{id}/messages`, `GET /v1/conversations[/{id}]`,
//! `GET /v1/conversations/{id}/messages`, `GET /v1/conversations/{id}/events`:
//! talking to an agent. A message is queued and answered in its turn by
//! the agent's tool loop in its warm sandbox (`crate::conversations`).

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::extract::{Caller, UseAgents};
use crate::db::{Conversation, Message, TenantScope};
use crate::error::Error;
use crate::http::problem::{self, method_not_allowed};
use crate::ids::{AgentId, ConversationId, TenantId};
use crate::state::AppState;

/// Most bytes of a message's text.
pub const MAX_TEXT: usize = 32 * 1024;
/// Longest `?wait`.
const MAX_WAIT_S: u64 = 120;
/// Most bytes of an idempotency key.
const MAX_KEY: usize = 200;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/agents/{id}/messages")
            .app_data(problem::json_config(MAX_TEXT + 4096))
            .route(web::post().to(post_message))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/conversations")
            .route(web::get().to(list_conversations))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/conversations/{id}")
            .route(web::get().to(get_conversation))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/conversations/{id}/messages")
            .route(web::get().to(list_messages))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/conversations/{id}/events")
            .route(web::get().to(events))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A message to an agent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The text, 1 to 32,768 bytes.
    text: String,
    /// The conversation to continue (the agent's); a new one if absent.
    #[serde(default)]
    conversation_id: Option<String>,
}

/// `?wait=SECONDS`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Wait up to this many seconds (0-120) for the reply.
    wait: Option<u64>,
}

/// A message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    #[schema(example = "msg_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    conversation_id: String,
    /// `user` or `assistant`.
    role: String,
    text: String,
    /// `queued`, `processing`, `done` or `failed`.
    status: String,
    /// Why a message failed.
    error: Option<String>,
    /// For a user's message: the agent's reply.
    reply_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        MessageView {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            role: m.role,
            text: m.text,
            status: m.status.as_str().to_owned(),
            error: m.error,
            reply_id: m.reply_id.map(|r| r.to_string()),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A message posted, and its reply if it came while waiting.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Posted {
    conversation_id: String,
    message: MessageView,
    reply: Option<MessageView>,
}

/// A conversation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    #[schema(example = "cnv_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    agent_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Conversation> for ConversationView {
    fn from(c: Conversation) -> Self {
        ConversationView {
            id: c.id.to_string(),
            agent_id: c.agent_id.to_string(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// Conversations or messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListOf<T: utoipa::ToSchema> {
    data: Vec<T>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

fn conversation_id(raw: &str) -> Result<ConversationId, Error> {
    ConversationId::parse(raw).map_err(|_| Error::NotFound)
}

/// Send a message to an agent: queued, then answered in turn by the agent
/// in its sandbox. With `?wait=SECONDS` the answer comes back if it is
/// ready in time (200); otherwise 202 with the queued message. An
/// `Idempotency-Key` header makes a retried request return the first
/// one's message instead of sending it again.
#[utoipa::path(post, path = "/v1/agents/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "Agent id"), WaitQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "At most 200 printable characters")),
    request_body = PostMessage,
    responses(
        (status = 200, description = "Answered (or failed) within the wait", body = Posted),
        (status = 202, description = "Queued or being answered", body = Posted),
        (status = 404, description = "No such agent or conversation in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many messages waiting in the conversation", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn post_message(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<WaitQuery>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let agent = AgentId::parse(&id).map_err(|_| Error::NotFound)?;
    if body.text.is_empty() || body.text.len() > MAX_TEXT {
        return Err(invalid("text", format!("must be 1 to {MAX_TEXT} bytes")));
    }
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_S {
        return Err(invalid("wait", format!("at most {MAX_WAIT_S} seconds")));
    }
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| {
                    !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    invalid(
                        "Idempotency-Key",
                        format!("must be 1 to {MAX_KEY} printable characters"),
                    )
                })?;
            Some(format!("{agent}:{key}"))
        }
    };
    let conversation = body
        .conversation_id
        .as_deref()
        .map(|c| {
            ConversationId::parse(c).map_err(|_| invalid("conversation_id", "no such conversation"))
        })
        .transpose()?;
    let scope = caller.scope(&state.db);
    scope.agent(&agent).await?;
    let posted = match scope
        .post_message(&agent, conversation.as_ref(), body.text, key)
        .await
    {
        Err(Error::NotFound) => {
            return Err(invalid(
                "conversation_id",
                "no such conversation of this agent",
            ));
        }
        other => other?,
    };
    let message = posted.message;
    if posted.created {
        state.conversations.notify();
        crate::conversations::kick(
            &state,
            caller.tenant_id().clone(),
            message.conversation_id.clone(),
        );
    }
    let mut events = state.conversations.subscribe();
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut message = message;
    while !message.status.is_final() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), events.changed()).await;
        message = scope.message(&message.id).await?;
    }
    let reply = match &message.reply_id {
        Some(reply) => Some(MessageView::from(scope.message(reply).await?)),
        None => None,
    };
    let status = if message.status.is_final() {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status)
        .insert_header((
            header::LOCATION,
            format!("/v1/conversations/{}/messages", message.conversation_id),
        ))
        .json(Posted {
            conversation_id: message.conversation_id.to_string(),
            message: message.into(),
            reply,
        }))
}

/// `?agent_id=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConversationQuery {
    /// Only this agent's conversations.
    agent_id: Option<String>,
}

/// The tenant's conversations, newest first (at most 100).
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(ConversationQuery),
    responses((status = 200, description = "The conversations", body = ListOf<ConversationView>)),
    security(("api_key" = [])))]
pub async fn list_conversations(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    query: web::Query<ConversationQuery>,
) -> Result<HttpResponse, Error> {
    let agent = query
        .agent_id
        .as_deref()
        .map(|a| AgentId::parse(a).map_err(|_| invalid("agent_id", "not an agent id")))
        .transpose()?;
    let data = caller
        .scope(&state.db)
        .conversations(agent.as_ref(), 100)
        .await?
        .into_iter()
        .map(ConversationView::from)
        .collect();
    Ok(HttpResponse::Ok().json(ListOf { data }))
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 404, description = "No such conversation in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_conversation(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let conversation = caller
        .scope(&state.db)
        .conversation(&conversation_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(ConversationView::from(conversation)))
}

/// A conversation's messages, oldest first (the last 500).
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The messages", body = ListOf<MessageView>),
        (status = 404, description = "No such conversation in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_messages(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let scope = caller.scope(&state.db);
    let id = conversation_id(&id)?;
    scope.conversation(&id).await?;
    let data = scope
        .messages(&id, 500)
        .await?
        .into_iter()
        .map(MessageView::from)
        .collect();
    Ok(HttpResponse::Ok().json(ListOf::<MessageView> { data }))
}

/// `?after=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Start after this event number (as `Last-Event-ID`).
    after: Option<i64>,
}

/// Stream a conversation's events (server-sent events, each with its
/// number as `id`): `message_accepted`, `run_placed`, `tool_call`,
/// `tool_result`, `reply`, `error`. Resumes after `Last-Event-ID` (or
/// `?after=`); from the first event otherwise. The stream stays open.
#[utoipa::path(get, path = "/v1/conversations/{id}/events", tag = "conversations",
    params(("id" = String, Path, description = "Conversation id"), EventsQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "The last event number received")),
    responses(
        (status = 200, description = "`text/event-stream`"),
        (status = 404, description = "No such conversation in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn events(
    caller: Caller<UseAgents>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, Error> {
    let id = conversation_id(&id)?;
    caller.scope(&state.db).conversation(&id).await?;
    let last = match req.headers().get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| invalid("Last-Event-ID", "must be an event number"))?,
        None => query.after.unwrap_or(0).max(0),
    };
    let body = stream(state.into_inner(), caller.tenant_id().clone(), id, last);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body))
}

/// How often a stream re-reads without a signal (other replicas' events).
const POLL: Duration = Duration::from_secs(1);
/// A comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn stream(
    state: std::sync::Arc<AppState>,
    tenant: TenantId,
    conversation: ConversationId,
    after: i64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let signal = state.conversations.subscribe();
    futures_util::stream::unfold(
        (state, tenant, conversation, after, signal, Instant::now()),
        |(state, tenant, conversation, mut after, mut signal, mut quiet_since)| async move {
            loop {
                signal.borrow_and_update();
                let scope = TenantScope::new(&state.db, &tenant);
                let events = match scope.events_after(&conversation, after, 100).await {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(error = ?e, "cannot read conversation events");
                        Vec::new()
                    }
                };
                if !events.is_empty() {
                    let mut out = String::new();
                    for event in events {
                        after = event.seq;
                        out.push_str(&format!(
                            "id: {}\nevent: {}\ndata: {}\n\n",
                            event.seq,
                            event.kind,
                            json!({"seq": event.seq, "at": event.created_at, "data": event.data})
                        ));
                    }
                    let state = (state, tenant, conversation, after, signal, Instant::now());
                    return Some((Ok(Bytes::from(out)), state));
                }
                if quiet_since.elapsed() >= KEEP_ALIVE {
                    quiet_since = Instant::now();
                    let state = (state, tenant, conversation, after, signal, quiet_since);
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), state));
                }
                let _ = tokio::time::timeout(POLL, signal.changed()).await;
            }
        },
    )
}
