//! The scheduler end to end: runs through the API, placed on real worker
//! processes (`carapace worker`) or the in-process worker, with real
//! containers (root needed, as in CI).

mod control_plane;
mod conversations;
mod fleet;
mod memory_sync;
mod runs;
mod tokens;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use carapace_api::config::SettingsArgs;
use carapace_api::fleet::SchedulerArgs;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use crate::helpers::TestApp;

pub const BIN: &str = env!("CARGO_BIN_EXE_carapace");

/// Settings of a control plane with no worker of its own and short
/// timings: heartbeats every 300 ms, a worker lost after 2 s.
pub fn remote_workers_only(args: &mut SettingsArgs) {
    args.scheduler = Some(SchedulerArgs {
        local_worker: Some(false),
        heartbeat_interval_ms: Some(300),
        worker_timeout_secs: Some(2),
        round_interval_ms: Some(50),
        ..SchedulerArgs::default()
    });
}

/// Polls `check` every 50 ms until it gives a value or `within` passes.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queues a run; returns its id.
pub async fn submit(app: &TestApp, key: &str, body: Value) -> String {
    let res = app.post("/v1/runs", key, &body).await;
    assert_eq!(res.status(), 201);
    let run: Value = res.json().await.unwrap();
    run["id"].as_str().unwrap().to_owned()
}

/// A run as the API shows it.
pub async fn run(app: &TestApp, key: &str, id: &str) -> Value {
    let res = app
        .get(&format!("/v1/runs/{id}"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Waits until the run is in one of `states`.
pub async fn run_in(
    app: &TestApp,
    key: &str,
    id: &str,
    states: &[&str],
    within: Duration,
) -> Value {
    wait_for(within, &format!("run {id} to be {states:?}"), || async {
        let r = run(app, key, id).await;
        states.contains(&r["state"].as_str().unwrap()).then_some(r)
    })
    .await
}

/// A short command in a small sandbox (so that many fit on one host).
pub fn small(command: &[&str]) -> Value {
    json!({"command": command, "limits": {"cpu_millis": 100, "memory_mib": 64}})
}

/// Processes whose command line is exactly `argv` (to find a sandbox's
/// command from the host).
pub fn processes_running(argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .count()
}

/// A `carapace worker` process with its own directory.
pub struct WorkerProcess {
    child: Option<Child>,
    pub name: String,
    control_plane: String,
    slots: u64,
    dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts a worker that joins `app` with a fresh join token, and waits
    /// until it is connected.
    pub async fn join(app: &TestApp, name: &str, slots: u64) -> WorkerProcess {
        let token = carapace_scheduler::store::create_join_token(&app.db, Duration::from_secs(600))
            .await
            .unwrap();
        Self::start(&app.address, &app.db, token.reveal(), name, slots).await
    }

    /// Starts a worker that joins the control plane at `address` with
    /// `token`, and waits until `db` shows it connected.
    pub async fn start(
        address: &str,
        db: &DatabaseConnection,
        token: &str,
        name: &str,
        slots: u64,
    ) -> WorkerProcess {
        let mut worker = WorkerProcess {
            child: None,
            name: name.to_owned(),
            control_plane: address.to_owned(),
            slots,
            dir: tempfile::tempdir().unwrap(),
        };
        worker.spawn(Some(token));
        worker.wait_connected(db).await;
        worker
    }

    fn spawn(&mut self, token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("worker.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "--control-plane", &self.control_plane])
            .arg("--data-dir")
            .arg(self.dir.path().join("node"))
            .args(["--name", &self.name, "--slots", &self.slots.to_string()])
            .args([
                "--pool-size",
                "1",
                "--cpu-millis",
                "100000",
                "--memory-mib",
                "100000",
            ])
            .env_remove("CARAPACE_JOIN_TOKEN")
            .env("CARAPACE_LOG_FORMAT", "text")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(token) = token {
            cmd.env("CARAPACE_JOIN_TOKEN", token);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Its id, once it has joined.
    pub async fn id(&self, db: &DatabaseConnection) -> String {
        let workers = carapace_scheduler::store::list_workers(db).await.unwrap();
        workers
            .into_iter()
            .find(|w| w.name == self.name)
            .map(|w| w.id)
            .unwrap()
    }

    /// Waits until the worker is connected and active.
    pub async fn wait_connected(&self, db: &DatabaseConnection) {
        let since = chrono::Utc::now() - chrono::Duration::milliseconds(200);
        let what = format!("worker {} to connect; its log:\n{}", self.name, self.log());
        wait_for(Duration::from_secs(30), &what, || async {
            let workers = carapace_scheduler::store::list_workers(db).await.unwrap();
            workers
                .into_iter()
                .find(|w| {
                    w.name == self.name
                        && w.state == carapace_scheduler::store::WorkerState::Active
                        && w.connected_at.is_some_and(|t| t > since)
                })
                .map(|_| ())
        })
        .await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// `kill -9`: the worker dies with its sandboxes left behind.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.take().unwrap().wait();
    }

    /// Freezes the worker (a network partition, as the control plane sees
    /// it); its sandboxes go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen worker.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Starts the worker again on the same directory (same credential, no
    /// join token) and waits until it is connected.
    pub async fn restart(&mut self, db: &DatabaseConnection) {
        assert!(self.child.is_none(), "the worker is still running");
        self.spawn(None);
        self.wait_connected(db).await;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("node/sandboxes")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen worker cannot act on SIGTERM.
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever a killed worker left behind.
        carapace_runtime::sandbox::clean_up(
            &self.state_dir(),
            Path::new("/var/lib/carapace/images"),
        );
    }
}
