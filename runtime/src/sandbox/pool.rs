//! The pool: containers created ahead of time and not started.
//!
//! Creating a container (namespaces, id mapping, cgroups, mounts, the
//! seccomp filter) is most of a cold start. A pooled container has all of
//! that done, its control socket and its egress proxy socket ready, and its
//! init blocked before the agent runs; it belongs to no tenant and has run
//! nothing. A new sandbox with the default limits takes one, and starting
//! it is a signal: the agent's first instruction follows at once. The
//! egress policy is attached when it starts. A background task keeps the
//! pool at [`super::RuntimeConfig::pool_size`].

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use libcontainer::container::{Container, ContainerStatus};
use libcontainer::notify_socket::NOTIFY_FILE;
use tokio::sync::Notify;

use super::{Limits, Runtime};
use crate::Error;

/// A created, not started container.
pub(super) struct Prepared {
    pub container: String,
    pub slot: usize,
    pub pid: i32,
    /// The worker's end of the control socket (the agent's stdin/stdout).
    pub control: std::os::unix::net::UnixStream,
    /// The egress proxy's socket, bound inside the container's network
    /// namespace.
    pub listener: std::net::TcpListener,
}

/// The prepared containers and the refill task's signals.
#[derive(Default)]
pub(super) struct Pool {
    ready: Mutex<VecDeque<Prepared>>,
    closing: AtomicBool,
    refill: Arc<Notify>,
    seq: AtomicU64,
    /// Containers handed out since the start.
    taken: AtomicU64,
}

impl Pool {
    /// A prepared container, if one is ready; asks for a replacement.
    pub fn take(&self) -> Option<Prepared> {
        let taken = self
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if taken.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        self.refill.notify_one();
        taken
    }

    /// Prepared containers now.
    pub fn len(&self) -> usize {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops refilling and hands back what the pool held.
    pub fn close(&self) -> Vec<Prepared> {
        self.closing.store(true, Ordering::SeqCst);
        self.refill.notify_one();
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }
}

impl Runtime {
    /// Containers waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }

    /// Sandboxes that started from a pooled container, since the start.
    pub fn pool_hits(&self) -> u64 {
        self.pool.taken.load(Ordering::Relaxed)
    }
}

/// Starts the task that keeps the pool full. It holds the runtime only
/// while it works, and ends once the runtime is shut down or dropped.
pub(super) fn spawn_refill(runtime: &Arc<Runtime>) {
    if runtime.config.pool_size == 0 {
        return;
    }
    let weak: Weak<Runtime> = Arc::downgrade(runtime);
    let refill = runtime.pool.refill.clone();
    tokio::spawn(async move {
        loop {
            let notified = refill.notified();
            {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                if runtime.pool.closing.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = fill(&runtime).await {
                    tracing::warn!(error = %e, "cannot fill the sandbox pool; retrying in 5 s");
                    drop(runtime);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
            notified.await;
        }
    });
}

async fn fill(runtime: &Runtime) -> Result<(), Error> {
    while runtime.pool.len() < runtime.config.pool_size
        && !runtime.pool.closing.load(Ordering::SeqCst)
    {
        let slot = runtime.take_slot()?;
        let container = format!("pool-{}", runtime.pool.seq.fetch_add(1, Ordering::Relaxed));
        match runtime
            .prepare(&container, slot, Limits::default(), None)
            .await
        {
            Ok(prepared) => {
                let mut ready = runtime
                    .pool
                    .ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if runtime.pool.closing.load(Ordering::SeqCst) {
                    drop(ready);
                    runtime.destroy(&prepared.container, None).await;
                    runtime.free_slot(prepared.slot);
                    return Ok(());
                }
                ready.push_back(prepared);
            }
            Err(e) => {
                runtime.destroy(&container, None).await;
                runtime.free_slot(slot);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Lets a created container's init run (what libcontainer's `start` does,
/// without its `chdir`, which would move the whole process): connects to
/// the notify socket through `/proc/self/fd` (no path-length limit, no
/// working directory) and records the container as running.
pub(super) fn signal_start(dir: &Path) -> Result<(), Error> {
    let handle = std::fs::File::open(dir)
        .map_err(|e| Error::Sandbox(format!("container state missing: {e}")))?;
    let socket = format!("/proc/self/fd/{}/{NOTIFY_FILE}", handle.as_raw_fd());
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| Error::Sandbox(format!("the container is not waiting to start: {e}")))?;
    stream
        .write_all(b"start container")
        .map_err(|e| Error::Sandbox(format!("cannot start the container: {e}")))?;
    drop(stream);
    let mut container = Container::load(dir.to_path_buf())
        .map_err(|e| Error::Sandbox(format!("container state: {e}")))?;
    container
        .set_status(ContainerStatus::Running)
        .save()
        .map_err(|e| Error::Sandbox(format!("container state: {e}")))?;
    Ok(())
}
