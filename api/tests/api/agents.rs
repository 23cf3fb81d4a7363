//! Agents over REST, and their encrypted memory: raw bytes in and out,
//! versions, restore.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestTenant, assert_problem, spawn_app};

async fn create_agent(app: &TestApp, tenant: &TestTenant, body: Value) -> Value {
    let res = app
        .request(Method::POST, "/v1/agents", &tenant.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn put(app: &TestApp, key: &str, path: &str, body: Vec<u8>) -> reqwest::Response {
    app.request(Method::PUT, path, key)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_agents_instructions_seed_its_memory_and_files_round_trip() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let agent = create_agent(
        &app,
        &acme,
        json!({"name": "Hermes", "model": "fast", "instructions": "You are Hermes.", "egress_allow": ["api.github.com", "*.example.com"]}),
    )
    .await;
    let id = agent["id"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    assert_eq!(agent["image"], "builtin");
    let base = format!("/v1/agents/{id}/memory");

    let listing: Value = app
        .get(&base, &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["version"], 1);
    assert_eq!(listing["files"][0]["path"], "AGENTS.md");
    let seed = app
        .get(&format!("{base}/AGENTS.md"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(seed.headers()["content-type"], "application/octet-stream");
    assert_eq!(seed.bytes().await.unwrap(), "You are Hermes.");

    // A small note and a file of several chunks.
    let note = b"- likes tea\n".to_vec();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 77)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    assert_eq!(
        put(
            &app,
            &acme.key,
            &format!("{base}/memory/2026-11-26.md"),
            note.clone()
        )
        .await
        .status(),
        200
    );
    let res = put(
        &app,
        &acme.key,
        &format!("{base}/sessions/s1.jsonl"),
        big.clone(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 3);
    let back = app
        .get(&format!("{base}/sessions/s1.jsonl"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.bytes().await.unwrap().as_ref(), big.as_slice());
    let back = app
        .get(&format!("{base}/memory/2026-11-26.md"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.bytes().await.unwrap().as_ref(), note.as_slice());

    // Delete, then restore the version that had it.
    let res = app
        .request(
            Method::DELETE,
            &format!("{base}/memory/2026-11-26.md"),
            &acme.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 4);
    let res = app
        .get(&format!("{base}/memory/2026-11-26.md"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let old = app
        .get(&format!("{base}/memory/2026-11-26.md?version=3"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(old.bytes().await.unwrap().as_ref(), note.as_slice());
    let versions: Value = app
        .get(&format!("{base}/versions"), &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let numbers: Vec<u64> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![4, 3, 2, 1]);
    let res = app
        .request(
            Method::POST,
            &format!("{base}/versions/3/restore"),
            &acme.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 5);
    let back = app
        .get(&format!("{base}/memory/2026-11-26.md"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.bytes().await.unwrap().as_ref(), note.as_slice());
}

#[tokio::test]
async fn hostile_paths_and_oversized_files_are_refused() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let agent = create_agent(&app, &acme, json!({"name": "a", "model": "fast"})).await;
    let base = format!("/v1/agents/{}/memory", agent["id"].as_str().unwrap());
    for path in [
        "..%2F..%2Fetc%2Fpasswd",
        "a/%2E%2E%2Fb",
        "a%2F%2E%2E%2F%2E%2E%2Fb",
        "a//b",
        "versions",
        "x%00y",
    ] {
        let res = put(&app, &acme.key, &format!("{base}/{path}"), b"x".to_vec()).await;
        let status = res.status().as_u16();
        assert!(
            status == 422 || status == 404 || status == 405,
            "{path}: {status}"
        );
    }
    let res = put(
        &app,
        &acme.key,
        &format!("{base}/huge.bin"),
        vec![0u8; 64 * 1024 * 1024 + 1],
    )
    .await;
    assert_problem(res, 413, "payload_too_large").await;
    let listing: Value = app
        .get(&base, &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listing["version"].is_null(),
        "nothing was committed: {listing}"
    );
}

#[tokio::test]
async fn concurrent_writes_of_small_files_both_land() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let agent = create_agent(&app, &acme, json!({"name": "a", "model": "fast"})).await;
    let base = format!("/v1/agents/{}/memory", agent["id"].as_str().unwrap());
    let paths: Vec<String> = (0..8).map(|i| format!("{base}/notes/{i}.md")).collect();
    let writes = paths
        .iter()
        .enumerate()
        .map(|(i, path)| put(&app, &acme.key, path, format!("note {i}").into_bytes()));
    for res in futures_util::future::join_all(writes).await {
        assert_eq!(res.status(), 200);
    }
    let listing: Value = app
        .get(&base, &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["files"].as_array().unwrap().len(), 8, "{listing}");
}

#[tokio::test]
async fn agents_are_validated_changed_and_deleted_with_their_memory() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    for (body, field) in [
        (json!({"name": "", "model": "fast"}), "name"),
        (json!({"name": "a", "model": "has space"}), "model"),
        (
            json!({"name": "a", "model": "fast", "image": "UPPER/Case"}),
            "image",
        ),
        (
            json!({"name": "a", "model": "fast", "egress_allow": ["http://evil/"]}),
            "egress_allow",
        ),
        (
            json!({"name": "a", "model": "fast", "instructions": "x".repeat(40_000)}),
            "instructions",
        ),
    ] {
        let res = app
            .request(Method::POST, "/v1/agents", &acme.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field);
    }
    let agent = create_agent(
        &app,
        &acme,
        json!({"name": "a", "model": "fast", "instructions": "hi"}),
    )
    .await;
    let id = agent["id"].as_str().unwrap();
    let res = app
        .request(Method::PATCH, &format!("/v1/agents/{id}"), &acme.key)
        .json(&json!({"model": "smart"}))
        .send()
        .await
        .unwrap();
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["model"], "smart");
    assert_eq!(changed["name"], "a");
    let list: Value = app
        .get("/v1/agents", &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (_, member) = app.create_key(&acme.key, json!({"name": "m"})).await;
    let res = app
        .request(
            Method::DELETE,
            &format!("/v1/agents/{id}"),
            member["key"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    let res = app
        .request(Method::DELETE, &format!("/v1/agents/{id}"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .get(&format!("/v1/agents/{id}/memory"), &acme.key)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let audit = app.audit(&acme.key, "?action=agent.delete").await;
    assert_eq!(audit[0]["target"], id);
}

#[tokio::test]
async fn deleting_a_tenant_shreds_its_key_then_removes_its_memory_and_rows() {
    use carapace_api::audit::Actor;
    use carapace_api::master_key::MasterKey;
    use carapace_api::memory::MemoryStore;
    use sea_orm::ConnectionTrait;

    let app = spawn_app().await;
    let doomed = app.create_tenant("Doomed").await;
    let survivor = app.create_tenant("Survivor").await;
    for tenant in [&doomed, &survivor] {
        let agent = create_agent(
            &app,
            tenant,
            json!({"name": "a", "model": "fast", "instructions": "persona"}),
        )
        .await;
        let path = format!(
            "/v1/agents/{}/memory/big.bin",
            agent["id"].as_str().unwrap()
        );
        assert_eq!(
            put(&app, &tenant.key, &path, vec![7u8; 100_000])
                .await
                .status(),
            200
        );
    }
    let objects_dir = app.data_dir.join("objects");
    let before = walk(&objects_dir);

    let store = carapace_api::storage::open(&format!("file://{}", objects_dir.display())).unwrap();
    let master_key = MasterKey::load(&app.data_dir.join("master.key")).unwrap();
    let tenant = carapace_api::ids::TenantId::parse(&doomed.id).unwrap();
    let report = carapace_api::bootstrap::delete_tenant(
        &app.db,
        &MemoryStore::new(store),
        &master_key,
        &tenant,
        &Actor::cli(),
    )
    .await
    .unwrap();
    assert!(report.data_key_destroyed);
    assert_eq!(report.agents, 1);
    assert_eq!(
        report.objects, 3,
        "a manifest for each of two versions and one chunk"
    );
    assert_eq!(walk(&objects_dir), before - 3);

    let backend = app.db.get_database_backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    for (table, column) in [
        ("tenants", "id"),
        ("tenant_keys", "tenant_id"),
        ("api_keys", "tenant_id"),
        ("agents", "tenant_id"),
        ("memberships", "tenant_id"),
    ] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = {placeholder}");
        let row = app
            .db
            .query_one(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                [doomed.id.clone().into()],
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0, "{table}");
    }
    // Its keys stop working once the verification cache (at most 1 s) ends.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.get("/v1/tenant", &doomed.key)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The other tenant is untouched.
    let agents: Value = app
        .get("/v1/agents", &survivor.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = agents["data"][0]["id"].as_str().unwrap();
    let back = app
        .get(&format!("/v1/agents/{id}/memory/big.bin"), &survivor.key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.bytes().await.unwrap().len(), 100_000);
    // The deleted tenant's audit trail remains, ending with its deletion.
    let sql =
        format!("SELECT action FROM audit_events WHERE tenant_id = {placeholder} ORDER BY id DESC");
    let last = app
        .db
        .query_one(sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [doomed.id.clone().into()],
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last.try_get::<String>("", "action").unwrap(),
        "tenant.delete"
    );
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_bucket_rolled_back_to_an_older_version_is_detected() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let agent = create_agent(&app, &acme, json!({"name": "a", "model": "fast"})).await;
    let base = format!("/v1/agents/{}/memory", agent["id"].as_str().unwrap());
    for i in 0..3 {
        let res = put(
            &app,
            &acme.key,
            &format!("{base}/notes.md"),
            format!("v{i}").into_bytes(),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    // Someone with access to the bucket deletes the newest manifest.
    let newest = find_files(&app.data_dir.join("objects"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("m")))
        .max()
        .unwrap();
    assert!(newest.ends_with("00000000000000000003"), "{newest:?}");
    std::fs::remove_file(&newest).unwrap();

    for path in [base.clone(), format!("{base}/notes.md")] {
        let res = app.get(&path, &acme.key).send().await.unwrap();
        assert_problem(res, 500, "integrity_failure").await;
    }
    let res = put(&app, &acme.key, &format!("{base}/other.md"), b"x".to_vec()).await;
    assert_problem(res, 500, "integrity_failure").await;
}

fn find_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(find_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_large_file_write_that_loses_a_race_gets_a_conflict() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let agent = create_agent(&app, &acme, json!({"name": "a", "model": "fast"})).await;
    let base = format!("/v1/agents/{}/memory", agent["id"].as_str().unwrap());
    // Two large (chunked) writes started on the same version: one wins;
    // the other cannot be moved onto the new version and says so.
    let big = vec![1u8; 2 * 1024 * 1024];
    let (path_a, path_b) = (format!("{base}/a.bin"), format!("{base}/b.bin"));
    let (a, b) = futures_util::join!(
        put(&app, &acme.key, &path_a, big.clone()),
        put(&app, &acme.key, &path_b, big.clone()),
    );
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert!(statuses.contains(&200), "{statuses:?}");
    if statuses.contains(&409) {
        let loser = if a.status() == 409 { a } else { b };
        assert_problem(loser, 409, "conflict").await;
    } else {
        // The two requests did not overlap: both committed in turn.
        assert_eq!(statuses, [200, 200]);
    }
}
