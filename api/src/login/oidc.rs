//! The OpenID Connect provider, as a relying party sees it: discovery
//! (cached for an hour), the authorization URL (PKCE S256, `state`,
//! `nonce`), the code exchange and the ID token's checks — signature
//! against the provider's keys (fetched again once when a token names a
//! key the cached set lacks), issuer, audience, expiry, nonce, and no
//! `alg: none` — all by the `openidconnect` crate.

use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::LoginConfig;

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
}

/// The configured provider.
pub struct Provider {
    config: LoginConfig,
    http: openidconnect::reqwest::Client,
    metadata: tokio::sync::RwLock<Option<(CoreProviderMetadata, Instant)>>,
}

impl Provider {
    /// A provider client for `config` (nothing is fetched yet).
    pub fn new(config: LoginConfig) -> anyhow::Result<Self> {
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
    pub fn config(&self) -> &LoginConfig {
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
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.config.redirect_uri())
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
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.config.redirect_uri())
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
        };
        if identity.email.is_none() {
            // Many providers put the email only in the userinfo answer
            // (asked for with the access token, for the same subject).
            let info: CoreUserInfoClaims = client
                .user_info(
                    response.access_token().clone(),
                    Some(claims.subject().clone()),
                )
                .map_err(|e| LoginError::Refused(format!("no email, and no userinfo: {e}")))?
                .request_async(&self.http)
                .await
                .map_err(|e| LoginError::Refused(format!("the userinfo request failed: {e}")))?;
            identity.email = info.email().map(|e| e.as_str().to_owned());
            identity.email_verified = info.email_verified().unwrap_or(false);
        }
        Ok(identity)
    }
}
