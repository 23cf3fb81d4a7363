//! `GET /v1/providers`, `PUT/DELETE /v1/providers/{name}`: a tenant's own
//! model provider keys. The key is sealed with the tenant's data key before
//! it is stored and is never returned.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::Outcome;
use crate::auth::extract::{Caller, ManageProviders};
use crate::db::StoredProvider;
use crate::error::Error;
use crate::gateway::config::ProviderKind;
use crate::gateway::{key_aad, validate_endpoint};
use crate::http::problem::method_not_allowed;
use crate::secret::Secret;
use crate::state::AppState;

/// Most providers one tenant may configure.
const MAX_PROVIDERS: usize = 20;
/// Most models one provider may list.
const MAX_MODELS: usize = 100;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/providers")
            .route(web::get().to(list_providers))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/providers/{name}")
            .route(web::put().to(put_provider))
            .route(web::delete().to(delete_provider))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The provider's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// OpenAI.
    Openai,
    /// Anthropic.
    Anthropic,
    /// Any OpenAI-compatible server (needs `base_url`).
    OpenaiCompatible,
}

impl Kind {
    /// The gateway's kind, whose name is what is stored.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Openai => ProviderKind::Openai,
            Kind::Anthropic => ProviderKind::Anthropic,
            Kind::OpenaiCompatible => ProviderKind::OpenaiCompatible,
        }
        .as_str()
    }
}

/// A provider to create or replace.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProvider {
    /// Wire format.
    kind: Kind,
    /// Base URL (https, public address). Default: the kind's official API.
    #[serde(default)]
    base_url: Option<String>,
    /// The provider API key. Stored encrypted; never returned.
    #[schema(value_type = String, example = "sk-...")]
    api_key: Secret<String>,
    /// Models callable through this provider, by name.
    #[serde(default)]
    models: Vec<String>,
}

/// A provider, without its key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    /// Same as `name`.
    id: String,
    /// Name.
    name: String,
    /// Wire format.
    kind: String,
    /// Base URL, if set.
    base_url: Option<String>,
    /// Models.
    models: Vec<String>,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// Last change.
    updated_at: DateTime<Utc>,
}

impl From<StoredProvider> for ProviderView {
    fn from(p: StoredProvider) -> Self {
        ProviderView {
            id: p.name.clone(),
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            models: p.models,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// The tenant's providers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    /// By name.
    data: Vec<ProviderView>,
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// List the tenant's own providers (never their keys).
#[utoipa::path(
    get, path = "/v1/providers", tag = "providers",
    responses((status = 200, description = "The providers", body = ProviderList)),
    security(("api_key" = []))
)]
pub async fn list_providers(
    caller: Caller<ManageProviders>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let providers = caller.scope(&state.db).providers().await?;
    Ok(HttpResponse::Ok().json(ProviderList {
        data: providers.into_iter().map(ProviderView::from).collect(),
    }))
}

/// Create or replace one of the tenant's providers. The key is encrypted
/// with the tenant's data key before it is stored.
#[utoipa::path(
    put, path = "/v1/providers/{name}", tag = "providers",
    params(("name" = String, Path, description = "1-40 of a-z, 0-9, - and _")),
    request_body = PutProvider,
    responses(
        (status = 200, description = "Stored", body = ProviderView),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn put_provider(
    caller: Caller<ManageProviders>,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Json<PutProvider>,
) -> Result<HttpResponse, Error> {
    let name = name.into_inner();
    if !valid_name(&name) {
        return Err(invalid(
            "name",
            "must be 1-40 characters of a-z, 0-9, - and _",
        ));
    }
    let body = body.into_inner();
    let key = body.api_key.expose();
    if key.is_empty()
        || key.len() > 1000
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "api_key",
            "must be 1-1000 characters without spaces",
        ));
    }
    if body.models.len() > MAX_MODELS
        || body
            .models
            .iter()
            .any(|m| m.is_empty() || m.len() > 200 || m.chars().any(char::is_control))
    {
        return Err(invalid(
            "models",
            format!("at most {MAX_MODELS} names of 1-200 characters"),
        ));
    }
    let allow_private = state.gateway.allows_private_tenant_endpoints();
    let base_url = match (&body.base_url, body.kind) {
        (Some(url), _) => {
            Some(validate_endpoint(url, allow_private).map_err(|e| invalid("base_url", e))?)
        }
        (None, Kind::OpenaiCompatible) => {
            return Err(invalid("base_url", "is required for openai_compatible"));
        }
        (None, _) => None,
    };
    let scope = caller.scope(&state.db);
    let existing = scope.providers().await?;
    if existing.len() >= MAX_PROVIDERS && !existing.iter().any(|p| p.name == name) {
        return Err(Error::LimitReached(format!(
            "a tenant may have at most {MAX_PROVIDERS} providers"
        )));
    }
    let data_key = scope.data_key(&state.master_key).await?;
    let aad = key_aad(
        caller.tenant_id(),
        &name,
        body.kind.as_str(),
        base_url.as_deref(),
    );
    let sealed_api_key = data_key.seal(key.as_bytes(), &aad)?;
    let now = Utc::now();
    let stored = scope
        .put_provider(
            StoredProvider {
                name,
                kind: body.kind.as_str().to_owned(),
                base_url,
                models: body.models,
                sealed_api_key,
                created_at: now,
                updated_at: now,
            },
            caller.actor().event("provider.put", Outcome::Success),
        )
        .await?;
    state.gateway.forget_tenant(caller.tenant_id());
    Ok(HttpResponse::Ok().json(ProviderView::from(stored)))
}

/// Delete one of the tenant's providers (and its stored key).
#[utoipa::path(
    delete, path = "/v1/providers/{name}", tag = "providers",
    params(("name" = String, Path, description = "Provider name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such provider in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_provider(
    caller: Caller<ManageProviders>,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let deleted = caller
        .scope(&state.db)
        .delete_provider(
            &name,
            caller.actor().event("provider.delete", Outcome::Success),
        )
        .await?;
    if !deleted {
        return Err(Error::NotFound);
    }
    state.gateway.forget_tenant(caller.tenant_id());
    Ok(HttpResponse::NoContent().finish())
}
