//! Runs and workers.
//!
//! This crate owns the life of a run on the worker fleet:
//!
//! - [`run_state`]: which state a run may move to next — every other part
//!   of Carapace asks it rather than re-deriving the rules;
//! - [`limits`] and [`protocol`]: what a worker and the control plane say
//!   to each other (runs to start and cancel, heartbeats, reports under a
//!   fenced lease);
//! - [`placement`]: which queued run goes to which worker, as a pure
//!   function (resources, per-tenant quota, fairness between tenants);
//! - [`store`]: the durable queue and the workers in the database — every
//!   state change one conditional update, placement rounds serialised
//!   across control-plane replicas.
//!
//! It knows nothing of HTTP, of tenants' authentication, or of containers:
//! the API layer translates requests into calls here, and the worker runtime
//! reports what happened on the host.

pub mod limits;
pub mod placement;
pub mod protocol;
pub mod run_state;
pub mod store;

pub use limits::Limits;
pub use run_state::{InvalidTransition, RunState, UnknownRunState};
