//! `AppState`: what every request handler shares.

use std::sync::Arc;

use object_store::ObjectStore;
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::http::observe::Metrics;
use crate::master_key::MasterKey;
use crate::secret::Secret;

/// Shared, read-mostly state of the running server.
pub struct AppState {
    /// Database pool.
    pub db: DatabaseConnection,
    /// API key verification.
    pub auth: Authenticator,
    /// Object store.
    pub store: Arc<dyn ObjectStore>,
    /// Agents' encrypted memory, on `store`.
    pub memory: crate::memory::MemoryStore,
    /// What each tenant may use (gateway limits, memory quotas).
    pub plans: crate::plans::Plans,
    /// The OpenID Connect providers browsers log in with, if configured.
    pub login: Option<Arc<crate::login::Login>>,
    /// Reverse proxies whose `X-Forwarded-For` is believed
    /// (`http::client_ip`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Sends invitation emails, if an SMTP server is configured.
    pub mailer: Option<Arc<crate::mail::Mailer>>,
    /// Invitation emails' allowances (an open sign-up must not make
    /// this server a spam relay).
    pub invitation_mails: crate::mail::MailLimits,
    /// Logins per minute per address and per person.
    pub login_limiter: crate::rate_limit::WindowLimiter,
    /// Failed credentials (API keys, service tokens, sessions, run tokens)
    /// per minute per client address.
    pub auth_failures: crate::rate_limit::WindowLimiter,
    /// Master key (wraps tenant data keys; used by the memory service).
    pub master_key: MasterKey,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// If set, `/metrics` requires `Authorization: Bearer <this>`.
    pub metrics_token: Option<Secret<String>>,
    /// The model gateway.
    pub gateway: crate::gateway::Gateway,
    /// Sandboxes (the local worker, or why there is none).
    pub sandboxes: std::sync::Arc<crate::sandboxes::SandboxService>,
    /// Live output of runs followed through this replica.
    pub run_logs: crate::run_logs::RunLogs,
    /// Conversations with agents processed here, and their event signal.
    pub conversations: crate::conversations::Conversations,
    /// The workers connected to this replica and the scheduler's loops.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// If set, the operator endpoints (`/v1/admin/...`) answer
    /// `Authorization: Bearer <this>`; otherwise they are off.
    pub admin_token: Option<Secret<String>>,
}
