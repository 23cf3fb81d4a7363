//! The worker's end of a sandbox's control socket: sends requests to the
//! agent and matches its replies to them by id.
//!
//! Everything the agent sends is hostile input: frames are bounded
//! ([`protocol::MAX_FRAME`]), malformed ones end the conversation, and a
//! reply to an id nobody asked for is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// File reads in flight (their replies may be large).
    big_reads: Arc<AtomicUsize>,
}

/// Largest frame accepted while no file read is pending: an exec reply
/// (1 MiB of stdout, 1 MiB of stderr) with room to spare.
const SMALL_FRAME: usize = (2 << 20) + (64 << 10);
/// How long a stalled stream reader or a socket that takes no request may
/// hold things up.
const STALL: Duration = Duration::from_secs(30);

/// Whether a reply's fields are within what the worker ever asks for.
fn within_bounds(reply: &Reply) -> bool {
    match reply {
        Reply::Ready => true,
        Reply::Output { data, .. } => data.len() <= 64 << 10,
        Reply::Exec(r) => {
            r.stdout.len() <= super::MAX_OUTPUT as usize
                && r.stderr.len() <= super::MAX_OUTPUT as usize
                && r.error.len() <= 4096
        }
        Reply::File {
            result: Ok(data), ..
        } => data.len() <= super::MAX_FILE as usize,
        Reply::File { result: Err(e), .. } => e.len() <= 4096,
    }
}

impl Control {
    /// Waits (up to `ready_within`) for the agent's `Ready`, then starts
    /// reading its replies in the background.
    pub async fn connect(stream: UnixStream, ready_within: Duration) -> Result<Self, Error> {
        let (mut reader, writer) = stream.into_split();
        let first =
            tokio::time::timeout(ready_within, read_frame(&mut reader, &AtomicUsize::new(0)))
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
        let big_reads = Arc::new(AtomicUsize::new(0));
        let (task_pending, task_closed, task_big) =
            (pending.clone(), closed.clone(), big_reads.clone());
        // Runs on the runtime of the caller: the worker makes sure that is
        // its own (see `Runtime::handle`).
        tokio::spawn(async move {
            loop {
                let reply = match read_frame(&mut reader, &task_big).await {
                    Ok(Some(frame)) => Reply::decode(&frame),
                    Ok(None) | Err(_) => break,
                };
                let reply = match reply {
                    Ok(reply) if within_bounds(&reply) => reply,
                    _ => {
                        tracing::warn!(
                            "sandbox agent sent a malformed or oversized frame; closing its socket"
                        );
                        break;
                    }
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
                    // A reader that takes nothing for 30 s loses its stream
                    // rather than wedging the sandbox.
                    Some(Waiter::Stream(tx))
                        if tokio::time::timeout(STALL, tx.send(reply)).await.is_err() =>
                    {
                        task_pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                    }
                    Some(Waiter::Stream(_)) | None => {}
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
            big_reads,
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
            tokio::time::timeout(STALL, writer.write_all(&request.encode())).await
        };
        if !matches!(sent, Ok(Ok(()))) {
            // An agent that does not read its requests is as good as gone.
            if sent.is_err() {
                self.closed.store(true, Ordering::SeqCst);
            }
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
        let big = matches!(
            request,
            Request::ReadFile { .. } | Request::ListFiles { .. }
        );
        if big {
            self.big_reads.fetch_add(1, Ordering::SeqCst);
        }
        let (tx, rx) = oneshot::channel();
        let reply = match self.send(id, request, Waiter::Once(tx)).await {
            Ok(()) => Ok(tokio::time::timeout(within, rx).await),
            Err(e) => Err(e),
        };
        if big {
            self.big_reads.fetch_sub(1, Ordering::SeqCst);
        }
        let reply = reply?;
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

/// Reads one frame; larger than [`SMALL_FRAME`] only while `big_reads` says
/// a file read is pending (checked once the length has arrived, so a read
/// sent while this one waited counts).
async fn read_frame(
    reader: &mut (impl AsyncReadExt + Unpin),
    big_reads: &AtomicUsize,
) -> Result<Option<Vec<u8>>, Error> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Sandbox(format!("control socket: {e}"))),
    }
    let len = u32::from_le_bytes(len) as usize;
    let limit = if big_reads.load(Ordering::SeqCst) > 0 {
        protocol::MAX_FRAME
    } else {
        SMALL_FRAME
    };
    if len > limit {
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
