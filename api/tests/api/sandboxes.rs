//! Sandboxes through the API, with real containers (root needed, as in CI).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with, with_sandboxes};

async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    let res = app.post("/v1/sandboxes", key, &body).await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn exec(app: &TestApp, key: &str, id: &str, body: Value) -> Value {
    let res = app
        .post(&format!("/v1/sandboxes/{id}/exec"), key, &body)
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_sandbox_runs_commands_and_keeps_files_until_it_is_deleted() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let started = Instant::now();
    let sandbox = create(&app, &t.key, json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = sandbox["id"].as_str().unwrap();
    assert!(id.starts_with("sbx_"), "{sandbox}");
    assert_eq!(sandbox["state"], "running");
    assert_eq!(sandbox["image"], "builtin");
    assert_eq!(sandbox["limits"]["memory_mib"], 256);

    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", "read line; echo \"$GREETING $line\"; echo oops >&2; exit 3"],
               "stdin": "world\n", "env": {"GREETING": "hello"}}),
    )
    .await;
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(out["oom_killed"], false);
    assert_eq!(out["stdout"], "hello world\n");
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["timed_out"], false);

    let out = exec(&app, &t.key, id, json!({"command": ["/no/such/program"]})).await;
    assert_eq!(out["exit_code"], Value::Null);
    assert!(
        out["error"].as_str().unwrap().contains("cannot start"),
        "{out}"
    );

    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sleep", "30"], "timeout_s": 0.5}),
    )
    .await;
    assert_eq!(out["timed_out"], true, "{out}");
    assert!(out["duration_ms"].as_u64().unwrap() < 5000);

    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", "yes | head -c 3000000"]}),
    )
    .await;
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1 << 20);

    // Files in and out of the workspace, bytes intact.
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let res = app
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files/in/data.bin"),
            &t.key,
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", "wc -c < in/data.bin; cp in/data.bin out.bin"]}),
    )
    .await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "100000");
    let res = app
        .get(&format!("/v1/sandboxes/{id}/files/out.bin"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), data);
    let res = app
        .get(&format!("/v1/sandboxes/{id}/files/missing.txt"), &t.key)
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "invalid_field").await;

    let res = app.get("/v1/sandboxes", &t.key).send().await.unwrap();
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], id);

    let res = app
        .request(Method::DELETE, &format!("/v1/sandboxes/{id}"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &t.key,
            &json!({"command": ["true"]}),
        )
        .await;
    assert_problem(res, 404, "not_found").await;
    let actions: Vec<String> = app
        .audit(&t.key, "?action=sandbox.create")
        .await
        .iter()
        .chain(app.audit(&t.key, "?action=sandbox.delete").await.iter())
        .map(|r| {
            format!(
                "{}:{}",
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        actions.contains(&format!("sandbox.create:{id}")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&format!("sandbox.delete:{id}")),
        "{actions:?}"
    );
}

#[tokio::test]
async fn bad_sandbox_requests_get_clear_errors() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    for (body, field) in [
        (json!({"limits": {"memory_mib": 1_000_000}}), "limits"),
        (json!({"limits": {"pids": 1}}), "limits"),
        (json!({"image": "docker.io/library/alpine:3"}), "image"),
        (json!({"image": "../../etc"}), "image"),
        (json!({"egress_allow": ["10.0.0.1"]}), "egress_allow"),
        (
            json!({"egress_allow": ["metadata.google.internal"]}),
            "egress_allow",
        ),
    ] {
        let res = app.post("/v1/sandboxes", &t.key, &body).await;
        let problem = assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let res = app
        .post(
            "/v1/sandboxes",
            &t.key,
            &json!({"limits": {"swap_mib": 10}}),
        )
        .await;
    assert_problem(res, 422, "unexpected_json").await;

    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    for (body, field) in [
        (json!({"command": []}), "command"),
        (json!({"command": ["sh"], "timeout_s": 0}), "timeout_s"),
        (
            json!({"command": ["sh"], "timeout_s": 100_000}),
            "timeout_s",
        ),
        (json!({"command": ["sh"], "env": {"1BAD": "x"}}), "env"),
        (json!({"command": ["sh"], "env": {"A=B": "x"}}), "env"),
        (json!({"command": ["sh\u{0}"]}), "command"),
        (
            json!({"command": ["cat"], "stdin": "x".repeat((1 << 20) + 1)}),
            "stdin",
        ),
    ] {
        let res = app
            .post(&format!("/v1/sandboxes/{id}/exec"), &t.key, &body)
            .await;
        let problem = assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    // (The client resolves plain `..` segments itself; encoded ones reach
    // the server.)
    for path in [
        "../etc/passwd",
        "a/../../b",
        "a//b",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E/x",
    ] {
        let res = app
            .request(
                Method::PUT,
                &format!("/v1/sandboxes/{id}/files/{path}"),
                &t.key,
            )
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(
            [404, 422].contains(&res.status().as_u16()),
            "{path}: {}",
            res.status()
        );
    }
    let res = app
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files/big"),
            &t.key,
        )
        .body(vec![0u8; (32 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "payload_too_large").await;
    // The sandbox is unharmed by all of the above.
    let out = exec(&app, &t.key, id, json!({"command": ["echo", "fine"]})).await;
    assert_eq!(out["stdout"], "fine\n");
}

#[tokio::test]
async fn a_tenant_has_a_sandbox_quota() {
    let app = spawn_app_with(|args| {
        with_sandboxes(args);
        args.sandbox.as_mut().unwrap().max_per_tenant = Some(2);
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let other = app.create_tenant("Other").await;
    create(&app, &t.key, json!({})).await;
    create(&app, &t.key, json!({})).await;
    let res = app.post("/v1/sandboxes", &t.key, &json!({})).await;
    let problem = assert_problem(res, 409, "limit_reached").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("at most 2"),
        "{problem}"
    );
    // Another tenant's quota is its own.
    create(&app, &other.key, json!({})).await;
}

#[tokio::test]
async fn without_sandboxes_the_api_says_so() {
    let app = spawn_app().await;
    let t = app.create_tenant("Acme").await;
    let res = app.post("/v1/sandboxes", &t.key, &json!({})).await;
    let problem = assert_problem(res, 503, "unavailable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("turned off"),
        "{problem}"
    );
    let res = app.get("/v1/sandboxes", &t.key).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn idle_sandboxes_are_deleted() {
    let app = spawn_app_with(|args| {
        with_sandboxes(args);
        args.sandbox.as_mut().unwrap().idle_timeout_secs = Some(2);
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    assert_eq!(sandbox["idle_timeout_s"], 2);
    // A command longer than the idle timeout keeps its sandbox.
    let out = exec(&app, &t.key, id, json!({"command": ["sleep", "5"]})).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = app
            .get(&format!("/v1/sandboxes/{id}"), &t.key)
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle sandbox was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let records = app.audit(&t.key, "?action=sandbox.delete").await;
    assert_eq!(records[0]["principal"], "system:idle-timeout");
    assert_eq!(records[0]["target"], id);
}

#[tokio::test]
async fn sandboxes_of_a_restarted_server_are_recorded_as_lost() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    // The same server again (same data directory and database), as after a
    // crash: its worker removes the old containers and the records say so.
    let data_dir = app.data_dir.clone();
    let restarted = app
        .spawn_replica_with(move |args| {
            with_sandboxes(args);
            args.data_dir = Some(data_dir);
        })
        .await;
    // Its worker says hello without the sandbox: the run is lost (and not
    // placed again: a sandbox's state lives in it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = restarted
            .get(&format!("/v1/sandboxes/{id}"), &t.key)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        if body["state"] == "lost" {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = restarted
        .request(Method::POST, &format!("/v1/sandboxes/{id}/exec"), &t.key)
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 409, "conflict").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("lost"),
        "{problem}"
    );
    let res = restarted
        .request(Method::DELETE, &format!("/v1/sandboxes/{id}"), &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn a_sandbox_reaches_carapace_only_through_its_proxy() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    let port = app.address.rsplit(':').next().unwrap();
    // Directly: the server's loopback is not the sandbox's.
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", format!("echo | nc -w 2 127.0.0.1 {port}; echo rc=$?")]}),
    )
    .await;
    assert!(!out["stdout"].as_str().unwrap().contains("rc=0"), "{out}");
    // Through the proxy, by the service name: the API answers (and still
    // wants a key for anything but health).
    let request = |path: &str| {
        format!(
            "printf 'GET http://carapace.internal{path} HTTP/1.1\\r\\nHost: carapace.internal\\r\\n\\r\\n' | nc -w 5 127.0.0.1 3128"
        )
    };
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", request("/healthz")]}),
    )
    .await;
    assert!(
        out["stdout"].as_str().unwrap().starts_with("HTTP/1.1 200"),
        "{out}"
    );
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", request("/v1/tenant")]}),
    )
    .await;
    assert!(
        out["stdout"].as_str().unwrap().starts_with("HTTP/1.1 401"),
        "{out}"
    );
    // The tenant's own key never entered the sandbox.
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["sh", "-c", "env; cat /proc/1/environ"]}),
    )
    .await;
    assert!(!out["stdout"].as_str().unwrap().contains(&t.key), "{out}");
}

#[tokio::test]
async fn a_deleted_tenants_sandboxes_are_removed_from_the_worker() {
    let app = spawn_app_with(|args| {
        with_sandboxes(args);
        // The housekeeping runs every half idle timeout.
        args.sandbox.as_mut().unwrap().idle_timeout_secs = Some(4);
        // No pool: the container is named after the sandbox.
        args.sandbox.as_mut().unwrap().pool_size = Some(0);
    })
    .await;
    let t = app.create_tenant("Doomed").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    // Its container is named after its run.
    let run = sandbox["run_id"].as_str().unwrap();
    let state = app.data_dir.join("sandboxes/containers").join(run);
    assert!(
        state.exists(),
        "{} exists while the sandbox runs",
        state.display()
    );
    // As `carapace tenant delete` does, from another process.
    let master_key =
        carapace_api::master_key::MasterKey::load(&app.data_dir.join("master.key")).unwrap();
    let memory = carapace_api::memory::MemoryStore::new(
        carapace_api::storage::open(&format!(
            "file://{}",
            app.data_dir.join("objects").display()
        ))
        .unwrap(),
    );
    let tenant = carapace_api::ids::TenantId::parse(&t.id).unwrap();
    carapace_api::bootstrap::delete_tenant(
        &app.db,
        &memory,
        &master_key,
        &tenant,
        &carapace_api::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while state.exists() {
        assert!(
            Instant::now() < deadline,
            "the orphaned sandbox was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An OCI image layout with one layer: busybox as `/bin/sh` and `/etc/motd`.
fn image_layout(dir: &std::path::Path) -> std::path::PathBuf {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    crate::helpers::oci_layout(
        dir,
        &[
            ("bin/sh", 0o755, &busybox),
            ("etc/motd", 0o644, b"welcome to the tools image\n"),
        ],
    )
}

#[tokio::test]
async fn a_sandbox_runs_an_image_the_server_offers_and_no_other() {
    let images = tempfile::tempdir().unwrap();
    let layout = image_layout(images.path());
    let app = spawn_app_with(move |args| {
        with_sandboxes(args);
        args.sandbox
            .as_mut()
            .unwrap()
            .images
            .insert("example.com/tools:1".into(), layout);
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({"image": "example.com/tools:1"})).await;
    assert_eq!(sandbox["image"], "example.com/tools:1");
    let id = sandbox["id"].as_str().unwrap();
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["/bin/sh", "-c", "read l < /etc/motd; echo \"$l\""]}),
    )
    .await;
    assert_eq!(out["stdout"], "welcome to the tools image\n", "{out}");
    // The image's files are read-only like the built-in image's.
    let out = exec(
        &app,
        &t.key,
        id,
        json!({"command": ["/bin/sh", "-c", "echo x > /etc/motd"]}),
    )
    .await;
    assert_ne!(out["exit_code"], 0, "{out}");
    let res = app
        .post(
            "/v1/sandboxes",
            &t.key,
            &json!({"image": "example.com/other:2"}),
        )
        .await;
    let problem = assert_problem(res, 422, "invalid_field").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("example.com/tools:1"),
        "{problem}"
    );
}

#[tokio::test]
async fn exec_output_can_stream_as_server_sent_events() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    let started = Instant::now();
    let mut res = app.post(&format!("/v1/sandboxes/{id}/exec?stream=true"), &t.key, &json!({"command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done; printf '\u{20ac}' >&2; exit 2"]})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (mut body, mut first) = (String::new(), None);
    while let Some(chunk) = res.chunk().await.unwrap() {
        first.get_or_insert(started.elapsed());
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let total = started.elapsed();
    assert!(
        first.unwrap() + Duration::from_millis(500) < total,
        "streamed, not buffered: {first:?} of {total:?}"
    );
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let name = e
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("event: ")
                .to_owned();
            let data = e.lines().nth(1).unwrap().trim_start_matches("data: ");
            (name, serde_json::from_str(data).unwrap())
        })
        .collect();
    let stdout: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    let stderr: String = events
        .iter()
        .filter(|(n, _)| n == "stderr")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "line 1\nline 2\nline 3\n");
    assert_eq!(stderr, "\u{20ac}");
    let (last, exit) = events.last().unwrap();
    assert_eq!(last, "exit", "{body}");
    assert_eq!(exit["exit_code"], 2);
    let res = app
        .request(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec?stream=maybe"),
            &t.key,
        )
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_query").await;
}

#[tokio::test]
async fn a_sandbox_still_starting_cannot_be_deleted_under_its_creation() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    // A record in the state a create leaves it in while the container is
    // being made.
    let tenant = carapace_api::ids::TenantId::parse(&t.id).unwrap();
    let starting = carapace_api::db::TenantScope::new(&app.db, &tenant)
        .create_sandbox(
            carapace_api::db::NewSandbox {
                image: "builtin".into(),
                egress_allow: vec![],
                limits: carapace_runtime::Limits::default(),
                agent: None,
                idle_timeout_s: None,
            },
            10,
        )
        .await
        .unwrap();
    let res = app
        .request(
            Method::DELETE,
            &format!("/v1/sandboxes/{}", starting.id),
            &t.key,
        )
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 409, "conflict").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("still starting"),
        "{problem}"
    );
    let res = app
        .request(
            Method::POST,
            &format!("/v1/sandboxes/{}/exec", starting.id),
            &t.key,
        )
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;
}

#[tokio::test]
async fn a_stream_read_too_slowly_is_dropped_not_buffered_without_end() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let sandbox = create(&app, &t.key, json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    let res = app
        .request(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec?stream=true"),
            &t.key,
        )
        .json(&json!({"command": ["yes"], "timeout_s": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Nothing read for a while: the output piles up, up to a bound.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = res.bytes().await.unwrap();
    assert!(body.len() < 64 << 20, "{} bytes were kept", body.len());
    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(300)..]).into_owned();
    assert!(
        tail.contains("event: error") && tail.contains("too slowly"),
        "{tail}"
    );
    // The sandbox still answers.
    let out = exec(&app, &t.key, id, json!({"command": ["echo", "fine"]})).await;
    assert_eq!(out["stdout"], "fine\n");
}
