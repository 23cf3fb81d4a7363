//! The login's minimal pages (escaped text, a strict CSP, never cached):
//! the provider chooser, `GET /auth/signup` (how to get in) and `GET
//! /auth/session` (who is signed in, with the logout form).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;

use crate::auth::extract::{CookieNames, cookie};
use crate::auth::session_token_hash;
use crate::db::sessions;
use crate::login::{Login, SignupMode};
use crate::state::AppState;

/// Text for HTML.
pub(super) fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// A minimal page.
pub(super) fn page(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            "content-security-policy",
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} · Carapace</title></head>\
             <body><h1>{t}</h1>{body}</body></html>",
            t = escape(title)
        ))
}

/// A link to each provider's login.
fn provider_links(login: &Login) -> String {
    let links: String = login
        .providers()
        .iter()
        .map(|p| {
            // Names are `a-z0-9-` (checked at start-up): safe in a URL.
            format!(
                "<li><a href=\"/auth/login?provider={}\">Log in with {}</a></li>",
                p.config().name,
                escape(&p.config().label)
            )
        })
        .collect();
    format!("<ul>{links}</ul>")
}

/// The page offering each provider.
pub(super) fn choose_provider(login: &Login) -> HttpResponse {
    page(StatusCode::OK, "Log in", &provider_links(login))
}

/// How to get in: with open sign-up, that a first login creates a tenant
/// (and for which domains), with the providers to log in with; closed,
/// that an invitation is needed.
pub async fn signup_page(state: web::Data<AppState>) -> HttpResponse {
    let Some(login) = state.login.as_deref() else {
        return page(
            StatusCode::NOT_FOUND,
            "Sign-up is not available",
            "<p>This server has no identity provider; an operator creates tenants.</p>",
        );
    };
    let config = login.config();
    let how = match config.signup {
        SignupMode::Open if config.signup_domains.is_empty() => {
            "<p>Log in with an account whose email address your identity provider has \
             verified: your first login creates a tenant, with you as its owner. If you \
             were invited, the same login makes you a member instead.</p>"
                .to_owned()
        }
        SignupMode::Open => format!(
            "<p>Addresses at {} may sign up: your first login creates a tenant, with you \
             as its owner. Anyone else needs an invitation from a tenant's administrator.</p>",
            escape(&config.signup_domains.join(", "))
        ),
        SignupMode::Closed => "<p>Sign-up is closed on this server. Ask a tenant's \
             administrator for an invitation, then log in with the invited address.</p>"
            .to_owned(),
    };
    page(
        StatusCode::OK,
        "Sign up",
        &format!("{how}{}", provider_links(login)),
    )
}

/// The current browser's session, as a page.
pub async fn session_page(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let names = CookieNames::of(&state);
    let live = match cookie(&req, names.session) {
        Some(token) => sessions::session_by_token(&state.db, &session_token_hash(&token))
            .await
            .ok()
            .flatten()
            .filter(|s| s.revoked_at.is_none() && s.role.is_some() && s.expires_at > Utc::now()),
        None => None,
    };
    let Some(session) = live else {
        return page(
            StatusCode::OK,
            "Signed out",
            "<p><a href=\"/auth/login\">Log in</a></p>",
        );
    };
    let csrf = cookie(&req, names.csrf).unwrap_or_default();
    page(
        StatusCode::OK,
        "Signed in",
        &format!(
            "<p>Signed in as {} in tenant {} until {}.</p>\
             <form method=\"post\" action=\"/auth/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Log out</button></form>",
            escape(&session.email),
            escape(session.tenant.as_str()),
            session.expires_at.format("%Y-%m-%d %H:%M UTC"),
            escape(&csrf)
        ),
    )
}
