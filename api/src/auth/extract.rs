//! `Caller<P>`: the authentication extractor. A handler that takes a
//! `Caller<ManageKeys>` states in its signature which permission it needs,
//! and cannot run without a verified principal bound to one tenant. Every
//! refusal of a presented credential is written to the audit log.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use sea_orm::DatabaseConnection;

use super::{Credential, KeyPrincipal, Verdict};
use crate::access::{Role, Scope};
use crate::audit::{Actor, Outcome};
use crate::db::{TenantScope, platform};
use crate::error::Error;
use crate::http::observe::RequestId;
use crate::ids::{AgentId, TenantId};
use crate::state::AppState;

/// A permission a handler requires: the scope the key must carry, the least
/// role it must have, and the audit action name used when it is refused.
pub trait Permission {
    /// Audit action name.
    const ACTION: &'static str;
    /// Required scope.
    const SCOPE: Scope;
    /// Least role.
    const MIN_ROLE: Role;
    /// Whether a run token bound to an agent may act (on that agent only:
    /// the handler checks with [`Caller::may_open_agent`]).
    const RUN_TOKEN: bool = false;
    /// Whether a login session must be recent (see `login::LoginConfig::
    /// reauth_window`) to act.
    const SENSITIVE: bool = false;
}

macro_rules! permission {
    ($(#[$doc:meta])* $name:ident, $action:literal, $scope:expr, $role:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl Permission for $name {
            const ACTION: &'static str = $action;
            const SCOPE: Scope = $scope;
            const MIN_ROLE: Role = $role;
        }
    };
    ($(#[$doc:meta])* $name:ident, $action:literal, $scope:expr, $role:expr, sensitive) => {
        $(#[$doc])*
        pub struct $name;
        impl Permission for $name {
            const ACTION: &'static str = $action;
            const SCOPE: Scope = $scope;
            const MIN_ROLE: Role = $role;
            const SENSITIVE: bool = true;
        }
    };
}

permission!(
    /// Read the caller's own tenant.
    ReadTenant, "tenant.read", Scope::Api, Role::Member
);
permission!(
    /// Create, list and revoke API keys.
    ManageKeys, "api_key.manage", Scope::Api, Role::Admin, sensitive
);
permission!(
    /// Call models through the gateway.
    UseGateway, "gateway.call", Scope::Gateway, Role::Member
);
permission!(
    /// Manage the tenant's own model providers and their keys.
    ManageProviders, "provider.manage", Scope::Api, Role::Admin, sensitive
);
permission!(
    /// See the tenant's agents and read and write their memory.
    UseAgents, "agent.use", Scope::Api, Role::Member
);
/// Read and write an agent's memory: with an API key, any of the tenant's
/// agents; with a run token, only its run's agent.
pub struct UseMemory;
impl Permission for UseMemory {
    const ACTION: &'static str = "memory.use";
    const SCOPE: Scope = Scope::Api;
    const MIN_ROLE: Role = Role::Member;
    const RUN_TOKEN: bool = true;
}

permission!(
    /// Create, change and delete agents.
    ManageAgents, "agent.manage", Scope::Api, Role::Admin
);
permission!(
    /// Create, use and delete the tenant's sandboxes.
    UseSandboxes, "sandbox.use", Scope::Api, Role::Member
);
permission!(
    /// Start, see and cancel the tenant's runs.
    UseRuns, "run.use", Scope::Api, Role::Member
);
permission!(
    /// Read the tenant's usage ledger.
    ReadUsage, "usage.read", Scope::Api, Role::Member
);
permission!(
    /// Invite and remove members.
    ManageMembers, "member.manage", Scope::Api, Role::Admin, sensitive
);
permission!(
    /// Change the tenant's access policy.
    ManageAccessPolicy, "access_policy.manage", Scope::Api, Role::Admin, sensitive
);
permission!(
    /// Turn the gateway's transcripts on or off.
    ManageGateway, "gateway.settings", Scope::Api, Role::Admin, sensitive
);
permission!(
    /// Read the gateway's transcripts (prompts and completions).
    ReadTranscripts, "gateway.transcripts", Scope::Api, Role::Admin
);
permission!(
    /// Read the tenant's audit log.
    ReadAudit, "audit.read", Scope::Api, Role::Admin
);

/// A verified caller holding permission `P` in one tenant.
pub struct Caller<P: Permission> {
    principal: Arc<KeyPrincipal>,
    actor: Actor,
    _permission: PhantomData<P>,
}

impl<P: Permission> Caller<P> {
    /// The caller's tenant.
    pub fn tenant_id(&self) -> &TenantId {
        &self.principal.tenant_id
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.principal.role
    }

    /// Who is acting, for audit records.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The run whose token the caller presented, if it did.
    pub fn run(&self) -> Option<&crate::ids::RunId> {
        match &self.principal.credential {
            Credential::Run(run) => Some(run),
            Credential::ApiKey(_) | Credential::Session(_) => None,
        }
    }

    /// The verified key.
    pub fn principal(&self) -> &KeyPrincipal {
        &self.principal
    }

    /// The database, bound to the caller's tenant.
    pub fn scope<'a>(&'a self, db: &'a DatabaseConnection) -> TenantScope<'a> {
        TenantScope::new(db, &self.principal.tenant_id)
    }

    /// Whether the caller may act on `agent`: an API key on any of its
    /// tenant's agents, a run token only on its run's. A refusal is
    /// audited (a sandbox reaching for another agent is an attack).
    pub async fn may_open_agent(&self, state: &AppState, agent: &AgentId) -> Result<(), Error> {
        match (&self.principal.credential, &self.principal.agent) {
            (Credential::ApiKey(_) | Credential::Session(_), _) => Ok(()),
            (Credential::Run(_), Some(own)) if own == agent => Ok(()),
            (Credential::Run(_), _) => {
                let reason = "a run token opens only its own agent's memory";
                let subject = self.principal.credential.to_string();
                if !state.auth.should_audit_refusal(&subject) {
                    tracing::warn!(credential = %subject, reason, "credential refused (audit throttled)");
                    return Err(Error::Forbidden(reason.to_owned()));
                }
                let event = self
                    .actor
                    .event(P::ACTION, Outcome::Denied)
                    .in_tenant(&self.principal.tenant_id)
                    .reason(format!("{reason} (asked for {agent})"));
                record_refusal(state, event).await;
                Err(Error::Forbidden(reason.to_owned()))
            }
        }
    }
}

impl<P: Permission + 'static> FromRequest for Caller<P> {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate::<P>(&req).await })
    }
}

pub use crate::http::client_ip::client_ip;

/// A service token's id header.
pub const CLIENT_ID_HEADER: &str = "carapace-client-id";
/// A service token's secret header.
pub const CLIENT_SECRET_HEADER: &str = "carapace-client-secret";

fn header_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// The names of the login cookies. Behind an `https://` public URL they
/// carry the prefix browsers enforce, `__Host-` (set `Secure`, path `/`,
/// no domain, by this very host: a neighbour on another subdomain or a
/// plain-http page cannot plant one — a session for fixation, a login
/// binding for login CSRF). Only the names of the server's mode are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieNames {
    /// The browser's session token.
    pub session: &'static str,
    /// The value a cookie-authenticated request that changes state must
    /// repeat in [`CSRF_HEADER`].
    pub csrf: &'static str,
    /// Binds a login to the browser that started it.
    pub login: &'static str,
}

impl CookieNames {
    /// Over plain http (development, tests).
    pub const PLAIN: CookieNames = CookieNames {
        session: "carapace_session",
        csrf: "carapace_csrf",
        login: "carapace_login",
    };
    /// Behind https.
    pub const SECURE: CookieNames = CookieNames {
        session: "__Host-carapace_session",
        csrf: "__Host-carapace_csrf",
        login: "__Host-carapace_login",
    };

    /// The names this server uses.
    pub fn of(state: &AppState) -> CookieNames {
        if Self::secure(state) {
            Self::SECURE
        } else {
            Self::PLAIN
        }
    }

    /// Whether cookies are `Secure` (an https public URL).
    pub fn secure(state: &AppState) -> bool {
        state
            .login
            .as_deref()
            .is_some_and(|l| l.config().secure_cookies())
    }
}
/// The header carrying the CSRF cookie's value.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A cookie's value.
pub fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.cookie(name)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// Whether a cookie-authenticated request may go on: reads always; a
/// request that changes state only if it repeats the CSRF cookie in the
/// header (another site can make the browser send the cookie, not read
/// it).
fn csrf_ok(req: &HttpRequest, names: CookieNames) -> bool {
    use subtle::ConstantTimeEq;
    if matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS") {
        return true;
    }
    let (Some(expected), Some(presented)) = (
        cookie(req, names.csrf),
        req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    expected.len() >= 16 && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// The presented key: `Authorization: Bearer <key>`, or `x-api-key: <key>`
/// (what Anthropic's clients send).
fn bearer_token(req: &HttpRequest) -> Result<&str, Error> {
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return match req.headers().get("x-api-key") {
            Some(key) => key
                .to_str()
                .map(str::trim)
                .map_err(|_| Error::Unauthenticated("malformed x-api-key header")),
            None => Err(Error::Unauthenticated("missing Authorization header")),
        };
    };
    let value = header
        .to_str()
        .map_err(|_| Error::Unauthenticated("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::Unauthenticated(
        "Authorization must be `Bearer <API key>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::Unauthenticated(
            "Authorization must be `Bearer <API key>`",
        ));
    }
    Ok(token.trim())
}

async fn authenticate<P: Permission>(req: &HttpRequest) -> Result<Caller<P>, Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| anyhow::anyhow!("application state is missing"))?;
    // A header first (a service token's pair included); without one, a
    // browser's session cookie.
    let service_id = header_value(req, CLIENT_ID_HEADER);
    let (token, via_cookie) = match bearer_token(req) {
        Ok(token) => (token.to_owned(), false),
        Err(_) if service_id.is_some() => match header_value(req, CLIENT_SECRET_HEADER) {
            Some(secret) => (secret, false),
            None => {
                return Err(Error::Unauthenticated(
                    "Carapace-Client-Id needs its Carapace-Client-Secret",
                ));
            }
        },
        // Only a session token is taken from the cookie.
        Err(missing) => match cookie(req, CookieNames::of(state).session)
            .filter(|t| t.starts_with(crate::auth::SESSION_PREFIX))
        {
            Some(token) => (token, true),
            None => return Err(missing),
        },
    };
    let token = token.as_str();
    let anonymous = Actor {
        principal: "anonymous".to_owned(),
        client_ip: client_ip(req),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    };
    let verdict = state.auth.verify(token).await?;
    // A service token's secret counts only with its own id.
    let verdict = match (&service_id, verdict) {
        (Some(id), Verdict::Valid(p) | Verdict::Revoked(p) | Verdict::Expired(p)) if !matches!(&p.credential, Credential::ApiKey(key) if key.as_str() == id) => {
            Verdict::Unknown
        }
        (_, verdict) => verdict,
    };
    // An address that keeps presenting bad credentials, or a service
    // token's client id that keeps being presented with wrong secrets
    // (from anywhere), is answered 429, unaudited, for the rest of the
    // minute. A valid credential always passes: behind a proxy every
    // client shares one address, and a stranger guessing at a client id
    // must not lock its machine out.
    if !matches!(verdict, Verdict::Valid(_)) {
        let failures = format!("ip:{}", anonymous.client_ip.as_deref().unwrap_or("?"));
        if !state.auth_failures.allow(&failures) {
            tracing::warn!(client_ip = ?anonymous.client_ip, "failed credential rate-limited");
            return Err(Error::RateLimited(
                "too many failed credentials from this address; wait a minute".into(),
                60,
            ));
        }
        // Only ids shaped like a client id are counted: made-up header
        // values must not fill the counters.
        if let Some(id) = &service_id
            && crate::ids::ApiKeyId::parse(id).is_ok()
            && !state.auth_failures.allow(&format!("client:{id}"))
        {
            tracing::warn!(client_id = %id, "failed service token secrets rate-limited");
            return Err(Error::RateLimited(
                "too many failed secrets for this client id; wait a minute".into(),
                60,
            ));
        }
    }
    let principal = match verdict {
        Verdict::Valid(principal) => principal,
        Verdict::Unknown => {
            let subject = format!("ip:{}", anonymous.client_ip.as_deref().unwrap_or("?"));
            if state.auth.should_audit_refusal(&subject) {
                let event = anonymous
                    .event(P::ACTION, Outcome::Denied)
                    .reason("unknown API key");
                record_refusal(state, event).await;
            } else {
                tracing::warn!(client_ip = ?anonymous.client_ip, "unknown API key (audit throttled)");
            }
            return Err(Error::Unauthenticated("invalid API key"));
        }
        Verdict::Revoked(principal) => {
            let reason = match principal.credential {
                Credential::Session(_) => {
                    "session ended: logged out, revoked, or no longer a member"
                }
                _ => "API key revoked",
            };
            deny(state, &anonymous, &principal, P::ACTION, reason).await?;
            return Err(Error::Unauthenticated(reason));
        }
        Verdict::Expired(principal) => {
            let reason = match principal.credential {
                Credential::ApiKey(_) => "API key expired",
                Credential::Run(_) => "run token expired: its run has ended",
                Credential::Session(_) => "session expired: log in again",
            };
            deny(state, &anonymous, &principal, P::ACTION, reason).await?;
            return Err(Error::Unauthenticated(reason));
        }
    };
    let run_token_allowed = P::RUN_TOKEN
        && matches!(principal.credential, Credential::Run(_))
        && principal.agent.is_some();
    if !principal.scopes.contains(P::SCOPE) && !run_token_allowed {
        let reason = match principal.credential {
            Credential::ApiKey(_) => format!("API key lacks the `{}` scope", P::SCOPE.as_str()),
            Credential::Session(_) => format!(
                "a login session does not open the `{}` scope; use an API key",
                P::SCOPE.as_str()
            ),
            Credential::Run(_) => {
                "a run token opens only the model gateway and its own agent's memory".to_owned()
            }
        };
        deny(state, &anonymous, &principal, P::ACTION, &reason).await?;
        return Err(Error::Forbidden(reason));
    }
    if principal.role < P::MIN_ROLE {
        let reason = format!("requires role {} or higher", P::MIN_ROLE);
        deny(state, &anonymous, &principal, P::ACTION, &reason).await?;
        return Err(Error::Forbidden(reason));
    }
    if let Some(facts) = &principal.session {
        // The tenant's access policy, read on every request: a change
        // applies to the next one.
        let policy = TenantScope::new(&state.db, &principal.tenant_id)
            .access_policy()
            .await?;
        let ip = anonymous
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok());
        if let Some(reason) = policy.refusal(facts, ip, chrono::Utc::now()) {
            // Ended for good: trying again must not revive it.
            if let Credential::Session(id) = &principal.credential
                && let Err(e) = crate::db::sessions::revoke_session_by_id(&state.db, id).await
            {
                tracing::warn!(error = ?e, "a session refused by the access policy was not revoked");
            }
            deny(state, &anonymous, &principal, P::ACTION, &reason).await?;
            return Err(Error::Forbidden(reason));
        }
    }
    if P::SENSITIVE
        && let Some(facts) = &principal.session
    {
        let window = state
            .login
            .as_deref()
            .map_or(std::time::Duration::ZERO, |p| p.config().reauth_window);
        let since = (chrono::Utc::now() - facts.created_at)
            .to_std()
            .unwrap_or_default();
        if since > window {
            let reason = format!(
                "this needs a recent login: log in again (the last was {} minutes ago, at most {} allowed)",
                since.as_secs() / 60,
                window.as_secs() / 60
            );
            deny(state, &anonymous, &principal, P::ACTION, &reason).await?;
            return Err(Error::Forbidden(reason));
        }
    }
    if via_cookie && !csrf_ok(req, CookieNames::of(state)) {
        let reason = format!(
            "missing or wrong X-CSRF-Token header (the {} cookie's value)",
            CookieNames::of(state).csrf
        );
        deny(state, &anonymous, &principal, P::ACTION, &reason).await?;
        return Err(Error::Forbidden(reason));
    }
    if let (Credential::Session(id), Some(facts)) = (&principal.credential, &principal.session)
        && let Err(e) = crate::db::sessions::touch_session(&state.db, id, facts.last_seen_at).await
    {
        tracing::warn!(error = ?e, "could not note a session's last request");
    }
    let actor = Actor {
        principal: principal.credential.to_string(),
        ..anonymous
    };
    Ok(Caller {
        principal,
        actor,
        _permission: PhantomData,
    })
}

async fn deny(
    state: &AppState,
    anonymous: &Actor,
    principal: &KeyPrincipal,
    action: &'static str,
    reason: &str,
) -> Result<(), Error> {
    let subject = principal.credential.to_string();
    if !state.auth.should_audit_refusal(&subject) {
        tracing::warn!(credential = %subject, reason, "credential refused (audit throttled)");
        return Ok(());
    }
    let actor = Actor {
        principal: subject,
        ..anonymous.clone()
    };
    let event = actor
        .event(action, Outcome::Denied)
        .in_tenant(&principal.tenant_id)
        .reason(reason);
    record_refusal(state, event).await;
    Ok(())
}

/// Writes a refusal to the audit log. If that fails, the refusal still
/// stands (the caller gets 401/403, not 500) and the failure is logged.
async fn record_refusal(state: &AppState, event: crate::audit::AuditEvent) {
    if let Err(e) = platform::record_audit(&state.db, event).await {
        tracing::error!(error = ?e, "failed to audit a refused credential");
    }
}
