//! One worker's session with this replica: hello and welcome, then
//! heartbeats and reports until the link breaks, the worker falls silent or
//! a newer connection of the same worker replaces it.

use std::sync::Arc;
use std::time::Duration;

use carapace_runtime::worker::link::ControlEnd;
use carapace_scheduler::protocol::{
    ControlMessage, Lease, Resources, RunEvent, VERSION, WorkerMessage,
};
use carapace_scheduler::store::{self, ReportOutcome};

use super::Fleet;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl Fleet {
    /// Serves the worker `worker` (already authenticated) over `end` until
    /// the session ends.
    pub async fn serve(self: Arc<Self>, worker: String, mut end: ControlEnd) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, end.rx.recv()).await {
            Ok(Some(hello)) => hello,
            _ => {
                tracing::warn!(worker, "worker connected but said no hello");
                return;
            }
        };
        let WorkerMessage::Hello {
            version,
            capacity,
            images,
            runs,
        } = hello
        else {
            tracing::warn!(worker, "worker's first message was not a hello");
            return;
        };
        if version != VERSION {
            tracing::warn!(worker, version, "worker speaks another protocol version");
            return;
        }
        let outcome = match store::hello(&self.db, &worker, capacity, &images, &runs).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(worker, error = %e, "worker hello refused");
                return;
            }
        };
        for (lease, state) in &outcome.recovered {
            tracing::warn!(worker, run = %lease.run, now = ?state.map(|s| s.as_str()), "worker came back without a run it had started");
        }
        let generation = self.register(&worker, end.tx.clone());
        let welcome = ControlMessage::Welcome {
            worker: worker.clone(),
            heartbeat_ms: u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(2000),
            keep: outcome.keep.clone(),
        };
        if end.tx.send(welcome).await.is_err() {
            self.disconnect(&worker, Some(generation));
            return;
        }
        tracing::info!(
            worker,
            slots = capacity.slots,
            kept = outcome.keep.len(),
            resent = outcome.start.len(),
            "worker connected"
        );
        for (lease, spec, token) in outcome.start {
            let start = ControlMessage::Start { lease, spec, token };
            if end.tx.send(start).await.is_err() {
                break;
            }
        }
        // Cancellations that did not reach it before go now.
        let me = std::slice::from_ref(&worker);
        if let Ok(pending) = store::runs::cancel_requests(&self.db, me).await {
            for (_, lease) in pending {
                let _ = end.tx.send(ControlMessage::Cancel { lease }).await;
            }
        }
        self.wake();
        let reason = self.converse(&worker, generation, &mut end).await;
        tracing::info!(worker, reason, "worker session ended");
        self.disconnect(&worker, Some(generation));
        // Calls in flight on this link get no answer.
        self.fail_calls(&worker, generation);
    }

    async fn converse(&self, worker: &str, generation: u64, end: &mut ControlEnd) -> &'static str {
        let silence = self.config.worker_timeout;
        loop {
            let message = match tokio::time::timeout(silence, end.rx.recv()).await {
                Err(_) => return "silent",
                Ok(None) => return "disconnected",
                Ok(Some(message)) => message,
            };
            if !self.is_current(worker, generation) {
                return "replaced or declared lost";
            }
            let outcome = match message {
                WorkerMessage::Hello { .. } => Err("a second hello"),
                WorkerMessage::Heartbeat { capacity, runs } => {
                    self.on_heartbeat(worker, capacity, &runs, end).await
                }
                WorkerMessage::Report { seq, lease, event } => {
                    self.on_report(worker, seq, lease, event, end).await
                }
                WorkerMessage::CallChunk { call, part, data } => {
                    self.call_chunk(worker, call, part, &data);
                    Ok(())
                }
                WorkerMessage::CallDone { call, result } => {
                    self.call_done(worker, call, result);
                    Ok(())
                }
                WorkerMessage::EgressRefused {
                    lease,
                    host,
                    port,
                    reason,
                } => {
                    self.on_egress_refused(worker, &lease, &host, port, &reason)
                        .await;
                    Ok(())
                }
            };
            if let Err(reason) = outcome {
                return reason;
            }
        }
    }

    /// Records a heartbeat and compares the runs the worker holds with its
    /// leases.
    async fn on_heartbeat(
        &self,
        worker: &str,
        capacity: Resources,
        runs: &[Lease],
        end: &ControlEnd,
    ) -> Result<(), &'static str> {
        match store::heartbeat(&self.db, worker, capacity).await {
            Ok(true) => {}
            Ok(false) => return Err("declared lost; it must say hello again"),
            Err(e) => {
                tracing::warn!(worker, error = %e, "heartbeat not recorded");
                return Ok(());
            }
        }
        let _ = end.tx.send(ControlMessage::HeartbeatAck).await;
        let grace = self.config.heartbeat_interval * 2;
        let found = match store::workers::reconcile(&self.db, worker, runs, grace).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(worker, error = %e, "heartbeat check failed");
                return Ok(());
            }
        };
        if !found.recovered.is_empty() {
            tracing::warn!(
                worker,
                runs = found.recovered.len(),
                "runs the worker no longer holds recovered"
            );
            self.run_changed();
            self.wake();
        }
        for (lease, spec, token) in found.restart {
            let _ = end
                .tx
                .send(ControlMessage::Start { lease, spec, token })
                .await;
        }
        for lease in found.unknown {
            tracing::warn!(worker, run = %lease.run, "the worker holds a run that is not its own: stopping it");
            let reason = "the run is not leased to this worker".to_owned();
            let _ = end.tx.send(ControlMessage::Refused { lease, reason }).await;
        }
        Ok(())
    }

    /// Applies a report (or refuses it) and acknowledges it.
    async fn on_report(
        &self,
        worker: &str,
        seq: u64,
        lease: Lease,
        event: RunEvent,
        end: &ControlEnd,
    ) -> Result<(), &'static str> {
        match store::apply_report(&self.db, worker, &lease, &event).await {
            Ok(ReportOutcome::Applied(state)) => {
                tracing::info!(worker, run = %lease.run, state = state.as_str(), "run report");
                self.run_changed();
                if state.is_terminal() {
                    self.wake();
                }
            }
            Ok(ReportOutcome::Unchanged) => {}
            Ok(ReportOutcome::Refused { reason, tenant }) => {
                tracing::warn!(worker, run = %lease.run, epoch = lease.epoch, reason, "report refused (fenced)");
                self.audit_refusal(worker, &lease.run, tenant.as_deref(), &reason)
                    .await;
                let refused = ControlMessage::Refused { lease, reason };
                let _ = end.tx.send(refused).await;
            }
            Err(e) => {
                // Not applied nor acknowledged: the worker sends it again
                // on its next connection.
                tracing::warn!(worker, run = %lease.run, error = %e, "report not recorded");
                return Err("a report could not be recorded");
            }
        }
        let _ = end.tx.send(ControlMessage::ReportAck { seq }).await;
        Ok(())
    }

    /// Audits a destination a run's egress proxy refused (once a minute
    /// per run and destination), if the worker holds the run.
    async fn on_egress_refused(
        &self,
        worker: &str,
        lease: &Lease,
        host: &str,
        port: u16,
        reason: &str,
    ) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        const PER_RUN: usize = 10;
        let host: String = host.chars().take(255).collect();
        let reason: String = reason.chars().take(500).collect();
        {
            let mut audited = self
                .egress_audited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if audited.len() > 10_000 {
                audited.retain(|_, at| at.elapsed() < EVERY);
                if audited.len() > 10_000 {
                    // Still full of fresh entries: drop them rather than
                    // scan them on every refusal.
                    audited.clear();
                }
            }
            let key = (lease.run.clone(), host.clone(), port);
            if audited.get(&key).is_some_and(|at| at.elapsed() < EVERY) {
                return;
            }
            // The sandbox chooses the hosts: at most PER_RUN destinations
            // a minute are audited for one run (the rest are only logged
            // by the worker).
            let recent = audited
                .iter()
                .filter(|((run, _, _), at)| run == &lease.run && at.elapsed() < EVERY)
                .count();
            if recent >= PER_RUN {
                return;
            }
            audited.insert(key, std::time::Instant::now());
        }
        let run = match store::runs::leased_run(&self.db, worker, lease).await {
            Ok(Some(run)) => run,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "egress refusal not audited");
                return;
            }
        };
        let Ok(tenant) = crate::ids::TenantId::parse(&run.tenant) else {
            return;
        };
        let principal = match &run.spec.memory {
            Some(memory) => format!("agent:{}", memory.agent),
            None => format!("run:{}", run.id),
        };
        let actor = crate::audit::Actor {
            principal,
            client_ip: None,
            request_id: None,
        };
        let event = actor
            .event("sandbox.egress", crate::audit::Outcome::Denied)
            .reason(format!("egress to {host}:{port} refused: {reason}"))
            .in_tenant(&tenant)
            .target(run.id.as_str());
        if let Err(e) = crate::db::platform::record_audit(&self.db, event).await {
            tracing::warn!(error = ?e, "egress refusal not audited");
        }
    }

    /// Records a refused report in the run's tenant's audit log.
    async fn audit_refusal(&self, worker: &str, run: &str, tenant: Option<&str>, reason: &str) {
        let Some(tenant) = tenant.and_then(|t| crate::ids::TenantId::parse(t).ok()) else {
            return;
        };
        let actor = crate::audit::Actor {
            principal: format!("worker:{worker}"),
            client_ip: None,
            request_id: None,
        };
        let event = actor
            .event("run.report", crate::audit::Outcome::Denied)
            .reason(reason)
            .in_tenant(&tenant)
            .target(run);
        if let Err(e) = crate::db::platform::record_audit(&self.db, event).await {
            tracing::warn!(error = ?e, "refused report not audited");
        }
    }

    fn is_current(&self, worker: &str, generation: u64) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(worker)
            .is_some_and(|c| c.generation == generation)
    }
}
