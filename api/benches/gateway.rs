//! The model gateway's own cost: a fake upstream on loopback answers a
//! fixed chat completion; the same request is sent once straight to the
//! upstream and once through the gateway (authentication, rate limiting,
//! routing, the upstream call, usage counting, the ledger), both at an
//! offered 5,000 requests/s, and the difference of the latency quantiles
//! is the gateway's overhead.
//!
//! Prints, one per line:
//! - `gateway_overhead_p50_ms`, `gateway_overhead_p99_ms`: quantile of the
//!   latency through the gateway minus the same quantile direct, at
//!   5,000 requests/s.
//! - `gateway_p50_ms`, `gateway_p99_ms`, `direct_p50_ms`, `direct_p99_ms`:
//!   the raw figures behind them.
//! - `gateway_max_rps`: closed loop through the gateway, 64 connections.
//!
//! `CARAPACE_BENCH_SECS` sets each phase's length (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod load;

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
use carapace_api::gateway::GatewayArgs;
use carapace_api::gateway::config::{ProviderArgs, ProviderKind};
use carapace_api::secret::Secret;
use load::{closed_loop, open_loop, percentile};

const RATE: f64 = 5000.0;
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
const BODY: &str = r#"{"model":"fast","messages":[{"role":"user","content":"Say hello."}]}"#;

fn post(port: u16, path: &str, key: Option<&str>) -> Vec<u8> {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

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
    let (upstream_port, gateway_port, key) = server_rt.block_on(async {
        let upstream = HttpServer::new(|| {
            App::new().route(
                "/v1/chat/completions",
                // Reads the body, as a real provider does (actix closes the
                // connection after answering a request whose body was left unread).
                web::post().to(|_body: web::Bytes| async {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(ANSWER)
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let upstream_port = upstream.addrs()[0].port();
        tokio::spawn(upstream.run());

        let gateway = GatewayArgs {
            providers: vec![ProviderArgs {
                name: "fake".to_owned(),
                kind: ProviderKind::OpenaiCompatible,
                base_url: Some(format!("http://127.0.0.1:{upstream_port}/v1")),
                api_key: Some(Secret::new("sk-bench".to_owned())),
                api_key_env: None,
                models: vec!["m".to_owned()],
            }],
            aliases: BTreeMap::from([("fast".to_owned(), vec!["fake/m".to_owned()])]),
            requests_per_minute: Some(100_000_000),
            tokens_per_minute: Some(u64::MAX / 4),
            max_concurrent: Some(10_000),
            ..GatewayArgs::default()
        };
        let settings = SettingsArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            gateway: Some(gateway),
            // Sandboxes (and their pool) would compete for the two cores.
            sandboxes: Some(carapace_api::sandboxes::SandboxMode::Off),
            ..SettingsArgs::default()
        }
        .resolve()
        .unwrap();
        let app = Application::build(&settings).await.unwrap();
        let port = app.port();
        let (_, secret) =
            bootstrap::create_tenant(app.db(), "Bench", "bench@example.com", &Actor::cli())
                .await
                .unwrap();
        tokio::spawn(app.run());
        (upstream_port, port, secret.reveal().to_owned())
    });

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let direct = post(upstream_port, "/v1/chat/completions", None);
        let through = post(gateway_port, "/gateway/v1/chat/completions", Some(&key));
        // Warm the gateway (connections, caches, the ledger's statement).
        closed_loop(&through, gateway_port, Duration::from_secs(1)).await;
        let (_, mut direct_lat) = open_loop(&direct, upstream_port, phase, RATE).await;
        let (achieved, mut gateway_lat) = open_loop(&through, gateway_port, phase, RATE).await;
        let (d50, d99) = (
            percentile(&mut direct_lat, 0.50),
            percentile(&mut direct_lat, 0.99),
        );
        let (g50, g99) = (
            percentile(&mut gateway_lat, 0.50),
            percentile(&mut gateway_lat, 0.99),
        );
        println!("gateway_offered_rps: {RATE:.0}");
        println!("gateway_achieved_rps: {achieved:.0}");
        println!("direct_p50_ms: {d50:.3}");
        println!("direct_p99_ms: {d99:.3}");
        println!("gateway_p50_ms: {g50:.3}");
        println!("gateway_p99_ms: {g99:.3}");
        println!("gateway_overhead_p50_ms: {:.3}", g50 - d50);
        println!("gateway_overhead_p99_ms: {:.3}", g99 - d99);

        let (max_rps, _) = closed_loop(&through, gateway_port, phase).await;
        println!("gateway_max_rps: {max_rps:.0}");
    });
    drop(server_rt);
}
