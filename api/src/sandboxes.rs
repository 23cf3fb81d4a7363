//! Tenants' sandboxes, the control plane's side: settings, this server's
//! own sandbox runtime (which its in-process worker uses), and housekeeping
//! (the idle timeout, records of sandboxes whose run ended).
//!
//! A sandbox is an interactive run: the scheduler places it on a worker
//! like any run, and the sandbox API's commands and file transfers reach it
//! through that worker's connection (`crate::fleet`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use carapace_runtime::{Runtime, RuntimeConfig};
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use crate::audit::{Actor, Outcome};
use std::time::Instant;

use carapace_scheduler::RunState;
use carapace_scheduler::store;

use crate::db::{self, NewSandbox, Sandbox, SandboxState, TenantScope};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::ids::TenantId;

/// The host name under which a sandbox reaches Carapace (gateway, memory)
/// through its egress proxy: `http://carapace.internal/...`.
pub use carapace_runtime::worker::SERVICE_HOST;

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

/// This server's sandbox settings and runtime (or why it has none).
pub struct SandboxService {
    runtime: Result<Arc<Runtime>, String>,
    config: SandboxConfig,
    /// Where sandboxes reach Carapace through their proxy; set once the
    /// listener is bound.
    service_addr: OnceLock<SocketAddr>,
}

impl SandboxService {
    /// Starts this server's sandbox runtime (removing whatever a previous
    /// run left), unless sandboxes are off here.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Self> {
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
        if runtime.is_ok() {
            tracing::info!(state_dir = %config.state_dir.display(), "sandboxes ready");
        }
        Ok(SandboxService {
            runtime,
            config,
            service_addr: OnceLock::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Why this server runs no sandboxes itself, if it runs none.
    pub fn local_unavailable(&self) -> Option<&str> {
        self.runtime.as_ref().err().map(String::as_str)
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

    /// This server's runtime (shared), or 503 with the reason.
    pub fn runtime_arc(&self) -> Result<Arc<Runtime>, Error> {
        self.runtime.clone().map_err(Error::Unavailable)
    }

    /// 422 for an image this server does not offer.
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

    /// Deletes sandboxes idle for longer than their idle timeout (none
    /// with a call in flight here), checking every second (or every half
    /// timeout, if shorter: agents' sandboxes have timeouts of their own),
    /// and every ten checks records as lost those whose run ended, until
    /// the task is aborted. Every replica runs it; each step is idempotent.
    pub async fn reap_idle(self: Arc<Self>, db: DatabaseConnection, fleet: Arc<Fleet>) {
        // Agents' sandboxes may have idle timeouts of a few seconds.
        let every = (self.config.idle_timeout / 2).min(Duration::from_secs(1));
        let actor = Actor {
            principal: "system:idle-timeout".to_owned(),
            client_ip: None,
            request_id: None,
        };
        let Ok(idle_for) = chrono::Duration::from_std(self.config.idle_timeout) else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            // The writes every 10 ticks (each takes SQLite's write lock),
            // but a sandbox with a call in flight here is noted as in use
            // at every check, so that no other replica's reaper takes it
            // for idle.
            if ticks.is_multiple_of(10)
                && let Err(e) = db::mark_ended_sandboxes_lost(&db).await
            {
                tracing::warn!(error = ?e, "cannot record ended sandboxes");
            }
            let busy = fleet.runs_with_calls();
            if let Err(e) = db::touch_sandboxes_of_runs(&db, &busy).await {
                tracing::warn!(error = ?e, "cannot record busy sandboxes");
            }
            ticks += 1;
            let idle = match db::idle_sandboxes(&db, chrono::Utc::now(), idle_for).await {
                Ok(idle) => idle,
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot list idle sandboxes");
                    continue;
                }
            };
            for (tenant, id, run) in idle {
                if run
                    .as_deref()
                    .is_some_and(|run| fleet.calls_in_flight(run) > 0)
                {
                    continue;
                }
                let scope = TenantScope::new(&db, &tenant);
                if let Some(run) = &run
                    && let Ok(run) = scope.stop_sandbox_run(run).await
                {
                    fleet.deliver_cancel(&run).await;
                }
                let event = actor
                    .event("sandbox.delete", Outcome::Success)
                    .reason("idle timeout");
                match scope.delete_sandbox(&id, Some(event)).await {
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

    /// Deletes every sandbox of this server's runtime (on shutdown).
    pub async fn shutdown(&self) {
        if let Ok(runtime) = &self.runtime {
            runtime.shutdown().await;
        }
    }
}

/// How long a new sandbox may wait for a worker and start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Records a sandbox, queues its interactive run and waits until it runs
/// (at most [`START_TIMEOUT`]): the sandbox, running; or an error, with the
/// record removed. The start goes on to its end even if the caller goes
/// away, so that the record always ends running or deleted.
pub async fn start_sandbox(
    state: &actix_web::web::Data<crate::state::AppState>,
    tenant: TenantId,
    actor: Actor,
    new: NewSandbox,
) -> Result<Sandbox, Error> {
    let image = new.image.clone();
    state.sandboxes.check_offered(&image)?;
    // Fail fast when no worker could take it.
    let offered = store::workers::any_offering(&state.db, &image)
        .await
        .map_err(crate::db::store_error)?;
    if !offered {
        let local = state
            .sandboxes
            .local_unavailable()
            .map(|why| format!("{why}, and "))
            .unwrap_or_default();
        return Err(Error::Unavailable(format!(
            "{local}no connected worker offers the image {image}"
        )));
    }
    let scope = TenantScope::new(&state.db, &tenant);
    // The record and its run first: the quota holds before anything starts.
    let sandbox = scope
        .create_sandbox(new, state.sandboxes.config().max_per_tenant)
        .await?;
    state.fleet.wake();
    // The rest runs to its end even if the client goes away, so that the
    // record always ends running or deleted.
    let app = state.clone();
    let started = tokio::spawn(async move {
        let scope = crate::db::TenantScope::new(&app.db, &tenant);
        let run_id = sandbox
            .run_id
            .clone()
            .ok_or_else(|| Error::Unexpected(anyhow::anyhow!("a new sandbox without a run")))?;
        let begun = Instant::now();
        let run = app
            .fleet
            .wait_run(tenant.as_str(), &run_id, START_TIMEOUT, |r| {
                !matches!(
                    r.state,
                    RunState::Queued | RunState::Placed | RunState::Starting
                )
            })
            .await
            .map_err(crate::db::store_error)?;
        if let (RunState::Running, Some(worker)) = (run.state, run.worker.as_deref()) {
            scope
                .sandbox_started(
                    &sandbox.id,
                    worker,
                    actor.event("sandbox.create", Outcome::Success),
                )
                .await?;
            tracing::info!(sandbox = %sandbox.id, tenant = %tenant, worker, ms = begun.elapsed().as_millis() as u64, "sandbox started");
            return Ok(Sandbox {
                state: SandboxState::Running,
                worker: worker.to_owned(),
                ..sandbox
            });
        }
        let why = if run.state == RunState::Queued {
            "no worker had room for the sandbox in time".to_owned()
        } else {
            format!(
                "the sandbox could not be started: {}",
                run.reason.as_deref().unwrap_or("its worker gave no reason")
            )
        };
        tracing::warn!(sandbox = %sandbox.id, run = %run.id, state = run.state.as_str(), why, "sandbox did not start");
        let run = scope.stop_sandbox_run(&run_id).await?;
        app.fleet.deliver_cancel(&run).await;
        let event = actor
            .event("sandbox.create", Outcome::Failed)
            .reason(why.clone());
        scope.delete_sandbox(&sandbox.id, Some(event)).await?;
        Err(Error::Unavailable(why))
    });
    started
        .await
        .map_err(|e| Error::Unexpected(anyhow::anyhow!("sandbox start task: {e}")))?
}

/// How long a deletion waits for the worker to remove the container.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Stops a sandbox's run (its worker removes the container, committing an
/// agent's memory first; a worker that is gone took it with it), waits up
/// to [`STOP_TIMEOUT`] for that, and deletes the record with `audit`;
/// `false` if there was no such record any more.
pub async fn stop_sandbox(
    state: &crate::state::AppState,
    scope: &TenantScope<'_>,
    sandbox: &Sandbox,
    audit: crate::audit::AuditEvent,
) -> Result<bool, Error> {
    if let Some(run) = &sandbox.run_id {
        let run = scope.stop_sandbox_run(run).await?;
        state.fleet.deliver_cancel(&run).await;
        state
            .fleet
            .wait_run(scope.tenant_id().as_str(), &run.id, STOP_TIMEOUT, |r| {
                r.state.is_terminal() || r.state == RunState::Lost
            })
            .await
            .map_err(db::store_error)?;
    }
    scope.delete_sandbox(&sandbox.id, Some(audit)).await
}

/// Where a sandbox recorded running takes its calls: its worker and its
/// run's lease. One whose run no longer runs (or that has no run) is
/// recorded lost, and `None` comes back.
pub async fn call_target(
    scope: &TenantScope<'_>,
    sandbox: &Sandbox,
) -> Result<Option<(String, carapace_scheduler::protocol::Lease)>, Error> {
    let run = match sandbox.run_id.as_deref().map(crate::ids::RunId::parse) {
        Some(Ok(run)) => Some(scope.run(&run).await?),
        _ => None,
    };
    match run.map(|r| (r.state, r.lease())) {
        Some((RunState::Running, Some(target))) => Ok(Some(target)),
        _ => {
            scope
                .set_sandbox_state(&sandbox.id, SandboxState::Lost)
                .await?;
            Ok(None)
        }
    }
}
