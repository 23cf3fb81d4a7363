//! One run on the worker: a fresh sandbox, the command, the result, the
//! sandbox deleted — each step reported under the run's lease.

use std::sync::Arc;
use std::time::Duration;

use carapace_scheduler::protocol::{Lease, MAX_OUTPUT_BYTES, MemorySync, RunEvent, RunSpec};
use tokio::sync::oneshot;

use super::memory::MemorySession;
use super::{Stop, Worker};
use crate::egress::Policy;
use crate::{Exec, SandboxSpec};

/// A run's memory being committed periodically.
struct Syncing {
    session: Arc<tokio::sync::Mutex<MemorySession>>,
    stop: oneshot::Sender<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Syncing {
    /// Stops the periodic commits (waiting for one in progress).
    async fn stop(self) -> Arc<tokio::sync::Mutex<MemorySession>> {
        let _ = self.stop.send(());
        let _ = self.ticker.await;
        self.session
    }
}

impl Worker {
    /// Carries out a run until it ends or is stopped.
    pub(super) async fn execute(
        self: Arc<Self>,
        lease: Lease,
        spec: RunSpec,
        mut stopped: oneshot::Receiver<Stop>,
    ) {
        let say = |event: RunEvent| self.report(&lease, event);
        say(RunEvent::Starting);
        let image = match self.image(&spec.image).await {
            Ok(image) => image,
            Err(reason) => {
                say(RunEvent::Failed { reason });
                self.release(&lease.run);
                return;
            }
        };
        let sandbox = SandboxSpec {
            limits: spec.limits,
            egress: Policy {
                allow_hosts: spec.egress_allow.clone(),
                services: self.config.services.clone(),
            },
            image,
        };
        let id = lease.run.as_str();
        // A stop during creation waits for it, then deletes the sandbox.
        let created = self.runtime.create(id, sandbox).await;
        if let Err(e) = created {
            tracing::warn!(run = id, error = %e, "sandbox could not be created");
            say(RunEvent::Failed {
                reason: format!("the sandbox could not be created: {e}"),
            });
            self.release(id);
            return;
        }
        if let Ok(how) = stopped.try_recv() {
            self.finish(id, how, None, &say).await;
            return;
        }
        let memory = match &spec.memory {
            None => None,
            Some(sync) => match self.load_memory(id, sync.clone()).await {
                Ok(memory) => Some(memory),
                Err(reason) => {
                    let _ = self.runtime.delete(id).await;
                    say(RunEvent::Failed {
                        reason: format!("the agent's memory could not be loaded: {reason}"),
                    });
                    self.release(id);
                    return;
                }
            },
        };
        say(RunEvent::Running);
        if spec.interactive {
            // Up until cancelled; calls reach it meanwhile.
            let how = stopped.await.unwrap_or(Stop::Fenced);
            self.finish(id, how, memory, &say).await;
            return;
        }
        let env = self.with_run_env(id, spec.env.clone());
        let exec = Exec {
            argv: spec.command.clone(),
            env,
            stdin: Vec::new(),
            timeout: Duration::from_secs(u64::from(spec.timeout_s.clamp(1, 86_400))),
        };
        tokio::select! {
            result = self.runtime.exec(id, exec) => {
                let mut event = match result {
                    Ok(result) => RunEvent::Exited {
                        exit_code: result.exit_code,
                        timed_out: result.timed_out,
                        stdout: text(&result.stdout),
                        stderr: text(&result.stderr),
                    },
                    Err(e) => RunEvent::Failed { reason: format!("the command could not run: {e}") },
                };
                if let Err(reason) = self.final_commit(id, memory).await
                    && let RunEvent::Exited { exit_code, .. } = &event
                {
                    let code = exit_code.map_or("no exit code".to_owned(), |c| format!("exit code {c}"));
                    event = RunEvent::Failed {
                        reason: format!("the command ended ({code}) but its memory could not be committed: {reason}"),
                    };
                }
                let _ = self.runtime.delete(id).await;
                say(event);
                self.release(id);
            }
            how = &mut stopped => {
                let how = how.unwrap_or(Stop::Fenced);
                self.finish(id, how, memory, &say).await;
            }
        }
    }

    async fn finish(&self, id: &str, how: Stop, memory: Option<Syncing>, say: &impl Fn(RunEvent)) {
        if how == Stop::Cancel {
            // Cancelled, not killed: what it remembered so far is kept.
            if let Err(reason) = self.final_commit(id, memory).await {
                tracing::warn!(run = id, reason, "memory of a cancelled run not committed");
            }
        } else if let Some(memory) = memory {
            // Not ours any more: whoever holds the run now carries on.
            memory.stop().await;
        }
        let _ = self.runtime.delete(id).await;
        if how == Stop::Cancel {
            say(RunEvent::Cancelled);
        }
        tracing::info!(run = id, ?how, "run stopped");
        self.release(id);
    }

    /// Writes the agent's memory into the sandbox and starts committing
    /// its changes every `interval_s`.
    async fn load_memory(self: &Arc<Self>, id: &str, sync: MemorySync) -> Result<Syncing, String> {
        let token = self.token_of(id).ok_or("the run's token is gone")?;
        let interval = Duration::from_secs(u64::from(sync.interval_s.max(1)));
        let session = MemorySession::load(
            &self.runtime,
            id,
            &self.config.api_url,
            sync,
            token.reveal(),
        )
        .await?;
        let session = Arc::new(tokio::sync::Mutex::new(session));
        self.memories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), session.clone());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (worker, run, shared) = (self.clone(), id.to_owned(), session.clone());
        let ticker = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = &mut stopped => return,
                }
                let Some(token) = worker.token_of(&run) else {
                    return;
                };
                // Not cancelled halfway: a stop waits for this commit.
                match shared
                    .lock()
                    .await
                    .commit(&worker.runtime, &run, token.reveal())
                    .await
                {
                    Ok(Some(version)) => tracing::info!(run, version, "memory committed"),
                    Ok(None) => {}
                    Err(reason) => tracing::warn!(run, reason, "memory not committed"),
                }
            }
        });
        Ok(Syncing {
            session,
            stop,
            ticker,
        })
    }

    /// Commits the run's memory at once (the run asked); its version.
    pub(super) async fn commit_memory_now(&self, id: &str) -> Result<u64, String> {
        let session = self
            .memories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or("this run has no agent memory (or it is still loading)")?;
        let token = self.token_of(id).ok_or("the run's token is gone")?;
        let mut session = session.lock().await;
        session.commit(&self.runtime, id, token.reveal()).await?;
        Ok(session.version())
    }

    /// Stops the periodic commits and commits what is left.
    async fn final_commit(&self, id: &str, memory: Option<Syncing>) -> Result<(), String> {
        let Some(memory) = memory else {
            return Ok(());
        };
        let session = memory.stop().await;
        let token = self.token_of(id).ok_or("the run's token is gone")?;
        let committed = session
            .lock()
            .await
            .commit(&self.runtime, id, token.reveal())
            .await?;
        if let Some(version) = committed {
            tracing::info!(run = id, version, "memory committed at the end of the run");
        }
        Ok(())
    }

    /// The layers of an image this worker offers (`None` for `builtin`).
    async fn image(&self, reference: &str) -> Result<Option<Vec<std::path::PathBuf>>, String> {
        if reference == "builtin" {
            return Ok(None);
        }
        let Some(layout) = self.config.images.get(reference) else {
            return Err(format!("this worker does not offer the image {reference}"));
        };
        self.runtime
            .ensure_image(layout.clone(), None, |_, _, _, _| {})
            .await
            .map(Some)
            .map_err(|e| format!("the image {reference} cannot be used: {e}"))
    }
}

/// Output as text, cut to what a report carries.
fn text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_OUTPUT_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    // Lossy decoding can grow the text (replacement characters).
    while text.len() > MAX_OUTPUT_BYTES {
        text.pop();
    }
    text
}
