//! The control plane's side of the worker fleet: the workers connected to
//! this replica, the placement loop that hands them queued runs, the
//! watchdog that declares silent workers lost, and the delivery of
//! cancellations.
//!
//! Each replica places runs only onto the workers connected to it, so it
//! can hand a placed run over at once; rounds of all replicas are
//! serialised by the database (`carapace_scheduler::store::place_round`).
//! A worker that connects to another replica after a restart of this one
//! gets what was placed on it in its welcome.

mod calls;
mod local;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carapace_scheduler::protocol::{ControlMessage, Lease};
use carapace_scheduler::store;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};

pub use calls::{CallReply, CallRouteError};
pub use local::start_local_worker;

/// The `[scheduler]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerArgs {
    /// Whether `carapace serve` runs a worker in-process (when this host
    /// can run sandboxes). [default: true]
    pub local_worker: Option<bool>,
    /// Runs (interactive sandboxes included) the in-process worker takes at
    /// once. [default: 64]
    pub local_slots: Option<u64>,
    /// How often workers send heartbeats, milliseconds. [default: 2000]
    pub heartbeat_interval_ms: Option<u64>,
    /// Seconds without a heartbeat after which a worker is lost and its
    /// runs are requeued or failed. [default: 15]
    pub worker_timeout_secs: Option<u64>,
    /// Runs one tenant may have placed, starting or running at once.
    /// [default: 20]
    pub max_active_runs_per_tenant: Option<u64>,
    /// Runs one tenant may have waiting in the queue. [default: 10000]
    pub max_queued_runs_per_tenant: Option<u64>,
    /// Milliseconds between placement rounds when nothing wakes the
    /// scheduler earlier (a new run, a finished run and a new worker do).
    /// [default: 200]
    pub round_interval_ms: Option<u64>,
}

/// Resolved scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub local_worker: bool,
    pub local_slots: u64,
    pub heartbeat_interval: Duration,
    pub worker_timeout: Duration,
    pub max_active_per_tenant: u64,
    pub max_queued_per_tenant: u64,
    pub round_interval: Duration,
}

impl SchedulerArgs {
    /// Checks and fills in defaults.
    pub fn resolve(self) -> anyhow::Result<SchedulerConfig> {
        let heartbeat = self.heartbeat_interval_ms.unwrap_or(2000);
        if !(100..=60_000).contains(&heartbeat) {
            anyhow::bail!("scheduler.heartbeat_interval_ms must be between 100 and 60000");
        }
        let timeout = self.worker_timeout_secs.unwrap_or(15);
        if !(1..=3600).contains(&timeout) || timeout * 1000 < heartbeat * 2 {
            anyhow::bail!(
                "scheduler.worker_timeout_secs must be between 1 and 3600 and at least two heartbeat intervals"
            );
        }
        let local_slots = self.local_slots.unwrap_or(64);
        if !(1..=1000).contains(&local_slots) {
            anyhow::bail!("scheduler.local_slots must be between 1 and 1000");
        }
        let active = self.max_active_runs_per_tenant.unwrap_or(20);
        let queued = self.max_queued_runs_per_tenant.unwrap_or(10_000);
        if active == 0 || queued == 0 || queued > 1_000_000 {
            anyhow::bail!(
                "scheduler.max_active_runs_per_tenant must be at least 1 and max_queued_runs_per_tenant 1 to 1000000"
            );
        }
        let round = self.round_interval_ms.unwrap_or(200);
        if !(10..=10_000).contains(&round) {
            anyhow::bail!("scheduler.round_interval_ms must be between 10 and 10000");
        }
        Ok(SchedulerConfig {
            local_worker: self.local_worker.unwrap_or(true),
            local_slots,
            heartbeat_interval: Duration::from_millis(heartbeat),
            worker_timeout: Duration::from_secs(timeout),
            max_active_per_tenant: active,
            max_queued_per_tenant: queued,
            round_interval: Duration::from_millis(round),
        })
    }
}

struct Connected {
    tx: mpsc::Sender<ControlMessage>,
    /// Distinguishes a worker's newer connection from an older one.
    generation: u64,
}

/// The workers connected to this replica, and the loops that serve them.
pub struct Fleet {
    db: DatabaseConnection,
    config: SchedulerConfig,
    connected: Mutex<HashMap<String, Connected>>,
    generation: std::sync::atomic::AtomicU64,
    wake: Notify,
    /// Cancellations already sent, so that each goes out once.
    cancels_sent: Mutex<HashSet<Lease>>,
    /// Calls to interactive sandboxes in flight.
    calls: calls::Calls,
    /// Bumped whenever this replica applies a report.
    changes: tokio::sync::watch::Sender<u64>,
    /// When each (run, destination) refusal was last audited.
    egress_audited: Mutex<HashMap<(String, String, u16), std::time::Instant>>,
}

impl Fleet {
    /// A fleet with no worker yet.
    pub fn new(db: DatabaseConnection, config: SchedulerConfig) -> Arc<Self> {
        Arc::new(Fleet {
            db,
            config,
            connected: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            wake: Notify::new(),
            cancels_sent: Mutex::default(),
            calls: calls::Calls::default(),
            changes: tokio::sync::watch::Sender::new(0),
            egress_audited: Mutex::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn run_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until `run` of `tenant` satisfies `done`, or `within` passes;
    /// returns the run as last read. Re-reads it whenever this replica
    /// applies a report, and every 100 ms for reports applied elsewhere.
    pub async fn wait_run(
        &self,
        tenant: &str,
        run: &str,
        within: Duration,
        done: impl Fn(&store::Run) -> bool,
    ) -> Result<store::Run, store::Error> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.changes.subscribe();
        loop {
            let current = store::runs::get(&self.db, tenant, run).await?;
            if done(&current) || tokio::time::Instant::now() >= deadline {
                return Ok(current);
            }
            let wait = tokio::time::Instant::now() + Duration::from_millis(100);
            let _ = tokio::time::timeout_at(wait.min(deadline), changes.changed()).await;
        }
    }

    /// Asks for a placement round now (a run was queued, capacity freed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ids of the workers connected here.
    pub fn connected(&self) -> Vec<String> {
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn sender(&self, worker: &str) -> Option<mpsc::Sender<ControlMessage>> {
        self.link(worker).map(|(tx, _)| tx)
    }

    /// The worker's current connection here and its generation.
    fn link(&self, worker: &str) -> Option<(mpsc::Sender<ControlMessage>, u64)> {
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(worker)
            .map(|c| (c.tx.clone(), c.generation))
    }

    /// Sends to a worker connected here; `false` if it is not (or its
    /// queue is full: it will get the message again at its next hello).
    async fn send(&self, worker: &str, message: ControlMessage) -> bool {
        let Some(tx) = self.sender(worker) else {
            return false;
        };
        tokio::time::timeout(Duration::from_secs(1), tx.send(message))
            .await
            .is_ok_and(|sent| sent.is_ok())
    }

    /// Tells the worker of a run being cancelled, if it is connected here
    /// (otherwise its own replica's cancellation loop does).
    pub async fn deliver_cancel(&self, run: &store::Run) {
        if let Some((worker, lease)) = run.lease()
            && run.cancel_requested_at.is_some()
        {
            self.send_cancel(&worker, lease).await;
        }
    }

    /// Sends a cancellation once: marked sent only when it went out (the
    /// cancellation loop tries again otherwise, and a worker's hello gets
    /// every cancellation still pending for it).
    async fn send_cancel(&self, worker: &str, lease: Lease) {
        let fresh = !self
            .cancels_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&lease);
        if fresh
            && self
                .send(
                    worker,
                    ControlMessage::Cancel {
                        lease: lease.clone(),
                    },
                )
                .await
        {
            self.cancels_sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(lease);
        }
    }

    /// Closes a worker's connection to this replica, if it has one.
    pub fn disconnect_worker(&self, worker: &str) {
        self.disconnect(worker, None);
    }

    /// Tells a worker connected here that it is drained.
    pub async fn tell_drained(&self, worker: &str) {
        self.send(worker, ControlMessage::Drain).await;
    }

    /// Runs the placement, watchdog and cancellation loops until aborted.
    pub async fn run(self: Arc<Self>) {
        let placement = tokio::spawn(self.clone().place_forever());
        let watchdog = tokio::spawn(self.clone().watch_forever());
        let cancels = tokio::spawn(self.clone().cancel_forever());
        let _ = tokio::join!(placement, watchdog, cancels);
    }

    async fn place_forever(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.round_interval) => {}
            }
            let workers = self.connected();
            match store::place_round(&self.db, &workers, self.config.max_active_per_tenant).await {
                Ok((round, placed)) => {
                    if !placed.is_empty() {
                        tracing::debug!(round, placed = placed.len(), "placement round");
                    }
                    for run in placed {
                        tracing::info!(run = %run.lease.run, worker = %run.worker, epoch = run.lease.epoch, tenant = %run.tenant, "run placed");
                        let start = ControlMessage::Start {
                            lease: run.lease,
                            spec: run.spec,
                            token: run.token,
                        };
                        if !self.send(&run.worker, start).await {
                            tracing::warn!(worker = %run.worker, "placed run not delivered; the worker gets it at its next hello");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "placement round failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn watch_forever(self: Arc<Self>) {
        let every = (self.config.worker_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            match store::expire_workers(&self.db, self.config.worker_timeout).await {
                Ok((declared, recovered)) => {
                    for worker in &declared {
                        tracing::warn!(worker, "worker missed its heartbeats: declared lost");
                        // Its connection here, if any, is stale: close it.
                        self.disconnect(worker, None);
                    }
                    for (lease, state) in &recovered {
                        tracing::warn!(run = %lease.run, epoch = lease.epoch, now = ?state.map(|s| s.as_str()), "run lost with its worker");
                    }
                    if !recovered.is_empty() {
                        self.wake();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "worker watchdog failed"),
            }
        }
    }

    async fn cancel_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let workers = self.connected();
            let Ok(requests) = store::runs::cancel_requests(&self.db, &workers).await else {
                continue;
            };
            let pending: HashSet<Lease> = requests.iter().map(|(_, l)| l.clone()).collect();
            self.cancels_sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|l| pending.contains(l));
            for (worker, lease) in requests {
                self.send_cancel(&worker, lease).await;
            }
        }
    }

    fn register(&self, worker: &str, tx: mpsc::Sender<ControlMessage>) -> u64 {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A previous connection of the same worker loses its sender: its
        // session ends.
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker.to_owned(), Connected { tx, generation });
        generation
    }

    /// Forgets a worker's connection (only `generation`'s, if given).
    fn disconnect(&self, worker: &str, generation: Option<u64>) {
        let mut connected = self
            .connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connected
            .get(worker)
            .is_some_and(|c| generation.is_none_or(|g| c.generation == g))
        {
            connected.remove(worker);
        }
    }
}
