//! The ledger writer: gateway calls end in many places (a response sent, a
//! stream finished, a client gone mid-stream), some of which cannot wait for
//! the database. They hand their entry to one background task that writes
//! whatever has queued up in one statement (so the database sees one write
//! per batch, not per call); at shutdown the task drains the queue before
//! the process exits.

use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::db::{UsageEntry, append_usage};

/// Most entries written in one statement.
const BATCH: usize = 500;
use crate::ids::TenantId;

/// Sends entries to the writer.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<(TenantId, UsageEntry)>,
}

impl Ledger {
    /// Starts the writer on the current runtime. The task ends when every
    /// `Ledger` clone is dropped and the queue is empty.
    pub fn start(db: DatabaseConnection) -> (Ledger, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(TenantId, UsageEntry)>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let entries = std::mem::take(&mut batch);
                let mut result = append_usage(&db, entries.clone()).await;
                // Billing data: a brief database outage must not lose it.
                for pause in [1, 2, 4] {
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
                    result = append_usage(&db, entries.clone()).await;
                }
                if let Err(e) = result {
                    // Billing data: say loudly what was not recorded.
                    for (tenant, entry) in &entries {
                        tracing::error!(
                            error = ?e, tenant_id = %tenant, model = %entry.model,
                            input_tokens = entry.input_tokens, output_tokens = entry.output_tokens,
                            "failed to record gateway usage"
                        );
                    }
                }
            }
        });
        (Ledger { tx }, task)
    }

    /// Queues one entry.
    pub fn record(&self, tenant: TenantId, entry: UsageEntry) {
        if self.tx.send((tenant.clone(), entry)).is_err() {
            tracing::error!(tenant_id = %tenant, "usage ledger writer has stopped; entry lost");
        }
    }
}
