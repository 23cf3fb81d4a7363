//! Operations that are not inside one tenant: creating tenants, resolving an
//! API key to its tenant, and appending audit records.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    Set, TransactionTrait,
};

use super::entities::{api_key, audit_event, membership, tenant, user};
use super::records::{ApiKey, NewApiKey, Tenant, TenantWithOwner};
use crate::access::Role;
use crate::audit::AuditEvent;
use crate::auth::api_key::KeyHash;
use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, TenantId, UserId};

/// Longest stored free-text audit field; longer values are cut.
const AUDIT_TEXT_MAX: usize = 500;

/// Appends one audit record on any connection or transaction.
pub(super) async fn insert_audit<C: ConnectionTrait>(db: &C, event: AuditEvent) -> Result<()> {
    audit_event::ActiveModel {
        tenant_id: Set(event.tenant.map(|t| t.to_string())),
        occurred_at: Set(Utc::now()),
        principal: Set(cut(event.principal, 100)),
        action: Set(event.action.to_owned()),
        outcome: Set(event.outcome.as_str().to_owned()),
        reason: Set(event.reason.map(|r| cut(r, AUDIT_TEXT_MAX))),
        target: Set(event.target.map(|t| cut(t, 200))),
        client_ip: Set(event.client_ip.map(|c| cut(c, 64))),
        request_id: Set(event.request_id.map(|r| cut(r, 64))),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Appends one audit record on its own.
pub async fn record_audit(db: &DatabaseConnection, event: AuditEvent) -> Result<()> {
    insert_audit(db, event).await
}

/// Creates a tenant, its owner (reusing the user if the email is known), the
/// owner's membership and first API key, and the audit record, atomically.
pub async fn create_tenant_with_owner(
    db: &DatabaseConnection,
    name: &str,
    owner: &EmailAddress,
    key: NewApiKey<'_>,
    audit: AuditEvent,
) -> Result<TenantWithOwner> {
    let now = Utc::now();
    let tenant_id = TenantId::generate();
    let key_row = key.row(&tenant_id, &audit.principal);
    let name = name.to_owned();
    let email = owner.clone();
    let (tenant_row, user_id, key_row) = db
        .transaction::<_, _, Error>(|txn| {
            Box::pin(async move {
                // A write first: under SQLite's WAL a transaction that
                // reads before its first write fails (SQLITE_BUSY_SNAPSHOT)
                // if another connection wrote in between; one that starts
                // by writing waits for the lock instead.
                let tenant_row = insert_tenant(txn, &tenant_id, &name, now).await?;
                let existing = user::Entity::find()
                    .filter(user::Column::Email.eq(email.as_str()))
                    .one(txn)
                    .await?;
                let user_id = match existing {
                    Some(row) => row.id,
                    None => insert_user(txn, &email, now).await?,
                };
                insert_owner(txn, &tenant_id, &user_id, now).await?;
                let key_row = key_row.insert(txn).await?;
                let audit = audit
                    .in_tenant(&tenant_id)
                    .target(tenant_id.to_string())
                    .reason(format!("owner {email}"));
                insert_audit(txn, audit).await?;
                Ok((tenant_row, user_id, key_row))
            })
        })
        .await?;
    Ok(TenantWithOwner {
        tenant: Tenant::try_from(tenant_row)?,
        owner_id: UserId::parse(&user_id).map_err(anyhow::Error::from)?,
        owner_email: owner.clone(),
        key: ApiKey::try_from(key_row)?,
    })
}

/// Inserts a person with this address; their id.
pub(super) async fn insert_user<C: ConnectionTrait>(
    txn: &C,
    email: &EmailAddress,
    now: DateTime<Utc>,
) -> Result<String> {
    Ok(user::ActiveModel {
        id: Set(UserId::generate().to_string()),
        email: Set(email.as_str().to_owned()),
        display_name: Set(None),
        created_at: Set(now),
    }
    .insert(txn)
    .await?
    .id)
}

/// Inserts a tenant on the default plan (its owner: `insert_owner`).
pub(super) async fn insert_tenant<C: ConnectionTrait>(
    txn: &C,
    tenant_id: &TenantId,
    name: &str,
    now: DateTime<Utc>,
) -> Result<tenant::Model> {
    Ok(tenant::ActiveModel {
        id: Set(tenant_id.to_string()),
        name: Set(name.to_owned()),
        created_at: Set(now),
        record_gateway_bodies: Set(false),
        plan: Set(crate::plans::DEFAULT.to_owned()),
    }
    .insert(txn)
    .await?)
}

/// Makes `owner` the owner of a tenant just inserted.
pub(super) async fn insert_owner<C: ConnectionTrait>(
    txn: &C,
    tenant_id: &TenantId,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    membership::ActiveModel {
        tenant_id: Set(tenant_id.to_string()),
        user_id: Set(owner.to_owned()),
        role: Set(Role::Owner.as_str().to_owned()),
        created_at: Set(now),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// Finds the key with this hash, whatever its state; the caller decides
/// whether it may be used.
pub async fn find_api_key_by_hash(
    db: &DatabaseConnection,
    hash: KeyHash,
) -> Result<Option<ApiKey>> {
    let row = api_key::Entity::find()
        .filter(api_key::Column::KeyHash.eq(hash.to_hex()))
        .one(db)
        .await?;
    Ok(row.map(ApiKey::try_from).transpose()?)
}

/// Records when a key was last used.
pub async fn touch_api_key(
    db: &DatabaseConnection,
    id: &ApiKeyId,
    now: DateTime<Utc>,
) -> Result<()> {
    api_key::Entity::update_many()
        .col_expr(
            api_key::Column::LastUsedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(api_key::Column::Id.eq(id.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// Every tenant's id, for operator-wide maintenance (key rotation).
pub async fn tenant_ids(db: &DatabaseConnection) -> Result<Vec<TenantId>> {
    let rows = tenant::Entity::find().all(db).await?;
    rows.into_iter()
        .map(|row| TenantId::parse(&row.id).map_err(|e| anyhow::Error::from(e).into()))
        .collect()
}

/// How many tenant data keys each wrapping key holds, by wrapper id.
pub async fn data_key_wrappers(db: &DatabaseConnection) -> Result<Vec<(String, u64)>> {
    use sea_orm::{FromQueryResult, QuerySelect};
    #[derive(FromQueryResult)]
    struct Row {
        wrapped_by: String,
        keys: i64,
    }
    let rows = super::entities::tenant_key::Entity::find()
        .select_only()
        .column(super::entities::tenant_key::Column::WrappedBy)
        .column_as(
            super::entities::tenant_key::Column::TenantId.count(),
            "keys",
        )
        .group_by(super::entities::tenant_key::Column::WrappedBy)
        .into_model::<Row>()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.wrapped_by, u64::try_from(r.keys).unwrap_or(0)))
        .collect())
}

/// Deletes a tenant's rows (keys, memberships, providers and agents go
/// with it) and records it; the audit log keeps the tenant's records.
pub async fn delete_tenant(
    db: &DatabaseConnection,
    tenant: &TenantId,
    audit: AuditEvent,
) -> Result<bool> {
    let tenant = tenant.clone();
    Ok(db
        .transaction::<_, bool, Error>(|txn| {
            Box::pin(async move {
                let deleted = tenant::Entity::delete_by_id(tenant.as_str())
                    .exec(txn)
                    .await?
                    .rows_affected;
                if deleted == 0 {
                    return Ok(false);
                }
                insert_audit(txn, audit.in_tenant(&tenant).target(tenant.to_string())).await?;
                Ok(true)
            })
        })
        .await?)
}
