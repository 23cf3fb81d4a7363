//! Making a sandbox: from the pool or from scratch (the helper creates the
//! container, its overlay root if it runs an OCI image, its control and
//! proxy sockets), then starting it.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError};

use super::{
    HELPER_TIMEOUT, Limits, Live, PROXY_PORT, READY_TIMEOUT, Runtime, SandboxSpec, control, pool,
    rootfs, spec,
};
use crate::egress::{self, Counters, Policy};
use crate::{Error, image, netns};

impl Runtime {
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

    pub(super) fn insert(&self, id: &str, live: Live) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), Arc::new(live));
    }

    /// Creates container `container` (not started) in `slot`, with its
    /// control socket and its egress proxy socket.
    pub(super) async fn prepare(
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
            limit_swap: self.limit_swap,
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
    pub(super) async fn start_prepared(
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
            self.egress_refusals.clone(),
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
}
