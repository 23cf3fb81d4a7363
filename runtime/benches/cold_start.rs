//! `cargo bench -p carapace-runtime --bench cold_start`: how long a new
//! sandbox takes, and what an idle one costs the host.
//!
//! Prints, one per line:
//! - `sandbox_cold_start_p50_ms`, `sandbox_cold_start_p99_ms`: from the
//!   create call to the agent's `Ready` (the first thing the sandboxed
//!   process does), rootfs cached, a pooled (created, never started)
//!   container ready, as between requests;
//! - `sandbox_unpooled_start_p50_ms`, `sandbox_unpooled_start_p99_ms`: the
//!   same with no pool, every container created from scratch;
//! - `sandbox_first_exec_p50_ms`: a `true` run in a fresh sandbox;
//! - `sandbox_delete_p50_ms`;
//! - `sandbox_idle_rss_kib`: host memory per idle sandbox beyond the
//!   process inside: kernel memory (`sandbox_idle_kernel_kib`: slab, page
//!   tables, kernel stacks, shmem from /proc/meminfo) plus the worker's own
//!   growth (`sandbox_idle_worker_kib`), over `IDLE` sandboxes; the agent's
//!   RSS is `sandbox_agent_rss_kib`.
//!
//! Needs root. `CARAPACE_BENCH_ROUNDS` (default 50) and
//! `CARAPACE_BENCH_IDLE` (default 100) change the sample sizes.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::{Duration, Instant};

use carapace_runtime::{Exec, Runtime, RuntimeConfig, SandboxSpec};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Kernel memory that grows with sandboxes: slab (namespaces, mounts,
/// cgroups, sockets), page tables and kernel stacks, plus tmpfs/shmem.
fn kernel_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    ["Slab:", "PageTables:", "KernelStack:", "Shmem:"]
        .iter()
        .map(|key| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `rounds` of create, `true`, delete (after 3 warm-up rounds): sorted
/// milliseconds of each step. With `wait_pool`, each round first waits for
/// a pooled container.
async fn rounds_of(rt: &Runtime, rounds: usize, wait_pool: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut create, mut first_exec, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds + 3 {
        if wait_pool {
            let deadline = Instant::now() + Duration::from_secs(10);
            while rt.pooled() == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let id = format!("bench-{i}");
        let started = Instant::now();
        if let Err(e) = rt.create(&id, SandboxSpec::default()).await {
            eprintln!("create: {e}");
            std::process::exit(1);
        }
        let created = started.elapsed();
        let exec = Exec {
            argv: vec!["/bin/true".into()],
            env: vec![],
            stdin: vec![],
            timeout: Duration::from_secs(10),
        };
        let exec_started = Instant::now();
        let _ = rt.exec(&id, exec).await;
        let exec_took = exec_started.elapsed();
        let delete_started = Instant::now();
        let _ = rt.delete(&id).await;
        let deleted = delete_started.elapsed();
        if i >= 3 {
            create.push(ms(created));
            first_exec.push(ms(exec_took));
            delete.push(ms(deleted));
        }
    }
    for v in [&mut create, &mut first_exec, &mut delete] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    (create, first_exec, delete)
}

fn main() {
    let rounds = env_usize("CARAPACE_BENCH_ROUNDS", 50);
    let idle = env_usize("CARAPACE_BENCH_IDLE", 100);
    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release/carapace-sandbox-helper");
    let helper = std::env::var_os("CARAPACE_SANDBOX_HELPER")
        .map(Into::into)
        .unwrap_or(helper);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tempdir: {e}");
                std::process::exit(1);
            }
        };
        let config = |pool_size: usize| RuntimeConfig {
            state_dir: dir.path().join(format!("state-{pool_size}")),
            image_dir: dir.path().join("images"),
            helper: helper.clone(),
            helper_args: vec![],
            busybox: "/bin/busybox".into(),
            pool_size,
        };
        let start = |pool_size: usize| {
            let config = config(pool_size);
            async move {
                match Runtime::start(config).await {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("cannot start the worker (root? helper built with `cargo build --release -p carapace-runtime`?): {e}");
                        std::process::exit(1);
                    }
                }
            }
        };
        // Without a pool: every sandbox is created from scratch.
        let cold = start(0).await;
        let (scratch, _, _) = rounds_of(&cold, rounds, false).await;
        cold.shutdown().await;
        // With a pool that has had time to refill (as between requests).
        let rt = start(2).await;
        let (create, first_exec, delete) = rounds_of(&rt, rounds, true).await;
        println!("sandbox_cold_start_p50_ms: {:.2}", percentile(&create, 50.0));
        println!("sandbox_cold_start_p99_ms: {:.2}", percentile(&create, 99.0));
        println!("sandbox_unpooled_start_p50_ms: {:.2}", percentile(&scratch, 50.0));
        println!("sandbox_unpooled_start_p99_ms: {:.2}", percentile(&scratch, 99.0));
        println!("sandbox_first_exec_p50_ms: {:.2}", percentile(&first_exec, 50.0));
        println!("sandbox_delete_p50_ms: {:.2}", percentile(&delete, 50.0));

        let kernel_before = kernel_kib();
        let worker_before = rss_kib(std::process::id() as i32);
        let mut agents = 0u64;
        for i in 0..idle {
            let id = format!("idle-{i}");
            if let Err(e) = rt.create(&id, SandboxSpec::default()).await {
                eprintln!("idle sandbox {i}: {e}");
                break;
            }
            agents += rt.pid(&id).map(rss_kib).unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kernel = kernel_kib().saturating_sub(kernel_before);
        let worker = rss_kib(std::process::id() as i32).saturating_sub(worker_before);
        let n = rt.count().max(1) as u64;
        println!("sandbox_idle_count: {n}");
        println!("sandbox_agent_rss_kib: {}", agents / n);
        println!("sandbox_idle_kernel_kib: {}", kernel / n);
        println!("sandbox_idle_worker_kib: {}", worker / n);
        println!("sandbox_idle_rss_kib: {}", (kernel + worker) / n);
        rt.shutdown().await;
    });
}
