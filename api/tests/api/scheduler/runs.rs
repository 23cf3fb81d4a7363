//! Runs through the API on the in-process worker: results, validation,
//! cancellation, quotas.

use std::time::{Duration, Instant};

use carapace_api::fleet::SchedulerArgs;
use reqwest::Method;
use serde_json::{Value, json};

use super::{processes_running, run, run_in, submit, wait_for};
use crate::helpers::{assert_problem, spawn_app, spawn_app_with, with_sandboxes};

const TERMINAL: &[&str] = &["succeeded", "failed", "cancelled"];

fn time(run: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    run[field].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_run_executes_in_a_fresh_sandbox_and_keeps_its_result() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", "echo \"$GREETING\"; echo oops >&2; hostname"],
               "env": {"GREETING": "hello"}}),
    )
    .await;
    assert!(id.starts_with("run_"));
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["stdout"], "hello\nsandbox\n");
    assert_eq!(done["stderr"], "oops\n");
    assert_eq!(done["attempts"], 1);
    assert!(done["worker_id"].as_str().unwrap().starts_with("wrk_"));
    assert!(done["reason"].is_null());
    // Every state has its time, in order.
    let order = [
        "created_at",
        "placed_at",
        "starting_at",
        "running_at",
        "finished_at",
    ];
    for pair in order.windows(2) {
        assert!(
            time(&done, pair[0]) <= time(&done, pair[1]),
            "{pair:?}: {done}"
        );
    }

    let id = submit(&app, &t.key, json!({"command": ["sh", "-c", "exit 3"]})).await;
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["reason"], "exit code 3");

    let id = submit(
        &app,
        &t.key,
        json!({"command": ["sleep", "20"], "timeout_s": 1}),
    )
    .await;
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["reason"], "the command ran out of time");

    // Each run had its own sandbox, gone once it ended.
    let res = app
        .get("/v1/runs?state=failed", &t.key)
        .send()
        .await
        .unwrap();
    let failed: Value = res.json().await.unwrap();
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    let res = app.get("/v1/runs?limit=1", &t.key).send().await.unwrap();
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["data"][0]["id"], id.as_str());
    let actions: Vec<Value> = app.audit(&t.key, "?action=run.create").await;
    assert_eq!(actions.len(), 3);
}

#[tokio::test]
async fn bad_runs_are_refused_with_clear_errors() {
    let app = spawn_app().await;
    let t = app.create_tenant("Acme").await;
    for (body, field) in [
        (json!({"command": []}), "command"),
        (json!({"command": [""]}), "command"),
        (json!({"command": ["a\u{0}b"]}), "command"),
        (json!({"command": ["true"], "timeout_s": 0}), "timeout_s"),
        (
            json!({"command": ["true"], "timeout_s": 100000}),
            "timeout_s",
        ),
        (
            json!({"command": ["true"], "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"command": ["true"], "max_attempts": 11}),
            "max_attempts",
        ),
        (json!({"command": ["true"], "env": {"1BAD": "x"}}), "env"),
        (
            json!({"command": ["true"], "limits": {"memory_mib": 1}}),
            "limits",
        ),
        (json!({"command": ["true"], "image": "../../etc"}), "image"),
    ] {
        let res = app.post("/v1/runs", &t.key, &body).await;
        let problem = assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let res = app
        .post(
            "/v1/runs",
            &t.key,
            &json!({"command": ["true"], "priority": 1}),
        )
        .await;
    assert_problem(res, 422, "unexpected_json").await;
    let res = app.get("/v1/runs?state=nope", &t.key).send().await.unwrap();
    assert_problem(res, 400, "invalid_query").await;
    let res = app.get("/v1/runs?limit=0", &t.key).send().await.unwrap();
    assert_problem(res, 400, "invalid_query").await;
    for path in [
        "/v1/runs/run_00000000000000000000000000000000",
        "/v1/runs/nope",
    ] {
        let res = app.get(path, &t.key).send().await.unwrap();
        assert_problem(res, 404, "not_found").await;
    }
    let res = app.get("/v1/runs", "cpk_wrong").send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_queued_run_is_cancelled_at_once_and_the_queue_is_bounded() {
    let app = spawn_app_with(|args| {
        args.scheduler = Some(SchedulerArgs {
            max_queued_runs_per_tenant: Some(2),
            ..SchedulerArgs::default()
        });
    })
    .await;
    let t = app.create_tenant("Acme").await;
    // No worker here: runs wait in the queue.
    let first = submit(&app, &t.key, json!({"command": ["true"]})).await;
    let second = submit(&app, &t.key, json!({"command": ["true"]})).await;
    assert_eq!(run(&app, &t.key, &first).await["state"], "queued");
    let res = app
        .post("/v1/runs", &t.key, &json!({"command": ["true"]}))
        .await;
    let problem = assert_problem(res, 409, "limit_reached").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("at most 2"),
        "{problem}"
    );

    let res = app
        .request(Method::POST, &format!("/v1/runs/{first}/cancel"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["reason"], "cancelled before it was placed");
    // Again: nothing changes.
    let res = app
        .request(Method::POST, &format!("/v1/runs/{first}/cancel"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "cancelled");
    // Room again in the queue.
    submit(&app, &t.key, json!({"command": ["true"]})).await;
    assert_eq!(run(&app, &t.key, &second).await["state"], "queued");
    assert_eq!(app.audit(&t.key, "?action=run.cancel").await.len(), 2);
}

#[tokio::test]
async fn cancellation_reaches_a_running_sandbox_within_a_second() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let argv = ["sleep", "3117"];
    let id = submit(&app, &t.key, json!({"command": argv})).await;
    run_in(&app, &t.key, &id, &["running"], Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(5), "the command to start", || async {
        (processes_running(&argv) == 1).then_some(())
    })
    .await;
    let asked = Instant::now();
    let res = app
        .request(Method::POST, &format!("/v1/runs/{id}/cancel"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.json::<Value>().await.unwrap()["cancel_requested"], true);
    wait_for(
        Duration::from_secs(1),
        "the sandbox's command to die",
        || async { (processes_running(&argv) == 0).then_some(()) },
    )
    .await;
    let done = run_in(&app, &t.key, &id, TERMINAL, Duration::from_secs(5)).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}
