//! Calls to interactive sandboxes: commands and file transfers the control
//! plane forwards from the sandbox API, answered in chunks on the current
//! link (not kept across reconnections: the caller sees the link break).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use carapace_scheduler::protocol::{
    CHUNK_BYTES, CallError, CallRequest, CallResult, Lease, Part, WorkerMessage, decode, encode,
};
use tokio::sync::mpsc;

use super::Worker;
use crate::sandbox::StreamEvent;
use crate::{Error, Exec};

/// Most bytes waiting for their write, over all calls.
const MAX_UPLOADS: usize = 128 << 20;
/// Longest command a call may run: a day.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl Worker {
    /// Stores bytes for a coming file write.
    pub(super) fn upload(&self, call: u64, data: &str) {
        let mut oversize = self.oversize.lock().unwrap_or_else(PoisonError::into_inner);
        if oversize.contains(&call) {
            return;
        }
        let mut uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = uploads.values().map(Vec::len).sum();
        let bytes = decode(data).unwrap_or_default();
        let buffer = uploads.entry(call).or_default();
        if total + bytes.len() > MAX_UPLOADS
            || buffer.len() + bytes.len() > crate::sandbox::MAX_FILE as usize
        {
            // The write that follows fails.
            uploads.remove(&call);
            oversize.insert(call);
            return;
        }
        buffer.extend_from_slice(&bytes);
    }

    /// Serves a call on the sandbox of `lease` if the worker holds it.
    pub(super) fn call(self: &Arc<Self>, call: u64, lease: Lease, request: CallRequest) {
        let Some(out) = self.calls_out() else {
            return;
        };
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lease.run)
            .is_some_and(|h| h.epoch == lease.epoch);
        let worker = self.clone();
        self.runtime.handle().spawn(async move {
            let result = if held {
                worker.serve(call, &lease.run, request, &out).await
            } else {
                failed(CallError::Gone, "the sandbox is not on this worker")
            };
            let _ = out.send(WorkerMessage::CallDone { call, result }).await;
        });
    }

    async fn serve(
        &self,
        call: u64,
        id: &str,
        request: CallRequest,
        out: &mpsc::Sender<WorkerMessage>,
    ) -> CallResult {
        match request {
            CallRequest::Exec {
                argv,
                env,
                stdin,
                timeout_ms,
                stream,
            } => {
                let Some(stdin) = decode(&stdin) else {
                    return failed(CallError::Failed, "stdin is not base64");
                };
                let exec = Exec {
                    argv,
                    env: self.with_run_env(id, env),
                    stdin,
                    // Bounded here too: the deadline arithmetic must not
                    // overflow, whatever the control plane sends.
                    timeout: Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS)),
                };
                if stream {
                    self.exec_streamed(call, id, exec, out).await
                } else {
                    match self.runtime.exec(id, exec).await {
                        Ok(result) => {
                            send_chunks(out, call, Part::Stdout, &result.stdout).await;
                            send_chunks(out, call, Part::Stderr, &result.stderr).await;
                            exec_result(&result)
                        }
                        Err(e) => call_error(id, e),
                    }
                }
            }
            CallRequest::WriteFile { path } => {
                let data = self
                    .uploads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&call)
                    .unwrap_or_default();
                if self
                    .oversize
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&call)
                {
                    return failed(CallError::Limits, "the file is too large");
                }
                match self.runtime.write_file(id, &path, data).await {
                    Ok(()) => CallResult::Written,
                    Err(e) => call_error(id, e),
                }
            }
            CallRequest::CommitMemory => match self.commit_memory_now(id).await {
                Ok(version) => CallResult::Committed { version },
                Err(message) => failed(CallError::Failed, &message),
            },
            CallRequest::ReadFile { path } => match self.runtime.read_file(id, &path).await {
                Ok(data) => {
                    send_chunks(out, call, Part::File, &data).await;
                    CallResult::Read
                }
                Err(e) => call_error(id, e),
            },
        }
    }

    async fn exec_streamed(
        &self,
        call: u64,
        id: &str,
        exec: Exec,
        out: &mpsc::Sender<WorkerMessage>,
    ) -> CallResult {
        let mut events = match self.runtime.exec_stream(id, exec).await {
            Ok(events) => events,
            Err(e) => return call_error(id, e),
        };
        while let Some(event) = events.recv().await {
            match event {
                StreamEvent::Stdout(data) => send_chunks(out, call, Part::Stdout, &data).await,
                StreamEvent::Stderr(data) => send_chunks(out, call, Part::Stderr, &data).await,
                StreamEvent::Done(result) => return exec_result(&result),
                StreamEvent::Failed(detail) => return failed(CallError::Failed, &detail),
            }
        }
        failed(CallError::Gone, "the sandbox has stopped")
    }
}

async fn send_chunks(out: &mpsc::Sender<WorkerMessage>, call: u64, part: Part, data: &[u8]) {
    for chunk in data.chunks(CHUNK_BYTES) {
        let message = WorkerMessage::CallChunk {
            call,
            part,
            data: encode(chunk),
        };
        if out.send(message).await.is_err() {
            return;
        }
    }
}

fn exec_result(result: &crate::ExecResult) -> CallResult {
    CallResult::Exec {
        exit_code: result.exit_code,
        timed_out: result.timed_out,
        stdout_truncated: result.stdout_truncated,
        stderr_truncated: result.stderr_truncated,
        error: result.error.clone(),
        oom_killed: result.oom_killed,
    }
}

fn failed(error: CallError, message: &str) -> CallResult {
    CallResult::Failed {
        error,
        message: message.to_owned(),
    }
}

fn call_error(id: &str, e: Error) -> CallResult {
    match e {
        Error::SandboxGone => failed(CallError::Gone, "the sandbox has stopped"),
        Error::File(message) => failed(CallError::File, &message),
        Error::Limits(message) => failed(CallError::Limits, &message),
        other => {
            tracing::error!(sandbox = id, error = %other, "sandbox call failed");
            failed(CallError::Failed, "the sandbox did not answer")
        }
    }
}
