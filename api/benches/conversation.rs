//! `cargo bench -p carapace-api --bench conversation`: a message to an
//! agent through the whole path — the API queues it, the conversation's
//! task takes it, the agent's tool loop runs in its sandbox (a real
//! container: needs root) and calls the gateway with its run token, the
//! gateway calls a fake upstream (in this process, answering at once), the
//! reply comes back through `?wait`.
//!
//! Prints, one per line, for warm runs (the next message of a
//! conversation, its agent's sandbox already up) and cold ones (a new
//! agent: its sandbox started on its memory first):
//! - `message_first_event_p50_ms_{warm,cold}` (and `_p99_`): from just
//!   before `POST /v1/agents/{id}/messages` to the `run_placed` event's
//!   time (the message taken and its sandbox found or started), both on
//!   this host's clock;
//! - `message_reply_overhead_p50_ms_{warm,cold}` (and `_p99_`): the time
//!   to the reply minus the time the fake upstream spent on its calls.
//!
//! `CARAPACE_BENCH_ROUNDS` (default 40) sets the sample size of each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
use carapace_api::fleet::SchedulerArgs;
use carapace_api::gateway::GatewayArgs;
use carapace_api::gateway::config::{ProviderArgs, ProviderKind};
use carapace_api::sandboxes::{SandboxArgs, SandboxMode};
use carapace_api::secret::Secret;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1);
    sorted[rank]
}

/// Nanoseconds the fake upstream spent answering, in all.
#[derive(Default)]
struct Upstream {
    busy_ns: AtomicU64,
}

async fn chat(upstream: web::Data<Upstream>, body: web::Json<Value>) -> HttpResponse {
    let started = Instant::now();
    let text = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let answer = json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1,
        "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": format!("echo: {text}")}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}});
    let response = HttpResponse::Ok().json(answer);
    upstream
        .busy_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    response
}

struct Bench {
    client: reqwest::Client,
    address: String,
    key: String,
    upstream: Arc<Upstream>,
}

impl Bench {
    async fn agent(&self) -> String {
        let res = self
            .client
            .post(format!("{}/v1/agents", self.address))
            .bearer_auth(&self.key)
            .json(&json!({"name": "bench", "model": "bench-model", "tools": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn delete(&self, agent: &str) {
        let res = self
            .client
            .delete(format!("{}/v1/agents/{agent}", self.address))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }

    /// One message: (ms to the run_placed event, overhead ms), and the
    /// conversation.
    async fn message(&self, agent: &str, conversation: Option<&str>) -> (f64, f64, String) {
        let mut body = json!({"text": "hello"});
        if let Some(c) = conversation {
            body["conversation_id"] = json!(c);
        }
        let busy_before = self.upstream.busy_ns.load(Ordering::Relaxed);
        let t0 = Utc::now();
        let started = Instant::now();
        let res = self
            .client
            .post(format!(
                "{}/v1/agents/{agent}/messages?wait=60",
                self.address
            ))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let posted: Value = res.json().await.unwrap();
        let total = started.elapsed();
        assert_eq!(posted["reply"]["text"], "echo: hello", "{posted}");
        let upstream =
            Duration::from_nanos(self.upstream.busy_ns.load(Ordering::Relaxed) - busy_before);
        let conversation = posted["conversation_id"].as_str().unwrap().to_owned();
        let placed = self.placed_at(&conversation, &posted).await;
        let first = (placed - t0).num_microseconds().unwrap() as f64 / 1000.0;
        let overhead = total.saturating_sub(upstream).as_secs_f64() * 1000.0;
        (first, overhead, conversation)
    }

    /// The time of the message's `run_placed` event.
    async fn placed_at(&self, conversation: &str, posted: &Value) -> DateTime<Utc> {
        let mut res = self
            .client
            .get(format!(
                "{}/v1/conversations/{conversation}/events",
                self.address
            ))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let id = posted["message"]["id"].as_str().unwrap();
        let mut text = String::new();
        loop {
            let chunk = res.chunk().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            // Whole events only: a chunk may end mid-line.
            let whole = &text[..text.rfind("\n\n").map_or(0, |end| end + 2)];
            for line in whole.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let event: Value = serde_json::from_str(data).unwrap();
                if event["data"]["message_id"] == id && event["data"]["run_id"].is_string() {
                    return event["at"].as_str().unwrap().parse().unwrap();
                }
            }
        }
    }
}

fn report(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!("{name}_p50_ms: {:.2}", percentile(&values, 0.50));
    println!("{name}_p99_ms: {:.2}", percentile(&values, 0.99));
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
        let upstream = Arc::new(Upstream::default());
        let data = web::Data::from(upstream.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let upstream_port = server.addrs()[0].port();
        tokio::spawn(server.run());
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
            gateway: Some(GatewayArgs {
                providers: vec![ProviderArgs {
                    name: "fake".to_owned(),
                    kind: ProviderKind::OpenaiCompatible,
                    base_url: Some(format!("http://127.0.0.1:{upstream_port}/v1")),
                    api_key: Some(Secret::new("sk-bench".to_owned())),
                    api_key_env: None,
                    models: vec!["bench-model".to_owned()],
                }],
                ..GatewayArgs::default()
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
        let bench = Bench {
            client: reqwest::Client::new(),
            address,
            key: secret.reveal().to_owned(),
            upstream,
        };
        tokio::spawn(app.run());

        // Warm: one conversation, its sandbox up after the first message.
        let agent = bench.agent().await;
        let (_, _, conversation) = bench.message(&agent, None).await;
        let (mut first, mut overhead) = (Vec::new(), Vec::new());
        for i in 0..n + 3 {
            let (f, o, _) = bench.message(&agent, Some(&conversation)).await;
            if i >= 3 {
                first.push(f);
                overhead.push(o);
            }
        }
        bench.delete(&agent).await;
        report("message_first_event_warm", first);
        report("message_reply_overhead_warm", overhead);

        // Cold: a new agent each time, so a new sandbox on its memory.
        let (mut first, mut overhead) = (Vec::new(), Vec::new());
        for i in 0..n + 2 {
            // The sandbox pool refills between rounds.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let agent = bench.agent().await;
            let (f, o, _) = bench.message(&agent, None).await;
            bench.delete(&agent).await;
            if i >= 2 {
                first.push(f);
                overhead.push(o);
            }
        }
        report("message_first_event_cold", first);
        report("message_reply_overhead_cold", overhead);
    });
}
