//! A person's login sessions over the API: `GET /v1/sessions`,
//! `DELETE /v1/sessions` (log out everywhere), `DELETE /v1/sessions/{id}`.
//! Audited (`session.revoke`, `session.revoke_all`).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::Outcome;
use crate::auth::Credential;
use crate::auth::extract::{Caller, ReadTenant};
use crate::db::TenantScope;
use crate::db::sessions::SessionRecord;
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::ids::SessionId;
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/sessions")
            .route(web::get().to(list_sessions))
            .route(web::delete().to(revoke_all_sessions))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/sessions/{id}")
            .route(web::delete().to(revoke_session))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A session as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    id: String,
    user_id: String,
    email: String,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    client_ip: Option<String>,
    /// The identity provider it logged in with (its configured name).
    provider: String,
    /// Whether it is the caller's own session.
    current: bool,
}

/// Sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionList {
    data: Vec<SessionView>,
}

/// The person behind a session caller, or `None` for an API key (which
/// then needs the admin role to see everyone's).
async fn own_session(
    caller: &Caller<ReadTenant>,
    state: &AppState,
) -> Result<Option<SessionRecord>, Error> {
    let Credential::Session(id) = &caller.principal().credential else {
        if caller.role() < crate::access::Role::Admin {
            return Err(Error::Forbidden("requires role admin or higher".into()));
        }
        return Ok(None);
    };
    // Its own row, by id: never "no session" for a session caller (that
    // would read as an admin's key).
    match caller.scope(&state.db).session(id).await {
        Ok(session) => Ok(Some(session)),
        Err(Error::NotFound) => Err(Error::Unauthenticated("session ended")),
        Err(e) => Err(e),
    }
}

/// Live sessions: a browser's own person's; with an admin's API key,
/// everyone's in the tenant.
#[utoipa::path(get, path = "/v1/sessions", tag = "tenant",
    responses((status = 200, description = "Sessions", body = SessionList)),
    security(("api_key" = [])))]
pub async fn list_sessions(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let own = own_session(&caller, &state).await?;
    let sessions = caller
        .scope(&state.db)
        .sessions(own.as_ref().map(|s| &s.user))
        .await?;
    let current = own.map(|s| s.id);
    Ok(HttpResponse::Ok().json(SessionList {
        data: sessions
            .into_iter()
            .map(|s| SessionView {
                current: current.as_ref() == Some(&s.id),
                id: s.id.to_string(),
                user_id: s.user.to_string(),
                email: s.email,
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                client_ip: s.client_ip,
                provider: s.provider,
            })
            .collect(),
    }))
}

/// Log out everywhere: end every session of the caller's person (the
/// current one too); with an admin's API key, every session in the
/// tenant. Audited.
#[utoipa::path(delete, path = "/v1/sessions", tag = "tenant",
    responses((status = 200, description = "How many ended", body = Object)),
    security(("api_key" = [])))]
pub async fn revoke_all_sessions(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let own = own_session(&caller, &state).await?;
    let audit = caller.actor().event("session.revoke_all", Outcome::Success);
    let ended = TenantScope::new(&state.db, caller.tenant_id())
        .revoke_sessions(own.as_ref().map(|s| &s.user), audit)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ended": ended })))
}

/// End a session: a browser's own person's; with an admin's API key,
/// anyone's in the tenant. Audited.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "tenant",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such live session", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn revoke_session(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = SessionId::parse(&id).map_err(|_| Error::NotFound)?;
    let own = own_session(&caller, &state).await?;
    let audit = caller.actor().event("session.revoke", Outcome::Success);
    TenantScope::new(&state.db, caller.tenant_id())
        .revoke_session(&id, own.as_ref().map(|s| &s.user), audit)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
