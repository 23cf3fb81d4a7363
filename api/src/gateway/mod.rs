//! The AI gateway: OpenAI- and Anthropic-compatible endpoints under
//! `/gateway/v1` that hold the provider keys, so that no agent ever does.
//!
//! The hot path is short: authenticate (cached), take a rate-limit permit
//! (in memory), rewrite the `model` field, send upstream, and pass the
//! answer through as it arrives while a tap counts tokens. Provider keys
//! are read from configuration into [`Secret`](crate::secret::Secret)s and
//! leave this process only in the upstream request's header.
//!
//! Tenants may add their own providers (`/v1/providers`); their keys are
//! stored sealed with the tenant's data key and decrypted here at call
//! time (see `tenant_providers`).
//!
//! Limits (`limits`): requests and tokens per minute, concurrency and a
//! monthly budget, with the buckets shared between replicas through the
//! database.
//!
//! Transcripts (`transcripts`): a tenant may opt in to keeping each call's
//! prompt and completion, sealed with its data key.

pub mod config;
mod ledger;
pub mod limits;
pub(crate) mod proxy;
mod tenant_providers;
pub mod transcripts;
pub mod usage;
mod wire_error;

use std::sync::Arc;

use actix_web::web;
use prometheus::{HistogramOpts, HistogramVec};

pub use self::config::{GatewayArgs, GatewayConfig};
pub use self::ledger::Ledger;
use self::limits::Limiter;
use self::tenant_providers::{PublicOnly, TenantProviders};
pub use self::tenant_providers::{key_aad, validate_endpoint};
pub use self::transcripts::Transcripts;

/// What the gateway's handlers share.
pub struct Gateway {
    config: GatewayConfig,
    client: reqwest::Client,
    /// For tenant-supplied endpoints: public addresses only.
    tenant_client: reqwest::Client,
    tenant_providers: TenantProviders,
    limiter: Arc<Limiter>,
    ledger: Ledger,
    transcripts: Transcripts,
    upstream_seconds: HistogramVec,
    overhead_seconds: HistogramVec,
    /// When each (tenant, principal, refusal) was last audited.
    refusals_audited: std::sync::Mutex<
        std::collections::HashMap<(String, String, &'static str), std::time::Instant>,
    >,
}

impl Gateway {
    /// Builds the gateway; registers its metrics in `registry`.
    pub fn new(
        config: GatewayConfig,
        ledger: Ledger,
        transcripts: Transcripts,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A provider that stops sending mid-answer is given up on.
            .read_timeout(std::time::Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut tenant_client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A provider that stops sending mid-answer is given up on.
            .read_timeout(std::time::Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if !config.allow_private_tenant_endpoints {
            tenant_client = tenant_client.dns_resolver(Arc::new(PublicOnly));
        }
        let tenant_client = tenant_client.build()?;
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
        ];
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "carapace_gateway_upstream_seconds",
                "Time from sending a request upstream to its response headers",
            )
            .buckets(buckets.clone()),
            &["provider"],
        )?;
        let overhead_seconds = HistogramVec::new(
            HistogramOpts::new(
                "carapace_gateway_overhead_seconds",
                "Time the gateway itself adds before the client gets response headers",
            )
            .buckets(buckets),
            &["endpoint"],
        )?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(overhead_seconds.clone()))?;
        Ok(Self {
            limiter: Limiter::new(config.limits),
            config,
            client,
            tenant_client,
            tenant_providers: TenantProviders::default(),
            ledger,
            transcripts,
            upstream_seconds,
            overhead_seconds,
            refusals_audited: std::sync::Mutex::default(),
        })
    }

    /// Whether a refusal of this kind for this principal is due for the
    /// audit log (once a minute each, so that a client hammering a limit
    /// cannot flood it).
    pub(crate) fn refusal_due(&self, tenant: &str, principal: &str, code: &'static str) -> bool {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let mut audited = self
            .refusals_audited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if audited.len() > 10_000 {
            audited.retain(|_, at| at.elapsed() < EVERY);
        }
        let key = (tenant.to_owned(), principal.to_owned(), code);
        if audited.get(&key).is_some_and(|at| at.elapsed() < EVERY) {
            return false;
        }
        audited.insert(key, std::time::Instant::now());
        true
    }
}

impl Gateway {
    /// Whether tenants may use private endpoints (tests, closed networks).
    pub fn allows_private_tenant_endpoints(&self) -> bool {
        self.config.allow_private_tenant_endpoints
    }

    /// The task that shares rate-limit buckets with other replicas through
    /// the database; runs until aborted.
    pub fn limit_sync(
        &self,
        db: sea_orm::DatabaseConnection,
    ) -> impl std::future::Future<Output = ()> + use<> {
        limits::run_sync(self.limiter.clone(), db)
    }

    /// Forgets a tenant's cached providers after a change.
    pub fn forget_tenant(&self, tenant: &crate::ids::TenantId) {
        self.tenant_providers.forget(tenant);
    }
}

/// Registers the gateway's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::problem::method_not_allowed;
    cfg.service(
        web::resource("/gateway/v1/chat/completions")
            .route(web::post().to(proxy::chat_completions))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/gateway/v1/messages")
            .route(web::post().to(proxy::messages))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/gateway/v1/models")
            .route(web::get().to(proxy::models))
            .default_service(web::to(method_not_allowed)),
    );
}
