//! `/openapi.json` (generated from the code) and the API reference page at
//! `/docs`, a small self-contained page from `web/static` with no outside
//! assets, served under a strict Content-Security-Policy.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

/// The reference page's policy: nothing but our own origin.
const CSP: &str = "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const PAGE: &str = include_str!("../../../../web/static/reference.html");
const SCRIPT: &str = include_str!("../../../../web/static/reference.js");
const STYLE: &str = include_str!("../../../../web/static/reference.css");

/// The OpenAPI document, rendered once at start.
pub struct OpenApiJson(pub String);

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(page))
        .route("/docs/reference.js", web::get().to(script))
        .route("/docs/reference.css", web::get().to(style));
}

async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
