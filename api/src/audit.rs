//! The audit log's vocabulary: who did what to which resource, from where,
//! and whether it was allowed. Records are written by `db` (in the same
//! transaction as the change they describe, where there is one) and are
//! append-only in the database itself.

use chrono::{DateTime, Utc};

use crate::ids::TenantId;

/// Whether the audited action happened.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed and done.
    Success,
    /// Refused by authentication or authorisation.
    Denied,
    /// Allowed, but it could not be done (e.g. a sandbox that failed to
    /// start).
    Failed,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Outcome::Success),
            "denied" => Some(Outcome::Denied),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// Who acts, and from where: carried from authentication to every record
/// the request writes.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `api_key:key_…`, `user:usr_…`, `cli`, or `anonymous`.
    pub principal: String,
    /// The client's address as the server saw it.
    pub client_ip: Option<String>,
    /// The request's id (also in the `X-Request-Id` header).
    pub request_id: Option<String>,
}

impl Actor {
    /// The operator at the command line.
    pub fn cli() -> Self {
        Actor {
            principal: "cli".to_owned(),
            client_ip: None,
            request_id: None,
        }
    }

    /// A record of `action` by this actor.
    pub fn event(&self, action: &'static str, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            tenant: None,
            principal: self.principal.clone(),
            action,
            outcome,
            reason: None,
            target: None,
            client_ip: self.client_ip.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// The tenant it belongs to; `None` for platform records (e.g. a key
    /// nobody knows).
    pub tenant: Option<TenantId>,
    /// Who acted.
    pub principal: String,
    /// What was attempted, e.g. `api_key.create`.
    pub action: &'static str,
    /// Allowed or refused.
    pub outcome: Outcome,
    /// Why, when refused.
    pub reason: Option<String>,
    /// The resource acted on.
    pub target: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// Sets the tenant.
    pub fn in_tenant(mut self, tenant: &TenantId) -> Self {
        self.tenant = Some(tenant.clone());
        self
    }

    /// Sets the target resource.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// A stored record, as read back.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Position in the log; increases with time.
    pub id: i64,
    /// When it was written.
    pub occurred_at: DateTime<Utc>,
    /// Who acted.
    pub principal: String,
    /// What was attempted.
    pub action: String,
    /// Allowed or refused.
    pub outcome: Outcome,
    /// Why, when refused.
    pub reason: Option<String>,
    /// The resource acted on.
    pub target: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
}

/// Which records to read: newest first, `before` an id for paging.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only records by this principal.
    pub principal: Option<String>,
    /// Only records with this outcome.
    pub outcome: Option<Outcome>,
    /// Only records of this action.
    pub action: Option<String>,
    /// Only records older than this id (the previous page's last id).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u64,
}
