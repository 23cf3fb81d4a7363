//! Tenants' own providers as the gateway uses them. Their keys are stored
//! sealed with the tenant's data key and decrypted here, in the gateway's
//! memory only; the decrypted list is kept for at most one second (and
//! dropped at once on this replica when the tenant changes it), so that a
//! hot tenant does not cost a database round trip and an unwrap per call.
//!
//! A tenant-supplied endpoint is untrusted: it must be https on a public
//! address. Names are resolved by [`PublicOnly`], which refuses every
//! private, loopback, link-local or metadata address at connect time, so a
//! name that later resolves to an internal address (DNS rebinding) is
//! refused too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sea_orm::DatabaseConnection;

use super::config::{Provider, ProviderKind};
use crate::crypto::{DataKey, KeyWrapper};
use crate::db::{StoredProvider, TenantScope};
use crate::error::Result;
use crate::ids::TenantId;
use crate::secret::Secret;

const CACHE_TTL: Duration = Duration::from_secs(1);

type ProviderList = Arc<Vec<Arc<Provider>>>;

/// The associated data that binds a sealed provider key to its tenant, its
/// provider's name, kind and endpoint: a key moved to another tenant or
/// row, or a row pointed at another endpoint behind the API's back, no
/// longer decrypts.
pub fn key_aad(tenant: &TenantId, name: &str, kind: &str, base_url: Option<&str>) -> Vec<u8> {
    format!(
        "carapace:provider-key:v1\n{tenant}\n{name}\n{kind}\n{}",
        base_url.unwrap_or("")
    )
    .into_bytes()
}

/// Checks a tenant-supplied base URL; returns it normalised (no trailing
/// slash) or says what is wrong.
pub fn validate_endpoint(url: &str, allow_private: bool) -> Result<String, String> {
    if url.len() > 500 {
        return Err("must be at most 500 characters".to_owned());
    }
    let parsed = Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err("must be an https:// URL".to_owned()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials; give the key as api_key".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    let public_host = match parsed.host() {
        None => return Err("must name a host".to_owned()),
        Some(url::Host::Ipv4(ip)) => carapace_runtime::address::is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => carapace_runtime::address::is_public(ip.into()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !(name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal"))
        }
    };
    if !public_host && !allow_private {
        return Err("must be a public address, not loopback, private or link-local".to_owned());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A resolver that only ever returns public addresses.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| carapace_runtime::address::is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn decrypt(
    tenant: &TenantId,
    key: &DataKey,
    stored: StoredProvider,
    allow_private: bool,
) -> anyhow::Result<Provider> {
    let aad = key_aad(
        tenant,
        &stored.name,
        &stored.kind,
        stored.base_url.as_deref(),
    );
    let kind = ProviderKind::parse(&stored.kind)
        .ok_or_else(|| anyhow::anyhow!("stored provider kind {:?} is unknown", stored.kind))?;
    let base_url = match (stored.base_url, kind.default_base_url()) {
        (Some(url), _) => validate_endpoint(&url, allow_private)
            .map_err(|e| anyhow::anyhow!("stored base_url {e}"))?,
        (None, Some(url)) => url.to_owned(),
        (None, None) => anyhow::bail!("stored openai_compatible provider has no base_url"),
    };
    let api_key = key
        .open(&stored.sealed_api_key, &aad)
        .map_err(|_| anyhow::anyhow!("provider {} key does not decrypt", stored.name))?;
    let api_key =
        String::from_utf8(api_key).map_err(|_| anyhow::anyhow!("provider key is not UTF-8"))?;
    Ok(Provider {
        name: stored.name,
        kind,
        base_url,
        api_key: Secret::new(api_key),
        models: stored.models,
        tenant_owned: true,
    })
}

async fn load(
    db: &DatabaseConnection,
    wrapper: &dyn KeyWrapper,
    tenant: &TenantId,
    allow_private: bool,
) -> Result<ProviderList> {
    let scope = TenantScope::new(db, tenant);
    let stored = scope.providers().await?;
    if stored.is_empty() {
        return Ok(Arc::new(Vec::new()));
    }
    let key = scope.data_key(wrapper).await?;
    let mut providers = Vec::with_capacity(stored.len());
    for provider in stored {
        let name = provider.name.clone();
        match decrypt(tenant, &key, provider, allow_private) {
            Ok(p) => providers.push(Arc::new(p)),
            // One broken provider must not take the others down.
            Err(e) => {
                tracing::error!(tenant_id = %tenant, provider = %name, error = %e, "skipping tenant provider")
            }
        }
    }
    Ok(Arc::new(providers))
}

/// The per-replica cache of tenants' decrypted providers.
#[derive(Default)]
pub struct TenantProviders {
    cache: Mutex<HashMap<TenantId, (Instant, ProviderList)>>,
}

impl TenantProviders {
    /// The tenant's providers, decrypted. If they cannot be loaded (the
    /// database is down, the data key does not unwrap) the error is logged
    /// and the tenant gets none of its own providers for a moment, rather
    /// than losing the platform's models too.
    pub async fn get(
        &self,
        db: &DatabaseConnection,
        wrapper: &dyn KeyWrapper,
        tenant: &TenantId,
        allow_private: bool,
    ) -> ProviderList {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, list)| list.clone());
        if let Some(list) = cached {
            return list;
        }
        let list = match load(db, wrapper, tenant, allow_private).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(tenant_id = %tenant, error = ?e, "failed to load the tenant's own providers");
                Arc::new(Vec::new())
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Decrypted keys stay in memory no longer than the cache lifetime.
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        cache.insert(tenant.clone(), (Instant::now(), list.clone()));
        list
    }

    /// Drops the tenant's cached providers (after a change on this replica).
    pub fn forget(&self, tenant: &TenantId) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_endpoints_must_be_public_https() {
        assert_eq!(
            validate_endpoint("https://api.example.com/v1/", false).unwrap(),
            "https://api.example.com/v1"
        );
        for bad in [
            "http://api.example.com/v1",
            "https://127.0.0.1/v1",
            "https://169.254.169.254/latest",
            "https://[::1]/v1",
            "https://[::ffff:10.0.0.1]/v1",
            "https://10.1.2.3",
            "https://localhost:8080",
            "https://metadata.google.internal/",
            "https://user:pass@api.example.com",
            "https://api.example.com/v1?x=1",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(
                validate_endpoint(bad, false).is_err(),
                "{bad} must be refused"
            );
        }
        assert!(validate_endpoint("http://127.0.0.1:9999/v1", true).is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_to_internal_addresses_are_not_connected_to() {
        use std::str::FromStr;
        for host in ["localhost", "127.0.0.1", "ip6-localhost"] {
            let Ok(name) = Name::from_str(host) else {
                continue;
            };
            assert!(PublicOnly.resolve(name).await.is_err(), "{host}");
        }
    }
}
