//! Tenant isolation: tenant A's key sees nothing of tenant B. Each resource
//! of B that exists is listed in `CASES` — adding a future endpoint to the
//! matrix is one line.

use carapace_api::db::{TenantScope, UsageEntry};
use carapace_api::ids::TenantId;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestTenant, spawn_app_with, with_sandboxes};

/// How a case is checked.
enum Expect {
    /// Addressing B's resource by id answers 404, exactly as for an id that
    /// does not exist.
    NotFound,
    /// A listing answers 200 and mentions none of B's ids or names.
    ListsNothingOfB,
}

/// One endpoint. In the path, `{key}` is replaced with the id of an API key
/// of tenant B, `{provider}` with the name of one of B's providers and
/// `{agent}` with one of B's agents (whose memory holds `notes.md`) and
/// `{sandbox}` with one of B's sandboxes (whose workspace holds `notes.txt`)
/// and `{run}` with one of B's runs and `{conversation}` with one of B's
/// conversations.
struct Case(Method, &'static str, Expect);

const CASES: &[Case] = &[
    Case(Method::DELETE, "/v1/api-keys/{key}", Expect::NotFound),
    Case(Method::DELETE, "/v1/providers/{provider}", Expect::NotFound),
    Case(Method::GET, "/v1/providers", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/agents/{agent}", Expect::NotFound),
    Case(Method::PATCH, "/v1/agents/{agent}", Expect::NotFound),
    Case(Method::DELETE, "/v1/agents/{agent}", Expect::NotFound),
    Case(Method::GET, "/v1/agents", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/agents/{agent}/memory", Expect::NotFound),
    Case(
        Method::GET,
        "/v1/agents/{agent}/memory/notes.md",
        Expect::NotFound,
    ),
    Case(
        Method::PUT,
        "/v1/agents/{agent}/memory/notes.md",
        Expect::NotFound,
    ),
    Case(
        Method::DELETE,
        "/v1/agents/{agent}/memory/notes.md",
        Expect::NotFound,
    ),
    Case(
        Method::GET,
        "/v1/agents/{agent}/memory/versions",
        Expect::NotFound,
    ),
    Case(
        Method::POST,
        "/v1/agents/{agent}/memory/versions/1/restore",
        Expect::NotFound,
    ),
    Case(
        Method::GET,
        "/v1/agents/{agent}/memory/archive",
        Expect::NotFound,
    ),
    Case(
        Method::POST,
        "/v1/agents/{agent}/memory/commits?base=1",
        Expect::NotFound,
    ),
    Case(Method::GET, "/v1/sandboxes/{sandbox}", Expect::NotFound),
    Case(
        Method::POST,
        "/v1/sandboxes/{sandbox}/exec",
        Expect::NotFound,
    ),
    Case(
        Method::PUT,
        "/v1/sandboxes/{sandbox}/files/notes.txt",
        Expect::NotFound,
    ),
    Case(
        Method::GET,
        "/v1/sandboxes/{sandbox}/files/notes.txt",
        Expect::NotFound,
    ),
    Case(Method::DELETE, "/v1/sandboxes/{sandbox}", Expect::NotFound),
    Case(Method::GET, "/v1/sandboxes", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/runs/{run}", Expect::NotFound),
    Case(Method::POST, "/v1/runs/{run}/cancel", Expect::NotFound),
    Case(Method::GET, "/v1/runs", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/api-keys", Expect::ListsNothingOfB),
    Case(
        Method::GET,
        "/v1/gateway/transcripts",
        Expect::ListsNothingOfB,
    ),
    Case(Method::GET, "/v1/audit", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/tenant", Expect::ListsNothingOfB),
    Case(
        Method::GET,
        "/v1/usage?group_by=model",
        Expect::ListsNothingOfB,
    ),
    Case(
        Method::GET,
        "/v1/usage?group_by=day",
        Expect::ListsNothingOfB,
    ),
    Case(Method::GET, "/v1/access-policy", Expect::ListsNothingOfB),
    Case(Method::GET, "/v1/sessions", Expect::ListsNothingOfB),
    Case(Method::DELETE, "/v1/sessions/{session}", Expect::NotFound),
    Case(Method::GET, "/v1/members", Expect::ListsNothingOfB),
    Case(Method::DELETE, "/v1/members/{user}", Expect::NotFound),
    Case(Method::GET, "/v1/invitations", Expect::ListsNothingOfB),
    Case(
        Method::DELETE,
        "/v1/invitations/{invitation}",
        Expect::NotFound,
    ),
    Case(
        Method::POST,
        "/v1/agents/{agent}/messages",
        Expect::NotFound,
    ),
    Case(Method::GET, "/v1/conversations", Expect::ListsNothingOfB),
    Case(
        Method::GET,
        "/v1/conversations/{conversation}",
        Expect::NotFound,
    ),
    Case(
        Method::GET,
        "/v1/conversations/{conversation}/messages",
        Expect::NotFound,
    ),
    Case(
        Method::GET,
        "/v1/conversations/{conversation}/events",
        Expect::NotFound,
    ),
];

/// Everything tenant B owns, for substitution and for leak checks.
struct Fixture {
    b: TestTenant,
    b_key_id: String,
    b_agent_id: String,
    b_sandbox_id: String,
    b_session_id: String,
    b_user_id: String,
    b_invitation_id: String,
    b_run_id: String,
    b_conversation_id: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let b = app.create_tenant("Bravo").await;
    let (status, key) = app
        .create_key(&b.key, json!({"name": "bravo-secret-key"}))
        .await;
    assert_eq!(status, 201);
    let res = app
        .request(Method::PUT, "/v1/providers/bravo-provider", &b.key)
        .json(
            &json!({"kind": "openai", "base_url": "https://bravo.example.com/v1",
                      "api_key": "sk-bravo", "models": ["bravo-model"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .request(Method::POST, "/v1/agents", &b.key)
        .json(&json!({"name": "bravo-agent", "model": "bravo-model", "instructions": "bravo secret persona"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let b_agent_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .request(
            Method::PUT,
            &format!("/v1/agents/{b_agent_id}/memory/notes.md"),
            &b.key,
        )
        .body("bravo private note")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A model call of B's in the usage ledger.
    let b_id = TenantId::parse(&b.id).unwrap();
    TenantScope::new(&app.db, &b_id)
        .record_usage(UsageEntry {
            agent: None,
            run: None,
            principal: "api_key:bravo".to_owned(),
            endpoint: "chat_completions",
            requested_model: "bravo-model".to_owned(),
            provider: "bravo-provider".to_owned(),
            model: "bravo-model".to_owned(),
            input_tokens: 1,
            output_tokens: 1,
            cost_micro_usd: 1,
            latency_ms: 1,
            status: 200,
            outcome: "completed",
            at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let res = app
        .request(Method::POST, "/v1/sandboxes", &b.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let b_sandbox_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{b_sandbox_id}/files/notes.txt"),
            &b.key,
        )
        .body("bravo sandbox note")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .request(Method::POST, "/v1/runs", &b.key)
        .json(&json!({"command": ["sleep", "30"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let b_run_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // B's policy (its domain is one of B's secrets) and a login session of
    // B's owner.
    let res = app
        .request(Method::PUT, "/v1/access-policy", &b.key)
        .json(&json!({"allowed_domains": ["bravo-secret-key.example"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (b_session_id, b_user_id) = b_login_session(app, &b.id).await;
    let res = app
        .request(Method::POST, "/v1/invitations", &b.key)
        .json(&json!({"email": "someone@bravo-secret-key.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let b_invitation_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A conversation of B's with its agent (answered or not: only its
    // records matter here).
    let b_conversation_id = TenantScope::new(&app.db, &b_id)
        .post_message(
            &carapace_api::ids::AgentId::parse(&b_agent_id).unwrap(),
            None,
            "bravo secret message".to_owned(),
            None,
        )
        .await
        .unwrap()
        .message
        .conversation_id
        .to_string();
    Fixture {
        b_conversation_id,
        b_user_id,
        b_invitation_id,
        b_session_id,
        b_run_id,
        b_sandbox_id,
        b_key_id: key["id"].as_str().unwrap().to_owned(),
        b_agent_id,
        b,
    }
}

/// Sends a request with a body each method may carry.
async fn probe(app: &TestApp, method: &Method, path: &str, key: &str) -> reqwest::Response {
    let req = app.request(method.clone(), path, key);
    let req = match *method {
        Method::PUT => req.body("overwritten by A"),
        Method::POST if path.ends_with("/messages") => req.json(&json!({"text": "hello from A"})),
        Method::PATCH => req.json(&json!({"name": "renamed by A"})),
        Method::POST => req.json(&json!({"command": ["rm", "-rf", "/workspace"]})),
        _ => req,
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_tenant_never_sees_or_touches_another_tenants_resources() {
    let app = spawn_app_with(with_sandboxes).await;
    let a = app.create_tenant("Alpha").await;
    let f = fixture(&app).await;
    let secrets_of_b = [
        f.b.id.as_str(),
        f.b_key_id.as_str(),
        "Bravo",
        "bravo-secret-key",
        f.b_conversation_id.as_str(),
        "bravo secret message",
    ];

    for Case(method, template, expect) in CASES {
        let path = template
            .replace("{key}", &f.b_key_id)
            .replace("{provider}", "bravo-provider")
            .replace("{agent}", &f.b_agent_id)
            .replace("{sandbox}", &f.b_sandbox_id)
            .replace("{run}", &f.b_run_id)
            .replace("{session}", &f.b_session_id)
            .replace("{user}", &f.b_user_id)
            .replace("{invitation}", &f.b_invitation_id)
            .replace("{conversation}", &f.b_conversation_id);
        let res = probe(&app, method, &path, &a.key).await;
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        match expect {
            Expect::NotFound => {
                assert_eq!(status, 404, "{method} {path}: {body}");
                // Same answer as for an id that never existed.
                let missing = template
                    .replace("{key}", "key_00000000000000000000000000000000")
                    .replace("{provider}", "no-such-provider")
                    .replace("{agent}", "agt_00000000000000000000000000000000")
                    .replace("{sandbox}", "sbx_00000000000000000000000000000000")
                    .replace("{run}", "run_00000000000000000000000000000000");
                let res = probe(&app, method, &missing, &a.key).await;
                let missing_body: Value = res.json().await.unwrap();
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body, missing_body, "{method} {path}");
            }
            Expect::ListsNothingOfB => assert_eq!(status, 200, "{method} {path}: {body}"),
        }
        for secret in secrets_of_b {
            assert!(
                !body.contains(secret),
                "{method} {path} leaked {secret}: {body}"
            );
        }
    }

    // A cannot slip a message into B's conversation through its own agent.
    let res = app
        .post(
            "/v1/agents",
            &a.key,
            &json!({"name": "alpha-agent", "model": "m"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let a_agent = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post(
            &format!("/v1/agents/{a_agent}/messages"),
            &a.key,
            &json!({"text": "injected", "conversation_id": f.b_conversation_id}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let res = app
        .get(
            &format!("/v1/conversations/{}/messages", f.b_conversation_id),
            &f.b.key,
        )
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("injected") && !text.contains("hello from A"),
        "{text}"
    );

    // B's resources are untouched by A's attempts.
    let res = app.get("/v1/sessions", &f.b.key).send().await.unwrap();
    assert!(res.text().await.unwrap().contains(&f.b_session_id));
    let res = app.get("/v1/api-keys", &f.b.key).send().await.unwrap();
    let keys: Value = res.json().await.unwrap();
    let b_key = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == f.b_key_id.as_str())
        .unwrap();
    assert!(b_key["revoked_at"].is_null());
    let res = app
        .get(&format!("/v1/runs/{}", f.b_run_id), &f.b.key)
        .send()
        .await
        .unwrap();
    let run: Value = res.json().await.unwrap();
    assert_eq!(run["cancel_requested"], false, "{run}");
    let res = app
        .request(
            Method::POST,
            &format!("/v1/runs/{}/cancel", f.b_run_id),
            &f.b.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let res = app.get("/v1/providers", &f.b.key).send().await.unwrap();
    assert!(res.text().await.unwrap().contains("bravo-provider"));
    let note = app
        .get(
            &format!("/v1/agents/{}/memory/notes.md", f.b_agent_id),
            &f.b.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(note.text().await.unwrap(), "bravo private note");
    let agent: Value = app
        .get(&format!("/v1/agents/{}", f.b_agent_id), &f.b.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["name"], "bravo-agent");
    let note = app
        .get(
            &format!("/v1/sandboxes/{}/files/notes.txt", f.b_sandbox_id),
            &f.b.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(note.text().await.unwrap(), "bravo sandbox note");
}

/// A login session of tenant `tenant`'s owner, made in the database (the
/// login flow itself is tested in `login.rs`); its id and the owner's.
async fn b_login_session(app: &TestApp, tenant: &str) -> (String, String) {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    let row = app
        .db
        .query_one(sea_orm::Statement::from_string(
            backend,
            format!("SELECT user_id FROM memberships WHERE tenant_id = '{tenant}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    let user: String = row.try_get("", "user_id").unwrap();
    let signed_in = carapace_api::db::sessions::SignedIn {
        user: carapace_api::ids::UserId::parse(&user).unwrap(),
        tenant: carapace_api::ids::TenantId::parse(tenant).unwrap(),
        role: carapace_api::access::Role::Owner,
        signed_up: false,
    };
    let id = carapace_api::db::sessions::create_session(
        &app.db,
        carapace_api::db::sessions::NewSession {
            token_hash: &carapace_api::auth::session_token_hash("cps_bravo-session"),
            signed_in: &signed_in,
            expires_at: chrono::Utc::now() + chrono::TimeDelta::hours(1),
            client_ip: None,
            amr: &[],
            groups: &[],
            provider: "default",
        },
    )
    .await
    .unwrap();
    (id.to_string(), user)
}
