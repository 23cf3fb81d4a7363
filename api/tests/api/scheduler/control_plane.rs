//! The control plane itself killed with runs in flight: the real binary,
//! `kill -9`, restarted on the same database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{BIN, WorkerProcess, wait_for};
use crate::helpers::fresh_database_url;

const CONFIG: &str = "[scheduler]\nlocal_worker = false\nheartbeat_interval_ms = 300\nworker_timeout_secs = 15\nround_interval_ms = 50\n";

fn carapace(dir: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("CARAPACE_DATABASE_URL", database_url)
        .env("CARAPACE_CONFIG", dir.join("carapace.toml"))
        .env("CARAPACE_SANDBOXES", "off");
    cmd
}

/// The last line of a command's standard output.
fn last_line(mut cmd: Command) -> String {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

fn serve(dir: &Path, database_url: &str, port: u16) -> Child {
    let child = carapace(dir, database_url)
        .arg("serve")
        .env("CARAPACE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "carapace serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test]
async fn a_killed_control_plane_loses_no_accepted_run_and_workers_reconnect_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("carapace.toml"), CONFIG).unwrap();
    let database_url = fresh_database_url(&dir).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");

    let mut cmd = carapace(dir.path(), &database_url);
    cmd.args(["tenant", "create", "Acme", "--owner", "ada@example.com"]);
    let key = last_line(cmd);
    let mut cmd = carapace(dir.path(), &database_url);
    cmd.args(["worker-token", "create"]);
    let token = last_line(cmd);
    assert!(token.starts_with("cwj_"), "{token}");

    let mut server = serve(dir.path(), &database_url, port);
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    let worker = WorkerProcess::start(&base, &db, &token, "w1", 2).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let res = client
            .post(format!("{base}/v1/runs"))
            .bearer_auth(&key)
            .json(
                &json!({"command": ["sh", "-c", format!("sleep 2; echo run {i}")],
                          "limits": {"cpu_millis": 100, "memory_mib": 64}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        ids.push(
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let get = |id: String| {
        let (client, key, base) = (client.clone(), key.clone(), base.clone());
        async move {
            let res = client
                .get(format!("{base}/v1/runs/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .ok()?;
            res.json::<Value>().await.ok()
        }
    };
    wait_for(Duration::from_secs(30), "two runs under way", || async {
        let mut running = 0;
        for id in &ids {
            if get(id.clone()).await?["state"] == "running" {
                running += 1;
            }
        }
        (running == 2).then_some(())
    })
    .await;

    server.kill().unwrap();
    server.wait().unwrap();
    let restarted_at = chrono::Utc::now();
    // Long enough for the two runs under way to end while nobody listens:
    // their results wait in the worker, which then finds the control plane
    // again by itself.
    std::thread::sleep(Duration::from_secs(3));
    let mut server = serve(dir.path(), &database_url, port);

    // Every accepted run is there and ends, on the worker that reconnected
    // by itself (its runs under way went on meanwhile).
    for (i, id) in ids.iter().enumerate() {
        let done = wait_for(
            Duration::from_secs(60),
            &format!("run {i} to finish"),
            || async {
                let run = get(id.clone()).await?;
                ["succeeded", "failed", "cancelled"]
                    .contains(&run["state"].as_str()?)
                    .then_some(run)
            },
        )
        .await;
        assert_eq!(done["state"], "succeeded", "{done}\n{}", worker.log());
        assert_eq!(done["stdout"], format!("run {i}\n"));
        assert_eq!(done["attempts"], 1, "{done}");
    }
    let workers = carapace_scheduler::store::list_workers(&db).await.unwrap();
    assert!(
        workers[0].connected_at.unwrap() > restarted_at,
        "{workers:?}"
    );
    drop(worker);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
