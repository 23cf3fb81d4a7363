//! The run state machine.
//!
//! A run starts [`Queued`](RunState::Queued) and ends in one of the terminal
//! states [`Succeeded`](RunState::Succeeded), [`Failed`](RunState::Failed) or
//! [`Cancelled`](RunState::Cancelled). In between, it is handed to a worker
//! ([`Placed`](RunState::Placed)), prepared there
//! ([`Starting`](RunState::Starting)) and executed
//! ([`Running`](RunState::Running)). If its worker disappears the run becomes
//! [`Lost`](RunState::Lost) until the scheduler decides whether to try again.
//!
//! ```text
//! queued   ──► placed | cancelled
//! placed   ──► starting | queued | cancelled | lost
//! starting ──► running | failed | cancelled | lost
//! running  ──► succeeded | failed | cancelled | lost
//! lost     ──► queued | failed
//! succeeded, failed, cancelled: terminal, no way out
//! ```
//!
//! The allowed edges are listed, with the reason for each, on
//! [`RunState::can_transition_to`].

use std::fmt;
use std::str::FromStr;

/// Where a run is in its life.
///
/// The string forms ([`RunState::as_str`]) are snake_case and stable: they are
/// what gets stored and sent over the wire, so renaming one is a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Accepted and waiting for a worker with room for it.
    Queued,
    /// Assigned to a worker, whose capacity is reserved for it, but the
    /// worker has not yet begun preparing it.
    Placed,
    /// The worker is preparing the sandbox: fetching the image, creating the
    /// container.
    Starting,
    /// The run's process is executing on the worker.
    Running,
    /// The run finished and reported success. Terminal.
    Succeeded,
    /// The run finished unsuccessfully, could not be started, or was given up
    /// on after being lost. Terminal.
    Failed,
    /// Someone asked for the run to stop before it finished. Terminal.
    Cancelled,
    /// The worker holding the run stopped reporting, so nobody knows what
    /// happened to it. Not terminal: the scheduler must resolve it by
    /// requeueing or failing the run.
    Lost,
}

impl RunState {
    /// Every state, in lifecycle order. Useful for exhaustive checks.
    pub const ALL: [RunState; 8] = [
        RunState::Queued,
        RunState::Placed,
        RunState::Starting,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Lost,
    ];

    /// The stable snake_case name of this state.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Placed => "placed",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Lost => "lost",
        }
    }

    /// Whether the run is over for good. Terminal states have no outgoing
    /// edges. [`Lost`](RunState::Lost) is deliberately not terminal.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }

    /// Whether a run in state `self` may move to `next`.
    ///
    /// The allowed edges, and why each exists:
    ///
    /// - **queued → placed**: the scheduler found a worker with room and
    ///   reserved that capacity for the run.
    /// - **queued → cancelled**: cancelled before it was ever placed.
    /// - **placed → starting**: the worker acknowledged the placement and began
    ///   preparing the sandbox.
    /// - **placed → queued**: the placement is undone (the worker declined it
    ///   or did not take it up in time). Nothing ran, so the run simply goes
    ///   back in the queue and its reservation is released.
    /// - **placed → cancelled**: cancelled while waiting on its worker.
    /// - **placed → lost**: the worker stopped reporting while holding the
    ///   placement.
    /// - **starting → running**: the sandbox is up and the process started.
    /// - **starting → failed**: the run could not be started for a reason of
    ///   its own (for example its image does not exist).
    /// - **starting → cancelled**: cancelled during preparation.
    /// - **starting → lost**: the worker stopped reporting during preparation.
    /// - **running → succeeded**: the process finished successfully.
    /// - **running → failed**: the process finished unsuccessfully, or was
    ///   killed for exceeding its limits.
    /// - **running → cancelled**: cancelled while executing.
    /// - **running → lost**: the worker stopped reporting while executing.
    /// - **lost → queued**: recovery of a lost worker's run; it is requeued
    ///   for another attempt elsewhere.
    /// - **lost → failed**: the run is given up on (no attempts left, or not
    ///   safe to run again).
    ///
    /// Nothing else is allowed. In particular, terminal states go nowhere, no
    /// state moves to itself, and a run that has begun starting never goes
    /// straight back to the queue: it must be declared lost first, so that
    /// the lost attempt is recorded.
    pub const fn can_transition_to(self, next: RunState) -> bool {
        use RunState::*;
        matches!(
            (self, next),
            (Queued, Placed | Cancelled)
                | (Placed, Starting | Queued | Cancelled | Lost)
                | (Starting, Running | Failed | Cancelled | Lost)
                | (Running, Succeeded | Failed | Cancelled | Lost)
                | (Lost, Queued | Failed)
        )
    }

    /// Moves from `self` to `next`, or explains why that is not allowed.
    ///
    /// Returns `next` on success so callers can write
    /// `run.state = run.state.transition(RunState::Placed)?;`.
    pub fn transition(self, next: RunState) -> Result<RunState, InvalidTransition> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(InvalidTransition {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = UnknownRunState;

    /// Parses the exact snake_case name produced by [`RunState::as_str`].
    /// Matching is case-sensitive and does not trim whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_owned()))
    }
}

/// A string that is not the name of any [`RunState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state {0:?}")]
pub struct UnknownRunState(pub String);

/// An attempt to move a run along an edge the state machine does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct InvalidTransition {
    /// The state the run was in.
    pub from: RunState,
    /// The state it was asked to move to.
    pub to: RunState,
}

#[cfg(test)]
mod tests {
    use super::RunState::{self, *};
    use super::*;

    /// The allowed edges, written out independently of `can_transition_to`.
    const ALLOWED: [(RunState, RunState); 16] = [
        (Queued, Placed),
        (Queued, Cancelled),
        (Placed, Starting),
        (Placed, Queued),
        (Placed, Cancelled),
        (Placed, Lost),
        (Starting, Running),
        (Starting, Failed),
        (Starting, Cancelled),
        (Starting, Lost),
        (Running, Succeeded),
        (Running, Failed),
        (Running, Cancelled),
        (Running, Lost),
        (Lost, Queued),
        (Lost, Failed),
    ];

    #[test]
    fn every_allowed_edge_is_allowed() {
        for (from, to) in ALLOWED {
            assert!(
                from.can_transition_to(to),
                "{from} -> {to} should be allowed"
            );
            assert_eq!(from.transition(to), Ok(to));
        }
    }

    #[test]
    fn every_other_edge_is_forbidden() {
        let mut forbidden = 0;
        for from in RunState::ALL {
            for to in RunState::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(
                    from.can_transition_to(to),
                    expected,
                    "{from} -> {to}: expected allowed={expected}"
                );
                if !expected {
                    forbidden += 1;
                    assert_eq!(from.transition(to), Err(InvalidTransition { from, to }));
                }
            }
        }
        assert_eq!(forbidden, 8 * 8 - ALLOWED.len());
    }

    #[test]
    fn no_state_moves_to_itself() {
        for state in RunState::ALL {
            assert!(!state.can_transition_to(state), "{state} -> {state}");
        }
    }

    #[test]
    fn terminal_states_are_exactly_those_without_outgoing_edges() {
        for from in RunState::ALL {
            let has_edge = RunState::ALL
                .into_iter()
                .any(|to| from.can_transition_to(to));
            assert_eq!(from.is_terminal(), !has_edge, "{from}");
        }
        let terminal: Vec<_> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [Succeeded, Failed, Cancelled]);
    }

    #[test]
    fn every_state_is_reachable_from_queued() {
        let mut reached = vec![Queued];
        let mut frontier = vec![Queued];
        while let Some(from) = frontier.pop() {
            for to in RunState::ALL {
                if from.can_transition_to(to) && !reached.contains(&to) {
                    reached.push(to);
                    frontier.push(to);
                }
            }
        }
        for state in RunState::ALL {
            assert!(reached.contains(&state), "{state} unreachable");
        }
    }

    #[test]
    fn all_lists_each_state_once() {
        for (i, a) in RunState::ALL.into_iter().enumerate() {
            for b in &RunState::ALL[i + 1..] {
                assert_ne!(a, *b);
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
        }
    }

    #[test]
    fn names_are_snake_case() {
        let expected = [
            "queued",
            "placed",
            "starting",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "lost",
        ];
        let names: Vec<_> = RunState::ALL.into_iter().map(RunState::as_str).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn unknown_strings_are_rejected() {
        for input in [
            "", "Queued", "QUEUED", " queued", "queued ", "lost\n", "canceled", "done", "pending",
            "run ning",
        ] {
            assert_eq!(
                input.parse::<RunState>(),
                Err(UnknownRunState(input.to_owned())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            Succeeded.transition(Running).unwrap_err().to_string(),
            "a run cannot go from succeeded to running"
        );
        assert_eq!(
            "nope".parse::<RunState>().unwrap_err().to_string(),
            "unknown run state \"nope\""
        );
    }
}
