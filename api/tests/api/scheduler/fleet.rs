//! Real worker processes (`carapace worker`) against a control plane:
//! spreading by capacity, fairness, a worker killed or partitioned, two
//! control-plane replicas, the operator's view.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    WorkerProcess, processes_running, remote_workers_only, run, run_in, small, submit, wait_for,
};
use crate::helpers::{TestApp, spawn_app_with};

const TERMINAL: &[&str] = &["succeeded", "failed", "cancelled"];

/// The runs of `ids` per worker id, in the given states.
async fn where_are(
    app: &TestApp,
    key: &str,
    ids: &[String],
    states: &[&str],
) -> HashMap<String, usize> {
    let mut on = HashMap::new();
    for id in ids {
        let r = run(app, key, id).await;
        if states.contains(&r["state"].as_str().unwrap()) {
            *on.entry(r["worker_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    on
}

#[tokio::test]
async fn runs_spread_over_worker_processes_by_capacity() {
    let app = spawn_app_with(remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let small_worker = WorkerProcess::join(&app, "small", 1).await;
    let big_worker = WorkerProcess::join(&app, "big", 3).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&app, &t.key, small(&["sleep", "2"])).await);
    }
    let active = wait_for(Duration::from_secs(20), "4 runs under way", || async {
        let on = where_are(&app, &t.key, &ids, &["placed", "starting", "running"]).await;
        (on.values().sum::<usize>() == 4).then_some(on)
    })
    .await;
    assert_eq!(
        active.get(&small_worker.id(&app.db).await),
        Some(&1),
        "{active:?}"
    );
    assert_eq!(
        active.get(&big_worker.id(&app.db).await),
        Some(&3),
        "{active:?}"
    );
    for id in &ids {
        let done = run_in(&app, &t.key, id, TERMINAL, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1);
    }
}

#[tokio::test]
async fn a_tenant_flooding_the_queue_does_not_delay_another_tenants_run() {
    let app = spawn_app_with(remote_workers_only).await;
    let flood = app.create_tenant("Flood").await;
    let other = app.create_tenant("Other").await;
    let _worker = WorkerProcess::join(&app, "w1", 2).await;
    // 1,000 runs, 16 requests at a time.
    let bodies = (0..1000).map(|_| small(&["true"]));
    let flooded: Vec<String> = futures_util::stream::iter(bodies)
        .map(|body| {
            let (app, key) = (&app, &flood.key);
            async move { submit(app, key, body).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(flooded.len(), 1000);
    let queued_at = chrono::Utc::now();
    let id = submit(&app, &other.key, small(&["echo", "mine"])).await;
    let done = run_in(&app, &other.key, &id, TERMINAL, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["stdout"], "mine\n");
    let placed_at: chrono::DateTime<chrono::Utc> =
        done["placed_at"].as_str().unwrap().parse().unwrap();
    // Between the other tenant's run joining the queue and its placement,
    // at most one round's worth of the flood (the worker's 2 slots) went
    // ahead of it.
    let res = app
        .get("/v1/runs?limit=500", &flood.key)
        .send()
        .await
        .unwrap();
    let page: Value = res.json().await.unwrap();
    let mut overtaking = 0;
    for r in page["data"].as_array().unwrap() {
        if let Some(at) = r["placed_at"].as_str() {
            let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
            if at > queued_at && at < placed_at {
                overtaking += 1;
            }
        }
    }
    assert!(
        overtaking <= 2,
        "{overtaking} flood runs were placed ahead of it"
    );
    // The flood is still mostly waiting: it did not have to drain first.
    let res = app
        .get("/v1/runs?state=queued&limit=500", &flood.key)
        .send()
        .await
        .unwrap();
    let waiting = res.json::<Value>().await.unwrap()["data"]
        .as_array()
        .unwrap()
        .len();
    assert!(waiting >= 400, "only {waiting} flood runs still queued");
}

#[tokio::test]
async fn a_killed_workers_runs_are_lost_then_requeued_or_failed_and_its_restart_leaves_no_orphans()
{
    let app = spawn_app_with(remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let mut worker = WorkerProcess::join(&app, "w1", 2).await;
    let again = ["sleep", "3301"];
    let once = ["sleep", "3302"];
    let retried = submit(&app, &t.key, json!({"command": again, "max_attempts": 2})).await;
    let single = submit(&app, &t.key, json!({"command": once})).await;
    for id in [&retried, &single] {
        run_in(&app, &t.key, id, &["running"], Duration::from_secs(30)).await;
    }
    wait_for(Duration::from_secs(5), "both commands to start", || async {
        (processes_running(&again) == 1 && processes_running(&once) == 1).then_some(())
    })
    .await;

    worker.kill9();
    let killed = Instant::now();
    let failed = run_in(&app, &t.key, &single, TERMINAL, Duration::from_secs(10)).await;
    let noticed = killed.elapsed();
    // 2 s window, checked every 500 ms.
    assert!(noticed < Duration::from_secs(4), "lost after {noticed:?}");
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("heartbeats") && reason.contains("no attempts left"),
        "{reason}"
    );
    assert!(failed["lost_at"].is_string());
    let requeued = run(&app, &t.key, &retried).await;
    assert_eq!(requeued["state"], "queued", "{requeued}");
    assert!(
        requeued["reason"].as_str().unwrap().contains("requeued"),
        "{requeued}"
    );

    worker.restart(&app.db).await;
    // The restart removed what the dead process left: the failed run's
    // command is gone, the requeued one runs once, as attempt 2.
    let again_run = run_in(
        &app,
        &t.key,
        &retried,
        &["running"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(again_run["attempts"], 2);
    assert_eq!(again_run["worker_id"], failed["worker_id"]);
    wait_for(
        Duration::from_secs(5),
        "exactly the requeued command to run",
        || async {
            (processes_running(&once) == 0 && processes_running(&again) == 1).then_some(())
        },
    )
    .await;
    let res = app
        .request(Method::POST, &format!("/v1/runs/{retried}/cancel"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let done = run_in(&app, &t.key, &retried, TERMINAL, Duration::from_secs(5)).await;
    assert_eq!(done["state"], "cancelled");
}

#[tokio::test]
async fn a_worker_back_from_a_partition_is_fenced_off_its_old_runs() {
    let app = spawn_app_with(remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let old = WorkerProcess::join(&app, "old", 1).await;
    let argv = ["sleep", "3"];
    let id = submit(&app, &t.key, json!({"command": argv, "max_attempts": 2})).await;
    let first = run_in(&app, &t.key, &id, &["running"], Duration::from_secs(30)).await;
    assert_eq!(first["attempts"], 1);
    old.freeze();
    // The control plane loses it, requeues the run, and another worker
    // takes it (epoch 2).
    let new = WorkerProcess::join(&app, "new", 1).await;
    let second = wait_for(Duration::from_secs(15), "the run to move", || async {
        let r = run(&app, &t.key, &id).await;
        (r["attempts"] == 2 && r["state"] == "running").then_some(r)
    })
    .await;
    assert_eq!(second["worker_id"].as_str().unwrap(), new.id(&app.db).await);
    // The old worker's command ends meanwhile; when it wakes up it reports
    // its result under its stale lease: refused, and audited.
    tokio::time::sleep(Duration::from_secs(2)).await;
    old.thaw();
    let audit = wait_for(
        Duration::from_secs(15),
        "the refused report in the audit log",
        || async {
            let records = app.audit(&t.key, "?action=run.report&outcome=denied").await;
            (!records.is_empty()).then_some(records)
        },
    )
    .await;
    assert_eq!(audit[0]["target"], id.as_str());
    assert!(
        audit[0]["principal"]
            .as_str()
            .unwrap()
            .starts_with("worker:wrk_")
    );
    assert!(
        audit[0]["reason"].as_str().unwrap().contains("stale lease"),
        "{:?}",
        audit[0]
    );
    // The run is what the new worker makes of it.
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["worker_id"], second["worker_id"]);
    assert_eq!(done["attempts"], 2);
    // The old worker was told, and let the run go (its log line may come
    // a moment after the control plane's audit record).
    wait_for(
        Duration::from_secs(5),
        "the old worker's log line",
        || async { old.log().contains("report refused").then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn two_control_plane_replicas_never_place_a_run_twice() {
    let app = spawn_app_with(remote_workers_only).await;
    let replica = app.spawn_replica_with(remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let _w1 = WorkerProcess::join(&app, "w1", 4).await;
    let _w2 = WorkerProcess::join(&replica, "w2", 4).await;
    let ids: Vec<String> = futures_util::stream::iter(0..120)
        .map(|i| {
            let (target, key) = (if i % 2 == 0 { &app } else { &replica }, &t.key);
            async move { submit(target, key, small(&["true"])).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let done = run_in(&app, &t.key, id, TERMINAL, Duration::from_secs(120)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        // Placed exactly once: one attempt, one lease.
        assert_eq!(done["attempts"], 1, "{done}");
        *per_worker
            .entry(done["worker_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        2,
        "both replicas' workers ran runs: {per_worker:?}"
    );
}

#[tokio::test]
async fn operators_see_the_fleet_and_drain_a_worker() {
    let app = spawn_app_with(|args| {
        remote_workers_only(args);
        args.admin_token = Some("operator-secret-token-1234".into());
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let w1 = WorkerProcess::join(&app, "w1", 2).await;
    let w2 = WorkerProcess::join(&app, "w2", 2).await;
    let res = app.get("/v1/admin/workers", &t.key).send().await.unwrap();
    assert_eq!(
        res.status(),
        403,
        "a tenant's owner key is not the operator"
    );
    let res = app
        .get("/v1/admin/workers", "operator-secret-token-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let fleet: Value = res.json().await.unwrap();
    let names: Vec<&str> = fleet["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(fleet["data"][0]["capacity"]["slots"], 2);
    assert_eq!(fleet["data"][0]["connected_here"], true);

    let w1_id = w1.id(&app.db).await;
    let res = app
        .request(
            Method::POST,
            &format!("/v1/admin/workers/{w1_id}/drain"),
            "operator-secret-token-1234",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "draining");
    let res = app
        .request(
            Method::POST,
            &format!("/v1/admin/workers/{w1_id}/drain"),
            &t.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&app, &t.key, small(&["true"])).await);
    }
    let w2_id = w2.id(&app.db).await;
    for id in &ids {
        let done = run_in(&app, &t.key, id, TERMINAL, Duration::from_secs(60)).await;
        assert_eq!(
            done["worker_id"],
            w2_id.as_str(),
            "a drained worker got a run"
        );
    }
    let res = app
        .get("/v1/admin/workers", "operator-secret-token-1234")
        .send()
        .await
        .unwrap();
    let fleet: Value = res.json().await.unwrap();
    assert_eq!(fleet["data"][0]["state"], "draining");
    let op = "operator-secret-token-1234";
    let res = app
        .request(
            Method::POST,
            &format!("/v1/admin/workers/{w1_id}/resume"),
            op,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "active");

    // Revoked: its credential no longer opens a connection; runs go to w2.
    let res = app
        .request(Method::DELETE, &format!("/v1/admin/workers/{w1_id}"), op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    wait_for(
        Duration::from_secs(15),
        "the revoked worker to be refused",
        || async { w1.log().contains("401").then_some(()) },
    )
    .await;
    let id = submit(&app, &t.key, small(&["true"])).await;
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(60)).await;
    assert_eq!(done["worker_id"], w2_id.as_str());
    let missing = "/v1/admin/workers/wrk_00000000000000000000000000000000";
    let res = app
        .request(Method::DELETE, missing, op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
