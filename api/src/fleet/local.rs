//! The worker inside `carapace serve`: the same protocol as a remote
//! worker, over in-process channels instead of a WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carapace_runtime::Runtime;
use carapace_runtime::worker::{Link, Worker, WorkerConfig};
use carapace_scheduler::store;

use super::Fleet;

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
    let config = WorkerConfig::new(
        carapace_runtime::worker::default_capacity(fleet.config.local_slots),
        images,
        service_addr,
        &format!("http://{service_addr}"),
    );
    let worker = Worker::new(runtime, config);
    let welcomed = worker.clone();
    let worker_id = id.clone();
    let task = tokio::spawn(async move {
        loop {
            let (link, end) = Link::pair();
            let serving = tokio::spawn(fleet.clone().serve(worker_id.clone(), end));
            let ended = worker.session(link).await;
            serving.abort();
            tracing::warn!(?ended, "in-process worker session ended; reconnecting");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Ready when the fleet knows it: a sandbox asked for right after start
    // finds a worker.
    if welcomed.wait_welcomed(Duration::from_secs(10)).await {
        tracing::info!(worker = %id, name, "in-process worker ready");
    } else {
        tracing::warn!(worker = %id, name, "in-process worker not welcomed within 10 s");
    }
    Ok(task)
}
