//! The gateway's opt-in transcripts: off by default; once an admin turns
//! them on, each call's prompt and completion (streamed or not) is kept
//! sealed with the tenant's data key and shown only to the tenant's admins.

use std::time::{Duration, Instant};

use carapace_api::gateway::GatewayArgs;
use carapace_api::gateway::config::{ProviderArgs, ProviderKind};
use carapace_api::secret::Secret;
use reqwest::Method;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{TestApp, assert_problem, spawn_app_with};

const CANARY: &str = "CANARY-prompt-7f3e-remember-the-vault-code";

async fn app_with_llm() -> (TestApp, FakeLlm) {
    let llm = FakeLlm::start().await;
    let gateway = GatewayArgs {
        providers: vec![ProviderArgs {
            name: "primary".to_owned(),
            kind: ProviderKind::OpenaiCompatible,
            base_url: Some(llm.base_url.clone()),
            api_key: Some(Secret::new("sk-upstream".to_owned())),
            api_key_env: None,
            models: vec!["model-a".to_owned()],
        }],
        ..GatewayArgs::default()
    };
    let app = spawn_app_with(|s| s.gateway = Some(gateway)).await;
    (app, llm)
}

async fn chat(app: &TestApp, key: &str, stream: bool) {
    let res = app
        .request(Method::POST, "/gateway/v1/chat/completions", key)
        .json(&json!({"model": "model-a", "stream": stream,
                      "messages": [{"role": "user", "content": CANARY}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
}

async fn list(app: &TestApp, key: &str, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = app
            .get("/v1/gateway/transcripts", key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let rows = res.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .clone();
        if rows.len() >= expected || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn transcripts_are_kept_sealed_only_after_an_admin_opts_in() {
    let (app, _llm) = app_with_llm().await;
    let t = app.create_tenant("Acme").await;
    let settings = app
        .get("/v1/gateway/settings", &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        settings.json::<Value>().await.unwrap(),
        json!({"record_bodies": false})
    );
    // Off: nothing is kept.
    chat(&app, &t.key, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(list(&app, &t.key, 0).await.is_empty());

    // A member may not turn it on; the owner may (audited).
    let (status, member) = app
        .create_key(
            &t.key,
            json!({"name": "m", "role": "member", "scopes": ["api", "gateway"]}),
        )
        .await;
    assert_eq!(status, 201);
    let member = member["key"].as_str().unwrap().to_owned();
    let res = app
        .request(Method::PUT, "/v1/gateway/settings", &member)
        .json(&json!({"record_bodies": true}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
    let res = app
        .request(Method::PUT, "/v1/gateway/settings", &t.key)
        .json(&json!({"record_bodies": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let audit = app
        .audit(&t.key, "?action=gateway.settings&outcome=success")
        .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    // Within the authentication cache's second, calls are recorded.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    chat(&app, &member, false).await;
    chat(&app, &member, true).await;
    let rows = list(&app, &t.key, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["model"] == "model-a" && r["status"] == 200)
    );
    // Newest first: the stream, then the plain answer.
    let get = |id: &str| app.get(&format!("/v1/gateway/transcripts/{id}"), &t.key);
    let streamed: Value = get(rows[0]["id"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(streamed["request"]["messages"][0]["content"], CANARY);
    let text = streamed["response"].as_str().unwrap();
    assert!(text.contains("data:") && text.contains("[DONE]"), "{text}");
    assert_eq!(streamed["truncated"], false);
    let plain: Value = get(rows[1]["id"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        plain["response"]["choices"][0]["message"]["content"],
        "Hello world"
    );
    // Members may not read them.
    let res = app
        .get("/v1/gateway/transcripts", &member)
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    // In the database: ciphertext only.
    let backend = app.db.get_database_backend();
    let stored = app
        .db
        .query_all(Statement::from_string(
            backend,
            "SELECT sealed FROM gateway_transcripts",
        ))
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    for row in stored {
        let sealed: String = row.try_get("", "sealed").unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        assert!(!sealed.contains(CANARY));
        assert!(
            !raw.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "plaintext prompt in the database"
        );
    }

    // A record moved to another tenant does not open there.
    let other = app.create_tenant("Other").await;
    let moved = rows[1]["id"].as_str().unwrap();
    app.db
        .execute(Statement::from_string(
            backend,
            format!(
                "UPDATE gateway_transcripts SET tenant_id = '{}' WHERE id = '{moved}'",
                other.id
            ),
        ))
        .await
        .unwrap();
    let res = app
        .get(&format!("/v1/gateway/transcripts/{moved}"), &other.key)
        .send()
        .await
        .unwrap();
    assert_problem(res, 500, "integrity_failure").await;
    // And the original tenant no longer sees it at all.
    let res = get(moved).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;

    // Off again: no new records.
    let res = app
        .request(Method::PUT, "/v1/gateway/settings", &t.key)
        .json(&json!({"record_bodies": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    chat(&app, &member, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(list(&app, &t.key, 0).await.len(), 1);
}
