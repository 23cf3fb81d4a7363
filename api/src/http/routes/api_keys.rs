//! `POST/GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{Role, Scope, Scopes};
use crate::audit::Outcome;
use crate::auth::api_key::ApiKeySecret;
use crate::auth::extract::{Caller, ManageKeys};
use crate::db::{ApiKey, NewApiKey};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::http::validate;
use crate::ids::ApiKeyId;
use crate::state::AppState;

/// Most keys a tenant may have active at once.
pub const MAX_ACTIVE_KEYS: u64 = 100;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/api-keys")
            .route(web::post().to(create_key))
            .route(web::get().to(list_keys))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/api-keys/{id}")
            .route(web::delete().to(revoke_key))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A new API key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label, 1 to 100 characters.
    #[schema(example = "ci deploy")]
    pub(super) name: String,
    /// What the key may be used for. Default: `["api"]`.
    #[serde(default)]
    pub(super) scopes: Option<Vec<Scope>>,
    /// The key's role; at most the caller's own. Default: `member`.
    #[serde(default)]
    pub(super) role: Option<Role>,
    /// When the key stops working (RFC 3339, in the future). Default: never.
    #[serde(default)]
    pub(super) expires_at: Option<DateTime<Utc>>,
}

/// An API key, without its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    /// Key id.
    #[schema(example = "key_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b")]
    id: String,
    /// Label.
    name: String,
    /// The key's first characters, to tell keys apart.
    #[schema(example = "cpk_Xy3kP9aB")]
    prefix: String,
    /// Scopes.
    scopes: Vec<Scope>,
    /// Role.
    role: Role,
    /// Who created it.
    created_by: String,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// Expiry, if any.
    expires_at: Option<DateTime<Utc>>,
    /// Last use (precise to about a minute).
    last_used_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(key: ApiKey) -> Self {
        ApiKeyView {
            id: key.id.to_string(),
            name: key.name,
            prefix: key.prefix,
            scopes: key.scopes.as_slice().to_vec(),
            role: key.role,
            created_by: key.created_by,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// A key just created: the only response that contains the secret (so it
/// has no `Debug`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    view: ApiKeyView,
    /// The secret. Shown once; store it now.
    #[schema(example = "cpk_Xy3kP9aBq1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k")]
    key: String,
}

/// A list of keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    /// The tenant's keys, newest first, revoked ones included.
    data: Vec<ApiKeyView>,
}

/// Create an API key. The secret is returned once, in `key`.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; `key` holds the secret, shown only now", body = CreatedApiKey),
        (status = 403, description = "Caller lacks the role", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many active keys", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_key(
    caller: Caller<ManageKeys>,
    state: web::Data<AppState>,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse, Error> {
    let (key, secret) = make_key(&caller, &state, body.into_inner()).await?;
    let location = format!("/v1/api-keys/{}", key.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(CreatedApiKey {
            view: key.into(),
            key: secret.reveal().to_owned(),
        }))
}

/// Creates a key for `caller` as `body` asks, within what the caller may
/// give: its secret, shown once. Shared with service tokens.
pub(super) async fn make_key(
    caller: &Caller<ManageKeys>,
    state: &AppState,
    body: CreateApiKey,
) -> Result<(ApiKey, ApiKeySecret), Error> {
    let name = validate::label("name", &body.name, 100)?;
    let scopes =
        Scopes::new(body.scopes.unwrap_or_else(|| vec![Scope::Api])).ok_or(Error::Invalid {
            field: "scopes",
            message: "must name at least one scope".to_owned(),
        })?;
    // A key can only make keys weaker than itself: no higher role, no
    // scope it lacks, no life beyond its own.
    let role = body.role.unwrap_or(Role::Member);
    if role > caller.role() {
        return Err(Error::Forbidden(format!(
            "cannot create a key with role {role}, above your own ({})",
            caller.role()
        )));
    }
    if let Some(missing) = scopes
        .as_slice()
        .iter()
        .find(|s| !caller.principal().scopes.contains(**s))
    {
        return Err(Error::Forbidden(format!(
            "cannot create a key with the `{}` scope, which your key lacks",
            missing.as_str()
        )));
    }
    let expires_at = match (body.expires_at, caller.principal().expires_at()) {
        (Some(at), Some(limit)) if at > limit => {
            return Err(Error::Forbidden(
                "cannot create a key that outlives your own".to_owned(),
            ));
        }
        (None, Some(limit)) => Some(limit),
        (requested, _) => requested,
    };
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Error::Invalid {
            field: "expires_at",
            message: "must be in the future".to_owned(),
        });
    }
    let scope = caller.scope(&state.db);
    if scope.active_api_key_count().await? >= MAX_ACTIVE_KEYS {
        return Err(Error::LimitReached(format!(
            "a tenant may have at most {MAX_ACTIVE_KEYS} active API keys; revoke one first"
        )));
    }
    let secret = ApiKeySecret::generate()?;
    let key = scope
        .create_api_key(
            NewApiKey {
                name: &name,
                secret: &secret,
                scopes: &scopes,
                role,
                expires_at,
            },
            caller.actor().event("api_key.create", Outcome::Success),
        )
        .await?;
    tracing::info!(tenant_id = %caller.tenant_id(), key_id = %key.id, "API key created");
    Ok((key, secret))
}

/// List the tenant's API keys (never their secrets).
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "The keys", body = ApiKeyList)),
    security(("api_key" = []))
)]
pub async fn list_keys(
    caller: Caller<ManageKeys>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let keys = caller.scope(&state.db).api_keys().await?;
    Ok(HttpResponse::Ok().json(ApiKeyList {
        data: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revoke an API key. Takes effect on this server at once and on every
/// other replica within one second. Revoking twice is not an error.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn revoke_key(
    caller: Caller<ManageKeys>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = ApiKeyId::parse(&id).map_err(|_| Error::NotFound)?;
    let scope = caller.scope(&state.db);
    // An admin must not lock the owner out.
    let target = scope
        .api_keys()
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or(Error::NotFound)?;
    if target.role > caller.role() {
        return Err(Error::Forbidden(format!(
            "cannot revoke a key with role {}, above your own ({})",
            target.role,
            caller.role()
        )));
    }
    let revoked = scope
        .revoke_api_key(
            &id,
            caller.actor().event("api_key.revoke", Outcome::Success),
        )
        .await?
        .ok_or(Error::NotFound)?;
    state.auth.forget(&revoked.id);
    tracing::info!(tenant_id = %caller.tenant_id(), key_id = %revoked.id, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}
