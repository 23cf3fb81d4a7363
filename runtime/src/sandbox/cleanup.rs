//! Taking sandboxes away: one on delete, or everything a previous run of
//! the worker left (containers, bundles, mounts, cgroups).

use std::path::Path;
use std::sync::Arc;

use libcontainer::container::Container;
use libcontainer::signal::Signal;

use super::{Live, Runtime, rootfs};
use crate::Error;

impl Runtime {
    /// Kills and removes container `id` (a container name) and its bundle.
    pub(super) async fn destroy(&self, id: &str, live: Option<Arc<Live>>) {
        if let Some(live) = &live {
            live.proxy.abort();
        }
        let (container_dir, bundle) = (self.state_root.join(id), self.bundles.join(id));
        let mounted = self.mounts.join(id);
        let result = blocking(move || {
            let outcome = remove_container(&container_dir);
            let _ = std::fs::remove_dir_all(&bundle);
            rootfs::unmount(&mounted);
            outcome
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(sandbox = id, error = %e, "sandbox removal incomplete");
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, libcontainer::error::LibcontainerError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(e.to_string()))?
        .map_err(|e| Error::Sandbox(format!("container: {e}")))
}

/// Kills every process of a container and deletes it (cgroups and state).
fn remove_container(dir: &Path) -> Result<(), libcontainer::error::LibcontainerError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut container = Container::load(dir.to_path_buf())?;
    if container.can_kill() {
        let _ = container.kill(Signal::from(nix::sys::signal::Signal::SIGKILL), true);
    }
    container.delete(true)
}

/// Removes every container and bundle under the worker's state: called at
/// start, when nothing there can belong to a live sandbox. Returns how many
/// containers were removed.
pub(super) fn reconcile(state_root: &Path, bundles: &Path, mounts: &Path, worker: &str) -> usize {
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(state_root) {
        for entry in entries.flatten() {
            let dir = entry.path();
            match remove_container(&dir) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a leftover container");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(bundles) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    rootfs::unmount_all(mounts);
    removed += crate::cgroups::remove_leftovers(worker);
    removed
}
