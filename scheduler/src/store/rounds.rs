//! One placement round in the database: lock the round counter, read what
//! is queued and what the workers have free, decide with
//! [`crate::placement::plan`], and move each chosen run from `queued` to
//! `placed` with a new fencing epoch — all in one transaction.

use std::collections::HashMap;

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    Statement, TransactionTrait,
};

use super::entities::{round, run, worker};
use super::{ACTIVE, Error, Result};
use crate::placement::{Candidate, WorkerView, plan};
use crate::protocol::{Lease, Resources, RunSpec};
use crate::run_state::RunState;

/// Most queued runs one round considers per tenant, and in all.
const PER_TENANT: u64 = 1000;
const PER_ROUND: u64 = 10_000;

/// A run this round placed.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The worker it goes to.
    pub worker: String,
    /// Its new lease.
    pub lease: Lease,
    /// What to run.
    pub spec: RunSpec,
    /// Its tenant.
    pub tenant: String,
    /// The placement's run token (only its digest is stored).
    pub token: crate::protocol::RunToken,
}

/// Places what it can of the queue onto `workers` (the workers connected to
/// this control-plane replica; others place onto theirs). Returns the
/// round's number and what it placed; nothing, without taking the lock,
/// when there is nothing queued or no worker.
pub async fn place_round(
    db: &DatabaseConnection,
    workers: &[String],
    max_active_per_tenant: u64,
) -> Result<(i64, Vec<Placed>)> {
    if workers.is_empty() {
        return Ok((0, Vec::new()));
    }
    let queued = run::Entity::find()
        .select_only()
        .column(run::Column::Id)
        .filter(run::Column::State.eq(RunState::Queued.as_str()))
        .limit(1)
        .into_tuple::<String>()
        .one(db)
        .await?;
    if queued.is_none() {
        return Ok((0, Vec::new()));
    }
    let txn = db.begin().await?;
    // The round counter's row lock serialises rounds across replicas (and,
    // on SQLite, takes the write lock before anything is read).
    round::Entity::update_many()
        .col_expr(round::Column::Round, Expr::col(round::Column::Round).add(1))
        .filter(round::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    let number = round::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .map(|r| r.round)
        .ok_or_else(|| Error::Corrupt("the placement round counter is missing".into()))?;

    let mut views = free_workers(&txn, workers).await?;
    let free_slots: u64 = views
        .iter()
        .fold(0u64, |sum, w| sum.saturating_add(w.free.slots));
    if free_slots == 0 {
        txn.commit().await?;
        return Ok((number, Vec::new()));
    }
    let active = active_per_tenant(&txn).await?;
    let candidates = queued_candidates(&txn, free_slots.min(PER_TENANT)).await?;
    let mut by_id: HashMap<String, QueuedRow> = HashMap::with_capacity(candidates.len());
    let mut queue = Vec::with_capacity(candidates.len());
    for row in candidates {
        queue.push(Candidate {
            run: row.id.clone(),
            tenant: row.tenant.clone(),
            need: Resources {
                cpu_millis: u64::try_from(row.cpu_millis).unwrap_or(u64::MAX),
                memory_mib: u64::try_from(row.memory_mib).unwrap_or(u64::MAX),
                slots: 1,
            },
            image: row.image.clone(),
        });
        by_id.insert(row.id.clone(), row);
    }
    let assignments = plan(queue, &mut views, &active, max_active_per_tenant);

    let now = Utc::now();
    let mut placed = Vec::with_capacity(assignments.len());
    for assignment in assignments {
        let Some(row) = by_id.remove(&assignment.run) else {
            continue;
        };
        let (token, digest) = super::runs::new_token(&row.id)?;
        let moved = run::Entity::update_many()
            .col_expr(run::Column::TokenHash, Expr::value(digest))
            .col_expr(run::Column::State, Expr::value(RunState::Placed.as_str()))
            .col_expr(
                run::Column::WorkerId,
                Expr::value(assignment.worker.as_str()),
            )
            .col_expr(run::Column::Epoch, Expr::value(row.epoch + 1))
            .col_expr(
                run::Column::Attempts,
                Expr::col(run::Column::Attempts).add(1),
            )
            .col_expr(run::Column::PlacedRound, Expr::value(number))
            .col_expr(run::Column::PlacedAt, Expr::value(now))
            .col_expr(run::Column::UpdatedAt, Expr::value(now))
            .filter(run::Column::Id.eq(row.id.as_str()))
            .filter(run::Column::State.eq(RunState::Queued.as_str()))
            .filter(run::Column::Epoch.eq(row.epoch))
            .exec(&txn)
            .await?;
        if moved.rows_affected != 1 {
            continue;
        }
        let spec = serde_json::from_str(&row.spec)
            .map_err(|_| Error::Corrupt(format!("run {}: spec", row.id)))?;
        placed.push(Placed {
            worker: assignment.worker,
            lease: Lease {
                run: row.id,
                epoch: row.epoch + 1,
            },
            spec,
            tenant: row.tenant,
            token,
        });
    }
    txn.commit().await?;
    Ok((number, placed))
}

/// The active (not draining, not lost) workers among `ids`, with what they
/// have free: capacity minus the runs placed, starting or running there.
async fn free_workers(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<WorkerView>> {
    let rows = worker::Entity::find()
        .filter(worker::Column::Id.is_in(ids.iter().map(String::as_str)))
        .filter(worker::Column::State.eq("active"))
        .all(db)
        .await?;
    let taken = super::workers::used_by_worker(db, Some(ids)).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let capacity = Resources {
                cpu_millis: u64::try_from(row.cpu_millis).unwrap_or(0),
                memory_mib: u64::try_from(row.memory_mib).unwrap_or(0),
                slots: u64::try_from(row.slots).unwrap_or(0),
            };
            let used = taken.get(&row.id).copied().unwrap_or_default();
            WorkerView {
                free: capacity.minus(&used),
                images: serde_json::from_str(&row.images).unwrap_or_default(),
                id: row.id,
            }
        })
        .collect())
}

/// Each tenant's runs placed, starting or running, on any worker.
async fn active_per_tenant(db: &impl ConnectionTrait) -> Result<HashMap<String, u64>> {
    let rows: Vec<(String, i64)> = run::Entity::find()
        .select_only()
        .column(run::Column::TenantId)
        .column_as(run::Column::Id.count(), "n")
        .filter(run::Column::State.is_in(ACTIVE))
        .group_by(run::Column::TenantId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, n)| (tenant, u64::try_from(n).unwrap_or(0)))
        .collect())
}

struct QueuedRow {
    id: String,
    tenant: String,
    spec: String,
    image: String,
    cpu_millis: i64,
    memory_mib: i64,
    epoch: i64,
}

/// The oldest queued runs of every tenant, at most `per_tenant` each, in
/// queue order.
async fn queued_candidates(db: &impl ConnectionTrait, per_tenant: u64) -> Result<Vec<QueuedRow>> {
    // The numbers are ours, not input: no parameters needed, and the same
    // text runs on SQLite and PostgreSQL.
    let sql = format!(
        "SELECT id, tenant_id, spec, image, cpu_millis, memory_mib, epoch FROM (\
           SELECT id, tenant_id, spec, image, cpu_millis, memory_mib, epoch, created_at, \
             ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS rn \
           FROM runs WHERE state = 'queued'\
         ) q WHERE rn <= {per_tenant} ORDER BY created_at, id LIMIT {PER_ROUND}"
    );
    let rows = db
        .query_all(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(QueuedRow {
                id: row.try_get("", "id")?,
                tenant: row.try_get("", "tenant_id")?,
                spec: row.try_get("", "spec")?,
                image: row.try_get("", "image")?,
                cpu_millis: row.try_get("", "cpu_millis")?,
                memory_mib: row.try_get("", "memory_mib")?,
                epoch: row.try_get("", "epoch")?,
            })
        })
        .collect()
}
