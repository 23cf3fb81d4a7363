//! A tenant's data key and its own model providers. Provider keys are
//! stored sealed with the tenant's data key; this module stores and returns
//! ciphertext and never sees a provider key in clear.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};

use super::TenantScope;
use super::entities::{tenant_key, tenant_provider};
use super::platform::insert_audit;
use crate::audit::AuditEvent;
use crate::crypto::{DataKey, KeyWrapper};
use crate::error::{Error, Result};

/// A tenant's provider as stored.
#[derive(Debug, Clone)]
pub struct StoredProvider {
    /// Name, unique in the tenant.
    pub name: String,
    /// `openai`, `anthropic` or `openai_compatible`.
    pub kind: String,
    /// Base URL, if not the kind's default.
    pub base_url: Option<String>,
    /// Models it serves.
    pub models: Vec<String>,
    /// The API key, sealed with the tenant's data key.
    pub sealed_api_key: Vec<u8>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<tenant_provider::Model> for StoredProvider {
    type Error = anyhow::Error;
    fn try_from(row: tenant_provider::Model) -> anyhow::Result<Self> {
        Ok(StoredProvider {
            name: row.name,
            kind: row.kind,
            base_url: row.base_url,
            models: serde_json::from_str(&row.models)?,
            sealed_api_key: STANDARD.decode(row.sealed_api_key)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

impl TenantScope<'_> {
    fn key_context(&self) -> String {
        format!("carapace:tenant-data-key:v1:{}", self.tenant_id())
    }

    /// The tenant's data key, created (and stored wrapped) on first use.
    /// Two replicas creating it at once agree on the one that was stored.
    pub async fn data_key(&self, wrapper: &dyn KeyWrapper) -> Result<DataKey> {
        if let Some(key) = self.stored_data_key(wrapper).await? {
            return Ok(key);
        }
        let key = DataKey::generate()?;
        let wrapped = wrapper.wrap(&key, &self.key_context())?;
        tenant_key::Entity::insert(tenant_key::ActiveModel {
            tenant_id: Set(self.tenant_id().to_string()),
            wrapped_key: Set(STANDARD.encode(wrapped)),
            wrapped_by: Set(wrapper.id()),
            created_at: Set(Utc::now()),
        })
        .on_conflict(
            OnConflict::column(tenant_key::Column::TenantId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(self.db())
        .await?;
        self.stored_data_key(wrapper)
            .await?
            .ok_or_else(|| anyhow::anyhow!("tenant data key vanished after it was stored").into())
    }

    async fn stored_data_key(&self, wrapper: &dyn KeyWrapper) -> Result<Option<DataKey>> {
        let Some(row) = tenant_key::Entity::find_by_id(self.tenant_id().as_str())
            .one(self.db())
            .await?
        else {
            return Ok(None);
        };
        let wrapped = STANDARD
            .decode(&row.wrapped_key)
            .map_err(|e| anyhow::anyhow!("stored tenant data key is not base64: {e}"))?;
        let key = wrapper.unwrap(&wrapped, &self.key_context()).map_err(|_| {
            anyhow::anyhow!(
                "tenant data key does not unwrap with {} (stored by {})",
                wrapper.id(),
                row.wrapped_by
            )
        })?;
        Ok(Some(key))
    }

    /// Re-wraps the tenant's data key from `old` to `new` without touching
    /// anything it encrypts. `false` if the tenant has no data key yet or it
    /// is already wrapped by `new` (so a rotation can be resumed).
    pub async fn rewrap_data_key(
        &self,
        old: &dyn KeyWrapper,
        new: &dyn KeyWrapper,
    ) -> Result<bool> {
        let Some(row) = tenant_key::Entity::find_by_id(self.tenant_id().as_str())
            .one(self.db())
            .await?
        else {
            return Ok(false);
        };
        if row.wrapped_by == new.id() {
            return Ok(false);
        }
        let wrapped = STANDARD
            .decode(&row.wrapped_key)
            .map_err(|e| anyhow::anyhow!("stored tenant data key is not base64: {e}"))?;
        let key = old.unwrap(&wrapped, &self.key_context()).map_err(|_| {
            anyhow::anyhow!(
                "tenant {} data key does not unwrap with {}",
                self.tenant_id(),
                old.id()
            )
        })?;
        let rewrapped = new.wrap(&key, &self.key_context())?;
        // Only if nobody changed the row meanwhile.
        let result = tenant_key::Entity::update_many()
            .col_expr(
                tenant_key::Column::WrappedKey,
                sea_orm::sea_query::Expr::value(STANDARD.encode(rewrapped)),
            )
            .col_expr(
                tenant_key::Column::WrappedBy,
                sea_orm::sea_query::Expr::value(new.id()),
            )
            .filter(tenant_key::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(tenant_key::Column::WrappedKey.eq(row.wrapped_key))
            .exec(self.db())
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Destroys the tenant's data key (crypto-shredding): everything it
    /// sealed is unreadable from then on, wherever copies of it remain.
    pub async fn destroy_data_key(&self) -> Result<bool> {
        let result = tenant_key::Entity::delete_many()
            .filter(tenant_key::Column::TenantId.eq(self.tenant_id().as_str()))
            .exec(self.db())
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// The tenant's providers, by name.
    pub async fn providers(&self) -> Result<Vec<StoredProvider>> {
        let rows = tenant_provider::Entity::find()
            .filter(tenant_provider::Column::TenantId.eq(self.tenant_id().as_str()))
            .order_by_asc(tenant_provider::Column::Name)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(StoredProvider::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    /// Creates or replaces a provider, with its audit record, atomically.
    pub async fn put_provider(
        &self,
        provider: StoredProvider,
        audit: AuditEvent,
    ) -> Result<StoredProvider> {
        let tenant = self.tenant_id().clone();
        let models = serde_json::to_string(&provider.models).map_err(anyhow::Error::from)?;
        let row = self
            .db()
            .transaction::<_, tenant_provider::Model, Error>(|txn| {
                Box::pin(async move {
                    // The write first (see `revoke_api_key`).
                    insert_audit(
                        txn,
                        audit
                            .in_tenant(&tenant)
                            .target(format!("provider:{}", provider.name)),
                    )
                    .await?;
                    let existing = tenant_provider::Entity::find_by_id((
                        tenant.to_string(),
                        provider.name.clone(),
                    ))
                    .one(txn)
                    .await?;
                    let now = Utc::now();
                    let mut active = tenant_provider::ActiveModel {
                        tenant_id: Set(tenant.to_string()),
                        name: Set(provider.name.clone()),
                        kind: Set(provider.kind),
                        base_url: Set(provider.base_url),
                        models: Set(models),
                        sealed_api_key: Set(STANDARD.encode(&provider.sealed_api_key)),
                        created_at: Set(now),
                        updated_at: Set(now),
                    };
                    let row = match existing {
                        Some(old) => {
                            active.created_at = Set(old.created_at);
                            active.update(txn).await?
                        }
                        None => active.insert(txn).await?,
                    };
                    Ok(row)
                })
            })
            .await?;
        Ok(row.try_into()?)
    }

    /// Deletes a provider; `false` if the tenant has none by that name.
    pub async fn delete_provider(&self, name: &str, audit: AuditEvent) -> Result<bool> {
        let tenant = self.tenant_id().clone();
        let name = name.to_owned();
        Ok(self
            .db()
            .transaction::<_, bool, Error>(|txn| {
                Box::pin(async move {
                    let result = tenant_provider::Entity::delete_many()
                        .filter(tenant_provider::Column::TenantId.eq(tenant.as_str()))
                        .filter(tenant_provider::Column::Name.eq(name.as_str()))
                        .exec(txn)
                        .await?;
                    if result.rows_affected == 0 {
                        return Ok(false);
                    }
                    insert_audit(
                        txn,
                        audit.in_tenant(&tenant).target(format!("provider:{name}")),
                    )
                    .await?;
                    Ok(true)
                })
            })
            .await?)
    }
}
