//! The scheduler's store on a real database: SQLite by default, PostgreSQL
//! when `CARAPACE_TEST_DATABASE=postgres` (see `infra/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use carapace_migrations::{Migrator, MigratorTrait};
use carapace_scheduler::protocol::{Lease, Resources, RunEvent, RunSpec};
use carapace_scheduler::store::{self, NewRun, ReportOutcome, runs};
use carapace_scheduler::{Limits, RunState};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

async fn database(dir: &tempfile::TempDir) -> String {
    if std::env::var("CARAPACE_TEST_DATABASE").as_deref() != Ok("postgres") {
        return format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    }
    let admin_url = std::env::var("CARAPACE_TEST_POSTGRES_URL").unwrap();
    let name = format!("sched_{}", uuid::Uuid::now_v7().simple());
    let admin = Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

async fn connect(url: &str) -> DatabaseConnection {
    let db = Database::connect(url).await.unwrap();
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL")
            .await
            .unwrap();
        db.execute_unprepared("PRAGMA busy_timeout=10000")
            .await
            .unwrap();
    }
    db
}

async fn setup(dir: &tempfile::TempDir) -> (DatabaseConnection, String) {
    let url = database(dir).await;
    let db = connect(&url).await;
    Migrator::up(&db, None).await.unwrap();
    (db, url)
}

async fn tenant(db: &DatabaseConnection, id: &str) {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
        _ => "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
    };
    db.execute(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        [id.into(), id.into(), chrono::Utc::now().into()],
    ))
    .await
    .unwrap();
}

fn spec(command: &str) -> RunSpec {
    RunSpec {
        image: "builtin".into(),
        command: vec![command.into()],
        env: vec![],
        timeout_s: 10,
        limits: Limits::default(),
        egress_allow: vec![],
        interactive: false,
        memory: None,
    }
}

async fn enqueue(db: &DatabaseConnection, tenant: &str, max_attempts: u32) -> String {
    runs::enqueue(
        db,
        tenant,
        NewRun {
            spec: spec("true"),
            max_attempts,
        },
    )
    .await
    .unwrap()
    .id
}

/// A worker with room for `slots` default runs.
async fn worker(db: &DatabaseConnection, name: &str, slots: u64) -> String {
    let id = store::register_local(db, name).await.unwrap();
    let capacity = Resources {
        cpu_millis: 1000 * slots,
        memory_mib: 256 * slots,
        slots,
    };
    store::hello(db, &id, capacity, &["builtin".into()], &[])
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn reports_apply_only_under_the_current_lease_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = setup(&dir).await;
    tenant(&db, "tnt_a").await;
    let w1 = worker(&db, "w1", 2).await;
    let w2 = worker(&db, "w2", 0).await;
    let id = enqueue(&db, "tnt_a", 1).await;
    let (_, placed) = store::place_round(&db, &[w1.clone(), w2.clone()], 10)
        .await
        .unwrap();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].worker, w1);
    let lease = placed[0].lease.clone();
    assert_eq!(
        lease,
        Lease {
            run: id.clone(),
            epoch: 1
        }
    );

    let report = |worker: &str, lease: &Lease, event: RunEvent| {
        let (db, worker, lease) = (db.clone(), worker.to_owned(), lease.clone());
        async move {
            store::apply_report(&db, &worker, &lease, &event)
                .await
                .unwrap()
        }
    };
    // A run cannot skip `starting`.
    assert!(matches!(
        report(&w1, &lease, RunEvent::Running).await,
        ReportOutcome::Refused { .. }
    ));
    assert_eq!(
        report(&w1, &lease, RunEvent::Starting).await,
        ReportOutcome::Applied(RunState::Starting)
    );
    // Another worker, or an old epoch: refused, whatever they say.
    let stale = Lease {
        run: id.clone(),
        epoch: 0,
    };
    for (who, lease) in [(&w2, &lease), (&w1, &stale)] {
        match report(who, lease, RunEvent::Cancelled).await {
            ReportOutcome::Refused { reason, tenant } => {
                assert!(reason.contains("stale lease"), "{reason}");
                assert_eq!(tenant.as_deref(), Some("tnt_a"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        report(&w1, &lease, RunEvent::Running).await,
        ReportOutcome::Applied(RunState::Running)
    );
    // Sent again after a reconnection: nothing changes.
    assert_eq!(
        report(&w1, &lease, RunEvent::Starting).await,
        ReportOutcome::Unchanged
    );
    assert_eq!(
        report(&w1, &lease, RunEvent::Running).await,
        ReportOutcome::Unchanged
    );
    let exited = RunEvent::Exited {
        exit_code: Some(0),
        timed_out: false,
        stdout: "x".repeat(100_000),
        stderr: String::new(),
    };
    assert_eq!(
        report(&w1, &lease, exited.clone()).await,
        ReportOutcome::Applied(RunState::Succeeded)
    );
    assert_eq!(
        report(
            &w1,
            &lease,
            RunEvent::Failed {
                reason: "late".into()
            }
        )
        .await,
        ReportOutcome::Unchanged
    );
    let run = runs::get(&db, "tnt_a", &id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(
        run.stdout.unwrap().len(),
        carapace_scheduler::protocol::MAX_OUTPUT_BYTES
    );
    // Another tenant does not see it.
    assert!(matches!(
        runs::get(&db, "tnt_b", &id).await,
        Err(store::Error::NotFound)
    ));
}

#[tokio::test]
async fn runs_of_a_lost_worker_are_requeued_while_attempts_remain() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = setup(&dir).await;
    tenant(&db, "tnt_a").await;
    let w1 = worker(&db, "w1", 3).await;
    let twice = enqueue(&db, "tnt_a", 2).await;
    let once = enqueue(&db, "tnt_a", 1).await;
    let cancelled = enqueue(&db, "tnt_a", 2).await;
    let (_, placed) = store::place_round(&db, std::slice::from_ref(&w1), 10)
        .await
        .unwrap();
    assert_eq!(placed.len(), 3);
    runs::cancel(&db, "tnt_a", &cancelled).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (declared, recovered) = store::expire_workers(&db, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(declared, vec![w1.clone()]);
    assert_eq!(recovered.len(), 3);
    let state = |id: &str| {
        let (db, id) = (db.clone(), id.to_owned());
        async move { runs::get(&db, "tnt_a", &id).await.unwrap() }
    };
    let requeued = state(&twice).await;
    assert_eq!(requeued.state, RunState::Queued);
    assert!(requeued.worker.is_none());
    assert!(requeued.lost_at.is_some());
    assert!(requeued.reason.unwrap().contains("attempt 2 of 2"));
    let failed = state(&once).await;
    assert_eq!(failed.state, RunState::Failed);
    assert!(failed.reason.unwrap().contains("no attempts left"));
    let gone = state(&cancelled).await;
    assert_eq!(gone.state, RunState::Failed);
    assert!(gone.reason.unwrap().starts_with("cancelled"));
    // The worker comes back: placed again, with a new epoch; the old
    // lease is dead.
    let capacity = Resources {
        cpu_millis: 3000,
        memory_mib: 768,
        slots: 3,
    };
    let hello = store::hello(
        &db,
        &w1,
        capacity,
        &["builtin".into()],
        &[Lease {
            run: twice.clone(),
            epoch: 1,
        }],
    )
    .await
    .unwrap();
    assert!(hello.keep.is_empty());
    let (_, placed) = store::place_round(&db, std::slice::from_ref(&w1), 10)
        .await
        .unwrap();
    assert_eq!(
        placed[0].lease,
        Lease {
            run: twice.clone(),
            epoch: 2
        }
    );
    assert_eq!(state(&twice).await.attempts, 2);
}

#[tokio::test]
async fn a_restarted_worker_gets_its_placed_runs_and_loses_the_ones_it_had_started() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = setup(&dir).await;
    tenant(&db, "tnt_a").await;
    let w1 = worker(&db, "w1", 3).await;
    let ids = [
        enqueue(&db, "tnt_a", 2).await,
        enqueue(&db, "tnt_a", 2).await,
        enqueue(&db, "tnt_a", 2).await,
    ];
    let (_, placed) = store::place_round(&db, std::slice::from_ref(&w1), 10)
        .await
        .unwrap();
    let lease = |id: &str| {
        placed
            .iter()
            .find(|p| p.lease.run == id)
            .unwrap()
            .lease
            .clone()
    };
    for id in &ids[1..] {
        store::apply_report(&db, &w1, &lease(id), &RunEvent::Starting)
            .await
            .unwrap();
    }
    // It still holds ids[2] but lost ids[1] (and never got ids[0]).
    let capacity = Resources {
        cpu_millis: 3000,
        memory_mib: 768,
        slots: 3,
    };
    let hello = store::hello(&db, &w1, capacity, &["builtin".into()], &[lease(&ids[2])])
        .await
        .unwrap();
    assert_eq!(hello.keep, vec![lease(&ids[2])]);
    assert_eq!(hello.start.len(), 1);
    assert_eq!(hello.start[0].0, lease(&ids[0]));
    assert_eq!(
        hello.recovered,
        vec![(lease(&ids[1]), Some(RunState::Queued))]
    );
}

#[tokio::test]
async fn join_tokens_are_one_time_and_credentials_identify_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = setup(&dir).await;
    let token = store::create_join_token(&db, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(format!("{token:?}").contains("redacted"));
    assert!(matches!(
        store::join(&db, &token, "bad name!").await,
        Err(store::Error::Invalid(_))
    ));
    let (id, credential) = store::join(&db, &token, "w1").await.unwrap();
    assert_eq!(store::authenticate(&db, &credential).await.unwrap(), id);
    assert!(matches!(
        store::join(&db, &token, "w2").await,
        Err(store::Error::Unauthorized(_))
    ));
    let wrong = store::Credential::new("cwc_00".into());
    assert!(matches!(
        store::authenticate(&db, &wrong).await,
        Err(store::Error::Unauthorized(_))
    ));
    // A taken name does not spend the token.
    let token = store::create_join_token(&db, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        store::join(&db, &token, "w1").await,
        Err(store::Error::Conflict(_))
    ));
    store::join(&db, &token, "w2").await.unwrap();
    // Nor can an in-process worker take a joined worker's name.
    assert!(matches!(
        store::register_local(&db, "w1").await,
        Err(store::Error::Conflict(_))
    ));
    let expired = store::create_join_token(&db, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(
        store::join(&db, &expired, "w3").await,
        Err(store::Error::Unauthorized(_))
    ));
}

#[tokio::test]
async fn two_replicas_placing_at_once_never_place_a_run_twice_nor_overfill_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = setup(&dir).await;
    let replica = connect(&url).await;
    for t in 0..5 {
        tenant(&db, &format!("tnt_{t}")).await;
    }
    let mut workers = Vec::new();
    for w in 0..20 {
        workers.push(worker(&db, &format!("w{w}"), 10).await);
    }
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(enqueue(&db, &format!("tnt_{}", i % 5), 1).await);
    }
    // Both replicas see every worker: the worst case for double placement.
    let place = |db: DatabaseConnection, workers: Vec<String>| async move {
        let mut placed = Vec::new();
        for _ in 0..50 {
            let (_, round) = store::place_round(&db, &workers, 1000).await.unwrap();
            placed.extend(round);
        }
        placed
    };
    let (a, b) = tokio::join!(
        tokio::spawn(place(db.clone(), workers.clone())),
        tokio::spawn(place(replica.clone(), workers.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seen = HashMap::new();
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    for p in a.iter().chain(&b) {
        assert!(
            seen.insert(p.lease.run.clone(), ()).is_none(),
            "{} placed twice",
            p.lease.run
        );
        assert_eq!(p.lease.epoch, 1);
        *per_worker.entry(p.worker.clone()).or_default() += 1;
    }
    // 20 workers × 10 slots: 200 placed, none over capacity; 100 wait.
    assert_eq!(seen.len(), 200);
    assert!(per_worker.values().all(|n| *n <= 10), "{per_worker:?}");
    let mut queued = 0;
    for t in 0..5 {
        queued += runs::queued_count(&db, &format!("tnt_{t}")).await.unwrap();
    }
    assert_eq!(queued, 100);
}
