//! The Carapace worker node.
//!
//! This crate is what runs on each worker host:
//!
//! - [`sandbox`]: sandboxes (youki's libcontainer, hardened spec, control
//!   socket to the in-sandbox agent, clean-up after a crash);
//! - [`image`]: root filesystems (the built-in agent + busybox image, and
//!   images from OCI image layouts on disk, unpacked by [`oci`]), in a
//!   content-addressed cache;
//! - [`netns`] and [`egress`]: the egress proxy bound inside each
//!   sandbox's network namespace, the only way out;
//! - [`cgroups`]: removal of cgroups a crashed worker left;
//! - [`capacity`]: what the host can offer; [`address`]: which network
//!   addresses may be reached (the control plane uses it too, for
//!   tenant-supplied endpoints).
//!
//! It knows nothing of tenants, HTTP or billing: it is told what to run and
//! reports back what happened. Nothing in it calls a forking libcontainer
//! operation from inside tokio: container creation runs in the
//! single-threaded helper process ([`sandbox::helper`]).

pub mod address;
pub mod capacity;
pub mod cgroups;
pub mod egress;
pub mod image;
pub mod netns;
pub mod oci;
pub mod sandbox;
pub mod worker;

pub use capacity::{Capacity, CapacityError};
pub use sandbox::{Area, Exec, ExecResult, Limits, Runtime, RuntimeConfig, SandboxSpec};

/// What can go wrong on a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This host cannot run sandboxes (not root, no namespaces...).
    #[error("sandboxes are unavailable on this worker: {0}")]
    Unsupported(String),
    /// The built-in image could not be prepared.
    #[error("image: {0}")]
    Image(String),
    /// A sandbox could not be created or driven.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The sandbox does not exist here, or has stopped.
    #[error("the sandbox is not running")]
    SandboxGone,
    /// Limits outside what the worker allows.
    #[error("limits: {0}")]
    Limits(String),
    /// Every sandbox slot of this worker is taken.
    #[error("this worker runs as many sandboxes as it can")]
    Full,
    /// A workspace file could not be read or written.
    #[error("file: {0}")]
    File(String),
    #[error("i/o: {0}")]
    Io(String),
}
