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
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Who waits for the replies to a request.
enum Waiter {
    /// One reply.
    Once(oneshot::Sender<Reply>),
    /// `Output` frames, then the final reply.
    Stream(mpsc::Sender<Reply>),
}

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

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
                let streaming = matches!(reply, Reply::Output { .. });
                let waiter = {
                    let mut pending = task_pending.lock().unwrap_or_else(PoisonError::into_inner);
                    match pending.get(&id) {
                        // Output goes to a stream's reader and keeps it.
                        Some(Waiter::Stream(tx)) if streaming => Some(Waiter::Stream(tx.clone())),
                        // Output for anything else is dropped.
                        _ if streaming => None,
                        _ => pending.remove(&id),
                    }
                };
                match waiter {
                    Some(Waiter::Once(tx)) => {
                        let _ = tx.send(reply);
                    }
                    // Waiting here is the backpressure: a slow reader
                    // stops this socket being read, and the command's
                    // pipes fill up.
                    Some(Waiter::Stream(tx)) => {
                        let _ = tx.send(reply).await;
                    }
                    None => {}
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

    /// Registers `waiter` for `id` and sends `request`.
    async fn send(&self, id: u64, request: &Request, waiter: Waiter) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::SandboxGone);
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, waiter);
        let sent = {
            let mut writer = self.writer.lock().await;
            writer.write_all(&request.encode()).await
        };
        if sent.is_err() {
            self.forget(id);
            return Err(Error::SandboxGone);
        }
        Ok(())
    }

    /// Stops waiting for request `id`; its late replies are dropped.
    pub fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Sends `request` (whose id must come from [`Control::next_id`]) and
    /// waits up to `within` for its reply.
    pub async fn call(&self, id: u64, request: &Request, within: Duration) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(id, request, Waiter::Once(tx)).await?;
        let reply = tokio::time::timeout(within, rx).await;
        self.forget(id);
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::SandboxGone),
            Err(_) => Err(Error::Sandbox(
                "the sandbox agent did not answer in time".into(),
            )),
        }
    }

    /// Sends `request` and hands back its replies as they come: `Output`
    /// frames, then the final reply. The channel closes if the agent goes.
    pub async fn call_stream(
        &self,
        id: u64,
        request: &Request,
    ) -> Result<mpsc::Receiver<Reply>, Error> {
        let (tx, rx) = mpsc::channel(16);
        self.send(id, request, Waiter::Stream(tx)).await?;
        Ok(rx)
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
