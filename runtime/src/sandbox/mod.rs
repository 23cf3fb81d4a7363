//! Sandboxes on this worker: create, exec, files, delete, and the clean-up
//! of whatever a crashed worker left behind.
//!
//! One sandbox is one libcontainer container whose init is
//! `carapace-agent`, with the hardened spec of [`spec`]. Creating and
//! starting one forks and changes the working directory, so it happens in
//! the [`helper`] process; signalling and deleting do neither and run on
//! tokio's blocking pool. Commands and
//! file transfers go over the sandbox's control socket ([`control`]), so
//! an exec costs a message, not a container operation.

mod cleanup;
pub mod control;
mod create;
mod exec;
mod files;
pub mod helper;
pub mod pool;
mod rootfs;
pub mod seccomp;
pub mod spec;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use cleanup::reconcile;
pub use exec::StreamEvent;
pub use files::Area;
pub use spec::Limits;

use crate::egress::{Counters, Policy};
use crate::{Error, image};

/// Port of the egress proxy on the sandbox's loopback.
pub const PROXY_PORT: u16 = 3128;
/// First host uid/gid handed to sandboxes. Above it, the id space is cut
/// into bands of [`MAX_SANDBOXES`] ranges of [`spec::ID_RANGE`] ids; a
/// worker takes the band its tag picks, and each of its sandboxes one range
/// of that band. (Two workers on one host may pick the same band; one
/// worker per host is the deployment this is built for.)
const HOST_ID_BASE: u32 = 1 << 28;
/// Sandboxes at once on one worker.
pub const MAX_SANDBOXES: usize = 1024;
const BANDS: u32 = ((u32::MAX - HOST_ID_BASE) / (MAX_SANDBOXES as u32 * spec::ID_RANGE)) - 1;
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes kept of a command's stdout and of its stderr.
pub const MAX_OUTPUT: u32 = 1 << 20;
/// Commands and file transfers running at once in one sandbox.
pub const MAX_IN_FLIGHT: usize = 8;
/// Largest file moved into or out of a workspace in one call.
pub const MAX_FILE: u32 = 32 << 20;

/// How this worker runs sandboxes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where container state and bundles live (may be private: 0700).
    pub state_dir: PathBuf,
    /// The image cache. Sandboxes open their root filesystem from inside
    /// their user namespace, as an unprivileged host id: every directory on
    /// this path must be searchable by others (`o+x`). It may be shared by
    /// all workers of a host.
    pub image_dir: PathBuf,
    /// The program that runs [`helper::main`], and the arguments before
    /// the helper's own (e.g. `carapace` and `["sandbox-helper"]`).
    pub helper: PathBuf,
    pub helper_args: Vec<OsString>,
    /// A static busybox for the built-in image.
    pub busybox: PathBuf,
    /// Containers kept created but not started, with the default limits,
    /// so that a new sandbox only has to start one (see [`pool`]).
    pub pool_size: usize,
}

/// A command to run in a sandbox.
#[derive(Debug, Clone)]
pub struct Exec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

/// How it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The exit code; 128+N when killed by signal N, as shells report it;
    /// `None` if the command timed out or could not start.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Why the command could not start, if it could not.
    pub error: Option<String>,
    /// The kernel's OOM killer killed a process of the sandbox while the
    /// command ran (the sandbox is over its memory limit).
    pub oom_killed: bool,
}

/// What a new sandbox gets.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub limits: Limits,
    pub egress: Policy,
    /// The layer directories of an OCI image, top first
    /// ([`Runtime::ensure_image`]); the built-in image when `None`.
    pub image: Option<Vec<PathBuf>>,
}

struct Live {
    /// The container's name (the sandbox id, or `pool-N` for a sandbox
    /// that was started from the pool).
    container: String,
    pid: i32,
    slot: usize,
    /// Requests (execs, transfers) in flight.
    busy: AtomicUsize,
    control: control::Control,
    proxy: JoinHandle<()>,
    counters: Arc<Counters>,
}

/// The sandboxes of this worker.
pub struct Runtime {
    config: RuntimeConfig,
    /// Short digest of the state directory: names this worker's cgroups.
    tag: String,
    id_base: u32,
    image: PathBuf,
    state_root: PathBuf,
    bundles: PathBuf,
    slots: Mutex<Vec<bool>>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    pool: pool::Pool,
    /// The tokio runtime the worker was started on: every task of a
    /// sandbox (control reader, proxy, streams) runs there, whoever asked.
    handle: tokio::runtime::Handle,
    /// Where OCI images are mounted for this worker's sandboxes.
    mounts: PathBuf,
    /// Whether memory plus swap can be limited (see `cgroups::accounts_swap`).
    limit_swap: bool,
    /// Destinations refused by any sandbox's egress proxy.
    egress_refusals: tokio::sync::broadcast::Sender<crate::egress::Refused>,
}

/// Egress counters of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressCounts {
    pub allowed: u64,
    pub refused: u64,
}

impl Runtime {
    /// Prepares the state directory, builds the built-in image if needed
    /// and removes every sandbox a previous run of this worker left
    /// (containers, cgroups, bundles): none of them is known any more.
    /// Also starts filling the pool of created containers in the
    /// background.
    pub async fn start(config: RuntimeConfig) -> Result<Arc<Self>, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Unsupported(
                "sandboxes need the worker to run as root".into(),
            ));
        }
        let state_root = config.state_dir.join("containers");
        let bundles = config.state_dir.join("bundles");
        for dir in [&config.state_dir, &state_root, &bundles] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Io(format!("create {}: {e}", dir.display())))?;
        }
        let (cache, busybox) = (config.image_dir.clone(), config.busybox.clone());
        let image = tokio::task::spawn_blocking(move || image::ensure_builtin(&cache, &busybox))
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        let (tag, band) = tag_of(&config.state_dir)?;
        let id_base = HOST_ID_BASE + band * (MAX_SANDBOXES as u32) * spec::ID_RANGE;
        let mounts = config.image_dir.join("mnt").join(&tag);
        let (root, bundle_dir, mount_dir, worker) = (
            state_root.clone(),
            bundles.clone(),
            mounts.clone(),
            tag.clone(),
        );
        let removed =
            tokio::task::spawn_blocking(move || reconcile(&root, &bundle_dir, &mount_dir, &worker))
                .await
                .map_err(|e| Error::Io(e.to_string()))?;
        let swap_in_use =
            std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
        // Probed once: whether the host accounts swap does not change.
        let limit_swap = crate::cgroups::accounts_swap();
        if swap_in_use && !limit_swap {
            tracing::warn!(
                "this host has swap but no swap accounting: sandboxes may swap beyond their memory limit"
            );
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed sandboxes left by a previous run of this worker"
            );
        }
        let runtime = Arc::new(Runtime {
            config,
            tag,
            id_base,
            image,
            state_root,
            bundles,
            slots: Mutex::new(vec![false; MAX_SANDBOXES]),
            live: Mutex::default(),
            pool: pool::Pool::default(),
            handle: tokio::runtime::Handle::current(),
            mounts,
            limit_swap,
            egress_refusals: tokio::sync::broadcast::channel(256).0,
        });
        pool::spawn_refill(&runtime);
        Ok(runtime)
    }

    /// Destinations the egress proxies refuse from now on, as they happen
    /// (a listener that lags loses the oldest).
    pub fn egress_refusals(&self) -> tokio::sync::broadcast::Receiver<crate::egress::Refused> {
        self.egress_refusals.subscribe()
    }

    /// The tokio runtime the worker runs its tasks on. Callers on another
    /// runtime (an HTTP worker thread's) should run [`Runtime::create`] on
    /// this one, so that the sandbox's sockets and tasks live here.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// This worker's tag: a digest of its state directory, the same across
    /// restarts on that directory and different for every other worker on
    /// the host.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Unpacks (once; then cached) the image `reference` of the OCI image
    /// layout directory `layout` into the image cache, every blob checked;
    /// its root, for [`SandboxSpec::image`]. `progress` hears `(layer,
    /// layers, bytes read, layer size)`.
    pub async fn ensure_image(
        &self,
        layout: PathBuf,
        reference: Option<String>,
        mut progress: impl FnMut(usize, usize, u64, u64) + Send + 'static,
    ) -> Result<Vec<PathBuf>, Error> {
        let cache = self.config.image_dir.clone();
        tokio::task::spawn_blocking(move || {
            image::ensure_oci(
                &cache,
                &layout,
                reference.as_deref(),
                &crate::oci::Limits::default(),
                &mut progress,
            )
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
    }

    fn take_slot(&self) -> Result<usize, Error> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.iter().position(|used| !used).ok_or(Error::Full)?;
        slots[slot] = true;
        Ok(slot)
    }

    fn free_slot(&self, slot: usize) {
        if let Some(s) = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(slot)
        {
            *s = false;
        }
    }

    /// Whether a request is running in the sandbox (an idle timeout must
    /// not take it away under a long command).
    pub fn is_busy(&self, id: &str) -> bool {
        self.get(id)
            .is_ok_and(|l| l.busy.load(Ordering::SeqCst) > 0)
    }

    /// The sandboxes on this worker.
    pub fn ids(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The sandbox, counted busy until the guard drops.
    /// At most [`MAX_IN_FLIGHT`] at once per sandbox: each holds buffers
    /// of up to a few MiB in the worker.
    fn enter(&self, id: &str) -> Result<(Arc<Live>, Busy), Error> {
        let live = self.get(id)?;
        let previous = live.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(live.clone());
        if previous >= MAX_IN_FLIGHT {
            return Err(Error::Limits(format!(
                "at most {MAX_IN_FLIGHT} commands and transfers at once per sandbox"
            )));
        }
        Ok((live, busy))
    }

    fn get(&self, id: &str) -> Result<Arc<Live>, Error> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or(Error::SandboxGone)
    }

    /// Whether the sandbox exists here and its agent is alive.
    pub fn is_alive(&self, id: &str) -> bool {
        self.get(id).is_ok_and(|live| !live.control.is_closed())
    }

    /// Host pid of the sandbox's init (for tests and diagnostics).
    pub fn pid(&self, id: &str) -> Option<i32> {
        self.get(id).ok().map(|l| l.pid)
    }

    /// Egress connections allowed and refused so far.
    pub fn egress_counts(&self, id: &str) -> Option<EgressCounts> {
        self.get(id).ok().map(|l| EgressCounts {
            allowed: l
                .counters
                .allowed
                .load(std::sync::atomic::Ordering::Relaxed),
            refused: l
                .counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Kills and removes a sandbox and everything it had on this host.
    /// Deleting one that is not here is not an error.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let slot = live.as_ref().map(|l| l.slot);
        let container = live
            .as_ref()
            .map_or_else(|| id.to_owned(), |l| l.container.clone());
        self.destroy(&container, live).await;
        if let Some(slot) = slot {
            self.free_slot(slot);
        }
        Ok(())
    }

    /// Deletes every sandbox of this worker and empties the pool (on
    /// shutdown).
    pub async fn shutdown(&self) {
        for prepared in self.pool.close() {
            self.destroy(&prepared.container, None).await;
            self.free_slot(prepared.slot);
        }
        let ids: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.delete(&id).await;
        }
    }

    /// Sandboxes currently on this worker.
    pub fn count(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Marks a sandbox busy while it lives.
struct Busy(Arc<Live>);

/// The worker's tag (names its cgroups and mounts) and id band, both from
/// a digest of its state directory.
fn tag_of(state_dir: &Path) -> Result<(String, u32), Error> {
    let canonical = std::fs::canonicalize(state_dir).map_err(|e| Error::Io(e.to_string()))?;
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let tag = digest
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let band = u32::from_le_bytes([digest[4], digest[5], digest[6], digest[7]]) % BANDS;
    Ok((tag, band))
}

/// Removes every sandbox a worker on `state_dir` (with image cache
/// `image_dir`) has or had: containers, bundles, mounts, cgroups. What a
/// restarted worker does at start, for tools and tests that end a worker
/// without its `shutdown`. Blocking.
pub fn clean_up(state_dir: &Path, image_dir: &Path) -> usize {
    let Ok((tag, _)) = tag_of(state_dir) else {
        return 0;
    };
    reconcile(
        &state_dir.join("containers"),
        &state_dir.join("bundles"),
        &image_dir.join("mnt").join(&tag),
        &tag,
    )
}

/// A worker dropped without `shutdown` (a test's, or one torn down by a
/// panic) leaves nothing running behind it.
impl Drop for Runtime {
    fn drop(&mut self) {
        // Sockets first (agents see their end), then everything on disk
        // and in the cgroup trees, as a restart would.
        drop(std::mem::take(
            &mut *self.live.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        drop(self.pool.close());
        reconcile(&self.state_root, &self.bundles, &self.mounts, &self.tag);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}
