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
