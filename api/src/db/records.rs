//! Domain records built from rows, validating what was stored.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::entities::{api_key, audit_event, tenant};
use crate::access::{Role, Scopes};
use crate::audit::{AuditRecord, Outcome};
use crate::auth::api_key::ApiKeySecret;
use crate::email::EmailAddress;
use crate::ids::{ApiKeyId, TenantId, UserId};

/// A tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Whether the gateway keeps (sealed) the prompts and completions of
    /// its calls.
    pub record_gateway_bodies: bool,
    /// Its plan's name (see `plans`).
    pub plan: String,
}

impl TryFrom<tenant::Model> for Tenant {
    type Error = anyhow::Error;
    fn try_from(row: tenant::Model) -> anyhow::Result<Self> {
        Ok(Tenant {
            id: TenantId::parse(&row.id).context("stored tenant id is malformed")?,
            name: row.name,
            created_at: row.created_at,
            record_gateway_bodies: row.record_gateway_bodies,
            plan: row.plan,
        })
    }
}

/// An API key as listed (never with its secret).
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Its id.
    pub id: ApiKeyId,
    /// The tenant it acts in.
    pub tenant_id: TenantId,
    /// Label chosen by its creator.
    pub name: String,
    /// First characters of the secret, to tell keys apart.
    pub prefix: String,
    /// What it may be used for.
    pub scopes: Scopes,
    /// Its role in the tenant.
    pub role: Role,
    /// The principal that created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful use (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<api_key::Model> for ApiKey {
    type Error = anyhow::Error;
    fn try_from(row: api_key::Model) -> anyhow::Result<Self> {
        Ok(ApiKey {
            id: ApiKeyId::parse(&row.id).context("stored key id is malformed")?,
            tenant_id: TenantId::parse(&row.tenant_id).context("stored tenant id is malformed")?,
            name: row.name,
            prefix: row.prefix,
            scopes: Scopes::from_stored(&row.scopes).context("stored key scopes are malformed")?,
            role: row.role.parse().context("stored key role is malformed")?,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        })
    }
}

impl TryFrom<audit_event::Model> for AuditRecord {
    type Error = anyhow::Error;
    fn try_from(row: audit_event::Model) -> anyhow::Result<Self> {
        Ok(AuditRecord {
            id: row.id,
            occurred_at: row.occurred_at,
            principal: row.principal,
            action: row.action,
            outcome: Outcome::parse(&row.outcome).context("stored audit outcome is malformed")?,
            reason: row.reason,
            target: row.target,
            client_ip: row.client_ip,
            request_id: row.request_id,
        })
    }
}

/// What is needed to create an API key.
pub struct NewApiKey<'a> {
    /// Label.
    pub name: &'a str,
    /// The secret; only its hash and prefix are stored.
    pub secret: &'a ApiKeySecret,
    /// Scopes.
    pub scopes: &'a Scopes,
    /// Role.
    pub role: Role,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewApiKey<'_> {
    /// The row to insert for this key in `tenant`, created by `created_by`:
    /// only the hash and the visible prefix of the secret are stored.
    pub(super) fn row(
        &self,
        tenant: &TenantId,
        created_by: &str,
    ) -> super::entities::api_key::ActiveModel {
        use sea_orm::Set;
        super::entities::api_key::ActiveModel {
            id: Set(ApiKeyId::generate().to_string()),
            tenant_id: Set(tenant.to_string()),
            name: Set(self.name.to_owned()),
            prefix: Set(self.secret.prefix().to_owned()),
            key_hash: Set(self.secret.hash().to_hex()),
            scopes: Set(self.scopes.to_stored()),
            role: Set(self.role.as_str().to_owned()),
            created_by: Set(created_by.to_owned()),
            created_at: Set(Utc::now()),
            expires_at: Set(self.expires_at),
            last_used_at: Set(None),
            revoked_at: Set(None),
        }
    }
}

/// A tenant just created with its first owner and key.
pub struct TenantWithOwner {
    /// The tenant.
    pub tenant: Tenant,
    /// The owner's user id.
    pub owner_id: UserId,
    /// The owner's email.
    pub owner_email: EmailAddress,
    /// The owner's first key (its secret is with the caller).
    pub key: ApiKey,
}
