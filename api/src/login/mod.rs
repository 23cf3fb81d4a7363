//! Browser login through OpenID Connect: the authorization code flow with
//! PKCE, `state` and `nonce` against any of the configured providers
//! (`config`: the `CARAPACE_OIDC_*` one and the settings file's
//! `[[oidc_providers]]`), then a server-side session whose cookie opens
//! the `/v1` API like an API key.
//!
//! `oidc` talks to a provider (discovery and keys cached, fetched again
//! on an unknown key id); `db::sessions` keeps pending logins and
//! sessions (hashed); `http::routes::login` serves `/auth/login`,
//! `/auth/callback`, `/auth/logout` and `/v1/sessions`; `auth` accepts the
//! session cookie (with its CSRF check) on every other endpoint.

pub mod config;
pub mod oidc;

use std::time::Duration;

pub use config::{DEFAULT_PROVIDER, LoginArgs, LoginConfig, ProviderArgs, SignupMode};

/// Login as this server offers it: the settings and a client for each
/// provider.
pub struct Login {
    config: LoginConfig,
    providers: Vec<oidc::Provider>,
}

impl Login {
    /// Clients for every configured provider (nothing is fetched yet).
    pub fn new(config: LoginConfig) -> anyhow::Result<Login> {
        let providers = config
            .providers
            .iter()
            .cloned()
            .map(oidc::Provider::new)
            .collect::<anyhow::Result<_>>()?;
        Ok(Login { config, providers })
    }

    /// The settings.
    pub fn config(&self) -> &LoginConfig {
        &self.config
    }

    /// Every provider, in the configured order.
    pub fn providers(&self) -> &[oidc::Provider] {
        &self.providers
    }

    /// The provider of this name.
    pub fn provider(&self, name: &str) -> Option<&oidc::Provider> {
        self.providers.iter().find(|p| p.config().name == name)
    }
}

/// Logins allowed per minute per client address and per person: a fixed
/// window per key, on this replica.
pub struct LoginLimiter {
    limit: u32,
    window: Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl LoginLimiter {
    /// At most `per_minute` for each key.
    pub fn new(per_minute: u32) -> Self {
        Self::per_window(per_minute, Duration::from_secs(60))
    }

    /// At most `count` for each key per `window`.
    pub fn per_window(count: u32, window: Duration) -> Self {
        LoginLimiter {
            limit: count,
            window,
            seen: Default::default(),
        }
    }

    /// Counts one attempt for `key`; whether it is within the limit.
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= 10_000 {
            seen.retain(|_, (since, _)| since.elapsed() < self.window);
            if seen.len() >= 10_000 {
                // Full of fresh keys (many addresses): start over rather
                // than lock everyone out.
                seen.clear();
            }
        }
        let entry = seen
            .entry(key.to_owned())
            .or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= self.limit
    }
}
