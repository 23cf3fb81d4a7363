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

pub mod control;
mod exec;
pub mod helper;
pub mod pool;
mod rootfs;
pub mod seccomp;
pub mod spec;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carapace_agent::protocol::{Reply, Request};
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

pub use exec::StreamEvent;
pub use spec::Limits;

use crate::egress::{self, Counters, Policy};
use crate::{Error, image, netns};

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
        let canonical =
            std::fs::canonicalize(&config.state_dir).map_err(|e| Error::Io(e.to_string()))?;
        let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
        let tag = digest
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let band = u32::from_le_bytes([digest[4], digest[5], digest[6], digest[7]]) % BANDS;
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
        if swap_in_use && !crate::cgroups::accounts_swap() {
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
        });
        pool::spawn_refill(&runtime);
        Ok(runtime)
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

    /// The built-in image's root directory.
    pub fn builtin_image(&self) -> &Path {
        &self.image
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

    /// Creates and starts a sandbox named `id` (letters, digits, `-`, `_`);
    /// returns once its agent has announced itself. A sandbox with the
    /// default limits starts from the pool when one is ready there.
    pub async fn create(&self, id: &str, spec: SandboxSpec) -> Result<(), Error> {
        if id.is_empty()
            || id.len() > 64
            || id.starts_with("pool-")
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Sandbox(format!("invalid sandbox id {id:?}")));
        }
        if let Some((field, lo, hi)) = spec.limits.out_of_bounds() {
            return Err(Error::Limits(format!(
                "{field} must be between {lo} and {hi}"
            )));
        }
        if spec.limits == Limits::default()
            && spec.image.is_none()
            && let Some(prepared) = self.pool.take()
        {
            let (container, slot) = (prepared.container.clone(), prepared.slot);
            match self.start_prepared(id, prepared, spec.egress.clone()).await {
                Ok(live) => {
                    self.insert(id, live);
                    return Ok(());
                }
                Err(e) => {
                    // A pooled container that cannot start is discarded;
                    // the sandbox is made from scratch instead.
                    tracing::warn!(container, error = %e, "a pooled container failed to start");
                    self.destroy(&container, None).await;
                    self.free_slot(slot);
                }
            }
        }
        let slot = self.take_slot()?;
        let started = match self
            .prepare(id, slot, spec.limits, spec.image.as_deref())
            .await
        {
            Ok(prepared) => self.start_prepared(id, prepared, spec.egress).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(live) => {
                self.insert(id, live);
                Ok(())
            }
            Err(e) => {
                self.destroy(id, None).await;
                self.free_slot(slot);
                Err(e)
            }
        }
    }

    fn insert(&self, id: &str, live: Live) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), Arc::new(live));
    }

    /// Creates container `container` (not started) in `slot`, with its
    /// control socket and its egress proxy socket.
    async fn prepare(
        &self,
        container: &str,
        slot: usize,
        limits: Limits,
        image: Option<&[PathBuf]>,
    ) -> Result<pool::Prepared, Error> {
        let bundle = self.bundles.join(container);
        std::fs::create_dir_all(&bundle).map_err(|e| Error::Io(format!("create bundle: {e}")))?;
        let mounted = self.mounts.join(container);
        if let Some(lower) = image {
            let (target, lower) = (mounted.clone(), lower.to_vec());
            tokio::task::spawn_blocking(move || rootfs::mount_overlay(&target, &lower))
                .await
                .map_err(|e| Error::Io(e.to_string()))??;
        }
        let host_id_base = self.id_base + u32::try_from(slot).unwrap_or(0) * spec::ID_RANGE;
        let config = spec::build(&spec::SpecInput {
            id: container,
            worker: &self.tag,
            rootfs: if image.is_some() {
                &mounted
            } else {
                &self.image
            },
            host_id_base,
            limits,
            init: if image.is_some() {
                image::OCI_AGENT_PATH
            } else {
                image::AGENT_PATH
            },
            limit_swap: crate::cgroups::accounts_swap(),
        });
        std::fs::write(bundle.join("config.json"), config.to_string())
            .map_err(|e| Error::Io(format!("write config.json: {e}")))?;

        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("control socket: {e}")))?;
        let output = tokio::process::Command::new(&self.config.helper)
            .args(&self.config.helper_args)
            .arg("create")
            .arg(&self.state_root)
            .arg(container)
            .arg(&bundle)
            // The helper (and the init until it runs the agent) gets
            // nothing of the worker's environment.
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(HELPER_TIMEOUT, output)
            .await
            .map_err(|_| Error::Sandbox("creating the container timed out".into()))?
            .map_err(|e| Error::Sandbox(format!("cannot run the container helper: {e}")))?;
        if !output.status.success() {
            let message = String::from_utf8_lossy(&output.stderr[..output.stderr.len().min(2000)])
                .trim()
                .to_owned();
            return Err(Error::Sandbox(format!(
                "container helper failed: {message}"
            )));
        }
        let pid = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .ok()
            .and_then(|v| v["pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| Error::Sandbox("the container helper printed no pid".into()))?;
        // The network namespace exists from creation on: bind the proxy now.
        let listener = tokio::task::spawn_blocking(move || netns::bind_loopback(pid, PROXY_PORT))
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        Ok(pool::Prepared {
            container: container.to_owned(),
            slot,
            pid,
            control: ours,
            listener,
        })
    }

    /// Starts a prepared container as sandbox `id`: signals its init, waits
    /// for the agent's `Ready`, serves its proxy with `egress`.
    async fn start_prepared(
        &self,
        id: &str,
        prepared: pool::Prepared,
        egress: Policy,
    ) -> Result<Live, Error> {
        let dir = self.state_root.join(&prepared.container);
        tokio::task::spawn_blocking(move || pool::signal_start(&dir))
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        prepared
            .control
            .set_nonblocking(true)
            .map_err(|e| Error::Io(e.to_string()))?;
        let stream = tokio::net::UnixStream::from_std(prepared.control)
            .map_err(|e| Error::Io(e.to_string()))?;
        let control = control::Control::connect(stream, READY_TIMEOUT).await?;
        let listener = tokio::net::TcpListener::from_std(prepared.listener)
            .map_err(|e| Error::Io(e.to_string()))?;
        let counters = Arc::new(Counters::default());
        let proxy = self.handle.spawn(egress::serve(
            listener,
            Arc::new(egress),
            counters.clone(),
            id.to_owned(),
        ));
        Ok(Live {
            container: prepared.container,
            pid: prepared.pid,
            slot: prepared.slot,
            busy: AtomicUsize::new(0),
            control,
            proxy,
            counters,
        })
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

    /// Writes `data` to `path` (relative, inside `/workspace`).
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), Error> {
        let (live, _busy) = self.enter(id)?;
        let path = workspace_path(path)?;
        if data.len() > MAX_FILE as usize {
            return Err(Error::Limits(format!(
                "files are limited to {MAX_FILE} bytes"
            )));
        }
        let request_id = live.control.next_id();
        let request = Request::WriteFile {
            id: request_id,
            path: path.into_bytes(),
            data,
        };
        match live
            .control
            .call(request_id, &request, Duration::from_secs(60))
            .await?
        {
            Reply::File { result: Ok(_), .. } => Ok(()),
            Reply::File { result: Err(e), .. } => Err(Error::File(e)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
    }

    /// Reads `path` (relative, inside `/workspace`).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, Error> {
        let (live, _busy) = self.enter(id)?;
        let path = workspace_path(path)?;
        let request_id = live.control.next_id();
        let request = Request::ReadFile {
            id: request_id,
            path: path.into_bytes(),
            max: MAX_FILE,
        };
        match live
            .control
            .call(request_id, &request, Duration::from_secs(60))
            .await?
        {
            Reply::File {
                result: Ok(data), ..
            } if data.len() <= MAX_FILE as usize => Ok(data),
            Reply::File { result: Ok(_), .. } => {
                Err(Error::Sandbox("the sandbox agent sent too much".into()))
            }
            Reply::File { result: Err(e), .. } => Err(Error::File(e)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
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

    /// Kills and removes container `id` (a container name) and its bundle.
    async fn destroy(&self, id: &str, live: Option<Arc<Live>>) {
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

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/workspace/<path>` for a relative path without `..`, or an error.
fn workspace_path(path: &str) -> Result<String, Error> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 1024
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(Error::File(format!(
            "{path:?} is not a path inside the workspace"
        )));
    }
    Ok(format!("/workspace/{trimmed}"))
}

async fn blocking<T: Send + 'static>(
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
fn reconcile(state_root: &Path, bundles: &Path, mounts: &Path, worker: &str) -> usize {
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

#[cfg(test)]
mod tests {
    use super::workspace_path;

    #[test]
    fn workspace_paths_stay_in_the_workspace() {
        assert_eq!(
            workspace_path("a/b.txt").ok().as_deref(),
            Some("/workspace/a/b.txt")
        );
        assert_eq!(workspace_path("/a").ok().as_deref(), Some("/workspace/a"));
        for bad in [
            "",
            "/",
            "..",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert!(workspace_path(bad).is_err(), "{bad:?}");
        }
        assert!(workspace_path(&"a/".repeat(600)).is_err());
    }
}
