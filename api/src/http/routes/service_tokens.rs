//! `POST /v1/service-tokens`: credentials for machines as a client id and
//! a client secret, always with an expiry. A service token is an API key
//! (listed and revoked with `/v1/api-keys`); what differs is its form:
//! presented as the two headers `Carapace-Client-Id` and
//! `Carapace-Client-Secret` (as Zero Trust gateways do), where the secret
//! only counts together with its own id.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::api_keys::{CreateApiKey, make_key};
use crate::access::{Role, Scope};
use crate::auth::extract::{Caller, ManageKeys};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::state::AppState;

/// Longest life of a service token.
pub const MAX_DAYS: u32 = 365;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/service-tokens")
            .route(web::post().to(create_service_token))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A new service token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceToken {
    /// A label, 1 to 100 characters.
    name: String,
    /// What it may be used for. Default: `["api"]`.
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
    /// Its role; at most the caller's own. Default: `member`.
    #[serde(default)]
    role: Option<Role>,
    /// Days until it stops working, 1 to 365. Default: 90.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

/// A service token, its secret shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedServiceToken {
    /// Its id (also its API key's id), sent as `Carapace-Client-Id`.
    client_id: String,
    /// Sent as `Carapace-Client-Secret`; shown only now.
    client_secret: String,
    name: String,
    scopes: Vec<Scope>,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
}

/// Create a service token (admins; like an API key, with an expiry).
#[utoipa::path(post, path = "/v1/service-tokens", tag = "api-keys",
    request_body = CreateServiceToken,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = CreatedServiceToken),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn create_service_token(
    caller: Caller<ManageKeys>,
    state: web::Data<AppState>,
    body: web::Json<CreateServiceToken>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let days = body.expires_in_days.unwrap_or(90);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(Error::Invalid {
            field: "expires_in_days",
            message: format!("must be between 1 and {MAX_DAYS}"),
        });
    }
    let request = CreateApiKey {
        name: body.name,
        scopes: body.scopes,
        role: body.role,
        expires_at: Some(Utc::now() + chrono::TimeDelta::days(i64::from(days))),
    };
    let (key, secret) = make_key(&caller, &state, request).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/api-keys/{}", key.id)))
        .json(CreatedServiceToken {
            client_id: key.id.to_string(),
            client_secret: secret.reveal().to_owned(),
            name: key.name.clone(),
            scopes: key.scopes.as_slice().to_vec(),
            role: key.role,
            expires_at: key.expires_at,
        }))
}
