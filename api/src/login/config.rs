//! Login settings: the identity providers (one from the `CARAPACE_OIDC_*`
//! flags, named `default`, and any number from the settings file's
//! `[[oidc_providers]]` tables) and what applies to every login (this
//! server's public URL, who may sign up, session lifetimes).

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::secret::Secret;

/// The most providers one server offers.
pub const MAX_PROVIDERS: usize = 20;
/// The name the `CARAPACE_OIDC_*` provider goes by.
pub const DEFAULT_PROVIDER: &str = "default";

/// Who may sign up by logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SignupMode {
    /// Anyone the provider vouches for (a verified email): the first login
    /// of an unknown person creates a tenant with them as owner.
    Open,
    /// Only people who are already members of a tenant (or invited).
    Closed,
}

/// One provider of the settings file's `[[oidc_providers]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderArgs {
    /// Its name in URLs (`/auth/login?provider=NAME`) and records:
    /// 1–32 of `a-z`, `0-9`, `-`.
    pub name: String,
    /// What the login page calls it. [default: the issuer's host]
    pub label: Option<String>,
    /// The issuer URL.
    pub issuer: String,
    /// This server's client id there.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The claim holding a person's groups. [default: the server's
    /// `oidc_groups_claim`, else `groups`]
    pub groups_claim: Option<String>,
    /// Whether this provider's first login of an address may link to a
    /// person who already logs in with another provider (trusting its
    /// verification of the address). [default: true]
    pub link_existing: Option<bool>,
}

/// Login settings as given (see `config::SettingsArgs` for each).
#[derive(Default)]
pub struct LoginArgs {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub providers: Vec<ProviderArgs>,
    pub public_url: Option<String>,
    pub signup: Option<SignupMode>,
    pub session_max_age_hours: Option<u64>,
    pub reauth_minutes: Option<u64>,
    pub signup_domains: Option<String>,
    pub groups_claim: Option<String>,
}

/// One identity provider, resolved.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Its name (`default` for the `CARAPACE_OIDC_*` one).
    pub name: String,
    /// What the login page calls it.
    pub label: String,
    /// The issuer URL, exactly as configured.
    pub issuer: String,
    /// This server's client id there.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret<String>,
    /// The claim holding a person's groups (ID token, else userinfo).
    pub groups_claim: String,
    /// Where it sends browsers back: `{public_url}/auth/callback` (one
    /// for every provider; the login's `state` says which it was).
    pub redirect_uri: String,
    /// Whether its first login of an address may link to a person who
    /// logs in elsewhere.
    pub link_existing: bool,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("groups_claim", &self.groups_claim)
            .finish_non_exhaustive()
    }
}

/// Login settings, resolved.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    /// The providers, in the order the login page lists them (at least
    /// one).
    pub providers: Vec<ProviderConfig>,
    /// This server's external base URL.
    pub public_url: String,
    /// Who may sign up.
    pub signup: SignupMode,
    /// With open sign-up: only addresses of these domains (none: any).
    pub signup_domains: Vec<String>,
    /// How long a session lasts after login.
    pub session_max_age: Duration,
    /// How recent a login must be for sensitive actions (keys, providers,
    /// the access policy, gateway settings) through its session.
    pub reauth_window: Duration,
}

impl LoginConfig {
    /// Whether someone with this (normalised) address may sign up.
    pub fn may_sign_up(&self, email: &str) -> bool {
        self.signup == SignupMode::Open
            && (self.signup_domains.is_empty()
                || email
                    .rsplit_once('@')
                    .is_some_and(|(_, domain)| self.signup_domains.iter().any(|d| d == domain)))
    }

    /// Whether cookies must be `Secure` (an https public URL); their names
    /// then carry the `__Host-` prefix, which browsers keep to cookies set
    /// `Secure`, on path `/`, with no domain, by this very host.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// Validates the settings; `None` when no provider is configured
    /// (login off).
    pub fn resolve(args: LoginArgs) -> anyhow::Result<Option<LoginConfig>> {
        let LoginArgs {
            issuer,
            client_id,
            client_secret,
            providers,
            public_url,
            signup,
            session_max_age_hours,
            reauth_minutes,
            signup_domains,
            groups_claim,
        } = args;
        if providers.iter().any(|p| p.name == DEFAULT_PROVIDER) {
            // Rows from before several providers name `default`: they
            // belong to the flags' provider.
            bail!("the provider name {DEFAULT_PROVIDER:?} is kept for the oidc_issuer provider");
        }
        let mut all = Vec::new();
        if let Some(issuer) = issuer {
            all.push(ProviderArgs {
                name: DEFAULT_PROVIDER.to_owned(),
                label: None,
                issuer,
                client_id: client_id.context("oidc_issuer is set: oidc_client_id is required")?,
                client_secret: client_secret
                    .context("oidc_issuer is set: oidc_client_secret is required")?,
                groups_claim: None,
                link_existing: None,
            });
        } else if client_id.is_some() || client_secret.is_some() {
            bail!("oidc_client_id and oidc_client_secret need oidc_issuer");
        }
        all.extend(providers);
        if all.is_empty() {
            return Ok(None);
        }
        if all.len() > MAX_PROVIDERS {
            bail!("at most {MAX_PROVIDERS} identity providers");
        }
        let public_url = public_url
            .context("login is configured: public_url (this server's external URL) is required")?
            .trim_end_matches('/')
            .to_owned();
        let parsed = url::Url::parse(&public_url).context("public_url is not a URL")?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != "/" {
            bail!("public_url must be http(s)://HOST[:PORT] with no path");
        }
        let default_claim = groups_claim.unwrap_or_else(|| "groups".to_owned());
        let mut resolved: Vec<ProviderConfig> = Vec::new();
        for p in all {
            let provider = resolve_provider(p, &default_claim, &public_url)?;
            if resolved.iter().any(|r| r.name == provider.name) {
                bail!("two identity providers are named {:?}", provider.name);
            }
            // One issuer is one namespace of accounts: twice would make
            // two names for the same people.
            let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
            if resolved.iter().any(|r| same(&r.issuer, &provider.issuer)) {
                bail!("two identity providers have the issuer {}", provider.issuer);
            }
            resolved.push(provider);
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
        Ok(Some(LoginConfig {
            providers: resolved,
            signup_domains,
            reauth_window: Duration::from_secs(reauth_minutes * 60),
            public_url,
            signup: signup.unwrap_or(SignupMode::Open),
            session_max_age: Duration::from_secs(hours * 3600),
        }))
    }
}

fn resolve_provider(
    args: ProviderArgs,
    default_claim: &str,
    public_url: &str,
) -> anyhow::Result<ProviderConfig> {
    let ProviderArgs {
        name,
        label,
        issuer,
        client_id,
        client_secret,
        groups_claim,
        link_existing,
    } = args;
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("identity provider name {name:?}: 1 to 32 of a-z, 0-9 and -");
    }
    // Kept exactly as written: discovery requires the provider's
    // `issuer` to match it character for character (Auth0's ends in `/`).
    let parsed = url::Url::parse(&issuer)
        .with_context(|| format!("provider {name}: issuer is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("provider {name}: the issuer must be an http(s) URL");
    }
    if client_id.is_empty() || client_secret.is_empty() {
        bail!("provider {name}: client_id and client_secret must not be empty");
    }
    let label = match label {
        Some(label) => {
            let label = label.trim().to_owned();
            if label.is_empty() || label.chars().count() > 60 || label.contains(char::is_control) {
                bail!("provider {name}: label must be 1 to 60 printable characters");
            }
            label
        }
        None => parsed.host_str().unwrap_or(&issuer).to_owned(),
    };
    let groups_claim = groups_claim.unwrap_or_else(|| default_claim.to_owned());
    if groups_claim.is_empty()
        || groups_claim.len() > 100
        || !groups_claim
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:./".contains(&b))
    {
        bail!("provider {name}: the groups claim must be a claim name");
    }
    Ok(ProviderConfig {
        redirect_uri: format!("{public_url}/auth/callback"),
        name,
        label,
        issuer,
        client_id,
        client_secret: Secret::new(client_secret),
        groups_claim,
        link_existing: link_existing.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, issuer: &str) -> ProviderArgs {
        ProviderArgs {
            name: name.to_owned(),
            label: None,
            issuer: issuer.to_owned(),
            client_id: "id".to_owned(),
            client_secret: "secret".to_owned(),
            groups_claim: None,
            link_existing: None,
        }
    }

    fn args(providers: Vec<ProviderArgs>) -> LoginArgs {
        LoginArgs {
            providers,
            public_url: Some("https://carapace.example".to_owned()),
            ..LoginArgs::default()
        }
    }

    #[test]
    fn the_flag_provider_and_the_files_are_offered_together() {
        let mut a = args(vec![provider("okta", "https://acme.okta.com/")]);
        a.issuer = Some("https://accounts.example".to_owned());
        a.client_id = Some("c".to_owned());
        a.client_secret = Some("s".to_owned());
        let config = LoginConfig::resolve(a).unwrap().unwrap();
        let names: Vec<_> = config.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "okta"]);
        assert_eq!(config.providers[1].issuer, "https://acme.okta.com/");
        assert_eq!(config.providers[1].label, "acme.okta.com");
        assert_eq!(
            config.providers[1].redirect_uri,
            "https://carapace.example/auth/callback"
        );
        assert!(config.secure_cookies());
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn names_and_issuers_are_unique_and_well_formed() {
        for (bad, why) in [
            (
                vec![
                    provider("a", "https://x.example"),
                    provider("a", "https://y.example"),
                ],
                "named",
            ),
            (
                vec![
                    provider("a", "https://x.example"),
                    provider("b", "https://x.example/"),
                ],
                "issuer",
            ),
            (vec![provider("Not OK", "https://x.example")], "a-z"),
            (vec![provider("a", "ftp://x.example")], "http(s)"),
            (vec![provider("default", "https://x.example")], "kept"),
        ] {
            let err = LoginConfig::resolve(args(bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let mut no_url = args(vec![provider("a", "https://x.example")]);
        no_url.public_url = None;
        assert!(LoginConfig::resolve(no_url).is_err());
        let orphan = LoginArgs {
            client_id: Some("c".to_owned()),
            ..LoginArgs::default()
        };
        assert!(LoginConfig::resolve(orphan).is_err());
        assert!(
            LoginConfig::resolve(LoginArgs::default())
                .unwrap()
                .is_none()
        );
    }
}
