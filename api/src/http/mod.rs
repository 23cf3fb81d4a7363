//! The HTTP server: routes, extractor configuration and middleware. actix's
//! own signal handling is off (it stops at once on SIGINT); the caller
//! decides when to stop, see `bootstrap::Application::run`.

pub mod client_ip;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod routes;
mod validate;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::config::Settings;
use crate::state::AppState;

/// Binds the listener and builds the server; the returned future runs it.
pub fn serve(settings: &Settings, state: web::Data<AppState>) -> anyhow::Result<(Server, u16)> {
    let listener = TcpListener::bind(settings.listen)
        .with_context(|| format!("failed to listen on {}", settings.listen))?;
    let port = listener.local_addr()?.port();
    let openapi = web::Data::new(routes::docs::OpenApiJson(openapi::render()?));
    let json_limit = settings.max_json_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(openapi.clone())
            .app_data(problem::json_config(json_limit))
            .app_data(web::PayloadConfig::new(json_limit))
            .app_data(web::PathConfig::default().error_handler(problem::path_error))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error))
            .wrap(from_fn(observe::observe))
            .configure(configure)
            .default_service(web::to(problem::not_found))
    })
    .workers(settings.http_workers)
    .disable_signals()
    .shutdown_timeout(settings.shutdown_timeout.as_secs())
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// Every route of the application.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(routes::ops::configure)
        .configure(routes::docs::configure)
        .configure(routes::tenant::configure)
        .configure(routes::api_keys::configure)
        .configure(routes::audit::configure)
        .configure(routes::usage::configure)
        .configure(routes::providers::configure)
        .configure(routes::agents::configure)
        .configure(routes::conversations::configure)
        .configure(routes::login::configure)
        .configure(routes::sessions::configure)
        .configure(routes::access_policy::configure)
        .configure(routes::members::configure)
        .configure(routes::service_tokens::configure)
        .configure(routes::transcripts::configure)
        .configure(routes::memory_sync::configure)
        .configure(routes::memory::configure)
        .configure(routes::sandboxes::configure)
        .configure(routes::runs::configure)
        .configure(routes::workers::configure)
        .configure(routes::admin::configure)
        .configure(crate::gateway::configure);
}
