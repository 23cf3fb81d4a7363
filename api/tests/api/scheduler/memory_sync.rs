//! Runs that work on an agent's memory: its current version in the
//! sandbox's `/memory` before the command starts, the changes committed
//! back as one version while the run goes on and when it ends, and the
//! run's token opening that agent's memory and no other.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{run, run_in, submit, wait_for};
use crate::helpers::{TestApp, spawn_app_with, with_sandboxes};

async fn agent(app: &TestApp, key: &str, body: Value) -> String {
    let res = app.post("/v1/agents", key, &body).await;
    assert_eq!(res.status(), 201);
    let agent: Value = res.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

async fn put(app: &TestApp, key: &str, agent: &str, path: &str, body: &str) -> u64 {
    let res = app
        .request(
            Method::PUT,
            &format!("/v1/agents/{agent}/memory/{path}"),
            key,
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap()
}

/// The current version and its files (path → content).
async fn memory(app: &TestApp, key: &str, agent: &str) -> (u64, Vec<(String, String)>) {
    let listing: Value = app
        .get(&format!("/v1/agents/{agent}/memory"), key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut files = Vec::new();
    for file in listing["files"].as_array().unwrap() {
        let path = file["path"].as_str().unwrap().to_owned();
        let content = app
            .get(&format!("/v1/agents/{agent}/memory/{path}"), key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        files.push((path, content));
    }
    (listing["version"].as_u64().unwrap_or(0), files)
}

/// The status line of a request from inside a sandbox to the control
/// plane, through its egress proxy, with the run's token.
fn from_inside(method: &str, path: &str) -> String {
    format!(
        "printf '{method} http://carapace.internal{path} HTTP/1.1\\r\\nHost: carapace.internal\\r\\nAuthorization: Bearer %s\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' \"$CARAPACE_RUN_TOKEN\" | nc -w 5 127.0.0.1 3128 | head -n 1"
    )
}

async fn finished(app: &TestApp, key: &str, id: &str) -> Value {
    run_in(
        app,
        key,
        id,
        &["succeeded", "failed", "cancelled"],
        Duration::from_secs(60),
    )
    .await
}

#[tokio::test]
async fn a_run_works_on_its_agents_memory_and_commits_it_as_one_version() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let id = agent(
        &app,
        &t.key,
        json!({"name": "scribe", "model": "fast", "instructions": "Be brief."}),
    )
    .await;
    let before = put(&app, &t.key, &id, "notes.md", "hello").await;
    let script = [
        "cat /memory/AGENTS.md /memory/notes.md",
        "echo \"dir=$CARAPACE_MEMORY_DIR url=$CARAPACE_MEMORY_URL\"",
        "echo learned > /memory/new.md",
        "rm /memory/notes.md",
        "mkdir -p /memory/memory && echo today > /memory/memory/2026-11-26.md",
        // Hostile: a link out of memory, a name that would delete a file,
        // a name the API reserves. None of them may reach the store.
        "ln -s /etc/passwd /memory/link.md",
        "echo x > /memory/.wh.AGENTS.md",
        "mkdir -p /memory/versions && echo x > /memory/versions/1",
    ]
    .join(" && ");
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", script], "agent_id": id}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["agent_id"], id.as_str());
    let out = done["stdout"].as_str().unwrap();
    assert!(out.contains("Be brief.") && out.contains("hello"), "{out}");
    assert!(
        out.contains(&format!(
            "dir=/memory url=http://carapace.internal/v1/agents/{id}/memory"
        )),
        "{out}"
    );
    let (version, files) = memory(&app, &t.key, &id).await;
    assert_eq!(version, before + 1, "one commit, one version");
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["AGENTS.md", "memory/2026-11-26.md", "new.md"]);
    assert_eq!(files[2].1, "learned\n");
    assert_eq!(files[0].1, "Be brief.");

    // The next run starts from what the last one left.
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", "cat /memory/new.md; ls /memory"], "agent_id": id}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["stdout"], "learned\nAGENTS.md\nmemory\nnew.md\n",
        "{done}"
    );
    // A run that changes nothing commits nothing.
    assert_eq!(memory(&app, &t.key, &id).await.0, version);
}

#[tokio::test]
async fn a_run_token_opens_its_own_agents_memory_and_no_other() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let own = agent(&app, &t.key, json!({"name": "own", "model": "fast"})).await;
    let other = agent(&app, &t.key, json!({"name": "other", "model": "fast"})).await;
    put(&app, &t.key, &own, "notes.md", "mine").await;
    put(&app, &t.key, &other, "secret.md", "not yours").await;
    let script = [
        from_inside("GET", &format!("/v1/agents/{own}/memory/notes.md")),
        from_inside("GET", &format!("/v1/agents/{other}/memory/secret.md")),
        from_inside("GET", &format!("/v1/agents/{other}/memory/archive")),
        from_inside("DELETE", &format!("/v1/agents/{other}/memory/secret.md")),
        from_inside("GET", "/v1/agents"),
        from_inside("GET", "/v1/runs"),
        // Its own memory may change, not roll back.
        from_inside(
            "POST",
            &format!("/v1/agents/{own}/memory/versions/1/restore"),
        ),
    ]
    .join("; ");
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", script], "agent_id": own}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let statuses: Vec<&str> = done["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        ["200", "403", "403", "403", "403", "403", "403"],
        "{done}"
    );
    // The other agent's memory is as it was, and the attempts are audited.
    let (_, files) = memory(&app, &t.key, &other).await;
    assert_eq!(files, [("secret.md".to_owned(), "not yours".to_owned())]);
    let audit = app.audit(&t.key, "?outcome=denied").await;
    let principal = format!("run:{run_id}");
    let memory_refusals = audit
        .iter()
        .filter(|e| e["principal"] == principal.as_str() && e["action"] == "memory.use")
        .count();
    assert_eq!(memory_refusals, 3, "{audit:?}");

    // A run without an agent opens no memory at all.
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", from_inside("GET", &format!("/v1/agents/{own}/memory"))]}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert!(done["stdout"].as_str().unwrap().contains(" 403 "), "{done}");

    // Another tenant's agent cannot be named at all.
    let b = app.create_tenant("Bravo").await;
    let res = app
        .post(
            "/v1/runs",
            &b.key,
            &json!({"command": ["true"], "agent_id": own}),
        )
        .await;
    assert_eq!(res.status(), 422);
}

#[tokio::test]
async fn memory_is_committed_while_the_run_goes_on_and_when_it_is_cancelled() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let id = agent(&app, &t.key, json!({"name": "diarist", "model": "fast"})).await;
    let run_id = submit(
        &app,
        &t.key,
        json!({
            "command": ["sh", "-c", "echo one > /memory/a.md; sleep 3; echo two > /memory/b.md; sleep 60"],
            "agent_id": id,
            "memory_sync_interval_s": 1,
        }),
    )
    .await;
    // a.md reaches the store while the command still runs: a sandbox
    // killed now would lose nothing of it.
    wait_for(Duration::from_secs(20), "a.md to be committed", || async {
        let (_, files) = memory(&app, &t.key, &id).await;
        files
            .iter()
            .any(|(p, c)| p == "a.md" && c == "one\n")
            .then_some(())
    })
    .await;
    assert_eq!(run(&app, &t.key, &run_id).await["state"], "running");
    // A client writes meanwhile; the run's next commit goes on top of it.
    put(&app, &t.key, &id, "from-client.md", "hi").await;
    wait_for(Duration::from_secs(20), "b.md to be committed", || async {
        let (_, files) = memory(&app, &t.key, &id).await;
        files.iter().any(|(p, _)| p == "b.md").then_some(())
    })
    .await;
    let res = app
        .request(Method::POST, &format!("/v1/runs/{run_id}/cancel"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let (_, files) = memory(&app, &t.key, &id).await;
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["a.md", "b.md", "from-client.md"]);
}

#[tokio::test]
async fn a_run_over_its_memory_quota_fails_with_the_reason_and_commits_nothing() {
    let app = spawn_app_with(|args| {
        with_sandboxes(args);
        args.memory = Some(carapace_api::memory::MemoryArgs {
            max_files: Some(5),
            max_file_mib: Some(1),
            max_total_mib: Some(1),
            sync_interval_secs: None,
            keep_versions: None,
        });
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let id = agent(&app, &t.key, json!({"name": "hoarder", "model": "fast"})).await;
    let before = put(&app, &t.key, &id, "keep.md", "kept").await;
    let run_id = submit(
        &app,
        &t.key,
        json!({
            "command": ["sh", "-c", "head -c 2000000 /dev/zero > /memory/big.bin; echo small > /memory/small.md"],
            "agent_id": id,
        }),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("memory could not be committed"), "{reason}");
    assert!(reason.contains("at most 1048576"), "{reason}");
    let (version, files) = memory(&app, &t.key, &id).await;
    assert_eq!(version, before);
    assert_eq!(files, [("keep.md".to_owned(), "kept".to_owned())]);

    // Too many files: the listing itself is refused.
    let run_id = submit(
        &app,
        &t.key,
        json!({
            "command": ["sh", "-c", "for i in 1 2 3 4 5 6 7; do echo $i > /memory/f$i; done"],
            "agent_id": id,
        }),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("more than 5 files"),
        "{done}"
    );
    assert_eq!(memory(&app, &t.key, &id).await.0, before);
}

#[tokio::test]
async fn a_worker_node_syncs_memory_through_the_control_planes_api() {
    let app = spawn_app_with(super::remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let _worker = super::WorkerProcess::join(&app, "remote", 2).await;
    let id = agent(&app, &t.key, json!({"name": "remote", "model": "fast"})).await;
    let before = put(&app, &t.key, &id, "MEMORY.md", "seen before").await;
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", "cat /memory/MEMORY.md; echo ' and after' >> /memory/MEMORY.md"], "agent_id": id}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["stdout"], "seen before", "{done}");
    let (version, files) = memory(&app, &t.key, &id).await;
    assert_eq!(version, before + 1);
    assert_eq!(
        files,
        [("MEMORY.md".to_owned(), "seen before and after\n".to_owned())]
    );
}

#[tokio::test]
async fn a_run_commits_its_memory_when_it_asks() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let id = agent(&app, &t.key, json!({"name": "careful", "model": "fast"})).await;
    let other = agent(&app, &t.key, json!({"name": "other", "model": "fast"})).await;
    let other_run = submit(
        &app,
        &t.key,
        json!({"command": ["sleep", "60"], "agent_id": other}),
    )
    .await;
    let ask = from_inside("POST", "/v1/runs/$RUN/memory/commit").replace("$RUN", "'\"$RUN\"'");
    let script = format!(
        "echo important > /memory/now.md; RUN=${{CARAPACE_MEMORY_COMMIT_URL#*/runs/}}; RUN=${{RUN%%/*}}; {ask}; RUN={other_run}; {ask}; sleep 60"
    );
    let run_id = submit(
        &app,
        &t.key,
        // No periodic commit for an hour: only the asked-for one.
        json!({"command": ["sh", "-c", script], "agent_id": id, "memory_sync_interval_s": 3600}),
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "now.md to be committed",
        || async {
            let (_, files) = memory(&app, &t.key, &id).await;
            files
                .iter()
                .any(|(p, c)| p == "now.md" && c == "important\n")
                .then_some(())
        },
    )
    .await;
    assert_eq!(run(&app, &t.key, &run_id).await["state"], "running");
    // A client may ask too; nothing changed since, the version stays.
    let res = app
        .post(
            &format!("/v1/runs/{run_id}/memory/commit"),
            &t.key,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let version = res.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    assert_eq!(version, memory(&app, &t.key, &id).await.0);
    // The same run could not commit the other run's memory.
    assert!(memory(&app, &t.key, &other).await.1.is_empty());
    for run_id in [&run_id, &other_run] {
        app.post(&format!("/v1/runs/{run_id}/cancel"), &t.key, &json!({}))
            .await;
    }
    // A run without memory, or one that is over: a clear 409.
    let done = finished(&app, &t.key, &other_run).await;
    assert_eq!(done["state"], "cancelled");
    let res = app
        .post(
            &format!("/v1/runs/{other_run}/memory/commit"),
            &t.key,
            &json!({}),
        )
        .await;
    crate::helpers::assert_problem(res, 409, "conflict").await;
}

#[tokio::test]
async fn files_a_sandbox_cannot_hand_over_are_left_out_and_the_rest_is_committed() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let id = agent(&app, &t.key, json!({"name": "mixed", "model": "fast"})).await;
    let script = [
        // Larger than a sandbox hands over in one piece (32 MiB).
        "head -c 34000000 /dev/zero > /memory/huge.bin",
        "mkfifo /memory/pipe",
        "echo fine > /memory/fine.md",
    ]
    .join(" && ");
    let run_id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", script], "agent_id": id, "limits": {"memory_mib": 512}}),
    )
    .await;
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, files) = memory(&app, &t.key, &id).await;
    assert_eq!(files, [("fine.md".to_owned(), "fine\n".to_owned())]);
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_only_what_was_not_committed_yet() {
    let app = spawn_app_with(super::remote_workers_only).await;
    let t = app.create_tenant("Acme").await;
    let mut worker = super::WorkerProcess::join(&app, "doomed", 2).await;
    let id = agent(&app, &t.key, json!({"name": "diarist", "model": "fast"})).await;
    let before = put(&app, &t.key, &id, "MEMORY.md", "kept").await;
    let run_id = submit(
        &app,
        &t.key,
        json!({
            "command": ["sh", "-c", "echo one > /memory/a.md; sleep 4; echo two > /memory/b.md; sleep 60"],
            "agent_id": id,
            "memory_sync_interval_s": 1,
        }),
    )
    .await;
    let committed = wait_for(Duration::from_secs(20), "a.md to be committed", || async {
        let (version, files) = memory(&app, &t.key, &id).await;
        files
            .iter()
            .any(|(p, c)| p == "a.md" && c == "one\n")
            .then_some(version)
    })
    .await;
    assert!(committed > before);
    // Killed before b.md was written: the sandbox goes with it.
    worker.kill9();
    let done = finished(&app, &t.key, &run_id).await;
    assert_eq!(done["state"], "failed", "{done}");
    // What was committed stays, whole; nothing half-made appears.
    let (version, files) = memory(&app, &t.key, &id).await;
    assert_eq!(version, committed);
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["MEMORY.md", "a.md"]);
    assert_eq!(files[0].1, "kept");
}
