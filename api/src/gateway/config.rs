//! Gateway configuration: platform providers, model aliases and prices,
//! from the `[gateway]` table of the settings file.
//!
//! ```toml
//! [[gateway.providers]]
//! name = "openai"
//! kind = "openai"                 # openai | anthropic | openai_compatible
//! api_key_env = "OPENAI_API_KEY"  # or api_key = "…" (never logged)
//! models = ["gpt-4o-mini"]
//!
//! [gateway.aliases]
//! fast = ["openai/gpt-4o-mini", "local/llama3"]
//!
//! [gateway.prices]
//! "gpt-4o-mini" = { input_per_mtok = 0.15, output_per_mtok = 0.6 }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::secret::Secret;

/// The `[gateway]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayArgs {
    /// Platform-wide providers.
    #[serde(default)]
    pub providers: Vec<ProviderArgs>,
    /// Alias → ordered list of `provider/model`.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Upstream model → price in US dollars per million tokens.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Seconds to wait for an upstream's response headers. [default: 60]
    pub upstream_timeout_secs: Option<u64>,
    /// Days a gateway transcript is kept (for tenants that record them).
    /// [default: 30; 1 to 3650]
    pub transcript_retention_days: Option<u32>,
    /// Retries of one provider on 429, 5xx or timeout before falling back
    /// to the next. [default: 2]
    pub max_retries: Option<u32>,
    /// Largest accepted request body in bytes. [default: 4 MiB]
    pub max_body_bytes: Option<usize>,
    /// Requests per minute per tenant. [default: 600]
    pub requests_per_minute: Option<u32>,
    /// Concurrent requests per tenant. [default: 32]
    pub max_concurrent: Option<u32>,
    /// Requests per minute per API key. [default: requests_per_minute]
    pub key_requests_per_minute: Option<u32>,
    /// Tokens (prompt + completion) per minute per tenant. [default: 1000000]
    pub tokens_per_minute: Option<u64>,
    /// Monthly budget per tenant in US dollars, from the price table; the
    /// gateway refuses calls once the month's spend reaches it.
    /// [default: none]
    pub monthly_budget_usd: Option<f64>,
    /// Let tenants point their own providers at loopback and private
    /// addresses (and plain http). Only for tests and closed networks: it
    /// lets a tenant make the server connect to internal services.
    /// [default: false]
    pub allow_private_tenant_endpoints: Option<bool>,
}

/// One provider as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderArgs {
    /// Unique name, used in aliases as `name/model`.
    pub name: String,
    /// Wire format and authentication.
    pub kind: ProviderKind,
    /// Base URL, e.g. `https://api.openai.com/v1`. Defaults by kind.
    pub base_url: Option<String>,
    /// The key itself. Prefer `api_key_env`.
    pub api_key: Option<Secret<String>>,
    /// Name of an environment variable holding the key.
    pub api_key_env: Option<String>,
    /// Models this provider serves (callable by name).
    #[serde(default)]
    pub models: Vec<String>,
}

/// A provider's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI: `/chat/completions`, bearer key.
    Openai,
    /// Anthropic: `/messages`, `x-api-key`.
    Anthropic,
    /// Any server speaking OpenAI's format (Ollama, vLLM, llama.cpp, …).
    OpenaiCompatible,
}

impl ProviderKind {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenaiCompatible => "openai_compatible",
        }
    }

    /// Parses the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ProviderKind::Openai,
            ProviderKind::Anthropic,
            ProviderKind::OpenaiCompatible,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    /// The official API's base URL; `None` for OpenAI-compatible servers,
    /// which must name theirs.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::OpenaiCompatible => None,
        }
    }

    /// The wire format: OpenAI chat completions or Anthropic messages.
    pub fn format(self) -> WireFormat {
        match self {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => WireFormat::OpenAi,
            ProviderKind::Anthropic => WireFormat::Anthropic,
        }
    }
}

/// The two request formats the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `POST /chat/completions`.
    OpenAi,
    /// `POST /messages`.
    Anthropic,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output (completion) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// Cost in millionths of a US dollar: tokens × dollars per million.
    pub fn cost_micro_usd(&self, input: u64, output: u64) -> i64 {
        (input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok).round() as i64
    }
}

/// A resolved provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// The key; empty for keyless local servers.
    pub api_key: Secret<String>,
    /// Models served.
    pub models: Vec<String>,
    /// Configured by a tenant (reached only through the public-address
    /// guard) rather than by the operator.
    pub tenant_owned: bool,
}

/// A place a request can go: a provider and its model name.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The upstream's model name.
    pub model: String,
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Platform providers.
    pub providers: Vec<Arc<Provider>>,
    /// Aliases.
    pub aliases: BTreeMap<String, Vec<Target>>,
    /// Prices.
    pub prices: BTreeMap<String, Price>,
    /// Time to response headers.
    pub upstream_timeout: Duration,
    /// How long transcripts are kept.
    pub transcript_retention: Duration,
    /// Retries per provider.
    pub max_retries: u32,
    /// Body limit.
    pub max_body_bytes: usize,
    /// The limits.
    pub limits: super::limits::Limits,
    /// Tenant providers may use private addresses.
    pub allow_private_tenant_endpoints: bool,
}

impl GatewayArgs {
    /// Validates, reading keys from the environment where asked.
    pub fn resolve(self) -> anyhow::Result<GatewayConfig> {
        let mut providers: Vec<Arc<Provider>> = Vec::new();
        for p in self.providers {
            if p.name.is_empty()
                || p.name.contains('/')
                || providers.iter().any(|q| q.name == p.name)
            {
                bail!(
                    "gateway provider names must be unique, non-empty and without '/': {:?}",
                    p.name
                );
            }
            let base_url = match (&p.base_url, p.kind.default_base_url()) {
                (Some(url), _) => url.trim_end_matches('/').to_owned(),
                (None, Some(url)) => url.to_owned(),
                (None, None) => bail!("gateway provider {} needs a base_url", p.name),
            };
            if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                bail!("gateway provider {} base_url must be http(s)", p.name);
            }
            let api_key = match (p.api_key, &p.api_key_env) {
                (Some(key), None) => key,
                (None, Some(var)) => Secret::new(std::env::var(var).with_context(|| {
                    format!(
                        "gateway provider {}: environment variable {var} is not set",
                        p.name
                    )
                })?),
                (None, None) if p.kind == ProviderKind::OpenaiCompatible => {
                    Secret::new(String::new())
                }
                (None, None) => bail!("gateway provider {} needs api_key or api_key_env", p.name),
                (Some(_), Some(_)) => bail!(
                    "gateway provider {}: give api_key or api_key_env, not both",
                    p.name
                ),
            };
            providers.push(Arc::new(Provider {
                name: p.name,
                kind: p.kind,
                base_url,
                api_key,
                models: p.models,
                tenant_owned: false,
            }));
        }
        let mut aliases = BTreeMap::new();
        for (alias, targets) in self.aliases {
            let mut resolved = Vec::new();
            for target in &targets {
                let (name, model) = target.split_once('/').with_context(|| {
                    format!("gateway alias {alias}: {target:?} must be provider/model")
                })?;
                let provider = providers
                    .iter()
                    .find(|p| p.name == name)
                    .with_context(|| format!("gateway alias {alias}: no provider named {name}"))?;
                resolved.push(Target {
                    provider: provider.clone(),
                    model: model.to_owned(),
                });
            }
            if resolved.is_empty() {
                bail!("gateway alias {alias} names no provider");
            }
            aliases.insert(alias, resolved);
        }
        if self.upstream_timeout_secs == Some(0) {
            bail!("gateway upstream_timeout_secs must be at least 1");
        }
        if self.max_body_bytes.is_some_and(|n| n < 1024) {
            bail!("gateway max_body_bytes must be at least 1024");
        }
        Ok(GatewayConfig {
            providers,
            aliases,
            prices: self.prices,
            upstream_timeout: Duration::from_secs(self.upstream_timeout_secs.unwrap_or(60)),
            transcript_retention: {
                let days = self.transcript_retention_days.unwrap_or(30);
                if !(1..=3650).contains(&days) {
                    bail!("gateway transcript_retention_days must be between 1 and 3650");
                }
                Duration::from_secs(u64::from(days) * 86_400)
            },
            max_retries: self.max_retries.unwrap_or(2),
            max_body_bytes: self.max_body_bytes.unwrap_or(4 * 1024 * 1024),
            limits: {
                let tenant_rpm = self.requests_per_minute.unwrap_or(600).max(1);
                if self
                    .monthly_budget_usd
                    .is_some_and(|b| !(b >= 0.0 && b.is_finite()))
                {
                    bail!("gateway monthly_budget_usd must be a non-negative number");
                }
                super::limits::Limits {
                    tenant_rpm,
                    key_rpm: self.key_requests_per_minute.unwrap_or(tenant_rpm).max(1),
                    tenant_tpm: self.tokens_per_minute.unwrap_or(1_000_000).max(1),
                    max_concurrent: self.max_concurrent.unwrap_or(32).max(1),
                    monthly_budget_micro_usd: self
                        .monthly_budget_usd
                        .map(|b| (b * 1e6).round() as i64),
                }
            },
            allow_private_tenant_endpoints: self.allow_private_tenant_endpoints.unwrap_or(false),
        })
    }
}

impl GatewayConfig {
    /// Where a request for `model` in `format` may go, in order: the
    /// tenant's own providers that list the model, then the platform's —
    /// an alias's targets, else every provider that lists the model.
    /// Targets of the other wire format are left out (no translation
    /// between formats).
    pub fn targets(
        &self,
        tenant_providers: &[Arc<Provider>],
        model: &str,
        format: WireFormat,
    ) -> Vec<Target> {
        let serving = |p: &&Arc<Provider>| p.models.iter().any(|m| m == model);
        let by_name = |p: &Arc<Provider>| Target {
            provider: p.clone(),
            model: model.to_owned(),
        };
        let mut candidates: Vec<Target> = tenant_providers
            .iter()
            .filter(serving)
            .map(by_name)
            .collect();
        match self.aliases.get(model) {
            Some(targets) => candidates.extend(targets.iter().cloned()),
            None => candidates.extend(self.providers.iter().filter(serving).map(by_name)),
        }
        candidates.retain(|t| t.provider.kind.format() == format);
        candidates
    }

    /// Cost in millionths of a US dollar; 0 for models without a price.
    pub fn cost_micro_usd(&self, model: &str, input: u64, output: u64) -> i64 {
        self.prices
            .get(model)
            .map_or(0, |p| p.cost_micro_usd(input, output))
    }
}
