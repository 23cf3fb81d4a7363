//! `GET/PUT /v1/access-policy`: the tenant's access policy for people who
//! log in (see `access_policy`), checked at login and on every request of
//! a session.

use actix_web::{HttpResponse, web};

use crate::access_policy::AccessPolicy;
use crate::audit::Outcome;
use crate::auth::extract::{Caller, ManageAccessPolicy, ReadTenant};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/access-policy")
            .route(web::get().to(get_policy))
            .route(web::put().to(put_policy))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The tenant's access policy (empty lists and absent limits allow
/// everything).
#[utoipa::path(get, path = "/v1/access-policy", tag = "tenant",
    responses((status = 200, description = "The policy", body = AccessPolicy)),
    security(("api_key" = [])))]
pub async fn get_policy(
    caller: Caller<ReadTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(caller.scope(&state.db).access_policy().await?))
}

/// Replace the tenant's access policy (admins; audited). Sessions that no
/// longer pass it are refused from their next request on.
#[utoipa::path(put, path = "/v1/access-policy", tag = "tenant",
    request_body = AccessPolicy,
    responses(
        (status = 200, description = "The policy as stored", body = AccessPolicy),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn put_policy(
    caller: Caller<ManageAccessPolicy>,
    state: web::Data<AppState>,
    body: web::Json<AccessPolicy>,
) -> Result<HttpResponse, Error> {
    let mut policy = body.into_inner();
    policy
        .validate()
        .map_err(|(field, message)| Error::Invalid { field, message })?;
    // A name this server does not offer is a typo that would lock
    // everyone out (with login off, no name is offered).
    if let Some(unknown) = policy.allowed_providers.iter().find(|name| {
        state
            .login
            .as_deref()
            .is_none_or(|login| login.provider(name).is_none())
    }) {
        return Err(Error::Invalid {
            field: "allowed_providers",
            message: format!("this server has no identity provider named {unknown:?}"),
        });
    }
    let audit = caller
        .actor()
        .event("access_policy.update", Outcome::Success)
        .reason(serde_json::to_string(&policy).unwrap_or_default());
    caller
        .scope(&state.db)
        .set_access_policy(&policy, audit)
        .await?;
    Ok(HttpResponse::Ok().json(policy))
}
