//! Calls to interactive sandboxes (the sandbox API's commands and file
//! transfers), forwarded to the worker that holds the sandbox over its
//! connection to this replica, and the answers routed back.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use carapace_scheduler::protocol::{
    CHUNK_BYTES, CallRequest, CallResult, ControlMessage, Lease, Part, decode, encode,
};
use tokio::sync::mpsc;

use super::Fleet;

/// Part of a call's answer, as the caller receives it.
#[derive(Debug)]
pub enum CallReply {
    /// Bytes of one stream.
    Chunk(Part, Vec<u8>),
    /// The end. Nothing follows.
    Done(CallResult),
    /// The caller read too slowly: [`CALL_BACKLOG`] pieces were waiting.
    /// The call is dropped here (the command goes on until it ends or
    /// times out); nothing follows.
    Overflow,
}

/// Pieces of an answer that may wait for a slow caller (each at most
/// `CHUNK_BYTES`: 16 MiB in all). The worker's link is never held up by
/// one caller.
pub const CALL_BACKLOG: usize = 64;

/// Why a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CallRouteError {
    /// The worker holding the sandbox is not connected to this replica.
    #[error("the sandbox's worker is not connected to this control-plane replica")]
    NotHere,
}

pub(super) struct PendingCall {
    worker: String,
    /// The connection it went out on.
    generation: u64,
    run: String,
    tx: mpsc::Sender<CallReply>,
}

/// The calls in flight on this replica.
#[derive(Default)]
pub(super) struct Calls {
    next: AtomicU64,
    pending: std::sync::Mutex<HashMap<u64, PendingCall>>,
}

impl Fleet {
    /// Sends `request` (with `upload`'s bytes first, for a file write) to the
    /// sandbox of `lease` on `worker`; the answer arrives on the returned
    /// channel, which closes early if the worker's connection breaks.
    pub async fn call(
        &self,
        worker: &str,
        lease: Lease,
        request: CallRequest,
        upload: Option<Vec<u8>>,
    ) -> Result<mpsc::Receiver<CallReply>, CallRouteError> {
        let (sender, generation) = self.link(worker).ok_or(CallRouteError::NotHere)?;
        let call = self.calls.next.fetch_add(1, Ordering::Relaxed);
        // One more slot than the backlog, kept for `Overflow`.
        let (tx, rx) = mpsc::channel(CALL_BACKLOG + 1);
        self.calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                call,
                PendingCall {
                    worker: worker.to_owned(),
                    generation,
                    run: lease.run.clone(),
                    tx,
                },
            );
        let mut messages = Vec::new();
        for chunk in upload.as_deref().unwrap_or_default().chunks(CHUNK_BYTES) {
            messages.push(ControlMessage::Upload {
                call,
                data: encode(chunk),
            });
        }
        messages.push(ControlMessage::Call {
            call,
            lease,
            request,
        });
        for message in messages {
            if sender.send(message).await.is_err() {
                self.forget_call(call);
                return Err(CallRouteError::NotHere);
            }
        }
        Ok(rx)
    }

    /// Calls in flight on this replica to the sandbox of `run` (the idle
    /// timeout leaves it alone meanwhile).
    pub fn calls_in_flight(&self, run: &str) -> usize {
        self.calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| c.run == run)
            .count()
    }

    fn forget_call(&self, call: u64) {
        self.calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&call);
    }

    pub(super) fn call_chunk(&self, worker: &str, call: u64, part: Part, data: &str) {
        let Some(bytes) = decode(data) else {
            tracing::warn!(worker, call, "a call chunk is not base64");
            return;
        };
        let mut pending = self
            .calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the worker the call went to may answer it.
        let Some(waiting) = pending.get(&call).filter(|c| c.worker == worker) else {
            return;
        };
        let sent = if waiting.tx.capacity() > 1 {
            waiting.tx.try_send(CallReply::Chunk(part, bytes)).is_ok()
        } else {
            tracing::warn!(
                worker,
                call,
                "a caller reads too slowly: its call is dropped"
            );
            let _ = waiting.tx.try_send(CallReply::Overflow);
            false
        };
        if !sent {
            pending.remove(&call);
        }
    }

    pub(super) fn call_done(&self, worker: &str, call: u64, result: CallResult) {
        let mut pending = self
            .calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.get(&call).is_some_and(|c| c.worker == worker)
            && let Some(waiting) = pending.remove(&call)
        {
            // The slot kept for the end, if the caller is behind.
            let _ = waiting.tx.try_send(CallReply::Done(result));
        }
    }

    /// Ends every call that went out on `worker`'s connection `generation`
    /// (it ended: no answer will come on it).
    pub(super) fn fail_calls(&self, worker: &str, generation: u64) {
        self.calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, c| c.worker != worker || c.generation != generation);
    }

    /// The runs whose sandboxes have calls in flight here.
    pub fn runs_with_calls(&self) -> Vec<String> {
        let mut runs: Vec<String> = self
            .calls
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| c.run.clone())
            .collect();
        runs.sort();
        runs.dedup();
        runs
    }
}
