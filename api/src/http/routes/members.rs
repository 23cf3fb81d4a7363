//! A tenant's people: `GET /v1/members`, `DELETE /v1/members/{user_id}`,
//! and invitations: `POST/GET /v1/invitations`,
//! `DELETE /v1/invitations/{id}`. An invited address becomes a member,
//! with the invitation's role, at its next login (see `login`).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::audit::Outcome;
use crate::auth::extract::{Caller, ManageMembers, ReadTenant};
use crate::db::members::{Invitation, Member};
use crate::db::platform::record_audit;
use crate::email::EmailAddress;
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::ids::{InvitationId, UserId};
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/members")
            .route(web::get().to(list_members))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/members/{user_id}")
            .route(web::delete().to(remove_member))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/invitations")
            .route(web::post().to(invite))
            .route(web::get().to(list_invitations))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/invitations/{id}")
            .route(web::delete().to(withdraw))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    user_id: String,
    email: String,
    role: Role,
    since: DateTime<Utc>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView {
            user_id: m.user.to_string(),
            email: m.email,
            role: m.role,
            since: m.since,
        }
    }
}

/// Members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberList {
    data: Vec<MemberView>,
}

/// A new invitation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    /// The address invited; it must log in with a provider account whose
    /// verified address it is.
    email: String,
    /// At most the inviter's own. [default: member]
    #[serde(default)]
    role: Option<Role>,
}

/// A pending invitation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvitationView {
    id: String,
    email: String,
    role: Role,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// On creation only: whether the invitation was emailed — `sent`,
    /// `failed` (the mail server did not take it; the invitation stands),
    /// `rate_limited` (the tenant's hourly allowance is spent) or
    /// `not_configured` (this server sends no mail, or has no login).
    #[serde(skip_serializing_if = "Option::is_none")]
    email_delivery: Option<&'static str>,
}

impl From<Invitation> for InvitationView {
    fn from(i: Invitation) -> Self {
        InvitationView {
            id: i.id.to_string(),
            email: i.email,
            role: i.role,
            created_by: i.created_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
            email_delivery: None,
        }
    }
}

/// Invitations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvitationList {
    data: Vec<InvitationView>,
}

/// The tenant's members.
#[utoipa::path(get, path = "/v1/members", tag = "tenant",
    responses((status = 200, description = "Members", body = MemberList)),
    security(("api_key" = [])))]
pub async fn list_members(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let members = caller.scope(&state.db).members().await?;
    Ok(HttpResponse::Ok().json(MemberList {
        data: members.into_iter().map(MemberView::from).collect(),
    }))
}

/// Remove a member (admins; not someone of a higher role, not the last
/// owner). Their login sessions in this tenant stop at their next request.
#[utoipa::path(delete, path = "/v1/members/{user_id}", tag = "tenant",
    params(("user_id" = String, Path, description = "The member's user id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such member", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn remove_member(
    caller: Caller<ManageMembers>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let user = UserId::parse(&id).map_err(|_| Error::NotFound)?;
    let audit = caller.actor().event("member.remove", Outcome::Success);
    let revoked = caller
        .scope(&state.db)
        .remove_member(&user, caller.role(), audit)
        .await?;
    for key in revoked {
        if let Ok(key) = crate::ids::ApiKeyId::parse(&key) {
            state.auth.forget(&key);
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Invite someone (admins; a role up to one's own): the person logs in,
/// and the invitation makes them a member (14 days). When this server
/// sends mail, the address gets an email saying where to log in
/// (`email_delivery` says how that went; at most 30 an hour per tenant).
#[utoipa::path(post, path = "/v1/invitations", tag = "tenant",
    request_body = NewInvitation,
    responses(
        (status = 201, description = "Invited", body = InvitationView),
        (status = 403, description = "A role above the inviter's", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn invite(
    caller: Caller<ManageMembers>,
    state: web::Data<AppState>,
    body: web::Json<NewInvitation>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let email = EmailAddress::parse(&body.email).map_err(|_| Error::Invalid {
        field: "email",
        message: "not an email address".into(),
    })?;
    let role = body.role.unwrap_or(Role::Member);
    if role > caller.role() {
        return Err(Error::Forbidden(format!(
            "a {} cannot invite a {role}",
            caller.role()
        )));
    }
    let audit = caller.actor().event("invitation.create", Outcome::Success);
    let invitation = caller
        .scope(&state.db)
        .invite(
            &email,
            role,
            caller.role(),
            &caller.actor().principal,
            audit,
        )
        .await?;
    let delivery = email_invitation(&caller, &state, &email, &invitation).await;
    let location = format!("/v1/invitations/{}", invitation.id);
    let mut view = InvitationView::from(invitation);
    view.email_delivery = Some(delivery);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(view))
}

/// Emails an invitation, if this server sends mail; how it went. The
/// attempt is audited (`invitation.email`), a failure with the mail
/// server's words.
async fn email_invitation(
    caller: &Caller<ManageMembers>,
    state: &AppState,
    email: &EmailAddress,
    invitation: &Invitation,
) -> &'static str {
    let (Some(mailer), Some(login)) = (state.mailer.as_deref(), state.login.as_deref()) else {
        return "not_configured";
    };
    let mut event = caller
        .actor()
        .event("invitation.email", Outcome::Success)
        .in_tenant(caller.tenant_id())
        .target(invitation.id.to_string());
    if let Err(why) = state
        .invitation_mails
        .allow(caller.tenant_id().as_str(), email)
    {
        event.outcome = Outcome::Denied;
        let event = event.reason(format!("{email}: {why}"));
        if let Err(e) = record_audit(&state.db, event).await {
            tracing::error!(error = ?e, "failed to audit an invitation email");
        }
        return "rate_limited";
    }
    let tenant_name = match caller.scope(&state.db).tenant().await {
        Ok(tenant) => tenant.name,
        Err(e) => {
            tracing::error!(error = ?e, "tenant unreadable for an invitation email");
            return "failed";
        }
    };
    let (subject, body) = crate::mail::invitation(
        &tenant_name,
        invitation.role,
        email,
        &format!("{}/auth/login", login.config().public_url),
        invitation.expires_at,
    );
    let (delivery, event) = match mailer.send(email, &subject, body).await {
        Ok(()) => ("sent", event.reason(email.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "an invitation email was not sent");
            event.outcome = Outcome::Failed;
            ("failed", event.reason(format!("{email}: {e}")))
        }
    };
    if let Err(e) = record_audit(&state.db, event).await {
        tracing::error!(error = ?e, "failed to audit an invitation email");
    }
    delivery
}

/// Pending invitations (admins).
#[utoipa::path(get, path = "/v1/invitations", tag = "tenant",
    responses((status = 200, description = "Pending invitations", body = InvitationList)),
    security(("api_key" = [])))]
pub async fn list_invitations(
    caller: Caller<ManageMembers>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let invitations = caller.scope(&state.db).invitations().await?;
    Ok(HttpResponse::Ok().json(InvitationList {
        data: invitations.into_iter().map(InvitationView::from).collect(),
    }))
}

/// Withdraw a pending invitation (admins).
#[utoipa::path(delete, path = "/v1/invitations/{id}", tag = "tenant",
    params(("id" = String, Path, description = "Invitation id")),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 404, description = "No such pending invitation", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn withdraw(
    caller: Caller<ManageMembers>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = InvitationId::parse(&id).map_err(|_| Error::NotFound)?;
    let audit = caller
        .actor()
        .event("invitation.withdraw", Outcome::Success);
    caller
        .scope(&state.db)
        .withdraw_invitation(&id, caller.role(), audit)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
