//! `cargo bench -p carapace-api --bench sandboxes`: sandbox start and exec
//! through the HTTP API, real containers (needs root).
//!
//! Prints, one per line:
//! - `api_sandbox_create_p50_ms` / `_p99_ms`: `POST /v1/sandboxes` until
//!   the 201 (the agent inside has announced itself), with the pool given
//!   time to refill between requests (150 ms);
//! - `api_sandbox_create_unpooled_p50_ms` / `_p99_ms`: the same on a server
//!   with no pool (every container created from scratch);
//! - `api_sandbox_exec_p50_ms` / `_p99_ms`: `POST /v1/sandboxes/{id}/exec`
//!   of `true`;
//! - `api_sandbox_delete_p50_ms`.
//!
//! `CARAPACE_BENCH_ROUNDS` (default 40) sets the sample size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
use carapace_api::sandboxes::{SandboxArgs, SandboxMode};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1);
    sorted[rank]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn start(dir: &tempfile::TempDir, name: &str, pool_size: usize) -> (String, String) {
    let settings = SettingsArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().join(name)),
        sandboxes: Some(SandboxMode::On),
        sandbox: Some(SandboxArgs {
            helper: Some(env!("CARGO_BIN_EXE_carapace").into()),
            pool_size: Some(pool_size),
            max_per_tenant: Some(1000),
            ..SandboxArgs::default()
        }),
        ..SettingsArgs::default()
    }
    .resolve()
    .unwrap();
    let app = Application::build(&settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (_, secret) =
        bootstrap::create_tenant(app.db(), "Bench", "bench@example.com", &Actor::cli())
            .await
            .unwrap();
    tokio::spawn(app.run());
    (address, secret.reveal().to_owned())
}

struct Figures {
    create: Vec<f64>,
    exec: Vec<f64>,
    delete: Vec<f64>,
}

async fn rounds(address: &str, key: &str, rounds: usize, pause: Duration) -> Figures {
    let client = reqwest::Client::new();
    let mut f = Figures {
        create: vec![],
        exec: vec![],
        delete: vec![],
    };
    for i in 0..rounds + 3 {
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        let res = client
            .post(format!("{address}/v1/sandboxes"))
            .bearer_auth(key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            201,
            "{}",
            res.text().await.unwrap_or_default()
        );
        let created = started.elapsed();
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let started = Instant::now();
        let res = client
            .post(format!("{address}/v1/sandboxes/{id}/exec"))
            .bearer_auth(key)
            .json(&json!({"command": ["true"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let executed = started.elapsed();
        let started = Instant::now();
        let res = client
            .delete(format!("{address}/v1/sandboxes/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        if i >= 3 {
            f.create.push(ms(created));
            f.exec.push(ms(executed));
            f.delete.push(ms(started.elapsed()));
        }
    }
    for v in [&mut f.create, &mut f.exec, &mut f.delete] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    f
}

fn main() {
    let n: usize = std::env::var("CARAPACE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    carapace_api::telemetry::init_with_writer("warn", true, std::io::sink);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (pooled, key) = start(&dir, "pooled", 2).await;
        let warm = rounds(&pooled, &key, n, Duration::from_millis(150)).await;
        let (unpooled, key2) = start(&dir, "unpooled", 0).await;
        let cold = rounds(&unpooled, &key2, n, Duration::from_millis(20)).await;
        println!(
            "api_sandbox_create_p50_ms: {:.2}",
            percentile(&warm.create, 0.50)
        );
        println!(
            "api_sandbox_create_p99_ms: {:.2}",
            percentile(&warm.create, 0.99)
        );
        println!(
            "api_sandbox_create_unpooled_p50_ms: {:.2}",
            percentile(&cold.create, 0.50)
        );
        println!(
            "api_sandbox_create_unpooled_p99_ms: {:.2}",
            percentile(&cold.create, 0.99)
        );
        println!(
            "api_sandbox_exec_p50_ms: {:.2}",
            percentile(&warm.exec, 0.50)
        );
        println!(
            "api_sandbox_exec_p99_ms: {:.2}",
            percentile(&warm.exec, 0.99)
        );
        println!(
            "api_sandbox_delete_p50_ms: {:.2}",
            percentile(&warm.delete, 0.50)
        );
    });
}
