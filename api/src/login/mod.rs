//! Browser login through OpenID Connect: the authorization code flow with
//! PKCE, `state` and `nonce` against one configured provider
//! (`CARAPACE_OIDC_ISSUER`, `_CLIENT_ID`, `_CLIENT_SECRET`), then a
//! server-side session whose cookie opens the `/v1` API like an API key.
//!
//! `oidc` talks to the provider (discovery and keys cached, fetched again
//! on an unknown key id); `db::sessions` keeps pending logins and
//! sessions (hashed); `http::routes::login` serves `/auth/login`,
//! `/auth/callback`, `/auth/logout` and `/v1/sessions`; `auth` accepts the
//! session cookie (with its CSRF check) on every other endpoint.

pub mod oidc;

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::secret::Secret;

/// Who may sign up by logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SignupMode {
    /// Anyone the provider vouches for (a verified email): the first login
    /// of an unknown person creates a tenant with them as owner.
    Open,
    /// Only people who are already members of a tenant.
    Closed,
}

/// Login settings as given (see `config::SettingsArgs` for each).
#[derive(Default)]
pub struct LoginArgs {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub public_url: Option<String>,
    pub signup: Option<SignupMode>,
    pub session_max_age_hours: Option<u64>,
    pub reauth_minutes: Option<u64>,
    pub signup_domains: Option<String>,
    pub groups_claim: Option<String>,
}

/// Login settings, resolved.
#[derive(Clone)]
pub struct LoginConfig {
    /// The provider's issuer URL.
    pub issuer: String,
    /// This server's client id at the provider.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret<String>,
    /// This server's external base URL (the callback is
    /// `{public_url}/auth/callback`).
    pub public_url: String,
    /// Who may sign up.
    pub signup: SignupMode,
    /// With open sign-up: only addresses of these domains (none: any).
    pub signup_domains: Vec<String>,
    /// The claim holding a person's groups (ID token, else userinfo).
    pub groups_claim: String,
    /// How long a session lasts after login.
    pub session_max_age: Duration,
    /// How recent a login must be for sensitive actions (keys, providers,
    /// the access policy, gateway settings) through its session.
    pub reauth_window: Duration,
}

impl std::fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("public_url", &self.public_url)
            .field("signup", &self.signup)
            .field("signup_domains", &self.signup_domains)
            .field("session_max_age", &self.session_max_age)
            .field("reauth_window", &self.reauth_window)
            .finish_non_exhaustive()
    }
}

impl LoginConfig {
    /// The callback URL registered at the provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.public_url)
    }

    /// Whether someone with this (normalised) address may sign up.
    pub fn may_sign_up(&self, email: &str) -> bool {
        self.signup == SignupMode::Open
            && (self.signup_domains.is_empty()
                || email
                    .rsplit_once('@')
                    .is_some_and(|(_, domain)| self.signup_domains.iter().any(|d| d == domain)))
    }

    /// Whether cookies must be `Secure` (an https public URL).
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// Validates the settings; `None` when no issuer is configured (login
    /// off).
    pub fn resolve(args: LoginArgs) -> anyhow::Result<Option<LoginConfig>> {
        let LoginArgs {
            issuer,
            client_id,
            client_secret,
            public_url,
            signup,
            session_max_age_hours,
            reauth_minutes,
            signup_domains,
            groups_claim,
        } = args;
        let Some(issuer) = issuer else {
            return Ok(None);
        };
        let issuer = issuer.trim_end_matches('/').to_owned();
        url::Url::parse(&issuer).context("oidc_issuer is not a URL")?;
        let client_id = client_id.context("oidc_issuer is set: oidc_client_id is required")?;
        let client_secret =
            client_secret.context("oidc_issuer is set: oidc_client_secret is required")?;
        let public_url = public_url
            .context("oidc_issuer is set: public_url (this server's external URL) is required")?
            .trim_end_matches('/')
            .to_owned();
        let parsed = url::Url::parse(&public_url).context("public_url is not a URL")?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != "/" {
            bail!("public_url must be http(s)://HOST[:PORT] with no path");
        }
        let hours = session_max_age_hours.unwrap_or(12);
        if !(1..=24 * 30).contains(&hours) {
            bail!("session_max_age_hours must be between 1 and 720");
        }
        let reauth_minutes = reauth_minutes.unwrap_or(15);
        if reauth_minutes > 24 * 60 {
            bail!("reauth_minutes must be at most 1440");
        }
        let signup_domains: Vec<String> = signup_domains
            .unwrap_or_default()
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if signup_domains
            .iter()
            .any(|d| !d.contains('.') || d.contains('@') || d.contains(char::is_whitespace))
        {
            bail!("signup_domains must be a comma-separated list of domain names");
        }
        let groups_claim = groups_claim.unwrap_or_else(|| "groups".to_owned());
        if groups_claim.is_empty()
            || groups_claim.len() > 100
            || !groups_claim
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:./".contains(&b))
        {
            bail!("oidc_groups_claim must be a claim name");
        }
        Ok(Some(LoginConfig {
            groups_claim,
            signup_domains,
            reauth_window: Duration::from_secs(reauth_minutes * 60),
            issuer,
            client_id,
            client_secret: Secret::new(client_secret),
            public_url,
            signup: signup.unwrap_or(SignupMode::Open),
            session_max_age: Duration::from_secs(hours * 3600),
        }))
    }
}

/// Logins allowed per minute per client address and per person: a fixed
/// window per key, on this replica.
pub struct LoginLimiter {
    per_minute: u32,
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl LoginLimiter {
    /// At most `per_minute` for each key.
    pub fn new(per_minute: u32) -> Self {
        LoginLimiter {
            per_minute,
            seen: Default::default(),
        }
    }

    /// Counts one attempt for `key`; whether it is within the limit.
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= 10_000 {
            seen.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
            if seen.len() >= 10_000 {
                // Full of fresh keys (many addresses): start over rather
                // than lock everyone out.
                seen.clear();
            }
        }
        let entry = seen
            .entry(key.to_owned())
            .or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}
