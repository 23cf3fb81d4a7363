//! The model gateway against a fake provider that speaks the real OpenAI
//! and Anthropic wire formats; and the official Python SDKs against the
//! gateway.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use carapace_api::gateway::GatewayArgs;
use carapace_api::gateway::config::{Price, ProviderArgs, ProviderKind};
use carapace_api::secret::Secret;
use reqwest::Method;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{TestApp, TestTenant, spawn_app_with};

const PRIMARY_KEY: &str = "sk-primary-upstream-secret";
const BACKUP_KEY: &str = "sk-backup-upstream-secret";
const ANTHROPIC_KEY: &str = "sk-ant-upstream-secret";

fn provider(
    name: &str,
    kind: ProviderKind,
    base_url: &str,
    key: &str,
    models: &[&str],
) -> ProviderArgs {
    ProviderArgs {
        name: name.to_owned(),
        kind,
        base_url: Some(base_url.to_owned()),
        api_key: Some(Secret::new(key.to_owned())),
        api_key_env: None,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
    }
}

struct Setup {
    app: TestApp,
    llm: FakeLlm,
    tenant: TestTenant,
}

async fn setup(adjust: impl FnOnce(&mut GatewayArgs)) -> Setup {
    let llm = FakeLlm::start().await;
    let mut gateway = GatewayArgs {
        providers: vec![
            provider(
                "primary",
                ProviderKind::OpenaiCompatible,
                &llm.base_url,
                PRIMARY_KEY,
                &[
                    "model-a",
                    "slow-model",
                    "truncated-model",
                    "garbage-model",
                    "huge-model",
                ],
            ),
            provider(
                "backup",
                ProviderKind::Openai,
                &llm.base_url,
                BACKUP_KEY,
                &["model-b"],
            ),
            provider(
                "claude",
                ProviderKind::Anthropic,
                &llm.base_url,
                ANTHROPIC_KEY,
                &["claude-x"],
            ),
        ],
        aliases: BTreeMap::from([
            (
                "fast".to_owned(),
                vec!["primary/model-a".to_owned(), "backup/model-b".to_owned()],
            ),
            ("smart".to_owned(), vec!["claude/claude-x".to_owned()]),
        ]),
        prices: BTreeMap::from([(
            "model-a".to_owned(),
            Price {
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
            },
        )]),
        max_retries: Some(1),
        ..GatewayArgs::default()
    };
    adjust(&mut gateway);
    let app = spawn_app_with(|s| s.gateway = Some(gateway)).await;
    let tenant = app.create_tenant("Acme").await;
    Setup { app, llm, tenant }
}

impl Setup {
    async fn chat(&self, body: Value) -> reqwest::Response {
        self.app
            .request(
                Method::POST,
                "/gateway/v1/chat/completions",
                &self.tenant.key,
            )
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits for the ledger writer, then reads `GET /v1/usage`.
    async fn usage(&self, query: &str, expected_requests: i64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let res = self
                .app
                .get(&format!("/v1/usage{query}"), &self.tenant.key)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            let rows = body["data"].as_array().unwrap().clone();
            let total: i64 = rows.iter().map(|r| r["requests"].as_i64().unwrap()).sum();
            if total >= expected_requests || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_chat_completion_goes_upstream_with_the_provider_key_never_the_clients() {
    let s = setup(|_| {}).await;
    let res = s
        .chat(json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world");

    let received = s.llm.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body["model"], "model-a",
        "the alias is resolved"
    );
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {PRIMARY_KEY}").as_str())
    );
    assert!(
        received
            .iter()
            .all(|r| !format!("{r:?}").contains(&s.tenant.key)),
        "the client's key must not reach the provider"
    );

    let rows = s.usage("?group_by=model", 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["key"], "model-a");
    assert_eq!(rows[0]["input_tokens"], 11);
    assert_eq!(rows[0]["output_tokens"], 7);
    // 11 × $1 + 7 × $2 per million tokens.
    assert!((rows[0]["cost_usd"].as_f64().unwrap() - 0.000025).abs() < 1e-12);
}

#[tokio::test]
async fn a_stream_passes_through_and_its_usage_is_counted() {
    let s = setup(|_| {}).await;
    let res = s
        .chat(json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("\"Hello\"") && text.contains("[DONE]"),
        "{text}"
    );
    let sent = &s.llm.received()[0].body;
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let rows = s.usage("?group_by=model", 1).await;
    assert_eq!(rows[0]["output_tokens"], 7);
}

#[tokio::test]
async fn a_failing_provider_is_retried_then_the_next_one_serves() {
    let s = setup(|_| {}).await;
    // primary: 500, then (retry) 429; backup answers.
    s.llm.fail_next(&[500, 429]);
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 200);
    let received = s.llm.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].body["model"], "model-a");
    assert_eq!(received[1].body["model"], "model-a");
    assert_eq!(received[2].body["model"], "model-b");
    assert_eq!(
        received[2].authorization.as_deref(),
        Some(format!("Bearer {BACKUP_KEY}").as_str())
    );
}

#[tokio::test]
async fn a_client_error_from_the_provider_is_passed_back_without_fallback() {
    let s = setup(|_| {}).await;
    s.llm.fail_next(&[400]);
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 400);
    assert_eq!(s.llm.received().len(), 1);
}

#[tokio::test]
async fn when_every_provider_fails_the_client_gets_502_in_openai_shape() {
    let s = setup(|g| g.max_retries = Some(0)).await;
    s.llm.fail_next(&[503, 503]);
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");
    let text = body.to_string();
    assert!(!text.contains(PRIMARY_KEY) && !text.contains(BACKUP_KEY));
}

#[tokio::test]
async fn anthropic_messages_work_with_x_api_key_streaming_or_not() {
    let s = setup(|_| {}).await;
    for stream in [false, true] {
        let res = s
            .app
            .client
            .post(format!("{}/gateway/v1/messages", s.app.address))
            .header("x-api-key", &s.tenant.key)
            .header("anthropic-version", "2023-06-01")
            .json(
                &json!({"model": "smart", "max_tokens": 10, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(text.contains("Hello"), "{text}");
    }
    let received = s.llm.received();
    assert!(received.iter().all(|r| r.path == "/v1/messages"));
    assert!(
        received
            .iter()
            .all(|r| r.x_api_key.as_deref() == Some(ANTHROPIC_KEY))
    );
    assert!(received.iter().all(|r| r.body["model"] == "claude-x"));
    let rows = s.usage("?group_by=model", 2).await;
    assert_eq!(rows[0]["key"], "claude-x");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["input_tokens"], 26);
    assert_eq!(rows[0]["output_tokens"], 10);
}

#[tokio::test]
async fn only_keys_with_the_gateway_scope_get_in() {
    let s = setup(|_| {}).await;
    let (_, api_only) = s
        .app
        .create_key(&s.tenant.key, json!({"name": "rest", "scopes": ["api"]}))
        .await;
    let res = s
        .app
        .request(
            Method::POST,
            "/gateway/v1/chat/completions",
            api_only["key"].as_str().unwrap(),
        )
        .json(&json!({"model": "fast", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gateway")
    );
    let res = s
        .app
        .client
        .post(format!("{}/gateway/v1/chat/completions", s.app.address))
        .json(&json!({"model": "fast", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(s.llm.received().is_empty());
}

#[tokio::test]
async fn unknown_models_and_bad_bodies_are_refused_before_any_upstream_call() {
    let s = setup(|g| g.max_body_bytes = Some(2048)).await;
    let res = s
        .chat(json!({"model": "gpt-nonexistent", "messages": []}))
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_found"
    );
    // A model of the other wire format is not reachable here.
    let res = s.chat(json!({"model": "smart", "messages": []})).await;
    assert_eq!(res.status(), 404);
    let res = s.chat(json!({"messages": []})).await;
    assert_eq!(res.status(), 400);
    for options in [json!("yes"), json!(5), json!([true])] {
        let res = s
            .chat(
                json!({"model": "fast", "stream": true, "stream_options": options, "messages": []}),
            )
            .await;
        assert_eq!(res.status(), 400, "stream_options {options}");
    }
    let res = s
        .app
        .get("/gateway/v1/chat/completions", &s.tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let res = s
        .chat(json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(5000)}]}))
        .await;
    assert_eq!(res.status(), 413);
    let res = s
        .app
        .request(Method::POST, "/gateway/v1/chat/completions", &s.tenant.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(s.llm.received().is_empty());
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let s = setup(|g| g.requests_per_minute = Some(2)).await;
    for _ in 0..2 {
        assert_eq!(
            s.chat(json!({"model": "fast", "messages": []}))
                .await
                .status(),
            200
        );
    }
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_cancels_the_upstream_request() {
    let s = setup(|_| {}).await;
    let mut res = s
        .chat(json!({"model": "slow-model", "stream": true, "messages": []}))
        .await;
    assert_eq!(res.status(), 200);
    // Read a little, then go away.
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(res);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.llm.shared.stream_cancelled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = s.usage("?group_by=model", 1).await;
        if !rows.is_empty() {
            assert_eq!(rows[0]["key"], "slow-model");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned stream was not recorded"
        );
    }
}

#[tokio::test]
async fn the_models_list_shows_aliases_and_provider_models() {
    let s = setup(|_| {}).await;
    let res = s
        .app
        .get("/gateway/v1/models", &s.tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["fast", "smart", "model-a", "model-b", "claude-x"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(!body.to_string().contains("upstream-secret"));
}

/// The Python interpreter with the official `openai` and `anthropic`
/// packages (`infra/install-deps` makes it).
fn sdk_python() -> String {
    let python = std::env::var("CARAPACE_TEST_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/carapace/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    assert!(
        std::path::Path::new(&python).is_file(),
        "{python} is missing: run infra/install-deps (it installs the openai and anthropic SDKs)"
    );
    python
}

#[tokio::test]
async fn the_official_openai_and_anthropic_sdks_work_against_the_gateway() {
    let s = setup(|_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clients.py");
    let output = tokio::process::Command::new(sdk_python())
        .arg(script)
        .env("GATEWAY_URL", format!("{}/gateway/v1", s.app.address))
        .env("GATEWAY_KEY", &s.tenant.key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    for check in [
        "openai chat ok",
        "openai stream ok",
        "openai tools ok",
        "openai stream tools ok",
        "anthropic messages ok",
        "anthropic stream ok",
        "anthropic tools ok",
        "anthropic stream tools ok",
        "openai bad key refused",
    ] {
        assert!(
            stdout.contains(check),
            "missing `{check}` in:\n{stdout}\n{stderr}"
        );
    }
}

const TENANT_KEY: &str = "sk-tenant-own-provider-key";

async fn put_provider(s: &Setup, key: &str, name: &str, body: Value) -> reqwest::Response {
    s.app
        .request(Method::PUT, &format!("/v1/providers/{name}"), key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenants_own_provider_key_is_stored_encrypted_and_used_only_for_that_tenant() {
    let s = setup(|g| g.allow_private_tenant_endpoints = Some(true)).await;
    let res = put_provider(
        &s,
        &s.tenant.key,
        "own",
        json!({"kind": "openai_compatible", "base_url": s.llm.base_url, "api_key": TENANT_KEY, "models": ["private-model"]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["id"], "own");
    assert!(!view.to_string().contains(TENANT_KEY));

    // Never listed, never in the audit log, never in clear in the database.
    let list = s
        .app
        .get("/v1/providers", &s.tenant.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("private-model") && !list.contains(TENANT_KEY));
    let audit = s.app.audit(&s.tenant.key, "?action=provider.put").await;
    assert_eq!(audit.len(), 1);
    assert!(!Value::Array(audit).to_string().contains(TENANT_KEY));
    let rows = s
        .app
        .db
        .query_all(sea_orm::Statement::from_string(
            s.app.db.get_database_backend(),
            "SELECT * FROM tenant_providers",
        ))
        .await
        .unwrap();
    assert!(!format!("{rows:?}").contains(TENANT_KEY));
    assert!(!format!("{rows:?}").contains(&base64_of(TENANT_KEY)));

    // The tenant's key goes upstream for the tenant's model.
    let res = s
        .chat(json!({"model": "private-model", "messages": []}))
        .await;
    assert_eq!(res.status(), 200);
    let received = s.llm.received();
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {TENANT_KEY}").as_str())
    );

    // Another tenant cannot reach it.
    let other = s.app.create_tenant("Other").await;
    let res = s
        .app
        .request(Method::POST, "/gateway/v1/chat/completions", &other.key)
        .json(&json!({"model": "private-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Deleting it takes effect at once.
    let res = s
        .app
        .request(Method::DELETE, "/v1/providers/own", &s.tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = s
        .chat(json!({"model": "private-model", "messages": []}))
        .await;
    assert_eq!(res.status(), 404);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn a_sealed_key_copied_into_another_tenant_does_not_decrypt() {
    let s = setup(|g| g.allow_private_tenant_endpoints = Some(true)).await;
    let body = json!({"kind": "openai_compatible", "base_url": s.llm.base_url, "api_key": TENANT_KEY, "models": ["private-model"]});
    assert_eq!(
        put_provider(&s, &s.tenant.key, "own", body).await.status(),
        200
    );
    let mallory = s.app.create_tenant("Mallory").await;
    let body = json!({"kind": "openai_compatible", "base_url": s.llm.base_url, "api_key": "sk-mallory", "models": ["private-model"]});
    assert_eq!(
        put_provider(&s, &mallory.key, "own", body).await.status(),
        200
    );

    // An attacker with write access to the database copies Acme's sealed
    // key into Mallory's row.
    let backend = s.app.db.get_database_backend();
    let sealed: String = s
        .app
        .db
        .query_one(sea_orm::Statement::from_sql_and_values(
            backend,
            match backend {
                sea_orm::DbBackend::Postgres => {
                    "SELECT sealed_api_key FROM tenant_providers WHERE tenant_id = $1"
                }
                _ => "SELECT sealed_api_key FROM tenant_providers WHERE tenant_id = ?",
            },
            [s.tenant.id.clone().into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "sealed_api_key")
        .unwrap();
    s.app
        .db
        .execute(sea_orm::Statement::from_sql_and_values(
            backend,
            match backend {
                sea_orm::DbBackend::Postgres => {
                    "UPDATE tenant_providers SET sealed_api_key = $1 WHERE tenant_id = $2"
                }
                _ => "UPDATE tenant_providers SET sealed_api_key = ? WHERE tenant_id = ?",
            },
            [sealed.into(), mallory.id.clone().into()],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the provider cache

    let res = s
        .app
        .request(Method::POST, "/gateway/v1/chat/completions", &mallory.key)
        .json(&json!({"model": "private-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        404,
        "the copied key must not decrypt for Mallory"
    );
    assert!(
        s.llm
            .received()
            .iter()
            .all(|r| r.authorization.as_deref() != Some(&format!("Bearer {TENANT_KEY}")))
    );
    // Acme is unaffected.
    assert_eq!(
        s.chat(json!({"model": "private-model", "messages": []}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn tenant_endpoints_on_internal_addresses_are_refused() {
    let s = setup(|_| {}).await;
    for url in [
        s.llm.base_url.clone(),
        "https://127.0.0.1/v1".to_owned(),
        "https://169.254.169.254/latest".to_owned(),
        "https://[::ffff:10.0.0.1]/v1".to_owned(),
        "https://localhost/v1".to_owned(),
        "https://user:pw@api.example.com/v1".to_owned(),
    ] {
        let res = put_provider(
            &s,
            &s.tenant.key,
            "evil",
            json!({"kind": "openai_compatible", "base_url": url, "api_key": "sk-x", "models": ["m"]}),
        )
        .await;
        let problem = crate::helpers::assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], "base_url", "{url}");
    }
    for (name, body, field) in [
        (
            "Bad Name",
            json!({"kind": "openai", "api_key": "sk"}),
            "name",
        ),
        ("ok", json!({"kind": "openai", "api_key": ""}), "api_key"),
        (
            "ok",
            json!({"kind": "openai", "api_key": "sk x"}),
            "api_key",
        ),
        (
            "ok",
            json!({"kind": "openai_compatible", "api_key": "sk"}),
            "base_url",
        ),
    ] {
        let res = put_provider(&s, &s.tenant.key, &name.replace(' ', "%20"), body).await;
        let problem = crate::helpers::assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field);
    }
    // A public https endpoint is accepted (it is not called here).
    let res = put_provider(
        &s,
        &s.tenant.key,
        "public",
        json!({"kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "sk-x", "models": ["m"]}),
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn upstream_garbage_ends_in_clean_errors() {
    let s = setup(|_| {}).await;
    // Not JSON at all.
    let res = s
        .chat(json!({"model": "garbage-model", "messages": []}))
        .await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_invalid"
    );
    // Far too large.
    let res = s.chat(json!({"model": "huge-model", "messages": []})).await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_too_large"
    );
    // A stream cut off mid-event: the client's stream is cut off too, not
    // ended as if complete.
    let res = s
        .chat(json!({"model": "truncated-model", "stream": true, "messages": []}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.text().await.is_err(),
        "a truncated upstream stream must not look complete"
    );
    // The gateway is unharmed.
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 200);
    let outcomes = s.usage("?group_by=model", 4).await;
    let models: Vec<&str> = outcomes
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(models.contains(&"truncated-model"), "{models:?}");
}

fn usage_entry(
    model: &str,
    cost_micro_usd: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> carapace_api::db::UsageEntry {
    carapace_api::db::UsageEntry {
        agent: None,
        run: None,
        principal: "api_key:earlier".to_owned(),
        endpoint: "chat_completions",
        requested_model: model.to_owned(),
        provider: "primary".to_owned(),
        model: model.to_owned(),
        input_tokens: 1,
        output_tokens: 1,
        cost_micro_usd,
        latency_ms: 1,
        status: 200,
        outcome: "completed",
        at,
    }
}

#[tokio::test]
async fn the_monthly_budget_cuts_off_mid_month_and_last_month_does_not_count() {
    // Each call to model-a costs 11 × $1 + 7 × $2 per million tokens = $0.000025.
    let s = setup(|g| g.monthly_budget_usd = Some(0.000_04)).await;
    let tenant = carapace_api::ids::TenantId::parse(&s.tenant.id).unwrap();
    let scope = carapace_api::db::TenantScope::new(&s.app.db, &tenant);
    let now = chrono::Utc::now();
    let last_month = now - chrono::TimeDelta::days(40);
    // Spent earlier this month: $0.00001. Last month's spending is history.
    scope
        .record_usage(usage_entry("model-a", 10, now))
        .await
        .unwrap();
    scope
        .record_usage(usage_entry("model-a", 1_000_000, last_month))
        .await
        .unwrap();

    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 200, "$0.00001 of $0.00004 spent");
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 200, "$0.000035 of $0.00004 spent");
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget")
    );
    assert_eq!(
        s.llm.received().len(),
        2,
        "no upstream call once the budget is spent"
    );
}

#[tokio::test]
async fn tokens_per_minute_are_limited() {
    // Each call uses 18 tokens.
    let s = setup(|g| g.tokens_per_minute = Some(20)).await;
    assert_eq!(
        s.chat(json!({"model": "fast", "messages": []}))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.chat(json!({"model": "fast", "messages": []}))
            .await
            .status(),
        200
    );
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
}

#[tokio::test]
async fn rate_limits_are_shared_between_replicas() {
    let s = setup(|g| g.requests_per_minute = Some(6)).await;
    let gateway = |args: &mut carapace_api::config::SettingsArgs| {
        args.gateway = Some(GatewayArgs {
            providers: vec![provider(
                "primary",
                ProviderKind::OpenaiCompatible,
                &s.llm.base_url,
                PRIMARY_KEY,
                &["model-a"],
            )],
            requests_per_minute: Some(6),
            ..GatewayArgs::default()
        });
    };
    let replica = s.app.spawn_replica_with(gateway).await;
    let via_replica = || async {
        replica
            .request(Method::POST, "/gateway/v1/chat/completions", &s.tenant.key)
            .json(&json!({"model": "model-a", "messages": []}))
            .send()
            .await
            .unwrap()
            .status()
    };
    // The replica has seen the tenant (its buckets are warm)...
    assert_eq!(via_replica().await, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // ...then the first replica uses up the rest of the minute's allowance.
    for _ in 0..5 {
        assert_eq!(
            s.chat(json!({"model": "fast", "messages": []}))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        s.chat(json!({"model": "fast", "messages": []}))
            .await
            .status(),
        429
    );
    // After a sync or two, the other replica knows the allowance is used up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        via_replica().await,
        429,
        "the replica must see the first one's use"
    );
}

async fn sealed_provider_keys(app: &TestApp) -> Vec<String> {
    app.db
        .query_all(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            "SELECT sealed_api_key FROM tenant_providers ORDER BY tenant_id, name",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "sealed_api_key").unwrap())
        .collect()
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_tenant_keys_without_touching_their_secrets() {
    use carapace_api::master_key::MasterKey;
    let s = setup(|g| g.allow_private_tenant_endpoints = Some(true)).await;
    let body = json!({"kind": "openai_compatible", "base_url": s.llm.base_url, "api_key": TENANT_KEY, "models": ["private-model"]});
    assert_eq!(
        put_provider(&s, &s.tenant.key, "own", body).await.status(),
        200
    );
    let before = sealed_provider_keys(&s.app).await;

    let old = MasterKey::load(&s.app.data_dir.join("master.key")).unwrap();
    let new_path = s.app.data_dir.join("rotated.key");
    let (new, _) = MasterKey::load_or_create(&new_path).unwrap();
    let other = s.app.create_tenant("NoSecrets").await;
    let (rewrapped, skipped) = carapace_api::bootstrap::rotate_master_key(&s.app.db, &old, &new)
        .await
        .unwrap();
    assert_eq!(
        (rewrapped, skipped),
        (1, 1),
        "one tenant has a data key, {} has none",
        other.id
    );
    // Running it again changes nothing.
    assert_eq!(
        carapace_api::bootstrap::rotate_master_key(&s.app.db, &old, &new)
            .await
            .unwrap(),
        (0, 2)
    );

    // The data the tenant key protects was not rewritten...
    let after = sealed_provider_keys(&s.app).await;
    assert_eq!(before, after);
    // ...and a server on the new master key still opens it.
    let llm_url = s.llm.base_url.clone();
    let replica = s
        .app
        .spawn_replica_with(|args| {
            args.master_key_file = Some(new_path.clone());
            args.gateway = Some(GatewayArgs {
                allow_private_tenant_endpoints: Some(true),
                ..GatewayArgs::default()
            });
        })
        .await;
    let res = replica
        .request(Method::POST, "/gateway/v1/chat/completions", &s.tenant.key)
        .json(&json!({"model": "private-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "provider at {llm_url}");
    assert!(
        s.llm
            .received()
            .iter()
            .any(|r| r.authorization.as_deref() == Some(&format!("Bearer {TENANT_KEY}")))
    );
}

#[tokio::test]
async fn a_server_refuses_to_start_with_a_master_key_that_opens_no_tenant_key() {
    let s = setup(|g| g.allow_private_tenant_endpoints = Some(true)).await;
    let body = json!({"kind": "openai_compatible", "base_url": s.llm.base_url, "api_key": TENANT_KEY, "models": ["m"]});
    assert_eq!(
        put_provider(&s, &s.tenant.key, "own", body).await.status(),
        200
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let wrong = elsewhere.path().join("typo.key");
    let refused = s
        .app
        .build_replica_with(|args| args.master_key_file = Some(wrong.clone()))
        .await;
    let message = format!(
        "{:#}",
        refused.err().expect("a wrong master key must be refused")
    );
    assert!(
        message.contains("opens none of the 1 stored tenant data keys"),
        "{message}"
    );
    assert!(
        !wrong.exists(),
        "the freshly made wrong key is not left behind"
    );
}

#[tokio::test]
async fn calls_made_for_an_agent_are_attributed_to_it() {
    let s = setup(|_| {}).await;
    let res = s
        .app
        .request(Method::POST, "/v1/agents", &s.tenant.key)
        .json(&json!({"name": "hermes", "model": "fast"}))
        .send()
        .await
        .unwrap();
    let agent = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = |agent_header: Option<String>, key: String| {
        let app = &s.app;
        async move {
            let mut req = app
                .request(Method::POST, "/gateway/v1/chat/completions", &key)
                .json(&json!({"model": "fast", "messages": []}));
            if let Some(h) = agent_header {
                req = req.header("x-carapace-agent", h);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(call(Some(agent.clone()), s.tenant.key.clone()).await, 200);
    assert_eq!(call(None, s.tenant.key.clone()).await, 200);
    assert_eq!(
        call(
            Some("agt_00000000000000000000000000000000".into()),
            s.tenant.key.clone()
        )
        .await,
        404
    );
    let other = s.app.create_tenant("Other").await;
    assert_eq!(
        call(Some(agent.clone()), other.key.clone()).await,
        404,
        "another tenant's agent"
    );
    let rows = s.usage("?group_by=agent", 2).await;
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(&agent.as_str()) && keys.contains(&"-"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_platform_provider_refusing_its_credentials_is_a_failure_not_an_answer() {
    let s = setup(|g| g.max_retries = Some(0)).await;
    // The primary refuses the platform's key; the backup serves.
    s.llm.fail_next(&[401]);
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 200);
    let received = s.llm.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].body["model"], "model-b");
    // When every provider refuses, the client learns nothing of the
    // platform's accounts.
    s.llm.fail_next(&[403, 401]);
    let res = s.chat(json!({"model": "fast", "messages": []})).await;
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(!body.contains("forced failure"), "{body}");
}

#[tokio::test]
async fn usage_dates_out_of_range_are_refused_not_panicked_on() {
    let s = setup(|_| {}).await;
    for query in [
        "?to=-262143-01-01",
        "?from=0001-01-01",
        "?from=2026-02-01&to=2026-01-01",
        "?from=2020-01-01&to=2026-01-01",
    ] {
        let res = s
            .app
            .get(&format!("/v1/usage{query}"), &s.tenant.key)
            .send()
            .await
            .unwrap();
        crate::helpers::assert_problem(res, 400, "invalid_query").await;
    }
}
