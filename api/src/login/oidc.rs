//! The OpenID Connect provider, as a relying party sees it: discovery
//! (cached for an hour), the authorization URL (PKCE S256, `state`,
//! `nonce`), the code exchange and the ID token's checks — signature
//! against the provider's keys (fetched again once when a token names a
//! key the cached set lacks), issuer, audience, expiry, nonce, and no
//! `alg: none` — all by the `openidconnect` crate.

use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::config::ProviderConfig;

/// How long discovered metadata (and keys) are used before asking again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// Why a login could not go on.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The provider could not be reached or answered nonsense.
    #[error("the identity provider is unavailable: {0}")]
    Provider(String),
    /// The provider's answer is not acceptable (a bad token, a refused
    /// code).
    #[error("{0}")]
    Refused(String),
}

/// A login on its way to the provider.
pub struct Started {
    /// Where to send the browser.
    pub url: String,
    /// The `state` sent (kept hashed until the callback).
    pub state: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
}

/// Who the provider says logged in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider's subject.
    pub subject: String,
    /// The email address, if the token has one.
    pub email: Option<String>,
    /// Whether the provider verified it (`email_verified`).
    pub email_verified: bool,
    /// How the person authenticated (`amr`), as the provider says.
    pub amr: Vec<String>,
    /// Their groups (the configured claim), at most 100.
    pub groups: Vec<String>,
}

/// One configured provider.
pub struct Provider {
    config: ProviderConfig,
    http: openidconnect::reqwest::Client,
    metadata: tokio::sync::RwLock<Option<(CoreProviderMetadata, Instant)>>,
}

impl Provider {
    /// A provider client for `config` (nothing is fetched yet).
    pub fn new(config: ProviderConfig) -> anyhow::Result<Self> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects would let a provider make us call anything.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Provider {
            config,
            http,
            metadata: tokio::sync::RwLock::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    async fn metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, LoginError> {
        if !refresh
            && let Some((metadata, at)) = &*self.metadata.read().await
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| LoginError::Provider(format!("bad issuer URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| LoginError::Provider(format!("discovery failed: {e}")))?;
        *self.metadata.write().await = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    /// Starts a login: the URL to send the browser to, and what the
    /// callback needs to finish it.
    pub async fn start(&self) -> Result<Started, LoginError> {
        let metadata = self.metadata(false).await?;
        let groups_scope = metadata.scopes_supported().is_some_and(|scopes| {
            scopes
                .iter()
                .any(|s| s.as_str() == self.config.groups_claim)
        });
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.config.redirect_uri.clone())
                .map_err(|e| LoginError::Provider(format!("bad redirect URL: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".to_owned()))
            .add_scopes(groups_scope.then(|| Scope::new(self.config.groups_claim.clone())))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges the callback's code (with the login's PKCE verifier) and
    /// checks the ID token it brings (with the login's nonce).
    pub async fn finish(
        &self,
        code: String,
        verifier: String,
        nonce: String,
    ) -> Result<Identity, LoginError> {
        let metadata = self.metadata(false).await?;
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().clone());
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.config.redirect_uri.clone())
                .map_err(|e| LoginError::Provider(format!("bad redirect URL: {e}")))?,
        );
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::Provider(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Refused(format!("the code was refused: {e}")))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| LoginError::Refused("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(nonce);
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            Err(first) => {
                // Perhaps a key the cached set lacks (the provider rotated
                // its keys): fetch them once more and check again.
                let metadata = self.metadata(true).await?;
                let client = CoreClient::from_provider_metadata(
                    metadata,
                    ClientId::new(self.config.client_id.clone()),
                    Some(ClientSecret::new(
                        self.config.client_secret.expose().clone(),
                    )),
                );
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| {
                        LoginError::Refused(format!("the ID token is not valid: {e} ({first})"))
                    })?
                    .clone()
            }
        };
        let mut identity = Identity {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            amr: claims
                .auth_method_refs()
                .map(|amr| amr.iter().map(|m| m.as_str().to_owned()).collect())
                .unwrap_or_default(),
            groups: Vec::new(),
        };
        // Claims the crate has no type for (groups) are read from the
        // token it has just verified.
        let verified_payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .unwrap_or_default();
        let mut groups = read_groups(&verified_payload, &self.config.groups_claim);
        if identity.email.is_none() || groups.is_none() {
            // Many providers put these only in the userinfo answer (asked
            // for with the access token; it must be about the same
            // subject).
            if let Some(url) = userinfo {
                match self.userinfo(url, response.access_token().secret()).await {
                    Ok(info) => {
                        if info["sub"].as_str() != Some(identity.subject.as_str()) {
                            return Err(LoginError::Refused(
                                "the userinfo answer is about someone else".into(),
                            ));
                        }
                        if identity.email.is_none() {
                            identity.email = info["email"].as_str().map(str::to_owned);
                            identity.email_verified =
                                info["email_verified"].as_bool().unwrap_or(false);
                        }
                        if groups.is_none() {
                            groups = read_groups(&info, &self.config.groups_claim);
                        }
                    }
                    // Without an email there is no login; without groups,
                    // only policies that require some refuse it.
                    Err(e) if identity.email.is_none() => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "userinfo unavailable: no groups read"),
                }
            }
        }
        identity.groups = groups.unwrap_or_default();
        Ok(identity)
    }
}

impl Provider {
    /// The userinfo answer for an access token, as JSON.
    async fn userinfo(
        &self,
        url: url::Url,
        access_token: &str,
    ) -> Result<serde_json::Value, LoginError> {
        self.http
            .get(url)
            .bearer_auth(access_token)
            .send()
            .await
            .and_then(openidconnect::reqwest::Response::error_for_status)
            .map_err(|e| LoginError::Refused(format!("the userinfo request failed: {e}")))?
            .json()
            .await
            .map_err(|e| LoginError::Refused(format!("the userinfo answer: {e}")))
    }
}

/// The groups in `claim` of a claims object: a list of strings or one
/// string; `None` if the claim is absent. At most 100, each at most 200
/// bytes (longer ones are dropped).
fn read_groups(claims: &serde_json::Value, claim: &str) -> Option<Vec<String>> {
    let value = claims.get(claim)?;
    let items: Vec<&str> = match value {
        serde_json::Value::String(one) => vec![one.as_str()],
        serde_json::Value::Array(many) => many.iter().filter_map(|v| v.as_str()).collect(),
        _ => return Some(Vec::new()),
    };
    Some(
        items
            .into_iter()
            .filter(|g| !g.is_empty() && g.len() <= 200)
            .take(100)
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::read_groups;

    #[test]
    fn groups_are_read_from_a_list_or_a_string() {
        let claims = serde_json::json!({"groups": ["eng", "", 7, "ops"], "team": "red"});
        assert_eq!(
            read_groups(&claims, "groups"),
            Some(vec!["eng".into(), "ops".into()])
        );
        assert_eq!(read_groups(&claims, "team"), Some(vec!["red".into()]));
        assert_eq!(read_groups(&claims, "roles"), None);
    }
}
