//! API keys: creation shows the secret once, roles and scopes are enforced,
//! revoked and expired keys are refused, and every step is audited.

use std::time::{Duration, Instant};

use reqwest::Method;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn a_new_key_is_shown_once_and_works() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;

    let (status, created) = app
        .create_key(
            &acme.key,
            json!({"name": "ci", "scopes": ["api"], "role": "admin"}),
        )
        .await;
    assert_eq!(status, 201);
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("cpk_"));
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert!(created["id"].as_str().unwrap().starts_with("key_"));

    let me = app.get("/v1/tenant", secret).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["id"], acme.id);
    assert_eq!(me["role"], "admin");

    let list = app.get("/v1/api-keys", &acme.key).send().await.unwrap();
    let text = list.text().await.unwrap();
    assert!(text.contains(created["id"].as_str().unwrap()));
    assert!(
        !text.contains(secret),
        "a listing must never contain a secret"
    );
    assert!(!text.contains("key_hash"));
}

#[tokio::test]
async fn members_cannot_manage_keys_and_nobody_can_mint_a_stronger_key() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let (_, admin) = app
        .create_key(&acme.key, json!({"name": "admin", "role": "admin"}))
        .await;
    let (_, member) = app.create_key(&acme.key, json!({"name": "member"})).await;
    assert_eq!(member["role"], "member");

    let res = app
        .get("/v1/api-keys", member["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    let res = app
        .request(Method::POST, "/v1/api-keys", admin["key"].as_str().unwrap())
        .json(&json!({"name": "escalate", "role": "owner"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    let denied = app.audit(&acme.key, "?outcome=denied").await;
    assert!(denied.iter().any(|r| r["principal"]
        == format!("api_key:{}", member["id"].as_str().unwrap())
        && r["reason"].as_str().unwrap().contains("role")));
}

#[tokio::test]
async fn a_key_without_the_api_scope_cannot_use_the_rest_api() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let (status, gateway_only) = app
        .create_key(&acme.key, json!({"name": "gw", "scopes": ["gateway"]}))
        .await;
    assert_eq!(status, 201);
    let res = app
        .get("/v1/tenant", gateway_only["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 403, "forbidden").await;
    assert!(problem["detail"].as_str().unwrap().contains("api"));
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_the_audit_log_says_so() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let (_, created) = app.create_key(&acme.key, json!({"name": "doomed"})).await;
    let id = created["id"].as_str().unwrap();
    let secret = created["key"].as_str().unwrap();
    // Warm the cache so that revocation must invalidate it.
    assert_eq!(
        app.get("/v1/tenant", secret).send().await.unwrap().status(),
        200
    );

    let res = app
        .request(Method::DELETE, &format!("/v1/api-keys/{id}"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app.get("/v1/tenant", secret).send().await.unwrap();
    let problem = assert_problem(res, 401, "unauthenticated").await;
    assert!(problem["detail"].as_str().unwrap().contains("revoked"));

    // Revoking again is harmless.
    let again = app
        .request(Method::DELETE, &format!("/v1/api-keys/{id}"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);

    let records = app.audit(&acme.key, "").await;
    let actions: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["target"] == id || r["principal"] == format!("api_key:{id}"))
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("api_key.create", "success")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("api_key.revoke", "success")),
        "{actions:?}"
    );
    assert!(actions.contains(&("tenant.read", "denied")), "{actions:?}");
    let refusal = records
        .iter()
        .find(|r| r["outcome"] == "denied" && r["principal"] == format!("api_key:{id}"))
        .unwrap();
    assert_eq!(refusal["reason"], "API key revoked");
    assert_eq!(refusal["client_ip"], "127.0.0.1");
    assert!(refusal["request_id"].is_string());
}

#[tokio::test]
async fn a_key_revoked_on_another_replica_stops_working_within_a_second() {
    let app = spawn_app().await;
    let replica = app.spawn_replica().await;
    let acme = app.create_tenant("Acme").await;
    let (_, created) = app.create_key(&acme.key, json!({"name": "shared"})).await;
    let secret = created["key"].as_str().unwrap();
    // The replica has verified (and cached) the key.
    assert_eq!(
        replica
            .get("/v1/tenant", secret)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let res = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{}", created["id"].as_str().unwrap()),
            &acme.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let revoked_at = Instant::now();
    loop {
        let status = replica
            .get("/v1/tenant", secret)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1200),
            "the replica still accepted a revoked key after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let expires_at = chrono::Utc::now() + chrono::TimeDelta::milliseconds(1500);
    let (status, created) = app
        .create_key(
            &acme.key,
            json!({"name": "brief", "expires_at": expires_at}),
        )
        .await;
    assert_eq!(status, 201);
    let secret = created["key"].as_str().unwrap();
    assert_eq!(
        app.get("/v1/tenant", secret).send().await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let res = app.get("/v1/tenant", secret).send().await.unwrap();
    let problem = assert_problem(res, 401, "unauthenticated").await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"));
    let denied = app
        .audit(&acme.key, "?outcome=denied&action=tenant.read")
        .await;
    assert_eq!(denied[0]["reason"], "API key expired");
}

#[tokio::test]
async fn keys_that_do_not_exist_or_are_not_keys_are_refused() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let forged = format!("cpk_{}", "A".repeat(43));
    for key in [
        forged.as_str(),
        "not-a-key",
        &acme.key[..acme.key.len() - 1],
    ] {
        let res = app.get("/v1/tenant", key).send().await.unwrap();
        assert!(res.headers().get("www-authenticate").is_some());
        assert_problem(res, 401, "unauthenticated").await;
    }
    let res = app
        .client
        .get(format!("{}/v1/tenant", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthenticated").await;
    let res = app
        .client
        .get(format!("{}/v1/tenant", app.address))
        .header("authorization", format!("Basic {}", acme.key))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthenticated").await;
}

#[tokio::test]
async fn the_audit_log_filters_by_principal_outcome_time_and_pages() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let before = chrono::Utc::now();
    for i in 0..5 {
        let (status, _) = app
            .create_key(&acme.key, json!({"name": format!("k{i}")}))
            .await;
        assert_eq!(status, 201);
    }
    let all = app.audit(&acme.key, "?action=api_key.create").await;
    assert_eq!(all.len(), 5);
    let since = app
        .audit(
            &acme.key,
            &format!(
                "?since={}",
                before
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .replace('+', "%2B")
            ),
        )
        .await;
    assert!(since.iter().all(|r| r["action"] != "tenant.create"));
    assert!(since.len() >= 5);

    let res = app
        .get("/v1/audit?limit=2&action=api_key.create", &acme.key)
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = res.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let next = page["next_before"].as_i64().unwrap();
    let rest = app
        .audit(&acme.key, &format!("?before={next}&action=api_key.create"))
        .await;
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|r| r["id"].as_i64().unwrap() < next));

    let by_cli = app.audit(&acme.key, "?principal=cli").await;
    assert_eq!(by_cli.len(), 1);
    assert_eq!(by_cli[0]["action"], "tenant.create");
}

#[tokio::test]
async fn a_key_cannot_mint_a_key_with_more_scopes_or_a_longer_life_or_revoke_the_owner() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let tomorrow = chrono::Utc::now() + chrono::TimeDelta::days(1);
    let (status, admin) = app
        .create_key(
            &acme.key,
            json!({"name": "admin", "role": "admin", "scopes": ["api"], "expires_at": tomorrow}),
        )
        .await;
    assert_eq!(status, 201);
    let admin_key = admin["key"].as_str().unwrap();

    let res = app
        .request(Method::POST, "/v1/api-keys", admin_key)
        .json(&json!({"name": "wider", "scopes": ["api", "gateway"]}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 403, "forbidden").await;
    assert!(problem["detail"].as_str().unwrap().contains("gateway"));

    let res = app
        .request(Method::POST, "/v1/api-keys", admin_key)
        .json(&json!({"name": "longer", "expires_at": tomorrow + chrono::TimeDelta::days(30)}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    // Without an expiry, the new key inherits the creator's.
    let (status, child) = app.create_key(admin_key, json!({"name": "child"})).await;
    assert_eq!(status, 201);
    assert!(!child["expires_at"].is_null());

    // An admin cannot lock the owner out.
    let keys: serde_json::Value = app
        .get("/v1/api-keys", &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owner_key_id = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{owner_key_id}"),
            admin_key,
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
    assert_eq!(
        app.get("/v1/tenant", &acme.key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_flood_of_bad_keys_writes_a_bounded_number_of_audit_records() {
    let app = spawn_app().await;
    for i in 0..40 {
        let forged = format!("cpk_{:0>43}", i);
        let res = app.get("/v1/tenant", &forged).send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    let rows = app
        .db
        .query_one(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM audit_events WHERE tenant_id IS NULL",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = rows.try_get("", "n").unwrap();
    assert!(
        (1..=10).contains(&n),
        "{n} audit rows for 40 bad keys from one address"
    );
}

#[tokio::test]
async fn a_service_token_is_an_id_and_a_secret_that_only_count_together() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let res = app
        .post(
            "/v1/service-tokens",
            &acme.key,
            &json!({"name": "deploy bot", "expires_in_days": 0}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let (token, id, secret) = service_token(&app, &acme.key).await;
    let expires: chrono::DateTime<chrono::Utc> =
        token["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (expires - chrono::Utc::now() - chrono::TimeDelta::days(30))
            .num_minutes()
            .abs()
            < 5
    );
    let with = |id: &str, secret: &str| {
        app.client
            .get(format!("{}/v1/tenant", app.address))
            .header("carapace-client-id", id)
            .header("carapace-client-secret", secret)
            .send()
    };
    let res = with(&id, &secret).await.unwrap();
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["principal"]["id"], id.as_str());
    // The secret with another key's id, or the id without its secret: no.
    let (_, other) = app.create_key(&acme.key, json!({"name": "other"})).await;
    let res = with(other["id"].as_str().unwrap(), &secret).await.unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(format!("{}/v1/tenant", app.address))
        .header("carapace-client-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // It is an API key: listed, and revoked like one.
    let res = app
        .request(Method::DELETE, &format!("/v1/api-keys/{id}"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let res = with(&id, &secret).await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn an_address_presenting_bad_credentials_is_slowed_down_but_valid_ones_pass() {
    let app = spawn_app().await;
    let t = app.create_tenant("Acme").await;
    let limit = carapace_api::bootstrap::AUTH_FAILURES_PER_MINUTE;
    for i in 0..limit {
        let forged = format!("cpk_{i:0>64}");
        let res = app.get("/v1/tenant", &forged).send().await.unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    let res = app.get("/v1/tenant", "cpk_guess").send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "60");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    // The tenant's own key still works from the same address.
    let res = app.get("/v1/tenant", &t.key).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_client_id_guessed_at_from_many_addresses_is_slowed_down_but_its_secret_passes() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let (_, id, secret) = service_token(&app, &acme.key).await;
    // Every loopback address reaches the server: each guesser below has
    // an address of its own, well within the per-address limit.
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let limit = carapace_api::bootstrap::AUTH_FAILURES_PER_MINUTE;
    let guess = |client: reqwest::Client, secret: String| {
        let (url, id) = (format!("{}/v1/tenant", app.address), id.clone());
        async move {
            client
                .get(url)
                .header("carapace-client-id", id)
                .header("carapace-client-secret", secret)
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..limit {
        let client = from(2 + u8::try_from(i % 10).unwrap());
        let res = guess(client, format!("cpk_{i:0>64}")).await;
        assert_eq!(res.status(), 401, "guess {i}");
    }
    // A fresh address guessing at the same id: 429, for the id.
    let res = guess(from(20), "cpk_guess".to_owned()).await;
    assert_eq!(res.status(), 429);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("client id"),
        "{problem}"
    );
    // The machine that holds the secret is not locked out.
    let res = guess(from(21), secret).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client_and_elsewhere_it_is_ignored() {
    // This test's requests come from 127.0.0.1: the "proxy".
    let app =
        crate::helpers::spawn_app_with(|s| s.trusted_proxies = Some("127.0.0.1".into())).await;
    let t = app.create_tenant("Acme").await;
    let with_chain = |chain: &str| {
        app.client
            .post(format!("{}/v1/api-keys", app.address))
            .bearer_auth(&t.key)
            .header("x-forwarded-for", chain)
            .json(&json!({"name": "k"}))
            .send()
    };
    // What the client wrote (leftmost) does not count; what the proxy
    // appended does.
    let res = with_chain("10.6.6.6, 198.51.100.7").await.unwrap();
    assert_eq!(res.status(), 201);
    let audit = app.audit(&t.key, "?action=api_key.create").await;
    assert_eq!(audit[0]["client_ip"], "198.51.100.7", "{audit:?}");
    // The limits follow the forwarded address: one client's bad keys
    // do not slow another behind the same proxy.
    let limit = carapace_api::bootstrap::AUTH_FAILURES_PER_MINUTE;
    let bad = |from: &'static str, i: u32| {
        app.client
            .get(format!("{}/v1/tenant", app.address))
            .bearer_auth(format!("cpk_{i:0>64}"))
            .header("x-forwarded-for", from)
            .send()
    };
    for i in 0..limit {
        assert_eq!(bad("198.51.100.7", i).await.unwrap().status(), 401);
    }
    assert_eq!(bad("198.51.100.7", limit).await.unwrap().status(), 429);
    assert_eq!(bad("198.51.100.8", limit).await.unwrap().status(), 401);
    // Without trusted proxies the header is ignored.
    let plain = spawn_app().await;
    let t = plain.create_tenant("Acme").await;
    let res = plain
        .client
        .post(format!("{}/v1/api-keys", plain.address))
        .bearer_auth(&t.key)
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let audit = plain.audit(&t.key, "?action=api_key.create").await;
    assert_eq!(audit[0]["client_ip"], "127.0.0.1", "{audit:?}");
}

/// A new service token "deploy bot" (30 days) made with `key`: its
/// answer, client id and secret.
async fn service_token(app: &crate::helpers::TestApp, key: &str) -> (Value, String, String) {
    let res = app
        .post(
            "/v1/service-tokens",
            key,
            &json!({"name": "deploy bot", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let token: Value = res.json().await.unwrap();
    let (id, secret) = (
        token["client_id"].as_str().unwrap().to_owned(),
        token["client_secret"].as_str().unwrap().to_owned(),
    );
    (token, id, secret)
}
