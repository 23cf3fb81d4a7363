//! Tenants' sandboxes, the control plane's side: settings, the worker that
//! runs them, and housekeeping (idle timeout, sandboxes lost to a restart).
//!
//! Until the scheduler lands, `carapace serve` drives one in-process worker
//! (`carapace_runtime::Runtime`, named [`LOCAL_WORKER`]) directly; every
//! call to it goes through [`SandboxService`], which is the seam the
//! scheduler's placement will replace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use carapace_runtime::egress::Policy;
use carapace_runtime::{Runtime, RuntimeConfig, SandboxSpec};
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use crate::audit::{Actor, Outcome};
use crate::db::{self, SandboxState, TenantScope};
use crate::error::Error;
use crate::ids::SandboxId;

/// Prefix of the name under which an in-process worker's sandboxes are
/// recorded: `local-<tag>`, the tag naming its state directory, so that a
/// restart on the same directory finds its own sandboxes and replicas with
/// their own directories never touch each other's.
const LOCAL_WORKER: &str = "local";
/// The host name under which a sandbox reaches Carapace (gateway, memory)
/// through its egress proxy: `http://carapace.internal/...`.
pub const SERVICE_HOST: &str = "carapace.internal";

/// Whether this server runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Run them if this host can (root, namespaces); otherwise answer 503.
    Auto,
    /// Run them; refuse to start if this host cannot.
    On,
    /// Do not run them; the sandbox API answers 503.
    Off,
}

/// The `[sandbox]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxArgs {
    /// Where containers' state and bundles live.
    /// [default: `<data_dir>/sandboxes`]
    pub state_dir: Option<PathBuf>,
    /// The image cache, shared by the workers of a host. Every directory on
    /// its path must be searchable by others (`o+x`): sandboxes open their
    /// root filesystem as an unprivileged user. [default:
    /// `/var/lib/carapace/images`]
    pub image_dir: Option<PathBuf>,
    /// A static busybox for the built-in image. [default: `/bin/busybox`,
    /// from Debian's `busybox-static`]
    pub busybox: Option<PathBuf>,
    /// The `carapace` binary that runs the container helper
    /// (`carapace sandbox-helper`). [default: this binary]
    pub helper: Option<PathBuf>,
    /// Sandboxes one tenant may have at once. [default: 10]
    pub max_per_tenant: Option<u64>,
    /// Seconds without an exec or file transfer after which a sandbox is
    /// deleted. [default: 600]
    pub idle_timeout_secs: Option<u64>,
    /// Longest `timeout_s` an exec may ask for. [default: 600]
    pub max_exec_timeout_secs: Option<u64>,
    /// Containers kept created (not started, belonging to no tenant) so
    /// that a sandbox with the default limits starts at once; each costs
    /// about 2 MiB. 0 turns the pool off. [default: 2]
    pub pool_size: Option<usize>,
    /// Images tenants may name besides `builtin`: reference → OCI image
    /// layout directory on this host (one image per layout), e.g.
    /// `"ghcr.io/acme/tools:1" = "/srv/images/tools"`. Unpacked on first
    /// use (or ahead with `carapace image unpack`). [default: none]
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, PathBuf>,
}

/// Resolved sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub state_dir: PathBuf,
    pub image_dir: PathBuf,
    pub busybox: PathBuf,
    pub helper: Option<PathBuf>,
    pub max_per_tenant: u64,
    pub idle_timeout: Duration,
    pub max_exec_timeout: Duration,
    pub pool_size: usize,
    pub images: std::collections::BTreeMap<String, PathBuf>,
}

impl SandboxArgs {
    /// Checks and fills in defaults.
    pub fn resolve(
        self,
        mode: SandboxMode,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<SandboxConfig> {
        let max_per_tenant = self.max_per_tenant.unwrap_or(10);
        if !(1..=1000).contains(&max_per_tenant) {
            anyhow::bail!("sandbox.max_per_tenant must be between 1 and 1000");
        }
        let idle = self.idle_timeout_secs.unwrap_or(600);
        if !(2..=7 * 86_400).contains(&idle) {
            anyhow::bail!("sandbox.idle_timeout_secs must be between 2 and 604800");
        }
        let max_exec = self.max_exec_timeout_secs.unwrap_or(600);
        if !(1..=86_400).contains(&max_exec) {
            anyhow::bail!("sandbox.max_exec_timeout_secs must be between 1 and 86400");
        }
        let pool_size = self.pool_size.unwrap_or(2);
        if pool_size > 64 {
            anyhow::bail!("sandbox.pool_size must be at most 64");
        }
        Ok(SandboxConfig {
            mode,
            pool_size,
            images: self.images,
            state_dir: self.state_dir.unwrap_or_else(|| data_dir.join("sandboxes")),
            image_dir: self
                .image_dir
                .unwrap_or_else(|| "/var/lib/carapace/images".into()),
            busybox: self.busybox.unwrap_or_else(|| "/bin/busybox".into()),
            helper: self.helper,
            max_per_tenant,
            idle_timeout: Duration::from_secs(idle),
            max_exec_timeout: Duration::from_secs(max_exec),
        })
    }
}

/// The sandboxes of this server, or why there are none.
pub struct SandboxService {
    runtime: Result<Arc<Runtime>, String>,
    /// The worker's name in sandbox records.
    worker: String,
    config: SandboxConfig,
    /// Where sandboxes reach Carapace through their proxy; set once the
    /// listener is bound.
    service_addr: OnceLock<SocketAddr>,
    /// Offered images already unpacked: reference → layer directories. A layout changed
    /// on disk is seen after a restart.
    images: std::sync::Mutex<std::collections::HashMap<String, Vec<PathBuf>>>,
    /// Held while an image is being prepared.
    preparing: tokio::sync::Mutex<()>,
}

impl SandboxService {
    /// Starts the local worker (removing whatever a previous run left) and
    /// records every sandbox the previous run had as lost.
    pub async fn start(config: SandboxConfig, db: &DatabaseConnection) -> anyhow::Result<Self> {
        let runtime = match config.mode {
            SandboxMode::Off => Err("sandboxes are turned off on this server".to_owned()),
            SandboxMode::Auto | SandboxMode::On => {
                let helper = match &config.helper {
                    Some(path) => path.clone(),
                    None => std::env::current_exe()?,
                };
                let started = Runtime::start(RuntimeConfig {
                    state_dir: config.state_dir.clone(),
                    image_dir: config.image_dir.clone(),
                    helper,
                    helper_args: vec!["sandbox-helper".into()],
                    busybox: config.busybox.clone(),
                    pool_size: config.pool_size,
                })
                .await;
                match started {
                    Ok(runtime) => Ok(runtime),
                    Err(e) if config.mode == SandboxMode::Auto => {
                        tracing::warn!(error = %e, "sandboxes unavailable on this server");
                        Err(e.to_string())
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("sandbox = \"on\"")),
                }
            }
        };
        let worker = match &runtime {
            Ok(runtime) => format!("{LOCAL_WORKER}-{}", runtime.tag()),
            Err(_) => LOCAL_WORKER.to_owned(),
        };
        let lost = db::sandboxes_of_worker(db, &worker, None).await?;
        for (tenant, id) in &lost {
            TenantScope::new(db, tenant)
                .set_sandbox_state(id, SandboxState::Lost)
                .await?;
        }
        if !lost.is_empty() {
            tracing::warn!(
                count = lost.len(),
                "sandboxes of the previous run recorded as lost"
            );
        }
        if runtime.is_ok() {
            tracing::info!(state_dir = %config.state_dir.display(), "sandboxes ready");
        }
        Ok(SandboxService {
            runtime,
            worker,
            config,
            service_addr: OnceLock::new(),
            images: std::sync::Mutex::default(),
            preparing: tokio::sync::Mutex::new(()),
        })
    }

    /// The worker's name in sandbox records.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Tells sandboxes where the server listens (loopback if it listens on
    /// all addresses).
    pub fn set_service_addr(&self, mut addr: SocketAddr) {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = self.service_addr.set(addr);
    }

    /// Where sandboxes reach this server (loopback:8080 before the
    /// listener is bound).
    pub fn service_addr(&self) -> SocketAddr {
        self.service_addr
            .get()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The worker (shared), or 503 with the reason.
    pub fn runtime_arc(&self) -> Result<Arc<Runtime>, Error> {
        self.runtime.clone().map_err(Error::Unavailable)
    }

    /// 422 for an image this server does not offer (nothing is prepared).
    pub fn check_offered(&self, reference: &str) -> Result<(), Error> {
        if reference == "builtin" || self.config.images.contains_key(reference) {
            return Ok(());
        }
        let offered: Vec<&str> = std::iter::once("builtin")
            .chain(self.config.images.keys().map(String::as_str))
            .collect();
        Err(Error::Invalid {
            field: "image",
            message: format!("this server offers these images: {}", offered.join(", ")),
        })
    }

    /// The worker, or 503 with the reason.
    pub fn runtime(&self) -> Result<&Runtime, Error> {
        self.runtime
            .as_deref()
            .map_err(|reason| Error::Unavailable(reason.clone()))
    }

    /// The layers of image `reference` to mount (`None` for `builtin`),
    /// unpacked on first use; 422 for an image this server does not offer.
    pub async fn image(&self, reference: &str) -> Result<Option<Vec<PathBuf>>, Error> {
        if reference == "builtin" {
            return Ok(None);
        }
        let runtime = self.runtime()?;
        self.check_offered(reference)?;
        let Some(layout) = self.config.images.get(reference) else {
            return Ok(None);
        };
        let known = || {
            self.images
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(reference)
                .cloned()
                .filter(|lower| lower.iter().all(|dir| dir.is_dir()))
        };
        if let Some(root) = known() {
            return Ok(Some(root));
        }
        // One preparation at a time: concurrent first uses of an image wait
        // for the first one instead of each unpacking their own copy (an
        // image already prepared is served above, without waiting).
        let _preparing = self.preparing.lock().await;
        if let Some(root) = known() {
            return Ok(Some(root));
        }
        let name = reference.to_owned();
        let root = runtime
            .ensure_image(layout.clone(), None, move |layer, layers, read, size| {
                if read == size {
                    tracing::info!(image = %name, layer, layers, bytes = size, "image layer unpacked");
                }
            })
            .await
            .map_err(|e| {
                tracing::error!(image = %reference, error = %e, "image cannot be used");
                Error::Unavailable(format!("the image {reference} cannot be used on this server"))
            })?;
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(reference.to_owned(), root.clone());
        Ok(Some(root))
    }

    /// The worker's view of a new sandbox.
    pub fn spec(
        &self,
        limits: carapace_runtime::Limits,
        egress_allow: &[String],
        image: Option<Vec<PathBuf>>,
    ) -> SandboxSpec {
        let services = self
            .service_addr
            .get()
            .map(|addr| vec![(SERVICE_HOST.to_owned(), 80, *addr)])
            .unwrap_or_default();
        SandboxSpec {
            limits,
            egress: Policy {
                allow_hosts: egress_allow.to_vec(),
                services,
            },
            image,
        }
    }

    /// Deletes sandboxes idle for longer than the idle timeout (none with a
    /// command running) and containers whose record is gone, checking
    /// every 10 s (or every half timeout, if shorter), until the task is
    /// aborted.
    pub async fn reap_idle(self: Arc<Self>, db: DatabaseConnection) {
        let every = (self.config.idle_timeout / 2).min(Duration::from_secs(10));
        let Ok(runtime) = self.runtime.clone() else {
            return;
        };
        let actor = Actor {
            principal: "system:idle-timeout".to_owned(),
            client_ip: None,
            request_id: None,
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.remove_orphans(&runtime, &db).await;
            let Ok(since) = chrono::Duration::from_std(self.config.idle_timeout) else {
                return;
            };
            let idle =
                match db::sandboxes_of_worker(&db, &self.worker, Some(chrono::Utc::now() - since))
                    .await
                {
                    Ok(idle) => idle,
                    Err(e) => {
                        tracing::warn!(error = ?e, "cannot list idle sandboxes");
                        continue;
                    }
                };
            for (tenant, id) in idle {
                if runtime.is_busy(id.as_str()) {
                    continue;
                }
                let _ = runtime.delete(id.as_str()).await;
                let event = actor
                    .event("sandbox.delete", Outcome::Success)
                    .reason("idle timeout");
                match TenantScope::new(&db, &tenant)
                    .delete_sandbox(&id, Some(event))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(sandbox = %id, tenant = %tenant, "idle sandbox deleted")
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = ?e, "cannot delete an idle sandbox")
                    }
                }
            }
        }
    }

    /// Deletes containers whose record is gone (their tenant was deleted,
    /// e.g. by `carapace tenant delete` from another process).
    async fn remove_orphans(&self, runtime: &Runtime, db: &DatabaseConnection) {
        // Containers first, records second: a sandbox created in between
        // has its record before its container, so it is never taken for an
        // orphan.
        let containers = runtime.ids();
        let Ok(records) = db::sandboxes_of_worker(db, &self.worker, None).await else {
            return;
        };
        let known: std::collections::HashSet<String> =
            records.into_iter().map(|(_, id)| id.to_string()).collect();
        // Runs' containers (`run_…`) belong to the worker's runs, not here.
        let sandboxes = containers
            .into_iter()
            .filter(|id| id.starts_with(crate::ids::SandboxId::PREFIX));
        for id in sandboxes.filter(|id| !known.contains(id)) {
            tracing::warn!(sandbox = %id, "removing a sandbox whose record is gone");
            let _ = runtime.delete(&id).await;
        }
    }

    /// Deletes every sandbox of the local worker (on shutdown).
    pub async fn shutdown(&self) {
        if let Ok(runtime) = &self.runtime {
            runtime.shutdown().await;
        }
    }

    /// Removes a sandbox's container, if it has one here.
    pub async fn remove(&self, id: &SandboxId) {
        if let Ok(runtime) = &self.runtime {
            let _ = runtime.delete(id.as_str()).await;
        }
    }
}
