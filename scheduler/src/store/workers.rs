//! Workers: one-time join tokens, node credentials, hellos and heartbeats,
//! declaring silent workers lost (and recovering their runs), the
//! operator's view and draining.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::entities::{join_token, run, worker};
use super::runs;
use super::{ACTIVE, Error, Result, digest, new_id, random_secret};
use crate::protocol::{Lease, Resources, RunSpec, RunToken};
use crate::run_state::RunState;

/// Most images a worker may announce.
const MAX_IMAGES: usize = 256;
/// The most a worker may announce (more is taken as this much): one node
/// cannot claim the whole fleet's work by announcing a huge capacity.
pub const MAX_CAPACITY: Resources = Resources {
    cpu_millis: 1_000_000,
    memory_mib: 16 << 20,
    slots: 1024,
};
/// A run placed on a worker that neither holds it nor started it this long
/// after its placement is taken back (lost, then requeued or failed).
const PLACED_TIMEOUT: Duration = Duration::from_secs(60);

/// A one-time join token (`cwj_…`), shown once to the operator.
pub struct JoinToken(String);

/// A worker's node credential (`cwc_…`), given once at join.
pub struct Credential(String);

macro_rules! secret {
    ($name:ident) => {
        impl $name {
            /// Wraps a secret read from outside.
            pub fn new(value: String) -> Self {
                Self(value)
            }
            /// The secret itself, for the one place that must send or show it.
            pub fn reveal(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}
secret!(JoinToken);
secret!(Credential);

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Connected recently; receives runs.
    Active,
    /// Receives no new runs (an operator drained it); its runs go on.
    Draining,
    /// Missed its heartbeats; its runs were recovered.
    Lost,
}

impl WorkerState {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
            WorkerState::Lost => "lost",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "active" => WorkerState::Active,
            "draining" => WorkerState::Draining,
            "lost" => WorkerState::Lost,
            other => return Err(Error::Corrupt(format!("worker state {other:?}"))),
        })
    }
}

/// A worker as the operator sees it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// `wrk_…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: WorkerState,
    /// What it offers in total.
    pub capacity: Resources,
    /// What its runs take now.
    pub used: Resources,
    /// Images it has ready.
    pub images: Vec<String>,
    /// Last heartbeat (or hello).
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Last connection.
    pub connected_at: Option<DateTime<Utc>>,
    /// Joined at.
    pub created_at: DateTime<Utc>,
}

/// Creates a one-time join token valid for `ttl`.
pub async fn create_join_token(db: &DatabaseConnection, ttl: Duration) -> Result<JoinToken> {
    let token = random_secret("cwj")?;
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(ttl).map_err(|e| Error::Invalid(e.to_string()))?;
    join_token::ActiveModel {
        id: Set(new_id("wjt")),
        token_hash: Set(digest(&token)),
        created_at: Set(now),
        expires_at: Set(now + ttl),
        used_at: Set(None),
        worker_id: Set(None),
    }
    .insert(db)
    .await?;
    Ok(JoinToken(token))
}

/// Checks a worker name: 1 to 100 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "a worker name is 1 to 100 letters, digits, '.', '_' or '-'".into(),
        ))
    }
}

/// Spends a join token on a new worker named `name`; returns its id and its
/// node credential (shown once). The token is spent only if the worker is
/// created.
pub async fn join(
    db: &DatabaseConnection,
    token: &JoinToken,
    name: &str,
) -> Result<(String, Credential)> {
    check_name(name)?;
    let credential = random_secret("cwc")?;
    let id = new_id("wrk");
    let now = Utc::now();
    let hash = digest(token.reveal());
    let (name, credential_hash, worker_id) = (name.to_owned(), digest(&credential), id.clone());
    db.transaction::<_, (), Error>(|txn| {
        Box::pin(async move {
            let spent = join_token::Entity::update_many()
                .col_expr(join_token::Column::UsedAt, Expr::value(now))
                .col_expr(
                    join_token::Column::WorkerId,
                    Expr::value(worker_id.as_str()),
                )
                .filter(join_token::Column::TokenHash.eq(hash))
                .filter(join_token::Column::UsedAt.is_null())
                .filter(join_token::Column::ExpiresAt.gt(now))
                .exec(txn)
                .await?;
            if spent.rows_affected != 1 {
                return Err(Error::Unauthorized(
                    "the join token is wrong, already used or expired",
                ));
            }
            if worker::Entity::find()
                .filter(worker::Column::Name.eq(name.as_str()))
                .one(txn)
                .await?
                .is_some()
            {
                return Err(Error::Conflict(format!("a worker named {name} exists")));
            }
            worker::ActiveModel {
                id: Set(worker_id),
                name: Set(name),
                credential_hash: Set(Some(credential_hash)),
                state: Set(WorkerState::Lost.as_str().to_owned()),
                cpu_millis: Set(0),
                memory_mib: Set(0),
                slots: Set(0),
                images: Set("[]".into()),
                last_heartbeat_at: Set(None),
                connected_at: Set(None),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            Ok(())
        })
    })
    .await
    .map_err(|e| match e {
        sea_orm::TransactionError::Connection(e) => Error::Db(e),
        sea_orm::TransactionError::Transaction(e) => e,
    })?;
    Ok((id, Credential(credential)))
}

/// The worker a node credential belongs to.
pub async fn authenticate(db: &impl ConnectionTrait, credential: &Credential) -> Result<String> {
    worker::Entity::find()
        .select_only()
        .column(worker::Column::Id)
        .filter(worker::Column::CredentialHash.eq(digest(credential.reveal())))
        .into_tuple::<String>()
        .one(db)
        .await?
        .ok_or(Error::Unauthorized("unknown worker credential"))
}

/// The id of the in-process worker named `name` (created on first use). A
/// joined worker's name cannot be taken over this way.
pub async fn register_local(db: &impl ConnectionTrait, name: &str) -> Result<String> {
    check_name(name)?;
    if let Some(row) = worker::Entity::find()
        .filter(worker::Column::Name.eq(name))
        .one(db)
        .await?
    {
        if row.credential_hash.is_some() {
            return Err(Error::Conflict(format!(
                "a joined worker is already named {name}"
            )));
        }
        return Ok(row.id);
    }
    let id = new_id("wrk");
    worker::ActiveModel {
        id: Set(id.clone()),
        name: Set(name.to_owned()),
        credential_hash: Set(None),
        state: Set(WorkerState::Lost.as_str().to_owned()),
        cpu_millis: Set(0),
        memory_mib: Set(0),
        slots: Set(0),
        images: Set("[]".into()),
        last_heartbeat_at: Set(None),
        connected_at: Set(None),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?;
    Ok(id)
}

/// What the control plane answers a hello with.
#[derive(Debug, Default)]
pub struct HelloOutcome {
    /// Leases the worker announced that are still its own.
    pub keep: Vec<Lease>,
    /// Runs placed on the worker that it does not hold yet: start them
    /// (each with a fresh token).
    pub start: Vec<(Lease, RunSpec, RunToken)>,
    /// Runs the worker had started but no longer holds (it restarted):
    /// declared lost and resolved, with the state each ended in.
    pub recovered: Vec<(Lease, Option<RunState>)>,
}

/// Records a (re)connected worker: its capacity and images, active again
/// unless drained; sorts out the runs leased to it against those it holds.
pub async fn hello(
    db: &DatabaseConnection,
    id: &str,
    capacity: Resources,
    images: &[String],
    held: &[Lease],
) -> Result<HelloOutcome> {
    if images.len() > MAX_IMAGES || images.iter().any(|i| i.is_empty() || i.len() > 512) {
        return Err(Error::Invalid(format!(
            "at most {MAX_IMAGES} image names of 1 to 512 bytes"
        )));
    }
    let row = worker::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(Error::NotFound)?;
    let state = match WorkerState::parse(&row.state)? {
        WorkerState::Draining => WorkerState::Draining,
        WorkerState::Active | WorkerState::Lost => WorkerState::Active,
    };
    let now = Utc::now();
    let clamp = |v: u64, max: u64| i64::try_from(v.min(max)).unwrap_or(0);
    let mut active: worker::ActiveModel = row.into();
    active.state = Set(state.as_str().to_owned());
    active.cpu_millis = Set(clamp(capacity.cpu_millis, MAX_CAPACITY.cpu_millis));
    active.memory_mib = Set(clamp(capacity.memory_mib, MAX_CAPACITY.memory_mib));
    active.slots = Set(clamp(capacity.slots, MAX_CAPACITY.slots));
    active.images = Set(serde_json::to_string(images).unwrap_or_else(|_| "[]".into()));
    active.last_heartbeat_at = Set(Some(now));
    active.connected_at = Set(Some(now));
    active.update(db).await?;

    let held: HashSet<&Lease> = held.iter().collect();
    let mut outcome = HelloOutcome::default();
    for run in runs::leased_to(db, id).await? {
        let Some((_, lease)) = run.lease() else {
            continue;
        };
        if held.contains(&lease) {
            outcome.keep.push(lease);
        } else if run.state == RunState::Placed {
            if let Some(token) = runs::issue_token(db, &lease).await? {
                outcome.start.push((lease, run.spec, token));
            }
        } else {
            let state = runs::lose(db, &lease, "its worker restarted without it").await?;
            outcome.recovered.push((lease, state));
        }
    }
    Ok(outcome)
}

/// Records a heartbeat and the capacity it carries. `false` if the worker
/// was declared lost meanwhile (it must say hello again).
pub async fn heartbeat(db: &impl ConnectionTrait, id: &str, capacity: Resources) -> Result<bool> {
    let clamp = |v: u64, max: u64| i64::try_from(v.min(max)).unwrap_or(0);
    let updated = worker::Entity::update_many()
        .col_expr(worker::Column::LastHeartbeatAt, Expr::value(Utc::now()))
        .col_expr(
            worker::Column::CpuMillis,
            Expr::value(clamp(capacity.cpu_millis, MAX_CAPACITY.cpu_millis)),
        )
        .col_expr(
            worker::Column::MemoryMib,
            Expr::value(clamp(capacity.memory_mib, MAX_CAPACITY.memory_mib)),
        )
        .col_expr(
            worker::Column::Slots,
            Expr::value(clamp(capacity.slots, MAX_CAPACITY.slots)),
        )
        .filter(worker::Column::Id.eq(id))
        .filter(worker::Column::State.ne(WorkerState::Lost.as_str()))
        .exec(db)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Compares the runs leased to a worker with those its heartbeat says it
/// holds: a run it started (starting or running) but no longer holds, and
/// whose last change is older than `grace`, is lost (its final report went
/// astray) and is resolved; a run placed there longer than `grace` ago that
/// it does not hold is to be sent again (its start message went astray).
pub async fn reconcile(
    db: &impl ConnectionTrait,
    id: &str,
    held: &[Lease],
    grace: Duration,
) -> Result<Reconciled> {
    let grace = chrono::Duration::from_std(grace).map_err(|e| Error::Invalid(e.to_string()))?;
    let cutoff = Utc::now() - grace;
    let held: HashSet<&Lease> = held.iter().collect();
    let mut outcome = Reconciled::default();
    let leased = runs::leased_to(db, id).await?;
    let known: HashSet<Lease> = leased
        .iter()
        .filter_map(|r| r.lease().map(|(_, l)| l))
        .collect();
    outcome.unknown = held
        .iter()
        .filter(|l| !known.contains(l))
        .map(|l| (*l).clone())
        .collect();
    for run in leased {
        let Some((_, lease)) = run.lease() else {
            continue;
        };
        let last_change = [run.placed_at, run.starting_at, run.running_at]
            .into_iter()
            .flatten()
            .max();
        if held.contains(&lease) || last_change.is_some_and(|t| t > cutoff) {
            continue;
        }
        let stale = chrono::Duration::from_std(PLACED_TIMEOUT).unwrap_or_default();
        let fresh = run.placed_at.is_some_and(|t| t > Utc::now() - stale);
        if run.state == RunState::Placed && fresh {
            if let Some(token) = runs::issue_token(db, &lease).await? {
                outcome.restart.push((lease, run.spec, token));
            }
        } else if run.state == RunState::Placed {
            let state = runs::lose(db, &lease, "its worker never started it").await?;
            outcome.recovered.push((lease, state));
        } else {
            let state = runs::lose(db, &lease, "its worker no longer holds it").await?;
            outcome.recovered.push((lease, state));
        }
    }
    Ok(outcome)
}

/// What [`reconcile`] found.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Runs declared lost and resolved, with the state each ended in.
    pub recovered: Vec<(Lease, Option<RunState>)>,
    /// Placed runs to send to the worker again (each with a fresh token).
    pub restart: Vec<(Lease, RunSpec, RunToken)>,
    /// Leases the worker holds that are not its own (any more): the run
    /// ended, moved, or was deleted with its tenant. It must stop them.
    pub unknown: Vec<Lease>,
}

/// Declares lost every worker silent for longer than `window`, and
/// recovers the runs leased to lost workers (requeued or failed by their
/// policy). Returns the workers declared lost now and the runs recovered.
pub async fn expire_workers(
    db: &DatabaseConnection,
    window: Duration,
) -> Result<(Vec<String>, Vec<(Lease, Option<RunState>)>)> {
    let window = chrono::Duration::from_std(window).map_err(|e| Error::Invalid(e.to_string()))?;
    let cutoff = Utc::now() - window;
    let silent: Vec<String> = worker::Entity::find()
        .select_only()
        .column(worker::Column::Id)
        .filter(worker::Column::State.ne(WorkerState::Lost.as_str()))
        .filter(worker::Column::LastHeartbeatAt.lt(cutoff))
        .into_tuple()
        .all(db)
        .await?;
    let mut declared = Vec::new();
    for id in silent {
        let moved = worker::Entity::update_many()
            .col_expr(
                worker::Column::State,
                Expr::value(WorkerState::Lost.as_str()),
            )
            .filter(worker::Column::Id.eq(id.as_str()))
            .filter(worker::Column::State.ne(WorkerState::Lost.as_str()))
            .filter(worker::Column::LastHeartbeatAt.lt(cutoff))
            .exec(db)
            .await?;
        if moved.rows_affected == 1 {
            declared.push(id);
        }
    }
    // Every run still leased to a lost worker, whoever declared it lost.
    let lost_workers: Vec<String> = worker::Entity::find()
        .select_only()
        .column(worker::Column::Id)
        .filter(worker::Column::State.eq(WorkerState::Lost.as_str()))
        .into_tuple()
        .all(db)
        .await?;
    let mut recovered = Vec::new();
    if !lost_workers.is_empty() {
        let stranded: Vec<(String, i64)> = run::Entity::find()
            .select_only()
            .column(run::Column::Id)
            .column(run::Column::Epoch)
            .filter(run::Column::State.is_in(ACTIVE))
            .filter(run::Column::WorkerId.is_in(lost_workers.iter().map(String::as_str)))
            .into_tuple()
            .all(db)
            .await?;
        for (run, epoch) in stranded {
            let lease = Lease { run, epoch };
            let state = runs::lose(db, &lease, "its worker stopped sending heartbeats").await?;
            recovered.push((lease, state));
        }
    }
    runs::resolve_stranded(db).await?;
    Ok((declared, recovered))
}

/// Every worker with its load, by name.
pub async fn list_workers(db: &impl ConnectionTrait) -> Result<Vec<WorkerInfo>> {
    let rows = worker::Entity::find()
        .order_by_asc(worker::Column::Name)
        .all(db)
        .await?;
    let taken = used_by_worker(db, None).await?;
    rows.into_iter().map(|row| info(row, &taken)).collect()
}

/// One worker with its load.
pub async fn worker_info(db: &impl ConnectionTrait, id: &str) -> Result<WorkerInfo> {
    let row = worker::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(Error::NotFound)?;
    let taken = used_by_worker(db, Some(&[id.to_owned()])).await?;
    info(row, &taken)
}

/// Whether some active worker offers `image` (whether a sandbox of it can
/// be placed at all): reads only the workers' image lists.
pub async fn any_offering(db: &impl ConnectionTrait, image: &str) -> Result<bool> {
    let lists: Vec<String> = worker::Entity::find()
        .select_only()
        .column(worker::Column::Images)
        .filter(worker::Column::State.eq(WorkerState::Active.as_str()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(lists.iter().any(|list| {
        serde_json::from_str::<Vec<String>>(list)
            .is_ok_and(|images| images.iter().any(|i| i == image))
    }))
}

fn info(
    row: worker::Model,
    taken: &std::collections::HashMap<String, Resources>,
) -> Result<WorkerInfo> {
    Ok(WorkerInfo {
        state: WorkerState::parse(&row.state)?,
        capacity: Resources {
            cpu_millis: u64::try_from(row.cpu_millis).unwrap_or(0),
            memory_mib: u64::try_from(row.memory_mib).unwrap_or(0),
            slots: u64::try_from(row.slots).unwrap_or(0),
        },
        used: taken.get(&row.id).copied().unwrap_or_default(),
        images: serde_json::from_str(&row.images).unwrap_or_default(),
        last_heartbeat_at: row.last_heartbeat_at,
        connected_at: row.connected_at,
        created_at: row.created_at,
        name: row.name,
        id: row.id,
    })
}

/// Drains a worker: it gets no new runs; those it holds go on. A lost
/// (or revoked) worker stays lost.
pub async fn drain(db: &impl ConnectionTrait, id: &str) -> Result<()> {
    set_state(db, id, WorkerState::Draining, |from| {
        from != WorkerState::Lost
    })
    .await
}

/// Takes a drained worker back: it gets new runs again.
pub async fn resume(db: &impl ConnectionTrait, id: &str) -> Result<()> {
    set_state(db, id, WorkerState::Active, |from| {
        from == WorkerState::Draining
    })
    .await
}

/// Moves an existing worker to `to` if its state passes `from` (checked
/// in the update itself); `NotFound` if there is no such worker.
async fn set_state(
    db: &impl ConnectionTrait,
    id: &str,
    to: WorkerState,
    from: impl Fn(WorkerState) -> bool,
) -> Result<()> {
    worker::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(Error::NotFound)?;
    let allowed: Vec<&str> = [
        WorkerState::Active,
        WorkerState::Draining,
        WorkerState::Lost,
    ]
    .into_iter()
    .filter(|s| from(*s))
    .map(WorkerState::as_str)
    .collect();
    worker::Entity::update_many()
        .col_expr(worker::Column::State, Expr::value(to.as_str()))
        .filter(worker::Column::Id.eq(id))
        .filter(worker::Column::State.is_in(allowed))
        .exec(db)
        .await?;
    Ok(())
}

/// What the runs placed, starting or running take from each worker (of
/// `only`, or of all).
pub(crate) async fn used_by_worker(
    db: &impl ConnectionTrait,
    only: Option<&[String]>,
) -> Result<std::collections::HashMap<String, Resources>> {
    let mut query = run::Entity::find()
        .select_only()
        .column(run::Column::WorkerId)
        .column(run::Column::CpuMillis)
        .column(run::Column::MemoryMib)
        .filter(run::Column::State.is_in(ACTIVE));
    if let Some(ids) = only {
        query = query.filter(run::Column::WorkerId.is_in(ids.iter().map(String::as_str)));
    }
    let used: Vec<(Option<String>, i64, i64)> = query.into_tuple().all(db).await?;
    let mut taken: std::collections::HashMap<String, Resources> = Default::default();
    for (worker, cpu, memory) in used {
        let Some(worker) = worker else { continue };
        let entry = taken.entry(worker).or_default();
        entry.cpu_millis = entry
            .cpu_millis
            .saturating_add(u64::try_from(cpu).unwrap_or(0));
        entry.memory_mib = entry
            .memory_mib
            .saturating_add(u64::try_from(memory).unwrap_or(0));
        entry.slots = entry.slots.saturating_add(1);
    }
    Ok(taken)
}

/// Revokes a worker: its credential stops working and it is lost at once,
/// so its runs are recovered by the next watchdog pass. Its name stays
/// taken (the record is kept for the runs that name it).
pub async fn revoke(db: &impl ConnectionTrait, id: &str) -> Result<()> {
    let moved = worker::Entity::update_many()
        .col_expr(
            worker::Column::State,
            Expr::value(WorkerState::Lost.as_str()),
        )
        .col_expr(
            worker::Column::CredentialHash,
            Expr::value(Option::<String>::None),
        )
        .filter(worker::Column::Id.eq(id))
        .exec(db)
        .await?;
    if moved.rows_affected == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}
