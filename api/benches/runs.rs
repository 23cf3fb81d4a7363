//! `cargo bench -p carapace-api --bench runs`: a run's start through the
//! whole path — the API commits it, the scheduler places it, the worker
//! (the in-process one, over the same protocol as a remote worker) starts
//! a sandbox and reports the command handed to it. Real containers (needs
//! root).
//!
//! Prints, one per line:
//! - `run_start_p50_ms` / `run_start_p99_ms`: from just before
//!   `POST /v1/runs` to the run's `running_at` (the worker's report that
//!   the sandbox is up and the command is being handed to its agent), both
//!   on this host's clock;
//! - `run_finish_p50_ms` / `run_finish_p99_ms`: to its `finished_at` (the
//!   command `true` ran and the sandbox was deleted).
//!
//! The pool gets 150 ms to refill between runs. `CARAPACE_BENCH_ROUNDS`
//! (default 40) sets the sample size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
use carapace_api::fleet::SchedulerArgs;
use carapace_api::sandboxes::{SandboxArgs, SandboxMode};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1);
    sorted[rank]
}

fn at(run: &Value, field: &str) -> DateTime<Utc> {
    run[field].as_str().unwrap().parse().unwrap()
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
        let settings = SettingsArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            sandboxes: Some(SandboxMode::On),
            sandbox: Some(SandboxArgs {
                helper: Some(env!("CARGO_BIN_EXE_carapace").into()),
                pool_size: Some(2),
                ..SandboxArgs::default()
            }),
            scheduler: Some(SchedulerArgs::default()),
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
        let key = secret.reveal().to_owned();
        tokio::spawn(app.run());
        let client = reqwest::Client::new();
        let (mut start, mut finish) = (Vec::new(), Vec::new());
        for i in 0..n + 3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let t0 = Utc::now();
            let res = client
                .post(format!("{address}/v1/runs"))
                .bearer_auth(&key)
                .json(&json!({"command": ["true"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let id = res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let run = loop {
                let run: Value = client
                    .get(format!("{address}/v1/runs/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if run["finished_at"].is_string() {
                    break run;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert_eq!(run["state"], "succeeded", "{run}");
            if i >= 3 {
                let ms = |to: DateTime<Utc>| (to - t0).num_microseconds().unwrap() as f64 / 1000.0;
                start.push(ms(at(&run, "running_at")));
                finish.push(ms(at(&run, "finished_at")));
            }
        }
        start.sort_by(f64::total_cmp);
        finish.sort_by(f64::total_cmp);
        println!("run_start_p50_ms: {:.2}", percentile(&start, 0.50));
        println!("run_start_p99_ms: {:.2}", percentile(&start, 0.99));
        println!("run_finish_p50_ms: {:.2}", percentile(&finish, 0.50));
        println!("run_finish_p99_ms: {:.2}", percentile(&finish, 0.99));
    });
}
