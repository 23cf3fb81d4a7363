//! Run tokens: each run's own credential for the model gateway, in its
//! sandbox's environment, valid only while the run is not over and only
//! for the gateway of its own tenant.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{run_in, submit};
use crate::helpers::{TestApp, spawn_app_with, with_sandboxes};

/// A raw HTTP request from inside a sandbox to the control plane, through
/// its egress proxy, with the run's token.
fn from_inside(path: &str) -> String {
    format!(
        "printf 'GET http://carapace.internal{path} HTTP/1.1\\r\\nHost: carapace.internal\\r\\nAuthorization: Bearer %s\\r\\nConnection: close\\r\\n\\r\\n' \"$CARAPACE_RUN_TOKEN\" | nc -w 5 127.0.0.1 3128 | head -n 1"
    )
}

async fn gateway_models(app: &TestApp, token: &str) -> reqwest::StatusCode {
    app.get("/gateway/v1/models", token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_run_calls_the_gateway_with_its_own_token_only_while_it_runs() {
    let app = spawn_app_with(with_sandboxes).await;
    let t = app.create_tenant("Acme").await;
    let script = format!(
        "echo \"$CARAPACE_RUN_TOKEN\"; echo \"$OPENAI_BASE_URL\"; {}",
        from_inside("/gateway/v1/models")
    );
    // A variable of the same name from the tenant does not replace it.
    let id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", script], "env": {"OPENAI_API_KEY": "sk-tenant-supplied"}}),
    )
    .await;
    let done = run_in(
        &app,
        &t.key,
        &id,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let out = done["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    let token = lines.next().unwrap();
    assert!(token.starts_with("crt_"), "{out}");
    assert_eq!(lines.next(), Some("http://carapace.internal/gateway/v1"));
    assert!(lines.next().unwrap().starts_with("HTTP/1.1 200"), "{out}");
    // The run is over: its token no longer works, and says why.
    let res = app.get("/gateway/v1/models", token).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let problem: Value = res.json().await.unwrap();
    assert!(problem.to_string().contains("run"), "{problem}");
    // A forged token (right run, wrong secret) is nobody's.
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(gateway_models(&app, &forged).await, 401);
}

#[tokio::test]
async fn a_run_token_opens_only_its_own_tenants_gateway() {
    let app = spawn_app_with(with_sandboxes).await;
    let a = app.create_tenant("Alpha").await;
    let b = app.create_tenant("Bravo").await;
    let res = app
        .request(Method::POST, "/v1/agents", &b.key)
        .json(&json!({"name": "bravo-agent", "model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let b_agent = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An interactive sandbox of A: its token, read from inside.
    let res = app.post("/v1/sandboxes", &a.key, &json!({})).await;
    assert_eq!(res.status(), 201);
    let sandbox = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post(
            &format!("/v1/sandboxes/{sandbox}/exec"),
            &a.key,
            &json!({"command": ["sh", "-c", "echo \"$CARAPACE_RUN_TOKEN\""]}),
        )
        .await;
    let out: Value = res.json().await.unwrap();
    let token = out["stdout"].as_str().unwrap().trim().to_owned();
    assert!(token.starts_with("crt_"), "{out}");

    assert_eq!(gateway_models(&app, &token).await, 200);
    // Not the tenant API: a run token opens only the gateway.
    let res = app.get("/v1/runs", &token).send().await.unwrap();
    assert_eq!(res.status(), 403);
    // B's agent is nobody's as far as A's run is concerned (A's own model,
    // so that the request gets as far as the agent check).
    let res = app
        .request(Method::PUT, "/v1/providers/alpha-llm", &a.key)
        .json(
            &json!({"kind": "openai_compatible", "base_url": "https://llm.alpha.example/v1",
                      "api_key": "sk-alpha", "models": ["alpha-model"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .request(Method::POST, "/gateway/v1/chat/completions", &token)
        .header("x-carapace-agent", &b_agent)
        .json(&json!({"model": "alpha-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body = res.text().await.unwrap();
    assert!(body.contains("agent_not_found"), "{body}");
    // Refusals are audited in A's log under the run.
    let records = app.audit(&a.key, "?outcome=denied").await;
    assert!(
        records
            .iter()
            .any(|r| r["principal"].as_str().unwrap().starts_with("run:run_")),
        "{records:?}"
    );
    // The sandbox deleted, its run is over, and so is its token.
    let res = app
        .request(Method::DELETE, &format!("/v1/sandboxes/{sandbox}"), &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(gateway_models(&app, &token).await, 401);
}

#[tokio::test]
async fn a_runs_model_calls_go_upstream_with_the_provider_key_and_are_counted_by_run() {
    use carapace_api::gateway::GatewayArgs;
    use carapace_api::gateway::config::{ProviderArgs, ProviderKind};
    use carapace_api::secret::Secret;

    const UPSTREAM_KEY: &str = "sk-upstream-secret-of-the-platform";
    let llm = crate::fake_llm::FakeLlm::start().await;
    let gateway = GatewayArgs {
        providers: vec![ProviderArgs {
            name: "primary".to_owned(),
            kind: ProviderKind::OpenaiCompatible,
            base_url: Some(llm.base_url.clone()),
            api_key: Some(Secret::new(UPSTREAM_KEY.to_owned())),
            api_key_env: None,
            models: vec!["model-a".to_owned()],
        }],
        ..GatewayArgs::default()
    };
    let app = spawn_app_with(|args| {
        with_sandboxes(args);
        args.gateway = Some(gateway);
    })
    .await;
    let t = app.create_tenant("Acme").await;
    let agent = |name: &str| {
        let (app, key) = (&app, t.key.clone());
        let name = name.to_owned();
        async move {
            let res = app
                .post(
                    "/v1/agents",
                    &key,
                    &json!({"name": name, "model": "model-a"}),
                )
                .await;
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (own, other) = (agent("own").await, agent("other").await);
    let body =
        json!({"model": "model-a", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    let call = |agent_header: &str| {
        format!(
            "printf 'POST http://carapace.internal/gateway/v1/chat/completions HTTP/1.1\\r\\nHost: carapace.internal\\r\\nAuthorization: Bearer %s\\r\\n{agent_header}Content-Type: application/json\\r\\nContent-Length: {}\\r\\nConnection: close\\r\\n\\r\\n%s' \"$OPENAI_API_KEY\" '{body}' | nc -w 10 127.0.0.1 3128 | head -n 1",
            body.len()
        )
    };
    // Its own agent's call; then one claiming another agent of the tenant.
    let request = format!(
        "{}; {}",
        call(""),
        call(&format!("x-carapace-agent: {other}\\r\\n"))
    );
    let id = submit(
        &app,
        &t.key,
        json!({"command": ["sh", "-c", request], "agent_id": own}),
    )
    .await;
    let done = run_in(
        &app,
        &t.key,
        &id,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    let out = done["stdout"].as_str().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{done}");
    assert!(
        out.lines().nth(1).unwrap().starts_with("HTTP/1.1 403"),
        "{done}"
    );
    // Upstream saw the platform's key, never the run's token.
    let received = llm.shared.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    // The call is in the tenant's ledger under the run.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let res = app
            .get("/v1/usage?group_by=run", &t.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let rows = res.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .clone();
        if !rows.is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["key"], id.as_str());
    assert_eq!(rows[0]["requests"], 1);
    // And under the run's agent.
    let res = app
        .get("/v1/usage?group_by=agent", &t.key)
        .send()
        .await
        .unwrap();
    let rows = res.json::<Value>().await.unwrap()["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["key"], own.as_str());
}
