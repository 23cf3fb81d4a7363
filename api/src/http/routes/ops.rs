//! Operations endpoints: `/healthz` (the process is up), `/readyz` (the
//! database and object store answer), `/metrics` (Prometheus).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::state::AppState;
use crate::{db, storage};

/// How long `/readyz` waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// Liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    status: &'static str,
}

/// Readiness, with each dependency's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    status: &'static str,
    /// `ok` or `unavailable`.
    database: &'static str,
    /// `ok` or `unavailable`.
    object_store: &'static str,
}

/// The process is running.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database and the object store answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is down", body = Readiness),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (database, object_store) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, db::ping(&state.db)),
        tokio::time::timeout(CHECK_TIMEOUT, storage::check(state.store.as_ref())),
    );
    let verdict = |name: &str, r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(dependency = name, error = %format!("{e:#}"), "readiness check failed");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!(dependency = name, "readiness check timed out");
            "unavailable"
        }
    };
    let database = verdict("database", database);
    let object_store = verdict("object_store", object_store);
    let ready = database == "ok" && object_store == "ok";
    let body = Readiness {
        status: if ready { "ok" } else { "unavailable" },
        database,
        object_store,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics: request counts and latency histograms by method,
/// route and status. Requires `Authorization: Bearer <metrics_token>` when
/// a metrics token is configured.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "A metrics token is configured and was not given", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    if let Some(expected) = &state.metrics_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let matches: bool = presented
            .as_bytes()
            .ct_eq(expected.expose().as_bytes())
            .into();
        if !matches {
            return Err(Error::Unauthenticated("metrics token required"));
        }
    }
    let text = state.metrics.render()?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}
