//! Health, readiness, metrics, the OpenAPI document, the reference page and
//! request ids.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_eq!(body["object_store"], "ok");
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.db.clone().close().await.unwrap();
    let res = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], "unavailable");
    assert_eq!(body["object_store"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    for _ in 0..3 {
        app.get("/v1/tenant", &acme.key).send().await.unwrap();
    }
    app.get("/v1/tenant", "bogus").send().await.unwrap();
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"carapace_http_requests_total{method="GET",route="/v1/tenant",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"carapace_http_requests_total{method="GET",route="/v1/tenant",status="401"} 1"#
    ));
    assert!(text.contains("carapace_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn made_up_methods_share_one_metrics_label() {
    let app = spawn_app().await;
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        app.client
            .request(method, format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
    }
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("MADEUP"), "{text}");
    assert!(text.contains(r#"method="OTHER""#));
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let app = spawn_app_with_metrics_token().await;
    let url = format!("{}/metrics", app.address);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    let res = app
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn spawn_app_with_metrics_token() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|s| s.metrics_token = Some("scrape-me".into())).await
}

#[tokio::test]
async fn the_openapi_document_describes_every_v1_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/v1/tenant", "get"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys/{id}", "delete"),
        ("/v1/audit", "get"),
        ("/v1/usage", "get"),
        ("/gateway/v1/chat/completions", "post"),
        ("/gateway/v1/messages", "post"),
        ("/gateway/v1/models", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn the_reference_page_is_served_self_contained() {
    let app = spawn_app().await;
    for (path, content_type) in [
        ("/docs", "text/html"),
        ("/docs/reference.js", "text/javascript"),
        ("/docs/reference.css", "text/css"),
    ] {
        let res = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let headers = res.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads outside assets"
        );
    }
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_when_not() {
    let app = spawn_app().await;
    let url = format!("{}/healthz", app.address);
    let res = app
        .client
        .get(&url)
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc.123");
    for hostile in ["a b", "x".repeat(65).as_str(), "<script>", ""] {
        let res = app
            .client
            .get(&url)
            .header("x-request-id", hostile)
            .send()
            .await
            .unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, hostile);
        assert_eq!(id.len(), 32);
    }
    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"].to_str().unwrap().len(), 32);
}
