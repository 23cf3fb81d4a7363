//! A tenant's sandboxes as the control plane records them: what each was
//! created with, the interactive run that holds it on a worker (placed by
//! the scheduler like any run), its state and when it was last used. The
//! container itself lives on the worker (`carapace-runtime`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};

use super::TenantScope;
use super::entities::sandbox;
use super::platform::insert_audit;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::ids::{AgentId, SandboxId, TenantId};
use carapace_scheduler::protocol::{MemorySync, RunSpec};
use carapace_scheduler::store::{NewRun, runs};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Recorded; its container is being created.
    Starting,
    /// Its container runs.
    Running,
    /// Its run ended (its worker restarted or was lost): the container is
    /// gone, the record stays until the tenant deletes it.
    Lost,
}

impl SandboxState {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Running => "running",
            SandboxState::Lost => "lost",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "starting" => SandboxState::Starting,
            "running" => SandboxState::Running,
            "lost" => SandboxState::Lost,
            other => anyhow::bail!("unknown sandbox state {other:?}"),
        })
    }
}

/// A sandbox as recorded.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Its id (also the container's name on its worker).
    pub id: SandboxId,
    /// `builtin` or an OCI image reference.
    pub image: String,
    /// Host names reachable through the egress proxy.
    pub egress_allow: Vec<String>,
    /// Its resource limits.
    pub limits: carapace_runtime::Limits,
    /// Its state.
    pub state: SandboxState,
    /// The worker it runs on (empty until it runs).
    pub worker: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last exec or file transfer.
    pub last_used_at: DateTime<Utc>,
    /// The interactive run that holds it (none for a record made before
    /// sandboxes went through the scheduler).
    pub run_id: Option<String>,
    /// The agent it keeps warm, if it is an agent's sandbox.
    pub agent_id: Option<AgentId>,
    /// Its own idle timeout in seconds (else the server's).
    pub idle_timeout_s: Option<u32>,
}

/// What a new sandbox is created with.
#[derive(Debug, Clone)]
pub struct NewSandbox {
    /// Image.
    pub image: String,
    /// Egress allow-list.
    pub egress_allow: Vec<String>,
    /// Limits (already within bounds).
    pub limits: carapace_runtime::Limits,
    /// The agent this sandbox keeps warm, whose memory it works on.
    pub agent: Option<(AgentId, MemorySync)>,
    /// Its own idle timeout (else the server's).
    pub idle_timeout_s: Option<u32>,
}

impl TryFrom<sandbox::Model> for Sandbox {
    type Error = anyhow::Error;
    fn try_from(row: sandbox::Model) -> anyhow::Result<Self> {
        Ok(Sandbox {
            id: SandboxId::parse(&row.id)?,
            image: row.image,
            egress_allow: serde_json::from_str(&row.egress_allow)?,
            limits: serde_json::from_str(&row.limits)?,
            state: SandboxState::parse(&row.state)?,
            worker: row.worker,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            run_id: row.run_id,
            agent_id: row.agent_id.as_deref().map(AgentId::parse).transpose()?,
            idle_timeout_s: row.idle_timeout_s.and_then(|t| u32::try_from(t).ok()),
        })
    }
}

impl TenantScope<'_> {
    /// The tenant's sandboxes, newest first.
    pub async fn sandboxes(&self) -> Result<Vec<Sandbox>> {
        let rows = sandbox::Entity::find()
            .filter(sandbox::Column::TenantId.eq(self.tenant_id().as_str()))
            .order_by_desc(sandbox::Column::CreatedAt)
            .order_by_desc(sandbox::Column::Id)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(Sandbox::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    /// One sandbox; `NotFound` for an id of another tenant.
    pub async fn sandbox(&self, id: &SandboxId) -> Result<Sandbox> {
        let row = sandbox::Entity::find_by_id(id.as_str())
            .filter(sandbox::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }

    /// Records a new sandbox (state `starting`) and queues its interactive
    /// run, in one transaction, if the tenant has fewer than `max`
    /// sandboxes (lost ones included). Its audit record is written once it
    /// has started ([`TenantScope::sandbox_started`]) or failed.
    pub async fn create_sandbox(&self, new: NewSandbox, max: u64) -> Result<Sandbox> {
        let tenant = self.tenant_id().clone();
        let now = Utc::now();
        let egress = serde_json::to_string(&new.egress_allow).map_err(anyhow::Error::from)?;
        let limits = serde_json::to_string(&new.limits).map_err(anyhow::Error::from)?;
        let row = self
            .db()
            .transaction::<_, sandbox::Model, Error>(|txn| {
                Box::pin(async move {
                    // The tenant's row first: concurrent creations cannot
                    // both pass the quota below.
                    super::runs::lock_tenant(txn, &tenant).await?;
                    let spec = RunSpec {
                        image: new.image.clone(),
                        command: Vec::new(),
                        env: Vec::new(),
                        timeout_s: 0,
                        limits: new.limits,
                        egress_allow: new.egress_allow,
                        interactive: true,
                        memory: new.agent.as_ref().map(|(_, sync)| sync.clone()),
                    };
                    // Placed once: a sandbox whose worker is lost is lost.
                    // The write comes first: on SQLite it takes the write
                    // lock before anything is read (a read first could not
                    // be upgraded once another connection has written).
                    let run = runs::enqueue(
                        txn,
                        tenant.as_str(),
                        NewRun {
                            spec,
                            max_attempts: 1,
                        },
                    )
                    .await
                    .map_err(super::store_error)?;
                    // Lost records count too (they hold nothing on a worker,
                    // but the tenant's records stay bounded); the idle
                    // timeout removes them.
                    let count = sandbox::Entity::find()
                        .filter(sandbox::Column::TenantId.eq(tenant.as_str()))
                        .count(txn)
                        .await?;
                    if count >= max {
                        return Err(Error::LimitReached(format!(
                            "a tenant may have at most {max} sandboxes at once"
                        )));
                    }
                    let row = sandbox::ActiveModel {
                        id: Set(SandboxId::generate().to_string()),
                        tenant_id: Set(tenant.to_string()),
                        image: Set(new.image),
                        egress_allow: Set(egress),
                        limits: Set(limits),
                        state: Set(SandboxState::Starting.as_str().to_owned()),
                        worker: Set(String::new()),
                        created_at: Set(now),
                        last_used_at: Set(now),
                        run_id: Set(Some(run.id)),
                        agent_id: Set(new.agent.map(|(agent, _)| agent.to_string())),
                        idle_timeout_s: Set(new.idle_timeout_s.map(i64::from)),
                    }
                    .insert(txn)
                    .await?;
                    Ok(row)
                })
            })
            .await?;
        Ok(row.try_into()?)
    }

    /// Records that a sandbox runs on `worker`, with its audit record.
    pub async fn sandbox_started(
        &self,
        id: &SandboxId,
        worker: &str,
        audit: AuditEvent,
    ) -> Result<()> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        let worker = worker.to_owned();
        self.db()
            .transaction::<_, (), Error>(|txn| {
                Box::pin(async move {
                    sandbox::Entity::update_many()
                        .col_expr(
                            sandbox::Column::State,
                            sea_orm::sea_query::Expr::value(SandboxState::Running.as_str()),
                        )
                        .col_expr(
                            sandbox::Column::Worker,
                            sea_orm::sea_query::Expr::value(worker),
                        )
                        .filter(sandbox::Column::Id.eq(id.as_str()))
                        .filter(sandbox::Column::TenantId.eq(tenant.as_str()))
                        .exec(txn)
                        .await?;
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    /// Sets a sandbox's state.
    pub async fn set_sandbox_state(&self, id: &SandboxId, state: SandboxState) -> Result<()> {
        sandbox::Entity::update_many()
            .col_expr(
                sandbox::Column::State,
                sea_orm::sea_query::Expr::value(state.as_str()),
            )
            .filter(sandbox::Column::Id.eq(id.as_str()))
            .filter(sandbox::Column::TenantId.eq(self.tenant_id().as_str()))
            .exec(self.db())
            .await?;
        Ok(())
    }

    /// Notes that a sandbox was used now (for its idle timeout).
    pub async fn touch_sandbox(&self, id: &SandboxId) -> Result<()> {
        sandbox::Entity::update_many()
            .col_expr(
                sandbox::Column::LastUsedAt,
                sea_orm::sea_query::Expr::value(Utc::now()),
            )
            .filter(sandbox::Column::Id.eq(id.as_str()))
            .filter(sandbox::Column::TenantId.eq(self.tenant_id().as_str()))
            .exec(self.db())
            .await?;
        Ok(())
    }

    /// Removes a sandbox's record (with its audit record, if given);
    /// `false` if the tenant has no such sandbox.
    pub async fn delete_sandbox(&self, id: &SandboxId, audit: Option<AuditEvent>) -> Result<bool> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        Ok(self
            .db()
            .transaction::<_, bool, Error>(|txn| {
                Box::pin(async move {
                    let deleted = sandbox::Entity::delete_many()
                        .filter(sandbox::Column::Id.eq(id.as_str()))
                        .filter(sandbox::Column::TenantId.eq(tenant.as_str()))
                        .exec(txn)
                        .await?
                        .rows_affected;
                    if deleted > 0
                        && let Some(audit) = audit
                    {
                        insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    }
                    Ok(deleted > 0)
                })
            })
            .await?)
    }
}

/// Sandboxes (lost ones included) idle for longer than their idle
/// timeout (their own, else `default_idle`), across tenants (for the idle
/// timeout): `(tenant, id, run)`.
pub async fn idle_sandboxes(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    default_idle: chrono::Duration,
) -> Result<Vec<(TenantId, SandboxId, Option<String>)>> {
    use sea_orm::Condition;
    let rows = sandbox::Entity::find()
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(sandbox::Column::IdleTimeoutS.is_null())
                        .add(sandbox::Column::LastUsedAt.lt(now - default_idle)),
                )
                // Agents' sandboxes have their own timeouts (at least a
                // second): sorted out below.
                .add(
                    Condition::all()
                        .add(sandbox::Column::IdleTimeoutS.is_not_null())
                        .add(sandbox::Column::LastUsedAt.lt(now - chrono::Duration::seconds(1))),
                ),
        )
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| match r.idle_timeout_s {
            Some(secs) => r.last_used_at < now - chrono::Duration::seconds(secs),
            None => true,
        })
        .map(|r| {
            Ok((
                TenantId::parse(&r.tenant_id)?,
                SandboxId::parse(&r.id)?,
                r.run_id,
            ))
        })
        .collect::<anyhow::Result<_>>()?)
}

/// Notes that the sandboxes of these runs are in use now (for their idle
/// timeout), across tenants.
pub async fn touch_sandboxes_of_runs(db: &DatabaseConnection, runs: &[String]) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    sandbox::Entity::update_many()
        .col_expr(
            sandbox::Column::LastUsedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(sandbox::Column::RunId.is_in(runs.iter().map(String::as_str)))
        .exec(db)
        .await?;
    Ok(())
}

/// Records as lost every running sandbox whose run has ended (its worker
/// restarted or was lost, or the run was stopped); returns how many.
pub async fn mark_ended_sandboxes_lost(db: &DatabaseConnection) -> Result<u64> {
    // Constant text, the same on SQLite and PostgreSQL.
    let sql = "UPDATE sandboxes SET state = 'lost' WHERE state = 'running' AND \
               (run_id IS NULL OR run_id IN (SELECT id FROM runs WHERE state IN \
               ('succeeded', 'failed', 'cancelled', 'lost')))";
    use sea_orm::ConnectionTrait;
    Ok(db.execute_unprepared(sql).await?.rows_affected())
}
