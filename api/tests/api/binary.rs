//! The real `carapace` binary, started the way an operator would: no
//! configuration, in an empty directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{fresh_database_url, test_database};

const BIN: &str = env!("CARGO_BIN_EXE_carapace");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `carapace` in `dir` with only the given environment (plus PATH).
fn carapace(dir: &Path, database_url: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    if let Some(url) = database_url {
        cmd.env("CARAPACE_DATABASE_URL", url);
    }
    cmd
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, database_url: Option<&str>) -> Server {
        Server::start_with(dir, database_url, |_| {})
    }

    /// Starts `carapace serve` with extra arguments or environment.
    fn start_with(
        dir: &Path,
        database_url: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let port = free_port();
        let mut cmd = carapace(dir, database_url);
        cmd.arg("serve")
            .env("CARAPACE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CARAPACE_SHUTDOWN_TIMEOUT_SECS", "5");
        adjust(&mut cmd);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let server = Server { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "carapace serve did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then wait; returns (exit success, stdout, stderr).
    fn stop(self) -> (bool, String, String) {
        self.signal("-TERM");
        self.wait()
    }

    fn wait(self) -> (bool, String, String) {
        let output = self.child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }
}

fn create_tenant(dir: &Path, database_url: Option<&str>) -> String {
    let output = carapace(dir, database_url)
        .args([
            "tenant",
            "create",
            "Acme Corp",
            "--owner",
            "ada@example.com",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(
        key.starts_with("cpk_"),
        "the key must be alone on the last line: {stdout}"
    );
    key
}

#[tokio::test]
async fn serve_with_no_configuration_creates_the_data_dir_and_a_restart_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    // On SQLite the binary uses nothing but its defaults; on PostgreSQL the
    // database URL is the only setting given.
    let pg_url = match test_database() {
        "postgres" => Some(fresh_database_url(&dir).await),
        _ => None,
    };
    let pg = pg_url.as_deref();
    let key = create_tenant(dir.path(), pg);

    let data = dir.path().join("carapace-data");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data dir must be private");
    if pg.is_none() {
        assert!(data.join("carapace.db").is_file());
    }

    let client = reqwest::Client::new();
    let server = Server::start(dir.path(), pg);
    assert!(data.join("objects").is_dir());
    assert_eq!(mode(&data.join("master.key")), 0o600);
    let master_key = std::fs::read(data.join("master.key")).unwrap();
    let res = client
        .get(server.url("/v1/tenant"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let (ok, stdout, stderr) = server.stop();
    assert!(ok, "SIGTERM must end in a clean exit: {stderr}");

    // Logs are JSON lines (stdout is not a terminal), each request carries a
    // request id, and no secret appears anywhere.
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.iter().any(|l| {
        l["message"] == "request served"
            && l["span"]["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
    }));
    assert!(lines.iter().any(|l| l["message"] == "shut down"));
    let key_hex: String = master_key.iter().map(|b| *b as char).collect();
    for text in [&stdout, &stderr] {
        assert!(!text.contains(&key), "an API key reached the logs");
        assert!(
            !text.contains(key_hex.trim()),
            "the master key reached the logs"
        );
    }

    // A second start keeps the same key file and database.
    let server = Server::start(dir.path(), pg);
    let res = client
        .get(server.url("/v1/tenant"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["name"], "Acme Corp");
    assert!(server.stop().0);
    assert_eq!(std::fs::read(data.join("master.key")).unwrap(), master_key);
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("carapace.toml"),
        "lisen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let output = carapace(dir.path(), None)
        .args(["serve", "--config", "carapace.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unknown field `lisen`"), "{stderr}");

    // A typo next to a secret must not echo the secret.
    std::fs::write(
        dir.path().join("carapace.toml"),
        "log = \"info\"\ndatabase-url = \"postgres://u:hunter2secret@db/x\"\n",
    )
    .unwrap();
    let output = carapace(dir.path(), None)
        .args(["serve", "--config", "carapace.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unknown field `database-url`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(
        !stderr.contains("hunter2secret"),
        "the secret was echoed: {stderr}"
    );

    let output = carapace(dir.path(), None)
        .args(["tenant", "create", "Acme", "--owner", "not-an-email"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("not a valid email")
    );
}

#[test]
fn settings_come_from_the_file_with_environment_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("carapace.toml"),
        "listen = \"127.0.0.1:1\"\ndata_dir = \"from-file\"\n",
    )
    .unwrap();
    let mut child = carapace(dir.path(), None)
        .args(["serve", "--config", "carapace.toml"])
        .env("CARAPACE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "did not listen on the env port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dir.path().join("from-file/master.key").is_file());
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn in_flight_request_survives(signal: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let pg_url = match test_database() {
        "postgres" => Some(fresh_database_url(&dir).await),
        _ => None,
    };
    let key = create_tenant(dir.path(), pg_url.as_deref());
    let server = Server::start(dir.path(), pg_url.as_deref());

    // Start a request and send only half of its body.
    let body = br#"{"name": "created during shutdown"}"#;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal(signal);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No new connections are taken once shutdown has begun...
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .is_err(),
        "the server still accepts connections after {signal}"
    );
    // ...but the request in flight completes.
    stream.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let (ok, stdout, stderr) = server.wait();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("finishing in-flight requests"), "{stdout}");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    in_flight_request_survives("-TERM").await;
}

#[tokio::test]
async fn sigint_is_as_graceful_as_sigterm() {
    in_flight_request_survives("-INT").await;
}

#[tokio::test]
async fn provider_keys_never_reach_a_response_or_a_log_line() {
    const PROVIDER_KEY: &str = "sk-provider-canary-7f3a9c1e";
    let llm = crate::fake_llm::FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pg_url = match test_database() {
        "postgres" => Some(fresh_database_url(&dir).await),
        _ => None,
    };
    let pg = pg_url.as_deref();
    std::fs::write(
        dir.path().join("carapace.toml"),
        format!(
            r#"
log = "debug"
[gateway]
max_retries = 1
[[gateway.providers]]
name = "dead"
kind = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
api_key_env = "CANARY_KEY"
models = ["model-a"]
[[gateway.providers]]
name = "fake"
kind = "openai_compatible"
base_url = "{}"
api_key_env = "CANARY_KEY"
models = ["model-a", "garbage-model"]
[gateway.aliases]
fast = ["dead/model-a", "fake/model-a"]
"#,
            llm.base_url
        ),
    )
    .unwrap();
    let key = create_tenant(dir.path(), pg);
    let server = Server::start_with(dir.path(), pg, |cmd| {
        cmd.args(["--config", "carapace.toml"])
            .env("CANARY_KEY", PROVIDER_KEY);
    });

    let client = reqwest::Client::new();
    let url = server.url("/gateway/v1/chat/completions");
    let mut bodies = String::new();
    llm.fail_next(&[500, 500]);
    for body in [
        serde_json::json!({"model": "fast", "messages": []}),
        serde_json::json!({"model": "fast", "stream": true, "messages": []}),
        serde_json::json!({"model": "garbage-model", "messages": []}),
        serde_json::json!({"model": "nope", "messages": []}),
    ] {
        let res = client
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        bodies.push_str(&format!("{:?}", res.headers()));
        bodies.push_str(&res.text().await.unwrap_or_default());
    }
    for path in ["/gateway/v1/models", "/metrics", "/openapi.json"] {
        let res = client
            .get(server.url(path))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        bodies.push_str(&res.text().await.unwrap());
    }
    let (ok, stdout, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert!(
        llm.received()
            .iter()
            .any(|r| r.authorization.as_deref() == Some(&format!("Bearer {PROVIDER_KEY}"))),
        "the key was used upstream"
    );
    assert!(
        stdout.contains("upstream attempt failed"),
        "failures were logged"
    );
    for (what, text) in [
        ("responses", &bodies),
        ("stdout", &stdout),
        ("stderr", &stderr),
    ] {
        assert!(
            !text.contains(PROVIDER_KEY),
            "the provider key leaked into {what}"
        );
        assert!(!text.contains(&key), "the client key leaked into {what}");
    }
}
