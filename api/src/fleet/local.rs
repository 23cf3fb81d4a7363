//! The worker inside `carapace serve`: the same protocol as a remote
//! worker, over in-process channels instead of a WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carapace_runtime::worker::{Link, Worker, WorkerConfig};
use carapace_runtime::{Runtime, capacity};
use carapace_scheduler::protocol::Resources;
use carapace_scheduler::store;

use super::Fleet;
use crate::sandboxes::SERVICE_HOST;

/// Registers the in-process worker (named `local-<tag>` after its state
/// directory) and keeps it connected to `fleet` until the task is aborted.
pub async fn start_local_worker(
    fleet: Arc<Fleet>,
    runtime: Arc<Runtime>,
    images: std::collections::HashMap<String, std::path::PathBuf>,
    service_addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let name = format!("local-{}", runtime.tag());
    let id = store::register_local(&fleet.db, &name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the in-process worker: {e}"))?;
    let host = capacity::probe().ok();
    let config = WorkerConfig {
        capacity: Resources {
            cpu_millis: host.map_or(1000, |c| c.cpus_millis),
            memory_mib: host.map_or(1024, |c| c.memory_bytes >> 20),
            slots: fleet.config.local_slots,
        },
        images,
        services: vec![(SERVICE_HOST.to_owned(), 80, service_addr)],
    };
    let worker = Worker::new(runtime, config);
    tracing::info!(worker = %id, name, "in-process worker ready");
    Ok(tokio::spawn(async move {
        loop {
            let (link, end) = Link::pair();
            let serving = tokio::spawn(fleet.clone().serve(id.clone(), end));
            let ended = worker.session(link).await;
            serving.abort();
            tracing::warn!(?ended, "in-process worker session ended; reconnecting");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}
