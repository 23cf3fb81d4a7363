//! Browser login: `GET /auth/login[?provider=NAME]` (to a provider, or a
//! page choosing one when several are configured), `GET /auth/callback`
//! (back from it: a session), `GET /auth/session` (who is logged in),
//! `POST /auth/logout` (the sessions over the API are `sessions`). The
//! pages (`login_pages`) are minimal HTML; every decision is audited
//! (`login`, `logout`).

use actix_web::cookie::time::Duration as CookieDuration;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;

use crate::audit::{Actor, Outcome};
use crate::auth::extract::{CSRF_HEADER, CookieNames, client_ip, cookie};
use crate::auth::{new_session_token, session_token_hash};
use crate::db::platform::record_audit;
use crate::db::sessions::{self, Account, LoginAttempt, SignIn};
use crate::email::EmailAddress;
use crate::http::observe::RequestId;
use crate::http::problem::method_not_allowed;
use crate::login::oidc::{LoginError, Provider};
use crate::state::AppState;

use super::login_pages::{self as pages, escape, page};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/auth/login")
            .route(web::get().to(login))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/auth/callback")
            .route(web::get().to(callback))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/auth/session")
            .route(web::get().to(pages::session_page))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/auth/signup")
            .route(web::get().to(pages::signup_page))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/auth/logout")
            .route(web::post().to(logout))
            .default_service(web::to(method_not_allowed)),
    );
}

fn actor(req: &HttpRequest, principal: String) -> Actor {
    Actor {
        principal,
        client_ip: client_ip(req),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    }
}

/// Audits a refused login (at most a few a minute per address: a flood
/// is logged, not written) and answers with a page saying why.
async fn refuse(
    state: &AppState,
    req: &HttpRequest,
    status: StatusCode,
    reason: &str,
) -> HttpResponse {
    let actor = actor(req, "anonymous".to_owned());
    let subject = format!("login:{}", actor.client_ip.as_deref().unwrap_or("?"));
    if state.auth.should_audit_refusal(&subject) {
        let event = actor.event("login", Outcome::Denied).reason(reason);
        if let Err(e) = record_audit(&state.db, event).await {
            tracing::error!(error = ?e, "failed to audit a refused login");
        }
    } else {
        tracing::warn!(client_ip = ?actor.client_ip, reason, "login refused (audit throttled)");
    }
    page(
        status,
        "Login refused",
        &format!(
            "<p>{}</p><p><a href=\"/auth/login\">Try again</a></p>",
            escape(reason)
        ),
    )
}

fn cookie_for<'c>(
    name: &'c str,
    value: String,
    secure: bool,
    max_age: CookieDuration,
) -> Cookie<'c> {
    Cookie::build(name, value)
        .path("/")
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(max_age)
        .finish()
}

/// Which provider to log in with.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    provider: Option<String>,
}

/// Starts a login at a provider: the one named by `?provider=`, the only
/// one, or (several and none named) a page choosing.
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<LoginQuery>,
) -> HttpResponse {
    let Some(login) = state.login.as_deref() else {
        return page(
            StatusCode::NOT_FOUND,
            "Login is not configured",
            "<p>This server has no identity provider; use an API key.</p>",
        );
    };
    let provider: &Provider = match query.provider.as_deref() {
        Some(name) => match login.provider(name) {
            Some(provider) => provider,
            None => {
                return page(
                    StatusCode::NOT_FOUND,
                    "Unknown identity provider",
                    "<p>This server has no identity provider of that name.</p>\
                     <p><a href=\"/auth/login\">Choose one</a></p>",
                );
            }
        },
        None => match login.providers() {
            [only] => only,
            _ => return pages::choose_provider(login),
        },
    };
    if !state
        .login_limiter
        .allow(&format!("ip:{}", client_ip(&req).unwrap_or_default()))
    {
        return refuse(
            &state,
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins from this address; wait a minute",
        )
        .await;
    }
    let started = match provider.start().await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "login could not start");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Login unavailable",
                "<p>The identity provider did not answer. Try again shortly.</p>",
            );
        }
    };
    let Ok(binding) = new_session_token() else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Login unavailable", "");
    };
    let attempt = LoginAttempt {
        state_hash: session_token_hash(&started.state),
        browser_hash: session_token_hash(&binding),
        verifier: started.verifier,
        nonce: started.nonce,
        created_at: Utc::now(),
        provider: provider.config().name.clone(),
    };
    if let Err(e) = sessions::save_login_attempt(&state.db, &attempt).await {
        tracing::error!(error = ?e, "login attempt not saved");
        return page(StatusCode::SERVICE_UNAVAILABLE, "Login unavailable", "");
    }
    let names = CookieNames::of(&state);
    let mut binding_cookie = cookie_for(
        names.login,
        binding,
        CookieNames::secure(&state),
        CookieDuration::minutes(10),
    );
    binding_cookie.set_http_only(true);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, started.url))
        .insert_header(("cache-control", "no-store"))
        .cookie(binding_cookie)
        .finish()
}

/// What the provider sends back.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// The issuer that answers (RFC 9207), when the provider says.
    iss: Option<String>,
}

/// Finishes a login: checks everything, then starts a session.
pub async fn callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<CallbackQuery>,
) -> HttpResponse {
    let Some(login) = state.login.as_deref() else {
        return page(StatusCode::NOT_FOUND, "Login is not configured", "");
    };
    let names = CookieNames::of(&state);
    let ip = client_ip(&req).unwrap_or_default();
    if !state.login_limiter.allow(&format!("ip:{ip}")) {
        return refuse(
            &state,
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins from this address; wait a minute",
        )
        .await;
    }
    let q = query.into_inner();
    if let Some(error) = q.error {
        // The provider's words come from the URL: only a plain error code
        // is repeated, never free text (someone else could have written it).
        let code = if (1..=64).contains(&error.len())
            && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            error
        } else {
            "unknown_error".to_owned()
        };
        let reason = format!("the identity provider refused the login ({code})");
        return refuse(&state, &req, StatusCode::BAD_REQUEST, &reason).await;
    }
    let (Some(code), Some(login_state)) = (q.code, q.state) else {
        return refuse(
            &state,
            &req,
            StatusCode::BAD_REQUEST,
            "the callback lacks its code or state",
        )
        .await;
    };
    if code.len() > 2048 || login_state.len() > 512 {
        return refuse(
            &state,
            &req,
            StatusCode::BAD_REQUEST,
            "the callback's parameters are too long",
        )
        .await;
    }
    let attempt =
        match sessions::take_login_attempt(&state.db, &session_token_hash(&login_state)).await {
            Ok(Some(attempt)) => attempt,
            Ok(None) => {
                return refuse(
                    &state,
                    &req,
                    StatusCode::BAD_REQUEST,
                    "unknown, expired or already used login (state)",
                )
                .await;
            }
            Err(e) => {
                tracing::error!(error = ?e, "login attempt lookup failed");
                return page(StatusCode::SERVICE_UNAVAILABLE, "Login unavailable", "");
            }
        };
    // The browser that comes back must be the one that left.
    let bound = cookie(&req, names.login)
        .is_some_and(|binding| session_token_hash(&binding) == attempt.browser_hash);
    if !bound {
        return refuse(
            &state,
            &req,
            StatusCode::BAD_REQUEST,
            "this login was started in another browser",
        )
        .await;
    }
    let Some(provider) = login.provider(&attempt.provider) else {
        return refuse(
            &state,
            &req,
            StatusCode::BAD_REQUEST,
            "the identity provider this login went to is no longer configured",
        )
        .await;
    };
    // The code is only ever redeemed at the provider the login went to;
    // one that says who answered must be that one (a mix-up defence).
    if let Some(iss) = &q.iss
        && *iss != provider.config().issuer
    {
        return refuse(
            &state,
            &req,
            StatusCode::BAD_REQUEST,
            "the answer came from another identity provider than the login went to",
        )
        .await;
    }
    let identity = match provider.finish(code, attempt.verifier, attempt.nonce).await {
        Ok(identity) => identity,
        Err(LoginError::Refused(reason)) => {
            return refuse(&state, &req, StatusCode::BAD_REQUEST, &reason).await;
        }
        Err(e @ LoginError::Provider(_)) => {
            tracing::error!(error = %e, "login could not finish");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Login unavailable",
                "<p>The identity provider did not answer. Try again shortly.</p>",
            );
        }
    };
    let email = match identity.email.as_deref().map(EmailAddress::parse) {
        Some(Ok(email)) if identity.email_verified => email,
        Some(Ok(_)) => {
            return refuse(
                &state,
                &req,
                StatusCode::FORBIDDEN,
                "the identity provider has not verified this email address",
            )
            .await;
        }
        Some(Err(_)) => {
            return refuse(
                &state,
                &req,
                StatusCode::FORBIDDEN,
                "the identity provider gave an address that is not valid",
            )
            .await;
        }
        None => {
            return refuse(
                &state,
                &req,
                StatusCode::FORBIDDEN,
                "the identity provider gave no email address",
            )
            .await;
        }
    };
    if !state
        .login_limiter
        .allow(&format!("email:{}", email.as_str()))
    {
        return refuse(
            &state,
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins for this person; wait a minute",
        )
        .await;
    }
    let signup = login.config().may_sign_up(email.as_str());
    let audit =
        actor(&req, format!("oidc:{}", identity.subject)).event("tenant.create", Outcome::Success);
    let account = Account {
        issuer: provider.config().issuer.clone(),
        subject: identity.subject.clone(),
        email: email.clone(),
        facts: crate::access_policy::SessionFacts {
            email: email.as_str().to_owned(),
            amr: identity.amr.clone(),
            groups: identity.groups.clone(),
            provider: provider.config().name.clone(),
            created_at: Utc::now(),
            last_seen_at: Utc::now(),
        },
        client_ip: client_ip(&req).and_then(|ip| ip.parse().ok()),
        may_link_existing: provider.config().link_existing,
    };
    let signed_in = match sessions::sign_in(&state.db, account, signup, audit).await {
        Ok(SignIn::In(signed_in)) => signed_in,
        Ok(SignIn::Refused {
            user,
            tenant,
            member,
            reason,
        }) => {
            // Refused before anything was written: no account linked, no
            // invitation accepted. A tenant that only invited them learns
            // that the invitation was refused, not where they were.
            let mut event = match (user, member) {
                (Some(user), true) => actor(&req, format!("user:{user}")),
                (None, true) => actor(&req, format!("oidc:{}", identity.subject)),
                (_, false) => Actor {
                    client_ip: None,
                    ..actor(&req, format!("invitee:{email}"))
                },
            }
            .event("login", Outcome::Denied)
            .in_tenant(&tenant)
            .reason(reason.clone());
            if !member {
                event.target = Some("invitation".to_owned());
            }
            if let Err(e) = record_audit(&state.db, event).await {
                tracing::error!(error = ?e, "failed to audit a refused login");
            }
            return page(
                StatusCode::FORBIDDEN,
                "Login refused",
                &format!("<p>{}</p>", escape(&reason)),
            );
        }
        Ok(SignIn::NotMember) => {
            return refuse(
                &state,
                &req,
                StatusCode::FORBIDDEN,
                &format!(
                    "{email} is not a member of any tenant, and sign-up is closed to this address"
                ),
            )
            .await;
        }
        Ok(SignIn::OtherAccount) => {
            return refuse(
                &state,
                &req,
                StatusCode::FORBIDDEN,
                &format!(
                    "{email} belongs to someone who logs in with another account; log in with that one"
                ),
            )
            .await;
        }
        Err(crate::error::Error::Conflict(message)) => {
            return page(
                StatusCode::CONFLICT,
                "Login interrupted",
                &format!(
                    "<p>{}</p><p><a href=\"/auth/login\">Log in</a></p>",
                    escape(&message)
                ),
            );
        }
        Err(e) => {
            tracing::error!(error = ?e, "sign-in failed");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Login unavailable", "");
        }
    };
    // A fresh session every login (a cookie planted before it is
    // worthless), and the one this browser had is ended.
    if let Some(old) = cookie(&req, names.session)
        && let Err(e) =
            sessions::revoke_session_by_token(&state.db, &session_token_hash(&old)).await
    {
        tracing::warn!(error = ?e, "the browser's previous session was not revoked");
    }
    let (Ok(token), Ok(csrf)) = (new_session_token(), new_session_token()) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Login unavailable", "");
    };
    let max_age = login.config().session_max_age;
    let expires_at =
        Utc::now() + chrono::TimeDelta::from_std(max_age).unwrap_or(chrono::TimeDelta::hours(12));
    let new = sessions::NewSession {
        token_hash: &session_token_hash(&token),
        signed_in: &signed_in,
        expires_at,
        client_ip: client_ip(&req),
        amr: &identity.amr,
        groups: &identity.groups,
        provider: &provider.config().name,
    };
    let session = match sessions::create_session(&state.db, new).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = ?e, "session not created");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Login unavailable", "");
        }
    };
    let event = actor(&req, format!("user:{}", signed_in.user))
        .event("login", Outcome::Success)
        .in_tenant(&signed_in.tenant)
        .target(session.to_string())
        .reason(if signed_in.signed_up {
            format!("{email} signed up with {}", provider.config().name)
        } else {
            format!("{email} with {}", provider.config().name)
        });
    if let Err(e) = record_audit(&state.db, event).await {
        tracing::error!(error = ?e, "failed to audit a login");
    }
    let secure = CookieNames::secure(&state);
    let age = CookieDuration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(43_200));
    let mut session_cookie = cookie_for(names.session, token, secure, age);
    session_cookie.set_http_only(true);
    let csrf_cookie = cookie_for(names.csrf, csrf, secure, age);
    let spent = cookie_for(names.login, String::new(), secure, CookieDuration::ZERO);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/auth/session"))
        .insert_header(("cache-control", "no-store"))
        .cookie(session_cookie)
        .cookie(csrf_cookie)
        .cookie(spent)
        .finish()
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// Ends this browser's session (CSRF-checked: the header or the form's
/// field must repeat the CSRF cookie).
pub async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: Option<web::Form<LogoutForm>>,
) -> HttpResponse {
    use subtle::ConstantTimeEq;
    let presented = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.and_then(|f| f.into_inner().csrf));
    let names = CookieNames::of(&state);
    let expected = cookie(&req, names.csrf);
    let ok = matches!((&expected, &presented), (Some(e), Some(p)) if e.len() >= 16 && bool::from(e.as_bytes().ct_eq(p.as_bytes())));
    if !ok {
        let event = actor(&req, "anonymous".to_owned())
            .event("logout", Outcome::Denied)
            .reason("missing or wrong CSRF token");
        if let Err(e) = record_audit(&state.db, event).await {
            tracing::error!(error = ?e, "failed to audit a refused logout");
        }
        return page(
            StatusCode::FORBIDDEN,
            "Logout refused",
            "<p>The form was not sent by this site.</p>",
        );
    }
    if let Some(token) = cookie(&req, names.session) {
        let hash = session_token_hash(&token);
        let session = sessions::session_by_token(&state.db, &hash)
            .await
            .ok()
            .flatten();
        if let Err(e) = sessions::revoke_session_by_token(&state.db, &hash).await {
            tracing::error!(error = ?e, "logout failed");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Logout failed", "");
        }
        if let Some(session) = session {
            let event = actor(&req, format!("user:{}", session.user))
                .event("logout", Outcome::Success)
                .in_tenant(&session.tenant)
                .target(session.id.to_string());
            if let Err(e) = record_audit(&state.db, event).await {
                tracing::error!(error = ?e, "failed to audit a logout");
            }
        }
    }
    let secure = CookieNames::secure(&state);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/auth/session"))
        .cookie(cookie_for(
            names.session,
            String::new(),
            secure,
            CookieDuration::ZERO,
        ))
        .cookie(cookie_for(
            names.csrf,
            String::new(),
            secure,
            CookieDuration::ZERO,
        ))
        .finish()
}
