//! The worker's end of a sandbox's control socket: sends requests to the
//! agent and matches its replies to them by id.
//!
//! Everything the agent sends is hostile input: frames are bounded
//! ([`protocol::MAX_FRAME`]), malformed ones end the conversation, and a
//! reply to an id nobody asked for is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carapace_agent::protocol::{self, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::Error;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A live conversation with one sandbox's agent.
pub struct Control {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Control {
    /// Waits (up to `ready_within`) for the agent's `Ready`, then starts
    /// reading its replies in the background.
    pub async fn connect(stream: UnixStream, ready_within: Duration) -> Result<Self, Error> {
        let (mut reader, writer) = stream.into_split();
        let first = tokio::time::timeout(ready_within, read_frame(&mut reader))
            .await
            .map_err(|_| Error::Sandbox("the sandbox agent did not start in time".into()))??;
        match first.as_deref().map(Reply::decode) {
            Some(Ok(Reply::Ready)) => {}
            _ => {
                return Err(Error::Sandbox(
                    "the sandbox agent did not announce itself".into(),
                ));
            }
        }
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (task_pending, task_closed) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let reply = match read_frame(&mut reader).await {
                    Ok(Some(frame)) => Reply::decode(&frame),
                    Ok(None) | Err(_) => break,
                };
                let Ok(reply) = reply else {
                    tracing::warn!("sandbox agent sent a malformed frame; closing its socket");
                    break;
                };
                let Some(id) = reply.id() else { continue };
                let waiter = task_pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
            task_closed.store(true, Ordering::SeqCst);
            // Dropping the senders wakes every waiter with an error.
            task_pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        });
        Ok(Control {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the agent has gone (its socket closed or it broke the
    /// protocol).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends `request` (whose id must come from [`Control::next_id`]) and
    /// waits up to `within` for its reply.
    pub async fn call(&self, id: u64, request: &Request, within: Duration) -> Result<Reply, Error> {
        if self.is_closed() {
            return Err(Error::SandboxGone);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let sent = {
            let mut writer = self.writer.lock().await;
            writer.write_all(&request.encode()).await
        };
        if sent.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(Error::SandboxGone);
        }
        let reply = tokio::time::timeout(within, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::SandboxGone),
            Err(_) => Err(Error::Sandbox(
                "the sandbox agent did not answer in time".into(),
            )),
        }
    }
}

async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Vec<u8>>, Error> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Sandbox(format!("control socket: {e}"))),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > protocol::MAX_FRAME {
        return Err(Error::Sandbox(format!(
            "sandbox agent sent a {len}-byte frame"
        )));
    }
    let mut frame = vec![0u8; len];
    reader
        .read_exact(&mut frame)
        .await
        .map_err(|e| Error::Sandbox(format!("control socket: {e}")))?;
    Ok(Some(frame))
}
