//! One run on the worker: a fresh sandbox, the command, the result, the
//! sandbox deleted — each step reported under the run's lease.

use std::sync::Arc;
use std::time::Duration;

use carapace_scheduler::protocol::{Lease, MAX_OUTPUT_BYTES, RunEvent, RunSpec};
use tokio::sync::oneshot;

use super::{Stop, Worker};
use crate::egress::Policy;
use crate::{Exec, SandboxSpec};

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
            self.finish(id, how, &say).await;
            return;
        }
        say(RunEvent::Running);
        if spec.interactive {
            // Up until cancelled; calls reach it meanwhile.
            let how = stopped.await.unwrap_or(Stop::Fenced);
            self.finish(id, how, &say).await;
            return;
        }
        let exec = Exec {
            argv: spec.command.clone(),
            env: self.with_run_env(id, spec.env.clone()),
            stdin: Vec::new(),
            timeout: Duration::from_secs(u64::from(spec.timeout_s.clamp(1, 86_400))),
        };
        tokio::select! {
            result = self.runtime.exec(id, exec) => {
                let event = match result {
                    Ok(result) => RunEvent::Exited {
                        exit_code: result.exit_code,
                        timed_out: result.timed_out,
                        stdout: text(&result.stdout),
                        stderr: text(&result.stderr),
                    },
                    Err(e) => RunEvent::Failed { reason: format!("the command could not run: {e}") },
                };
                let _ = self.runtime.delete(id).await;
                say(event);
                self.release(id);
            }
            how = &mut stopped => {
                let how = how.unwrap_or(Stop::Fenced);
                self.finish(id, how, &say).await;
            }
        }
    }

    async fn finish(&self, id: &str, how: Stop, say: &impl Fn(RunEvent)) {
        let _ = self.runtime.delete(id).await;
        if how == Stop::Cancel {
            say(RunEvent::Cancelled);
        }
        tracing::info!(run = id, ?how, "run stopped");
        self.release(id);
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
