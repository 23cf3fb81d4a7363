//! `TenantScope`: the only way to reach rows a tenant owns.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::entities::{api_key, audit_event, tenant};
use super::platform::insert_audit;
use super::records::{ApiKey, NewApiKey, Tenant};
use crate::audit::{AuditEvent, AuditFilter, AuditRecord};
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, TenantId};

/// A database handle bound to one tenant. Every query it runs is filtered by
/// that tenant; a row of another tenant is indistinguishable from a row that
/// does not exist.
pub struct TenantScope<'a> {
    db: &'a DatabaseConnection,
    tenant: &'a TenantId,
}

impl<'a> TenantScope<'a> {
    /// Binds `db` to `tenant`.
    pub fn new(db: &'a DatabaseConnection, tenant: &'a TenantId) -> Self {
        Self { db, tenant }
    }

    /// The tenant this scope is bound to.
    pub fn tenant_id(&self) -> &TenantId {
        self.tenant
    }

    /// The connection, for the scope's query modules (`usage`, …).
    pub(super) fn db(&self) -> &'a DatabaseConnection {
        self.db
    }

    /// The tenant itself.
    pub async fn tenant(&self) -> Result<Tenant> {
        let row = tenant::Entity::find_by_id(self.tenant.as_str())
            .one(self.db)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }

    /// All the tenant's API keys, newest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(self.tenant.as_str()))
            .order_by_desc(api_key::Column::CreatedAt)
            .order_by_desc(api_key::Column::Id)
            .all(self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(ApiKey::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    /// Number of keys that are neither revoked nor expired.
    pub async fn active_api_key_count(&self) -> Result<u64> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(self.tenant.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(
                api_key::Column::ExpiresAt
                    .is_null()
                    .or(api_key::Column::ExpiresAt.gt(Utc::now())),
            )
            .count(self.db)
            .await?)
    }

    /// Stores a new key and its audit record in one transaction.
    pub async fn create_api_key(&self, new: NewApiKey<'_>, audit: AuditEvent) -> Result<ApiKey> {
        let row = new.row(self.tenant, &audit.principal);
        let tenant = self.tenant.clone();
        let model = self
            .db
            .transaction::<_, api_key::Model, Error>(|txn| {
                Box::pin(async move {
                    let model = row.insert(txn).await?;
                    let audit = audit.in_tenant(&tenant).target(model.id.clone());
                    insert_audit(txn, audit).await?;
                    Ok(model)
                })
            })
            .await?;
        Ok(model.try_into()?)
    }

    /// Revokes a key (idempotent), recording it in the audit log. `None` if
    /// the tenant has no such key.
    pub async fn revoke_api_key(&self, id: &ApiKeyId, audit: AuditEvent) -> Result<Option<ApiKey>> {
        let tenant = self.tenant.clone();
        let id = id.clone();
        let model = self
            .db
            .transaction::<_, Option<api_key::Model>, Error>(|txn| {
                Box::pin(async move {
                    // The write first: on SQLite a transaction that reads
                    // first cannot take the write lock once another
                    // connection has written.
                    api_key::Entity::update_many()
                        .col_expr(
                            api_key::Column::RevokedAt,
                            sea_orm::sea_query::Expr::value(Some(Utc::now())),
                        )
                        .filter(api_key::Column::Id.eq(id.as_str()))
                        .filter(api_key::Column::TenantId.eq(tenant.as_str()))
                        .filter(api_key::Column::RevokedAt.is_null())
                        .exec(txn)
                        .await?;
                    let Some(row) = api_key::Entity::find_by_id(id.as_str())
                        .filter(api_key::Column::TenantId.eq(tenant.as_str()))
                        .one(txn)
                        .await?
                    else {
                        return Ok(None);
                    };
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    Ok(Some(row))
                })
            })
            .await?;
        model.map(ApiKey::try_from).transpose().map_err(Error::from)
    }

    /// The tenant's audit records, newest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut query = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.tenant.as_str()));
        if let Some(since) = filter.since {
            query = query.filter(audit_event::Column::OccurredAt.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(audit_event::Column::OccurredAt.lt(until));
        }
        if let Some(principal) = &filter.principal {
            query = query.filter(audit_event::Column::Principal.eq(principal.as_str()));
        }
        if let Some(outcome) = filter.outcome {
            query = query.filter(audit_event::Column::Outcome.eq(outcome.as_str()));
        }
        if let Some(action) = &filter.action {
            query = query.filter(audit_event::Column::Action.eq(action.as_str()));
        }
        if let Some(before) = filter.before {
            query = query.filter(audit_event::Column::Id.lt(before));
        }
        let rows = query
            .order_by_desc(audit_event::Column::Id)
            .limit(filter.limit)
            .all(self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(AuditRecord::try_from)
            .collect::<anyhow::Result<_>>()?)
    }
}
