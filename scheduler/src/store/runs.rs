//! Runs as their tenant sees them: enqueue, read, list, cancel, and the
//! recovery of runs whose worker was lost.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use super::entities::run;
use super::{ACTIVE, Error, Result, new_id};
use crate::protocol::{Lease, RunSpec, RunToken};
use crate::run_state::RunState;

/// Most attempts a run may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// The largest run spec (as JSON): it must fit in one protocol message
/// with room to spare.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// `run_…`.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// What it runs.
    pub spec: RunSpec,
    /// Where it is.
    pub state: RunState,
    /// Why it is in its state (failures, losses, cancellation).
    pub reason: Option<String>,
    /// Placements so far.
    pub attempts: u32,
    /// Placements allowed (a lost run is requeued while attempts remain).
    pub max_attempts: u32,
    /// The fencing epoch of its current or last placement.
    pub epoch: i64,
    /// The worker of its current or last placement.
    pub worker: Option<String>,
    /// The placement round that placed it last.
    pub placed_round: Option<i64>,
    /// The command's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// The command's standard output (capped).
    pub stdout: Option<String>,
    /// The command's standard error (capped).
    pub stderr: Option<String>,
    /// When a cancellation was asked for.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Accepted (committed) at.
    pub created_at: DateTime<Utc>,
    /// Last placed at.
    pub placed_at: Option<DateTime<Utc>>,
    /// Last reported starting at.
    pub starting_at: Option<DateTime<Utc>>,
    /// Last reported running at.
    pub running_at: Option<DateTime<Utc>>,
    /// Reached a terminal state at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last declared lost at.
    pub lost_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The lease of its current placement, if it has one.
    pub fn lease(&self) -> Option<(String, Lease)> {
        let worker = self.worker.clone()?;
        ACTIVE.contains(&self.state.as_str()).then(|| {
            (
                worker,
                Lease {
                    run: self.id.clone(),
                    epoch: self.epoch,
                },
            )
        })
    }
}

impl TryFrom<run::Model> for Run {
    type Error = Error;
    fn try_from(row: run::Model) -> Result<Self> {
        let corrupt = |what: &str| Error::Corrupt(format!("run {}: {what}", row.id));
        Ok(Run {
            spec: serde_json::from_str(&row.spec).map_err(|_| corrupt("spec"))?,
            state: row.state.parse().map_err(|_| corrupt("state"))?,
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
            max_attempts: u32::try_from(row.max_attempts).map_err(|_| corrupt("max_attempts"))?,
            id: row.id,
            tenant: row.tenant_id,
            reason: row.reason,
            epoch: row.epoch,
            worker: row.worker_id,
            placed_round: row.placed_round,
            exit_code: row.exit_code,
            stdout: row.stdout,
            stderr: row.stderr,
            cancel_requested_at: row.cancel_requested_at,
            created_at: row.created_at,
            placed_at: row.placed_at,
            starting_at: row.starting_at,
            running_at: row.running_at,
            finished_at: row.finished_at,
            lost_at: row.lost_at,
        })
    }
}

/// What a new run is created with.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// What it runs.
    pub spec: RunSpec,
    /// Placements allowed, 1..=[`MAX_ATTEMPTS`].
    pub max_attempts: u32,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs older than this id (pagination).
    pub before: Option<String>,
    /// At most this many.
    pub limit: u64,
}

/// Commits a queued run. When this returns, the run is durable.
pub async fn enqueue(db: &impl ConnectionTrait, tenant: &str, new: NewRun) -> Result<Run> {
    if !(1..=MAX_ATTEMPTS).contains(&new.max_attempts) {
        return Err(Error::Invalid(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS}"
        )));
    }
    let now = Utc::now();
    // What it will reserve on its worker, stored for placement.
    let need = crate::protocol::Resources::of(&new.spec.limits);
    let spec = serde_json::to_string(&new.spec).map_err(|e| Error::Invalid(e.to_string()))?;
    if spec.len() > MAX_SPEC_BYTES {
        return Err(Error::Invalid(format!(
            "the run's command, environment and settings take more than {MAX_SPEC_BYTES} bytes"
        )));
    }
    let row = run::ActiveModel {
        id: Set(new_id("run")),
        tenant_id: Set(tenant.to_owned()),
        spec: Set(spec),
        image: Set(new.spec.image.clone()),
        cpu_millis: Set(i64::try_from(need.cpu_millis).unwrap_or(i64::MAX)),
        memory_mib: Set(i64::try_from(need.memory_mib).unwrap_or(i64::MAX)),
        state: Set(RunState::Queued.as_str().to_owned()),
        reason: Set(None),
        attempts: Set(0),
        max_attempts: Set(i32::try_from(new.max_attempts).unwrap_or(1)),
        epoch: Set(0),
        worker_id: Set(None),
        placed_round: Set(None),
        exit_code: Set(None),
        stdout: Set(None),
        stderr: Set(None),
        cancel_requested_at: Set(None),
        created_at: Set(now),
        placed_at: Set(None),
        starting_at: Set(None),
        running_at: Set(None),
        finished_at: Set(None),
        lost_at: Set(None),
        updated_at: Set(now),
        token_hash: Set(None),
    };
    row.insert(db).await?.try_into()
}

/// How many of the tenant's runs wait in the queue.
pub async fn queued_count(db: &impl ConnectionTrait, tenant: &str) -> Result<u64> {
    Ok(run::Entity::find()
        .filter(run::Column::TenantId.eq(tenant))
        .filter(run::Column::State.eq(RunState::Queued.as_str()))
        .count(db)
        .await?)
}

/// One of the tenant's runs.
pub async fn get(db: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<Run> {
    run::Entity::find_by_id(id)
        .filter(run::Column::TenantId.eq(tenant))
        .one(db)
        .await?
        .ok_or(Error::NotFound)?
        .try_into()
}

/// The tenant's runs, newest first.
pub async fn list(db: &impl ConnectionTrait, tenant: &str, filter: &RunFilter) -> Result<Vec<Run>> {
    let mut query = run::Entity::find().filter(run::Column::TenantId.eq(tenant));
    if let Some(state) = filter.state {
        query = query.filter(run::Column::State.eq(state.as_str()));
    }
    if let Some(before) = &filter.before {
        query = query.filter(run::Column::Id.lt(before.as_str()));
    }
    query
        .order_by_desc(run::Column::Id)
        .limit(filter.limit)
        .all(db)
        .await?
        .into_iter()
        .map(Run::try_from)
        .collect()
}

/// Cancels one of the tenant's runs: a queued run is cancelled at once; a
/// placed, starting or running one is marked, and its worker is told (the
/// run becomes `cancelled` when the worker reports it stopped). Cancelling
/// a finished run changes nothing. Returns the run as it now is.
pub async fn cancel(db: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<Run> {
    let now = Utc::now();
    let cancelled = run::Entity::update_many()
        .col_expr(
            run::Column::State,
            Expr::value(RunState::Cancelled.as_str()),
        )
        .col_expr(
            run::Column::Reason,
            Expr::value("cancelled before it was placed"),
        )
        .col_expr(run::Column::CancelRequestedAt, Expr::value(now))
        .col_expr(run::Column::FinishedAt, Expr::value(now))
        .col_expr(run::Column::UpdatedAt, Expr::value(now))
        .filter(run::Column::Id.eq(id))
        .filter(run::Column::TenantId.eq(tenant))
        .filter(run::Column::State.eq(RunState::Queued.as_str()))
        .exec(db)
        .await?;
    if cancelled.rows_affected == 0 {
        run::Entity::update_many()
            .col_expr(run::Column::CancelRequestedAt, Expr::value(now))
            .col_expr(run::Column::UpdatedAt, Expr::value(now))
            .filter(run::Column::Id.eq(id))
            .filter(run::Column::TenantId.eq(tenant))
            .filter(run::Column::State.is_in(ACTIVE.iter().copied().chain(["lost"])))
            .filter(run::Column::CancelRequestedAt.is_null())
            .exec(db)
            .await?;
    }
    get(db, tenant, id).await
}

/// Cancellations waiting to reach the given workers: (worker, lease).
pub async fn cancel_requests(
    db: &impl ConnectionTrait,
    workers: &[String],
) -> Result<Vec<(String, Lease)>> {
    if workers.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, Option<String>)> = run::Entity::find()
        .select_only()
        .column(run::Column::Id)
        .column(run::Column::Epoch)
        .column(run::Column::WorkerId)
        .filter(run::Column::CancelRequestedAt.is_not_null())
        .filter(run::Column::State.is_in(ACTIVE))
        .filter(run::Column::WorkerId.is_in(workers.iter().map(String::as_str)))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(run, epoch, worker)| Some((worker?, Lease { run, epoch })))
        .collect())
}

/// Declares a run lost (its worker vanished or restarted without it) and
/// resolves it at once: requeued while attempts remain and nobody asked to
/// cancel it, otherwise failed. Does nothing if the run moved on or was
/// placed again meanwhile (`epoch` no longer current). Returns the state it
/// ended in, if this call moved it.
pub async fn lose(
    db: &impl ConnectionTrait,
    lease: &Lease,
    reason: &str,
) -> Result<Option<RunState>> {
    let now = Utc::now();
    let lost = run::Entity::update_many()
        .col_expr(run::Column::State, Expr::value(RunState::Lost.as_str()))
        .col_expr(run::Column::Reason, Expr::value(reason))
        .col_expr(run::Column::LostAt, Expr::value(now))
        .col_expr(run::Column::UpdatedAt, Expr::value(now))
        .filter(run::Column::Id.eq(lease.run.as_str()))
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.is_in(ACTIVE))
        .exec(db)
        .await?;
    if lost.rows_affected == 0 {
        return Ok(None);
    }
    resolve_lost(db, lease, reason).await
}

/// Moves a lost run on: back to the queue or to failed.
pub async fn resolve_lost(
    db: &impl ConnectionTrait,
    lease: &Lease,
    reason: &str,
) -> Result<Option<RunState>> {
    let Some(row) = run::Entity::find_by_id(lease.run.as_str())
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.eq(RunState::Lost.as_str()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    let (next, why) = if row.cancel_requested_at.is_some() {
        (
            RunState::Failed,
            format!("cancelled; {reason} before it stopped"),
        )
    } else if row.attempts < row.max_attempts {
        (
            RunState::Queued,
            format!(
                "{reason}; requeued (attempt {} of {} next)",
                row.attempts + 1,
                row.max_attempts
            ),
        )
    } else {
        (
            RunState::Failed,
            format!(
                "{reason}; no attempts left ({} of {} used)",
                row.attempts, row.max_attempts
            ),
        )
    };
    let mut update = run::Entity::update_many()
        .col_expr(run::Column::State, Expr::value(next.as_str()))
        .col_expr(run::Column::Reason, Expr::value(why))
        .col_expr(run::Column::UpdatedAt, Expr::value(now));
    if next == RunState::Queued {
        update = update.col_expr(run::Column::WorkerId, Expr::value(Option::<String>::None));
    } else {
        update = update.col_expr(run::Column::FinishedAt, Expr::value(now));
    }
    let moved = update
        .filter(run::Column::Id.eq(lease.run.as_str()))
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.eq(RunState::Lost.as_str()))
        .exec(db)
        .await?;
    Ok((moved.rows_affected == 1).then_some(next))
}

/// Runs left `lost` (a replica stopped between declaring and resolving
/// them): resolves each. Returns how many moved.
pub async fn resolve_stranded(db: &impl ConnectionTrait) -> Result<usize> {
    let rows: Vec<(String, i64, Option<String>)> = run::Entity::find()
        .select_only()
        .column(run::Column::Id)
        .column(run::Column::Epoch)
        .column(run::Column::Reason)
        .filter(run::Column::State.eq(RunState::Lost.as_str()))
        .limit(1000)
        .into_tuple()
        .all(db)
        .await?;
    let mut moved = 0;
    for (run, epoch, reason) in rows {
        let reason = reason.unwrap_or_else(|| "its worker was lost".to_owned());
        if resolve_lost(db, &Lease { run, epoch }, &reason)
            .await?
            .is_some()
        {
            moved += 1;
        }
    }
    Ok(moved)
}

/// A new run token for run `run` (`crt_<the run id's hex>_<64 hex>`) and
/// the digest stored in its place.
pub(crate) fn new_token(run: &str) -> Result<(RunToken, String)> {
    let hex = run.strip_prefix("run_").unwrap_or(run);
    let secret = super::random_secret("x")?;
    let token = format!("crt_{hex}_{}", secret.trim_start_matches("x_"));
    let digest = super::digest(&token);
    Ok((RunToken::new(token), digest))
}

/// Gives a placed run a fresh token (its previous one stops working), for
/// a `Start` sent again. `None` if the run is no longer placed under
/// `lease`.
pub async fn issue_token(db: &impl ConnectionTrait, lease: &Lease) -> Result<Option<RunToken>> {
    let (token, digest) = new_token(&lease.run)?;
    let moved = run::Entity::update_many()
        .col_expr(run::Column::TokenHash, Expr::value(digest))
        .filter(run::Column::Id.eq(lease.run.as_str()))
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.eq(RunState::Placed.as_str()))
        .exec(db)
        .await?;
    Ok((moved.rows_affected == 1).then_some(token))
}

/// The run a run token names and the digest it must match (the caller
/// compares in constant time, and checks the run's state). `None` if the
/// token is not shaped like one or names no run.
pub async fn by_token(
    db: &impl ConnectionTrait,
    token: &str,
) -> Result<Option<(Run, Option<String>, String)>> {
    let Some((hex, secret)) = token
        .strip_prefix("crt_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(hex, 32) || !lower_hex(secret, 64) {
        return Ok(None);
    }
    let Some(row) = run::Entity::find_by_id(format!("run_{hex}"))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let stored = row.token_hash.clone();
    Ok(Some((row.try_into()?, stored, super::digest(token))))
}

/// The run of `lease` if `worker` holds that lease now.
pub async fn leased_run(
    db: &impl ConnectionTrait,
    worker: &str,
    lease: &Lease,
) -> Result<Option<Run>> {
    run::Entity::find_by_id(lease.run.as_str())
        .filter(run::Column::WorkerId.eq(worker))
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.is_in(ACTIVE))
        .one(db)
        .await?
        .map(Run::try_from)
        .transpose()
}

/// The runs a worker holds a lease on (placed, starting or running there).
pub async fn leased_to(db: &impl ConnectionTrait, worker: &str) -> Result<Vec<Run>> {
    run::Entity::find()
        .filter(run::Column::WorkerId.eq(worker))
        .filter(run::Column::State.is_in(ACTIVE))
        .all(db)
        .await?
        .into_iter()
        .map(Run::try_from)
        .collect()
}
