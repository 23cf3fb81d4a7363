//! The Carapace worker node.
//!
//! This crate is what runs on each worker host. Today it knows how much the
//! host can offer ([`capacity`]), which is what a worker will report in its
//! heartbeats, and which network addresses may be reached from inside
//! ([`address`]; the control plane uses it too, for tenant-supplied
//! endpoints). Sandboxes, images and the egress proxy are to come.
//!
//! It knows nothing of tenants, HTTP or billing: it is told what to run by the
//! scheduler and reports back what happened. Nothing in it calls libcontainer
//! from inside tokio: container operations are blocking and process-global
//! (they fork and change namespaces), so they will run in a single-threaded
//! helper process, one operation at a time, never on an async executor.

pub mod address;
pub mod capacity;

pub use capacity::{Capacity, CapacityError};
