//! The worker: runs what the control plane places here, each in a fresh
//! sandbox, and reports what happened under the run's lease.
//!
//! A [`Worker`] outlives its connections. [`Worker::session`] speaks the
//! protocol of [`carapace_scheduler::protocol`] over one [`Link`] (a
//! WebSocket from [`link::connect`], or in-process channels) until it
//! breaks; [`Worker::serve_remote`] reconnects with backoff for as long as
//! the process lives. Runs go on while the control plane is away; their
//! reports wait, in order, in an outbox and are sent after the next hello.
//!
//! The worker holds exactly the sandboxes of the runs it holds leases for:
//! a run the control plane no longer grants (not kept at hello, a report
//! refused) is stopped and its sandbox deleted.

mod calls;
pub mod link;
mod memory;
mod run;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carapace_scheduler::protocol::{
    ControlMessage, Lease, Resources, RunEvent, RunSpec, RunToken, VERSION, WorkerMessage,
};
use tokio::sync::{Notify, mpsc, oneshot};

pub use link::Link;

use crate::Runtime;

/// The host name sandboxes reach the control plane by, through their
/// egress proxy.
pub const SERVICE_HOST: &str = "carapace.internal";

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// What it offers to runs in total.
    pub capacity: Resources,
    /// Images it offers besides `builtin`: reference → OCI image layout.
    pub images: HashMap<String, PathBuf>,
    /// Services its sandboxes reach through the egress proxy (the control
    /// plane as `carapace.internal`).
    pub services: Vec<(String, u16, SocketAddr)>,
    /// The model gateway's base URL as sandboxes see it (e.g.
    /// `http://carapace.internal/gateway`), given to commands with the
    /// run's token.
    pub gateway_url: String,
    /// The control plane's base URL as this worker reaches it (its memory
    /// API, used with a run's token to sync the run's agent memory).
    pub api_url: String,
}

impl WorkerConfig {
    /// A worker of a control plane whose API this worker reaches at
    /// `api_url` and its sandboxes at `service_addr` (as
    /// [`SERVICE_HOST`], port 80; the gateway under `/gateway`).
    pub fn new(
        capacity: Resources,
        images: HashMap<String, PathBuf>,
        service_addr: SocketAddr,
        api_url: &str,
    ) -> Self {
        WorkerConfig {
            capacity,
            images,
            services: vec![(SERVICE_HOST.to_owned(), 80, service_addr)],
            gateway_url: format!("http://{SERVICE_HOST}/gateway"),
            api_url: api_url.trim_end_matches('/').to_owned(),
        }
    }
}

/// Why a run is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The control plane cancelled it: report `cancelled`.
    Cancel,
    /// The lease is no longer ours: stop without a report.
    Fenced,
}

struct Held {
    epoch: i64,
    stop: Option<oneshot::Sender<Stop>>,
    /// The run's token for the gateway (kept in memory only).
    token: RunToken,
    /// The agent whose memory the run works on, if any.
    agent: Option<String>,
}

/// A worker node's runs and its link to the control plane.
pub struct Worker {
    runtime: Arc<Runtime>,
    config: WorkerConfig,
    held: Mutex<HashMap<String, Held>>,
    outbox: Mutex<Outbox>,
    outbox_ready: Notify,
    /// Where this session's call answers go.
    calls_out: Mutex<Option<mpsc::Sender<WorkerMessage>>>,
    /// Bytes uploaded for file writes, by call.
    uploads: Mutex<HashMap<u64, Vec<u8>>>,
    /// Calls whose upload went over a limit.
    oversize: Mutex<std::collections::HashSet<u64>>,
    /// The memory of each run that syncs one, for commits asked for.
    memories: Mutex<HashMap<String, Arc<tokio::sync::Mutex<memory::MemorySession>>>>,
    /// Welcomes received so far.
    welcomes: tokio::sync::watch::Sender<u64>,
}

/// Reports on their way: not sent yet, or sent and not acknowledged (sent
/// again, in order, after a reconnection).
#[derive(Default)]
struct Outbox {
    next_seq: u64,
    unsent: VecDeque<WorkerMessage>,
    unacked: VecDeque<(u64, WorkerMessage)>,
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The link closed or failed.
    Disconnected(String),
    /// The control plane did not answer in time.
    Silent,
}

/// How many times over a worker offers its CPU by default: a run's
/// `cpu_millis` is a ceiling, not a reservation (an idle sandbox uses
/// none), so CPU is shared; memory limits are hard and are not
/// overcommitted.
pub const CPU_OVERCOMMIT: u64 = 4;

/// What this host offers to runs by default: its CPU (as its cgroup allows)
/// [`CPU_OVERCOMMIT`] times over, its memory once, and `slots` sandboxes.
pub fn default_capacity(slots: u64) -> Resources {
    let host = crate::capacity::probe().ok();
    Resources {
        cpu_millis: host.map_or(1000, |c| c.cpus_millis) * CPU_OVERCOMMIT,
        memory_mib: host.map_or(1024, |c| c.memory_bytes >> 20),
        slots,
    }
}

/// How long to wait for the welcome, and for anything after it.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    /// A worker running sandboxes on `runtime`.
    pub fn new(runtime: Arc<Runtime>, config: WorkerConfig) -> Arc<Self> {
        Arc::new(Worker {
            runtime,
            config,
            held: Mutex::default(),
            outbox: Mutex::default(),
            outbox_ready: Notify::new(),
            calls_out: Mutex::default(),
            uploads: Mutex::default(),
            oversize: Mutex::default(),
            memories: Mutex::default(),
            welcomes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The sandbox runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Waits until a control plane has welcomed this worker at least once,
    /// or `within` passes; whether it has.
    pub async fn wait_welcomed(&self, within: Duration) -> bool {
        let mut welcomes = self.welcomes.subscribe();
        tokio::time::timeout(within, welcomes.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The leases of the runs it holds.
    pub fn leases(&self) -> Vec<Lease> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(run, held)| Lease {
                run: run.clone(),
                epoch: held.epoch,
            })
            .collect()
    }

    /// What it announces in hellos and heartbeats: the runs it holds, and
    /// those it has let go whose reports have not been acknowledged yet (so
    /// that the control plane waits for those reports instead of taking the
    /// run for lost, or starting it again).
    fn claimed(&self) -> Vec<Lease> {
        let mut leases = self.leases();
        let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let reported = outbox
            .unsent
            .iter()
            .chain(outbox.unacked.iter().map(|(_, m)| m));
        for message in reported {
            if let WorkerMessage::Report { lease, .. } = message
                && !leases.contains(lease)
            {
                leases.push(lease.clone());
            }
        }
        leases
    }

    fn images(&self) -> Vec<String> {
        let mut images: Vec<String> = std::iter::once("builtin".to_owned())
            .chain(self.config.images.keys().cloned())
            .collect();
        images.sort();
        images
    }

    /// Queues a report; it is sent, in order, on the current or next link,
    /// and again after a reconnection until the control plane acknowledges
    /// it.
    fn report(&self, lease: &Lease, event: RunEvent) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.next_seq += 1;
        let seq = outbox.next_seq;
        outbox.unsent.push_back(WorkerMessage::Report {
            seq,
            lease: lease.clone(),
            event,
        });
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// Speaks the protocol over `link` until it breaks.
    pub async fn session(self: &Arc<Self>, mut link: Link) -> SessionEnd {
        let hello = WorkerMessage::Hello {
            version: VERSION,
            capacity: self.config.capacity,
            images: self.images(),
            runs: self.claimed(),
        };
        if link.tx.send(hello).await.is_err() {
            return SessionEnd::Disconnected("the link closed before the hello".into());
        }
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, link.rx.recv()).await {
            Err(_) => return SessionEnd::Silent,
            Ok(None) => return SessionEnd::Disconnected("closed instead of welcoming".into()),
            Ok(Some(message)) => message,
        };
        let ControlMessage::Welcome {
            worker,
            heartbeat_ms,
            keep,
        } = welcome
        else {
            return SessionEnd::Disconnected("the first message was not a welcome".into());
        };
        tracing::info!(worker, kept = keep.len(), "connected to the control plane");
        self.welcomes.send_modify(|n| *n += 1);
        self.resend_unacknowledged();
        self.stop_all_but(&keep);
        let (calls_tx, mut calls_rx) = mpsc::channel(64);
        *self
            .calls_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(calls_tx);
        self.uploads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        // Call numbers are the control plane's, per connection.
        self.oversize
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let every = Duration::from_millis(heartbeat_ms.clamp(100, 60_000));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = every * 4 + Duration::from_secs(2);
        let mut last_heard = tokio::time::Instant::now();
        let mut refusals = self.runtime.egress_refusals();
        loop {
            // Everything waiting goes out first, in order.
            while let Some(message) = self.next_report() {
                if link.tx.send(message.clone()).await.is_err() {
                    self.unsend(message);
                    return SessionEnd::Disconnected("the link closed".into());
                }
            }
            tokio::select! {
                message = link.rx.recv() => {
                    let Some(message) = message else {
                        return SessionEnd::Disconnected("the control plane closed the link".into());
                    };
                    last_heard = tokio::time::Instant::now();
                    self.handle(message);
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > silence {
                        return SessionEnd::Silent;
                    }
                    let beat = WorkerMessage::Heartbeat {
                        capacity: self.config.capacity,
                        runs: self.claimed(),
                    };
                    if link.tx.send(beat).await.is_err() {
                        return SessionEnd::Disconnected("the link closed".into());
                    }
                }
                () = self.outbox_ready.notified() => {}
                Some(answer) = calls_rx.recv() => {
                    if link.tx.send(answer).await.is_err() {
                        return SessionEnd::Disconnected("the link closed".into());
                    }
                }
                Ok(refused) = refusals.recv() => {
                    // A sandbox's name is its run's id.
                    let Some(lease) = self.lease_of(&refused.sandbox) else {
                        continue;
                    };
                    let message = WorkerMessage::EgressRefused {
                        lease,
                        host: refused.host,
                        port: refused.port,
                        reason: refused.reason.chars().take(500).collect(),
                    };
                    if link.tx.send(message).await.is_err() {
                        return SessionEnd::Disconnected("the link closed".into());
                    }
                }
            }
        }
    }

    /// The next report to send; it counts as unacknowledged from now on.
    fn next_report(&self) -> Option<WorkerMessage> {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let message = outbox.unsent.pop_front()?;
        if let WorkerMessage::Report { seq, .. } = &message {
            let seq = *seq;
            outbox.unacked.push_back((seq, message.clone()));
        }
        Some(message)
    }

    /// A report that could not be sent goes back to the front.
    fn unsend(&self, message: WorkerMessage) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let WorkerMessage::Report { seq, .. } = &message {
            let seq = *seq;
            outbox.unacked.retain(|(s, _)| *s != seq);
        }
        outbox.unsent.push_front(message);
    }

    /// Reports sent on a link that broke before their acknowledgement go
    /// out again first, in order.
    fn resend_unacknowledged(&self) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let unacked: Vec<WorkerMessage> = outbox.unacked.drain(..).map(|(_, m)| m).collect();
        for message in unacked.into_iter().rev() {
            outbox.unsent.push_front(message);
        }
    }

    fn acknowledge(&self, upto: u64) {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unacked
            .retain(|(seq, _)| *seq > upto);
    }

    fn handle(self: &Arc<Self>, message: ControlMessage) {
        match message {
            ControlMessage::Start { lease, spec, token } => self.start(lease, spec, token),
            ControlMessage::Cancel { lease } => self.stop(&lease, Stop::Cancel),
            ControlMessage::Refused { lease, reason } => {
                tracing::warn!(run = %lease.run, epoch = lease.epoch, reason, "report refused: stopping the run");
                self.stop(&lease, Stop::Fenced);
            }
            ControlMessage::Drain => tracing::info!("drained: no new runs will come"),
            ControlMessage::HeartbeatAck => {}
            ControlMessage::ReportAck { seq } => self.acknowledge(seq),
            ControlMessage::Upload { call, data } => self.upload(call, &data),
            ControlMessage::Call {
                call,
                lease,
                request,
            } => self.call(call, lease, request),
            ControlMessage::Welcome { .. } => {
                tracing::warn!("unexpected second welcome ignored");
            }
        }
    }

    /// Stops every held run whose lease is not in `keep`.
    fn stop_all_but(&self, keep: &[Lease]) {
        for lease in self.leases() {
            if !keep.contains(&lease) {
                tracing::warn!(run = %lease.run, "no longer leased to this worker: stopping it");
                self.stop(&lease, Stop::Fenced);
            }
        }
    }

    fn stop(&self, lease: &Lease, how: Stop) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = held.get_mut(&lease.run)
            && run.epoch == lease.epoch
            && let Some(stop) = run.stop.take()
        {
            let _ = stop.send(how);
        }
    }

    fn start(self: &Arc<Self>, lease: Lease, spec: RunSpec, token: RunToken) {
        let (stop, stopped) = oneshot::channel();
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(run) = held.get_mut(&lease.run) {
                // Sent again (after a reconnection, or a start that came
                // late): it is already under way; a resend carries a fresh
                // token, the previous one no longer works.
                if run.epoch == lease.epoch {
                    run.token = token;
                }
                return;
            }
            held.insert(
                lease.run.clone(),
                Held {
                    epoch: lease.epoch,
                    stop: Some(stop),
                    token,
                    agent: spec.memory.as_ref().map(|m| m.agent.clone()),
                },
            );
        }
        let worker = self.clone();
        self.runtime.handle().spawn(async move {
            worker.execute(lease, spec, stopped).await;
        });
    }

    /// The lease of a run this worker holds.
    fn lease_of(&self, run: &str) -> Option<Lease> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run)
            .map(|h| Lease {
                run: run.to_owned(),
                epoch: h.epoch,
            })
    }

    /// The current token of a run this worker holds.
    fn token_of(&self, run: &str) -> Option<RunToken> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run)
            .map(|h| h.token.clone())
    }

    /// The environment a run's commands get on top of their own: the run's
    /// token and where the gateway is, under the names the OpenAI and
    /// Anthropic clients read, and, for a run on an agent's memory, where
    /// that memory is. A command's own variables of these names are
    /// replaced.
    fn with_run_env(&self, run: &str, env: Vec<(String, String)>) -> Vec<(String, String)> {
        let Some((token, agent)) = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run)
            .map(|h| (h.token.reveal().to_owned(), h.agent.clone()))
        else {
            return env;
        };
        let base = self.config.gateway_url.trim_end_matches('/');
        let mut ours = vec![
            ("CARAPACE_RUN_TOKEN", token.clone()),
            ("CARAPACE_GATEWAY_URL", format!("{base}/v1")),
            ("OPENAI_API_KEY", token.clone()),
            ("OPENAI_BASE_URL", format!("{base}/v1")),
            ("ANTHROPIC_API_KEY", token),
            ("ANTHROPIC_BASE_URL", base.to_owned()),
        ];
        if let Some(agent) = agent {
            ours.extend([
                ("CARAPACE_MEMORY_DIR", crate::Area::Memory.dir().to_owned()),
                (
                    "CARAPACE_MEMORY_URL",
                    format!("http://{SERVICE_HOST}/v1/agents/{agent}/memory"),
                ),
                (
                    "CARAPACE_MEMORY_COMMIT_URL",
                    format!("http://{SERVICE_HOST}/v1/runs/{run}/memory/commit"),
                ),
            ]);
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| !ours.iter().any(|(name, _)| name == k))
            .collect();
        env.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));
        env
    }

    fn calls_out(&self) -> Option<mpsc::Sender<WorkerMessage>> {
        self.calls_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn release(&self, run: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run);
        self.memories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run);
    }

    /// Connects to the control plane at `url` with `credential` and keeps
    /// reconnecting (1 s, doubling to 10 s between attempts) forever.
    pub async fn serve_remote(self: Arc<Self>, url: String, credential: String) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match link::connect(&url, &credential).await {
                Ok(link) => {
                    backoff = Duration::from_secs(1);
                    let end = self.session(link).await;
                    tracing::warn!(?end, "control plane connection ended; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the control plane");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}
