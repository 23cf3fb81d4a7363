//! `spawn_app` and the `TestApp` request helpers.

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::config::SettingsArgs;
use carapace_api::sandboxes::SandboxMode;
use reqwest::{Method, RequestBuilder, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::Value;
use tempfile::TempDir;

/// A running server and what the test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub database_url: String,
    pub data_dir: std::path::PathBuf,
    _dir: TempDir,
}

/// A tenant made for a test, with its owner's key.
pub struct TestTenant {
    pub id: String,
    pub key: String,
}

/// Which database the suite runs against.
pub fn test_database() -> &'static str {
    match std::env::var("CARAPACE_TEST_DATABASE").as_deref() {
        Ok("postgres") => "postgres",
        Ok("sqlite") | Err(_) => "sqlite",
        Ok(other) => panic!("CARAPACE_TEST_DATABASE must be sqlite or postgres, not {other}"),
    }
}

/// A fresh, empty database URL for one test.
pub async fn fresh_database_url(dir: &TempDir) -> String {
    if test_database() == "sqlite" {
        return format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    }
    let admin_url = std::env::var("CARAPACE_TEST_POSTGRES_URL").expect(
        "CARAPACE_TEST_DATABASE=postgres needs CARAPACE_TEST_POSTGRES_URL (infra/test sets both)",
    );
    let name = format!("carapace_test_{}", uuid::Uuid::now_v7().simple());
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Starts a server on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Whatever sandboxes a test server ran are removed when the test ends
/// (the server's threads outlive the test, so its own clean-up may never
/// run): containers, mounts and cgroups.
impl Drop for TestApp {
    fn drop(&mut self) {
        let state = self.data_dir.join("sandboxes");
        if state.exists() {
            carapace_runtime::sandbox::clean_up(
                &state,
                std::path::Path::new("/var/lib/carapace/images"),
            );
        }
    }
}

/// Settings adjustment that runs sandboxes, with the real `carapace` binary
/// as the container helper (the test binary cannot be one).
pub fn with_sandboxes(args: &mut SettingsArgs) {
    args.sandboxes = Some(SandboxMode::On);
    let sandbox = args.sandbox.get_or_insert_with(Default::default);
    sandbox.helper = Some(env!("CARGO_BIN_EXE_carapace").into());
}

/// Starts a server on a fresh database, with settings adjusted by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut SettingsArgs)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(&dir).await;
    start(dir, database_url, adjust).await
}

async fn start(
    dir: TempDir,
    database_url: String,
    adjust: impl FnOnce(&mut SettingsArgs),
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        carapace_api::telemetry::init("info", carapace_api::config::LogFormat::Text);
    }
    let mut args = SettingsArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().join("data")),
        database_url: Some(database_url.clone()),
        database_max_connections: Some(4),
        http_workers: Some(1),
        shutdown_timeout_secs: Some(1),
        // Sandbox tests turn them on with `with_sandboxes`.
        sandboxes: Some(SandboxMode::Off),
        ..SettingsArgs::default()
    };
    adjust(&mut args);
    let settings = args.resolve().unwrap();
    let app = Application::build(&settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let db = app.db().clone();
    tokio::spawn(app.run());
    TestApp {
        address,
        client: reqwest::Client::new(),
        db,
        database_url,
        data_dir: settings.data_dir.clone(),
        _dir: dir,
    }
}

impl TestApp {
    /// A second server process-equivalent on the same database: another
    /// control-plane replica with its own caches.
    pub async fn spawn_replica(&self) -> TestApp {
        self.spawn_replica_with(|_| {}).await
    }

    /// Another replica, with its own settings.
    pub async fn spawn_replica_with(&self, adjust: impl FnOnce(&mut SettingsArgs)) -> TestApp {
        start(
            tempfile::tempdir().unwrap(),
            self.database_url.clone(),
            adjust,
        )
        .await
    }

    /// Builds (without running) another replica's application, for tests of
    /// start-up refusals.
    pub async fn build_replica_with(
        &self,
        adjust: impl FnOnce(&mut SettingsArgs),
    ) -> anyhow::Result<Application> {
        let dir = tempfile::tempdir().unwrap();
        let mut args = SettingsArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            database_url: Some(self.database_url.clone()),
            database_max_connections: Some(2),
            http_workers: Some(1),
            sandboxes: Some(SandboxMode::Off),
            ..SettingsArgs::default()
        };
        adjust(&mut args);
        let settings = args.resolve()?;
        let app = Application::build(&settings).await;
        drop(dir);
        app
    }

    /// Creates a tenant the way `carapace tenant create` does.
    pub async fn create_tenant(&self, name: &str) -> TestTenant {
        let (created, secret) = bootstrap::create_tenant(
            &self.db,
            name,
            &format!("owner@{}.example.com", name.to_lowercase()),
            &Actor::cli(),
        )
        .await
        .unwrap();
        TestTenant {
            id: created.tenant.id.to_string(),
            key: secret.reveal().to_owned(),
        }
    }

    /// A request with a bearer key.
    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(key)
    }

    /// `GET` with a bearer key.
    pub fn get(&self, path: &str, key: &str) -> RequestBuilder {
        self.request(Method::GET, path, key)
    }

    /// `GET path` with a bearer key, expecting 200: its JSON.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        let res = self.get(path, key).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.unwrap()
    }

    /// `POST /v1/api-keys` with `body`; returns status and JSON.
    pub async fn create_key(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let res = self
            .request(Method::POST, "/v1/api-keys", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.request(Method::POST, path, key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The caller's audit records, newest first.
    pub async fn audit(&self, key: &str, query: &str) -> Vec<Value> {
        let res = self
            .get(&format!("/v1/audit{query}"), key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["data"].as_array().unwrap().clone()
    }
}

/// Asserts that `res` is a problem document with this status and code, and
/// returns it.
pub async fn assert_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    let content_type = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    assert!(res.headers().get("x-request-id").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("urn:carapace:problem:{code}"));
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

/// An OCI image layout in `dir` with one layer holding `files` (path,
/// mode, content); its root.
pub fn oci_layout(dir: &std::path::Path, files: &[(&str, u32, &[u8])]) -> std::path::PathBuf {
    use sha2::Digest;
    let mut layer = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(path).unwrap();
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        layer.append(&header, *data).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let root = dir.join("layout");
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let hex: String = sha2::Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(blobs.join(&hex), data).unwrap();
        format!("sha256:{hex}")
    };
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(&layer), "size": layer.len()}],
    })
    .to_string();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(manifest.as_bytes()), "size": manifest.len(),
    }]});
    std::fs::write(root.join("index.json"), index.to_string()).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    root
}
