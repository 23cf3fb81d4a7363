//! `cargo bench -p carapace-scheduler --bench placement`: placement rounds
//! against a real database, 100 simulated workers.
//!
//! Each trial queues 2,000 runs from 40 tenants and times one placement
//! round (`store::place_round`: lock, read queue and capacity, decide, 2,000
//! conditional updates, commit), then finishes the runs to free the
//! workers. Prints, one per line, for SQLite and — when
//! `CARAPACE_TEST_POSTGRES_URL` names a PostgreSQL server it may create
//! databases on (`infra/postgres.sh start` prints one) — for PostgreSQL:
//! - `placements_per_s_<db>`: the median trial's placements per second;
//! - `placement_round_ms_p50_<db>` / `_p99_<db>`: round durations.
//!
//! `CARAPACE_BENCH_ROUNDS` (default 15) sets the number of trials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use carapace_migrations::{Migrator, MigratorTrait};
use carapace_scheduler::Limits;
use carapace_scheduler::protocol::{Resources, RunSpec};
use carapace_scheduler::store::{self, NewRun, runs};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};

const WORKERS: usize = 100;
const TENANTS: usize = 40;
const PER_TRIAL: usize = 2000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1);
    sorted[rank]
}

async fn prepare(url: &str) -> (DatabaseConnection, Vec<String>) {
    let db = Database::connect(url).await.unwrap();
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL")
            .await
            .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let placeholder = |n: usize| match db.get_database_backend() {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    };
    for t in 0..TENANTS {
        let sql = format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ({}, {}, {})",
            placeholder(1),
            placeholder(2),
            placeholder(3)
        );
        let id = format!("tnt_bench{t}");
        db.execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [id.clone().into(), id.into(), chrono::Utc::now().into()],
        ))
        .await
        .unwrap();
    }
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let id = store::register_local(&db, &format!("bench-{w}"))
            .await
            .unwrap();
        let capacity = Resources {
            cpu_millis: 1_000_000,
            memory_mib: 1_000_000,
            slots: 100,
        };
        store::hello(&db, &id, capacity, &["builtin".into()], &[])
            .await
            .unwrap();
        workers.push(id);
    }
    (db, workers)
}

async fn trial(db: &DatabaseConnection, workers: &[String]) -> f64 {
    let txn = db.begin().await.unwrap();
    for i in 0..PER_TRIAL {
        let spec = RunSpec {
            image: "builtin".into(),
            command: vec!["true".into()],
            env: vec![],
            timeout_s: 10,
            limits: Limits::default(),
            egress_allow: vec![],
            interactive: false,
            memory: None,
        };
        runs::enqueue(
            &txn,
            &format!("tnt_bench{}", i % TENANTS),
            NewRun {
                spec,
                max_attempts: 1,
            },
        )
        .await
        .unwrap();
    }
    txn.commit().await.unwrap();
    let started = Instant::now();
    let (_, placed) = store::place_round(db, workers, 1_000_000).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(placed.len(), PER_TRIAL);
    db.execute_unprepared("UPDATE runs SET state = 'succeeded' WHERE state = 'placed'")
        .await
        .unwrap();
    took
}

async fn bench(name: &str, url: &str, trials: usize) {
    let (db, workers) = prepare(url).await;
    trial(&db, &workers).await; // warm-up
    let mut rounds: Vec<f64> = Vec::with_capacity(trials);
    for _ in 0..trials {
        rounds.push(trial(&db, &workers).await);
    }
    rounds.sort_by(f64::total_cmp);
    let median = percentile(&rounds, 0.5);
    println!("placements_per_s_{name}: {:.0}", PER_TRIAL as f64 / median);
    println!("placement_round_ms_p50_{name}: {:.1}", median * 1000.0);
    println!(
        "placement_round_ms_p99_{name}: {:.1}",
        percentile(&rounds, 0.99) * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let trials: usize = std::env::var("CARAPACE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    bench("sqlite", &sqlite, trials).await;
    match std::env::var("CARAPACE_TEST_POSTGRES_URL") {
        Ok(admin_url) => {
            let name = format!("bench_{}", uuid::Uuid::now_v7().simple());
            let admin = Database::connect(&admin_url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            bench("postgres", &format!("{base}/{name}"), trials).await;
            admin
                .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        Err(_) => println!("placements_per_s_postgres: skipped (set CARAPACE_TEST_POSTGRES_URL)"),
    }
}
