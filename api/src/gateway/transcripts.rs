//! The opt-in record of prompts and completions. Off by default: a
//! tenant turns it on (`PUT /v1/gateway/settings`); then each call's
//! request body and the answer as the client got it (an event stream
//! included), each cut at [`MAX_KEPT`] bytes, are sealed with the tenant's
//! data key and stored (`db::transcripts`). Nothing of them reaches a log,
//! the ledger, or the database in clear.
//!
//! The hot path only gathers the bytes ([`Capture`]); sealing and storing
//! happen on one background task, fed through a queue bounded in records
//! and in bytes: when it is full (the database far behind), the record is
//! dropped and that is logged — the call itself is never slowed or failed
//! by it. The same task deletes records older than the retention period
//! (`[gateway] transcript_retention_days`) every hour.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::crypto::DataKey;
use crate::db::{StoredTranscript, TenantScope};
use crate::error::Error;
use crate::ids::{AgentId, RunId, TenantId, TranscriptId};
use crate::master_key::MasterKey;

/// Bytes kept of each side of a call.
pub const MAX_KEPT: usize = 1 << 20;
/// Records waiting to be sealed and stored.
const QUEUE: usize = 1024;
/// Bytes of records waiting to be sealed and stored.
const QUEUE_BYTES: usize = 64 << 20;
/// How often old records are deleted.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// One call's bodies, gathered as they pass. Its `Debug` shows sizes only.
pub struct Capture {
    request: Vec<u8>,
    response: Vec<u8>,
    truncated: bool,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("request_bytes", &self.request.len())
            .field("response_bytes", &self.response.len())
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl Capture {
    /// Bytes held.
    fn size(&self) -> usize {
        self.request.len() + self.response.len()
    }

    /// Starts with the request as the client sent it.
    pub fn new(request: &[u8]) -> Self {
        let kept = &request[..request.len().min(MAX_KEPT)];
        Capture {
            request: kept.to_vec(),
            response: Vec::new(),
            truncated: kept.len() < request.len(),
        }
    }

    /// Adds answer bytes as they reach the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        let room = MAX_KEPT.saturating_sub(self.response.len());
        self.response
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }
}

/// Who made a call, and what became of it.
#[derive(Debug, Clone)]
pub struct CallFacts {
    pub tenant: TenantId,
    pub run: Option<RunId>,
    pub agent: Option<AgentId>,
    pub model: String,
    pub status: u16,
    pub at: DateTime<Utc>,
}

/// What is sealed.
#[derive(Serialize, Deserialize)]
struct Sealed {
    request: String,
    response: String,
    truncated: bool,
}

/// A transcript opened for its tenant (no `Debug`: it is plaintext).
pub struct Opened {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
    pub truncated: bool,
}

/// The associated data binding a sealed transcript to its tenant and id.
fn aad(tenant: &TenantId, id: &TranscriptId) -> Vec<u8> {
    format!("carapace:gateway-transcript:v1\n{tenant}\n{id}").into_bytes()
}

/// Opens a stored transcript with its tenant's data key.
pub fn open(key: &DataKey, tenant: &TenantId, stored: &StoredTranscript) -> Result<Opened, Error> {
    let plain = key
        .open(&stored.sealed, &aad(tenant, &stored.id))
        .map_err(|_| Error::Integrity(format!("transcript {} does not authenticate", stored.id)))?;
    let sealed: Sealed = serde_json::from_slice(&plain)
        .map_err(|e| Error::Integrity(format!("transcript {}: {e}", stored.id)))?;
    let decode = |s: &str| {
        BASE64
            .decode(s)
            .map_err(|e| Error::Integrity(format!("transcript {}: {e}", stored.id)))
    };
    Ok(Opened {
        request: decode(&sealed.request)?,
        response: decode(&sealed.response)?,
        truncated: sealed.truncated,
    })
}

/// Hands records to the writer.
#[derive(Clone)]
pub struct Transcripts {
    tx: mpsc::Sender<(CallFacts, Capture)>,
    /// Bytes queued and not yet stored.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Transcripts {
    /// Starts the writer on the current runtime; it ends when every
    /// `Transcripts` is dropped and the queue is empty.
    pub fn start(
        db: DatabaseConnection,
        master_key: MasterKey,
        retention: std::time::Duration,
    ) -> (Transcripts, tokio::task::JoinHandle<()>) {
        use std::sync::atomic::Ordering;
        let (tx, mut rx) = mpsc::channel::<(CallFacts, Capture)>(QUEUE);
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = queued.clone();
        let task = tokio::spawn(async move {
            let mut purge = tokio::time::interval(PURGE_EVERY);
            purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    next = rx.recv() => {
                        let Some((facts, capture)) = next else { break };
                        let (tenant, size) = (facts.tenant.clone(), capture.size());
                        if let Err(e) = store(&db, &master_key, facts, capture).await {
                            tracing::error!(tenant_id = %tenant, error = ?e, "a gateway transcript was not stored");
                        }
                        counted.fetch_sub(size, Ordering::Relaxed);
                    }
                    _ = purge.tick() => {
                        let before = Utc::now()
                            - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
                        match crate::db::delete_transcripts_before(&db, before).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, "old gateway transcripts deleted"),
                            Err(e) => tracing::warn!(error = ?e, "old gateway transcripts not deleted"),
                        }
                    }
                }
            }
        });
        (Transcripts { tx, queued }, task)
    }

    /// Queues a record (dropped, and logged, if the queue is full).
    pub fn record(&self, facts: CallFacts, capture: Capture) {
        use std::sync::atomic::Ordering;
        let tenant = facts.tenant.clone();
        let size = capture.size();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            tracing::warn!(tenant_id = %tenant, "gateway transcript queue full; record dropped");
            return;
        }
        if self.tx.try_send((facts, capture)).is_err() {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            tracing::warn!(tenant_id = %tenant, "gateway transcript queue full or closed; record dropped");
        }
    }
}

async fn store(
    db: &DatabaseConnection,
    master_key: &MasterKey,
    facts: CallFacts,
    capture: Capture,
) -> Result<(), Error> {
    let scope = TenantScope::new(db, &facts.tenant);
    let key = scope.data_key(master_key).await?;
    let id = TranscriptId::generate();
    let plain = serde_json::to_vec(&Sealed {
        request: BASE64.encode(&capture.request),
        response: BASE64.encode(&capture.response),
        truncated: capture.truncated,
    })
    .map_err(anyhow::Error::from)?;
    let sealed = key.seal(&plain, &aad(&facts.tenant, &id))?;
    scope
        .insert_transcript(&StoredTranscript {
            id,
            created_at: facts.at,
            run: facts.run.map(|r| r.to_string()),
            agent: facts.agent.map(|a| a.to_string()),
            model: facts.model,
            status: facts.status,
            sealed,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::Capture;

    #[test]
    fn captures_are_bounded() {
        let mut capture = Capture::new(&vec![b'x'; super::MAX_KEPT + 5]);
        assert!(capture.truncated);
        assert_eq!(capture.request.len(), super::MAX_KEPT);
        let mut small = Capture::new(b"{}");
        assert!(!small.truncated);
        small.feed(&vec![b'y'; super::MAX_KEPT - 1]);
        small.feed(b"zz");
        assert_eq!(small.response.len(), super::MAX_KEPT);
        assert!(small.truncated);
        capture.feed(b"");
    }
}
