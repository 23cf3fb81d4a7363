//! A tenant's runs: the scheduler's queue (`carapace_scheduler::store`)
//! reached only through the tenant's scope, with an audit record for each
//! change a tenant makes.

use carapace_scheduler::store::{self, NewRun, Run, RunFilter, runs};
use sea_orm::TransactionTrait;

use super::TenantScope;
use super::platform::insert_audit;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::ids::RunId;

/// Maps the scheduler store's errors onto the API's.
pub fn store_error(e: store::Error) -> Error {
    match e {
        store::Error::Db(e) => e.into(),
        store::Error::NotFound => Error::NotFound,
        store::Error::Unauthorized(why) => Error::Unauthenticated(why),
        store::Error::Conflict(why) => Error::Conflict(why),
        store::Error::Invalid(why) => Error::Invalid {
            field: "body",
            message: why,
        },
        store::Error::Corrupt(what) => Error::Unexpected(anyhow::anyhow!("corrupt row: {what}")),
    }
}

impl TenantScope<'_> {
    /// Commits a queued run and its audit record together, unless the
    /// tenant would have more than `max_queued` runs waiting. Exact under
    /// concurrency: the tenant's row is locked first (PostgreSQL; on
    /// SQLite the insert, the first write, takes the database's write
    /// lock), then the count sees every committed run and this one.
    pub async fn enqueue_run(
        &self,
        new: NewRun,
        max_queued: u64,
        audit: AuditEvent,
    ) -> Result<Run> {
        let tenant = self.tenant_id().clone();
        self.db()
            .transaction::<_, Run, Error>(|txn| {
                Box::pin(async move {
                    lock_tenant(txn, &tenant).await?;
                    let run = runs::enqueue(txn, tenant.as_str(), new)
                        .await
                        .map_err(store_error)?;
                    let waiting = runs::queued_count(txn, tenant.as_str())
                        .await
                        .map_err(store_error)?;
                    if waiting > max_queued {
                        return Err(Error::LimitReached(format!(
                            "at most {max_queued} runs may wait in the queue per tenant"
                        )));
                    }
                    insert_audit(txn, audit.in_tenant(&tenant).target(run.id.clone())).await?;
                    Ok(run)
                })
            })
            .await
            .map_err(Error::from)
    }

    /// One of the tenant's runs.
    pub async fn run(&self, id: &RunId) -> Result<Run> {
        runs::get(self.db(), self.tenant_id().as_str(), id.as_str())
            .await
            .map_err(store_error)
    }

    /// The tenant's runs, newest first.
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        runs::list(self.db(), self.tenant_id().as_str(), filter)
            .await
            .map_err(store_error)
    }

    /// Stops the interactive run holding one of the tenant's sandboxes (the
    /// sandbox's own audit record says why).
    pub async fn stop_sandbox_run(&self, run: &str) -> Result<Run> {
        runs::cancel(self.db(), self.tenant_id().as_str(), run)
            .await
            .map_err(store_error)
    }

    /// Cancels one of the tenant's runs (see `runs::cancel`), recording it.
    pub async fn cancel_run(&self, id: &RunId, audit: AuditEvent) -> Result<Run> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        self.db()
            .transaction::<_, Run, Error>(|txn| {
                Box::pin(async move {
                    let run = runs::cancel(txn, tenant.as_str(), id.as_str())
                        .await
                        .map_err(store_error)?;
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    Ok(run)
                })
            })
            .await
            .map_err(Error::from)
    }
}

/// Locks the tenant's row until the transaction ends (PostgreSQL; SQLite
/// has one writer at a time anyway): per-tenant counts checked after it
/// cannot race another transaction of the same tenant. Taken before the
/// transaction inserts anything, and as `FOR NO KEY UPDATE`, which other
/// transactions' foreign-key checks on the row do not wait for (and which
/// cannot deadlock with the key-share lock an insert takes).
pub(super) async fn lock_tenant(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &crate::ids::TenantId,
) -> Result<()> {
    use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, QuerySelect};
    if txn.get_database_backend() == DbBackend::Postgres {
        super::entities::tenant::Entity::find_by_id(tenant.as_str())
            .lock(sea_orm::sea_query::LockType::NoKeyUpdate)
            .one(txn)
            .await?;
    }
    Ok(())
}
