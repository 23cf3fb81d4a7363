//! Runs and workers.
//!
//! This crate owns the life of a run on the worker fleet: the run state
//! machine now; the queue, placement, leases and the worker protocol as they
//! land. It is the single place that decides which state a run may move to
//! next, so every other part of Carapace asks it rather than re-deriving the
//! rules.
//!
//! It knows nothing of HTTP, of tenants' authentication, or of containers:
//! the API layer translates requests into calls here, and the worker runtime
//! reports what happened on the host. Keeping those out lets the rules be
//! tested as plain data.

pub mod run_state;

pub use run_state::{InvalidTransition, RunState, UnknownRunState};
