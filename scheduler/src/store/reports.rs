//! A worker's report about a run, applied only under the run's current
//! lease (fencing).

use chrono::Utc;
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::entities::run;
use super::{Result, truncate};
use crate::protocol::{Lease, MAX_OUTPUT_BYTES, RunEvent};
use crate::run_state::RunState;

/// How far along its placement a run is, for telling a repeated report
/// from a wrong one.
fn stage(state: RunState) -> u8 {
    match state {
        RunState::Queued | RunState::Lost => 0,
        RunState::Placed => 1,
        RunState::Starting => 2,
        RunState::Running => 3,
        RunState::Succeeded | RunState::Failed | RunState::Cancelled => 4,
    }
}

/// Longest failure reason kept.
const MAX_REASON: usize = 1000;

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The run moved to this state.
    Applied(RunState),
    /// The run was already in that state (a report sent again after a
    /// reconnection): nothing changed.
    Unchanged,
    /// The report does not hold: the lease is not the run's current one, or
    /// the run cannot move that way. The worker must stop the run.
    Refused {
        /// Why.
        reason: String,
        /// The run's tenant, if the run exists (for its audit log).
        tenant: Option<String>,
    },
}

/// Applies `event` to the run of `lease`, reported by `worker`: one
/// conditional update that matches only if the worker holds the run's
/// current lease and the run may move to the reported state.
pub async fn apply_report(
    db: &impl ConnectionTrait,
    worker: &str,
    lease: &Lease,
    event: &RunEvent,
) -> Result<ReportOutcome> {
    let now = Utc::now();
    let mut sets: Vec<(run::Column, SimpleExpr)> = Vec::new();
    let target = match event {
        RunEvent::Starting => {
            sets.push((run::Column::StartingAt, Expr::value(now)));
            RunState::Starting
        }
        RunEvent::Running => {
            sets.push((run::Column::RunningAt, Expr::value(now)));
            RunState::Running
        }
        RunEvent::Exited {
            exit_code,
            timed_out,
            stdout,
            stderr,
        } => {
            let (state, reason) = match (exit_code, timed_out) {
                (_, true) => (RunState::Failed, Some("the command ran out of time".into())),
                (Some(0), false) => (RunState::Succeeded, None),
                (Some(code), false) => (RunState::Failed, Some(format!("exit code {code}"))),
                (None, false) => (RunState::Failed, Some("the command could not start".into())),
            };
            sets.push((run::Column::Reason, Expr::value(reason)));
            sets.push((run::Column::ExitCode, Expr::value(*exit_code)));
            sets.push((
                run::Column::Stdout,
                Expr::value(truncate(stdout.clone(), MAX_OUTPUT_BYTES)),
            ));
            sets.push((
                run::Column::Stderr,
                Expr::value(truncate(stderr.clone(), MAX_OUTPUT_BYTES)),
            ));
            sets.push((run::Column::FinishedAt, Expr::value(now)));
            state
        }
        RunEvent::Failed { reason } => {
            sets.push((
                run::Column::Reason,
                Expr::value(truncate(reason.clone(), MAX_REASON)),
            ));
            sets.push((run::Column::FinishedAt, Expr::value(now)));
            RunState::Failed
        }
        RunEvent::Cancelled => {
            sets.push((run::Column::Reason, Expr::value("cancelled")));
            sets.push((run::Column::FinishedAt, Expr::value(now)));
            RunState::Cancelled
        }
    };
    // A worker moves a run only from the states a worker holds it in.
    let from: Vec<&str> = RunState::ALL
        .into_iter()
        .filter(|s| !matches!(s, RunState::Queued | RunState::Lost))
        .filter(|s| s.can_transition_to(target))
        .map(RunState::as_str)
        .collect();
    let mut update = run::Entity::update_many()
        .col_expr(run::Column::State, Expr::value(target.as_str()))
        .col_expr(run::Column::UpdatedAt, Expr::value(now));
    for (column, value) in sets {
        update = update.col_expr(column, value);
    }
    let moved = update
        .filter(run::Column::Id.eq(lease.run.as_str()))
        .filter(run::Column::WorkerId.eq(worker))
        .filter(run::Column::Epoch.eq(lease.epoch))
        .filter(run::Column::State.is_in(from))
        .exec(db)
        .await?;
    if moved.rows_affected == 1 {
        return Ok(ReportOutcome::Applied(target));
    }
    let Some(row) = run::Entity::find_by_id(lease.run.as_str()).one(db).await? else {
        return Ok(ReportOutcome::Refused {
            reason: "no such run".into(),
            tenant: None,
        });
    };
    if row.epoch != lease.epoch || row.worker_id.as_deref() != Some(worker) {
        return Ok(ReportOutcome::Refused {
            reason: format!(
                "stale lease: epoch {} reported, the run's current epoch is {}",
                lease.epoch, row.epoch
            ),
            tenant: Some(row.tenant_id),
        });
    }
    // Our own lease, and the run is already there or past it: a report sent
    // again after a reconnection.
    let current: RunState = row
        .state
        .parse()
        .map_err(|_| super::Error::Corrupt(format!("run {}: state", row.id)))?;
    if stage(target) <= stage(current) && stage(current) > 0 {
        return Ok(ReportOutcome::Unchanged);
    }
    Ok(ReportOutcome::Refused {
        reason: format!("the run is {}; it cannot become {target}", row.state),
        tenant: Some(row.tenant_id),
    })
}
