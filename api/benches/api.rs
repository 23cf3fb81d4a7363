//! Load benchmark of the authenticated hot path: `GET /v1/tenant` with an
//! API key, over loopback, against the real server (SQLite, access logs on,
//! formatted as JSON into a sink).
//!
//! Prints, one per line:
//! - `api_rps`: throughput with 64 keep-alive connections as fast as they
//!   go (closed loop), key verification cached (the default).
//! - `api_p50_ms_saturated`, `api_p99_ms_saturated`: latency in that run.
//! - `api_rps_uncached`: the same with the key cache off (every request
//!   hashes the key and queries the database), for the ratio.
//! - `api_p50_ms`, `api_p99_ms`: latency at an offered 5,000 requests/s
//!   (open loop: latency counts from when each request was due, so a slow
//!   server cannot hide its queueing).
//!
//! `CARAPACE_BENCH_SECS` sets each phase's length (default 5). The client
//! is a minimal HTTP/1.1 keep-alive loop on one thread so that it takes as
//! little of the machine's two cores as possible from the server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
mod load;

use load::{closed_loop, open_loop, percentile};

const OPEN_LOOP_RATE: f64 = 5000.0;

fn main() {
    let secs: u64 = std::env::var("CARAPACE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let phase = Duration::from_secs(secs);
    carapace_api::telemetry::init_with_writer("info", true, std::io::sink);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cached_port, key) = server_rt.block_on(start(&dir, "cached", 1000, None));
    let (uncached_port, _) = server_rt.block_on(start(&dir, "uncached", 0, Some(&key)));

    // The client runs on its own single-threaded runtime.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let request = request_bytes(cached_port, &key);
        closed_loop(&request, cached_port, Duration::from_secs(1)).await; // warm-up
        let (rps, mut lat) = closed_loop(&request, cached_port, phase).await;
        println!("api_rps: {rps:.0}");
        println!("api_p50_ms_saturated: {:.3}", percentile(&mut lat, 0.50));
        println!("api_p99_ms_saturated: {:.3}", percentile(&mut lat, 0.99));

        let uncached = request_bytes(uncached_port, &key);
        closed_loop(&uncached, uncached_port, Duration::from_secs(1)).await;
        let (rps_uncached, _) = closed_loop(&uncached, uncached_port, phase).await;
        println!("api_rps_uncached: {rps_uncached:.0}");
        println!("api_cache_speedup: {:.2}", rps / rps_uncached);

        let (achieved, mut lat) = open_loop(&request, cached_port, phase, OPEN_LOOP_RATE).await;
        println!("api_offered_rps: {OPEN_LOOP_RATE:.0}");
        println!("api_achieved_rps: {achieved:.0}");
        println!("api_p50_ms: {:.3}", percentile(&mut lat, 0.50));
        println!("api_p99_ms: {:.3}", percentile(&mut lat, 0.99));
    });
    drop(server_rt);
}

/// Starts a server; creates the tenant on the first one, and on the second
/// (sharing the database) reuses the key.
async fn start(
    dir: &tempfile::TempDir,
    name: &str,
    cache_ms: u64,
    key: Option<&str>,
) -> (u16, String) {
    let settings = SettingsArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().join(name)),
        database_url: Some(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        )),
        auth_cache_ttl_ms: Some(cache_ms),
        // Sandboxes (and their pool) would compete for the two cores.
        sandboxes: Some(carapace_api::sandboxes::SandboxMode::Off),
        ..SettingsArgs::default()
    }
    .resolve()
    .unwrap();
    let app = Application::build(&settings).await.unwrap();
    let port = app.port();
    let key = match key {
        Some(key) => key.to_owned(),
        None => {
            let (_, secret) =
                bootstrap::create_tenant(app.db(), "Bench", "bench@example.com", &Actor::cli())
                    .await
                    .unwrap();
            secret.reveal().to_owned()
        }
    };
    tokio::spawn(app.run());
    (port, key)
}

fn request_bytes(port: u16, key: &str) -> Vec<u8> {
    format!(
        "GET /v1/tenant HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    .into_bytes()
}
