//! Plans: an operator moves a tenant to a plan, and the plan's gateway
//! limits and memory quotas apply to that tenant on its next requests.

use std::collections::BTreeMap;
use std::time::Duration;

use carapace_api::gateway::GatewayArgs;
use carapace_api::gateway::config::{ProviderArgs, ProviderKind};
use carapace_api::memory::MemoryArgs;
use carapace_api::plans::PlanArgs;
use carapace_api::secret::Secret;
use reqwest::Method;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{TestApp, assert_problem, spawn_app_with};

const ADMIN: &str = "operator-token-for-plan-tests";

async fn app() -> (TestApp, FakeLlm) {
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
    let plans = BTreeMap::from([(
        "tiny".to_owned(),
        PlanArgs {
            requests_per_minute: Some(2),
            memory: Some(MemoryArgs {
                max_files: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )]);
    let app = spawn_app_with(|s| {
        s.gateway = Some(gateway);
        s.plans = Some(plans);
        s.admin_token = Some(ADMIN.to_owned());
    })
    .await;
    (app, llm)
}

async fn set_plan(app: &TestApp, token: &str, tenant: &str, plan: &str) -> reqwest::Response {
    app.request(
        Method::PUT,
        &format!("/v1/admin/tenants/{tenant}/plan"),
        token,
    )
    .json(&json!({"plan": plan}))
    .send()
    .await
    .unwrap()
}

async fn chat(app: &TestApp, key: &str) -> u16 {
    app.request(Method::POST, "/gateway/v1/chat/completions", key)
        .json(&json!({"model": "model-a", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_tenant_moved_to_a_plan_gets_its_limits() {
    let (app, _llm) = app().await;
    let t = app.create_tenant("Acme").await;
    let other = app.create_tenant("Other").await;
    let tenant: Value = app
        .get("/v1/tenant", &t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["plan"]["name"], "default");
    assert_eq!(tenant["plan"]["requests_per_minute"], 600);

    // Only the operator, only to a configured plan, only for a tenant.
    assert_problem(
        set_plan(&app, &t.key, &t.id, "tiny").await,
        403,
        "forbidden",
    )
    .await;
    let res = set_plan(&app, ADMIN, &t.id, "platinum").await;
    let problem = assert_problem(res, 422, "invalid_field").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("tiny"),
        "{problem}"
    );
    let res = set_plan(&app, ADMIN, "tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b", "tiny").await;
    assert_problem(res, 404, "not_found").await;
    let res = set_plan(&app, ADMIN, &t.id, "tiny").await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["requests_per_minute"], 2);
    assert_eq!(view["memory_max_files"], 1);
    let audit = app.audit(&t.key, "?action=tenant.plan").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["principal"], "operator");

    // After the authentication cache's second, the plan applies.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tenant: Value = app
        .get("/v1/tenant", &t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["plan"]["name"], "tiny");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat(&app, &t.key).await);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The other tenant is on the default plan still.
    for _ in 0..3 {
        assert_eq!(chat(&app, &other.key).await, 200);
    }
    // Memory: one file at most.
    let res = app
        .post("/v1/agents", &t.key, &json!({"name": "a", "model": "m"}))
        .await;
    let agent = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = |path: &str| {
        app.request(
            Method::PUT,
            &format!("/v1/agents/{agent}/memory/{path}"),
            &t.key,
        )
        .body("x")
        .send()
    };
    assert_eq!(put("one.md").await.unwrap().status(), 200);
    assert_eq!(put("one.md").await.unwrap().status(), 200);
    assert_problem(put("two.md").await.unwrap(), 409, "limit_reached").await;

    // Back to the default plan.
    assert_eq!(set_plan(&app, ADMIN, &t.id, "default").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(put("two.md").await.unwrap().status(), 200);
}
