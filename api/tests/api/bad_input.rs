//! Hostile and careless input: every bad request gets the right status and
//! a problem document, never a panic or a stack trace.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let huge = json!({"name": "x".repeat(100_000)});
    let res = app
        .request(Method::POST, "/v1/api-keys", &acme.key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "payload_too_large").await;

    // The same without a Content-Length (chunked), so the limit is enforced
    // while reading rather than from the header.
    let response = raw_chunked_post(&app.address, "/v1/api-keys", &acme.key, 100_000).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

/// Sends a chunked JSON body of about `size` bytes over a raw connection and
/// returns the raw response.
async fn raw_chunked_post(address: &str, path: &str, key: &str, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut body = b"{\"name\": \"".to_vec();
    body.extend(std::iter::repeat_n(b'y', size));
    body.extend(b"\"}");
    for chunk in body.chunks(8192) {
        let frame = format!("{:x}\r\n", chunk.len());
        // The server may answer and close before reading everything.
        if stream.write_all(frame.as_bytes()).await.is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn malformed_json_is_answered_400_with_where_it_failed() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let res = app
        .request(Method::POST, "/v1/api-keys", &acme.key)
        .header("content-type", "application/json")
        .body("{\n  \"name\": \"ci\",\n  oops\n}")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 400, "malformed_json").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("line 3"), "{detail}");
    assert!(detail.contains("column"), "{detail}");
}

#[tokio::test]
async fn the_wrong_content_type_is_answered_415() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = app
            .request(Method::POST, "/v1/api-keys", &acme.key)
            .body(r#"{"name": "ci"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        assert_problem(req.send().await.unwrap(), 415, "unsupported_media_type").await;
    }
}

#[tokio::test]
async fn unknown_missing_or_mistyped_fields_are_answered_422() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let cases = [
        (
            json!({"name": "ci", "admin": true}),
            "unknown field `admin`",
        ),
        (json!({"scopes": ["api"]}), "missing field `name`"),
        (json!({"name": 42}), "invalid type"),
        (
            json!({"name": "ci", "scopes": ["root"]}),
            "unknown variant `root`",
        ),
        (
            json!({"name": "ci", "role": "superuser"}),
            "unknown variant `superuser`",
        ),
        (
            json!({"name": "ci", "expires_at": "tomorrow"}),
            "expires_at",
        ),
    ];
    for (body, expected) in cases {
        let res = app
            .request(Method::POST, "/v1/api-keys", &acme.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(res, 422, "unexpected_json").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(expected) || expected == "expires_at",
            "{body}: {detail}"
        );
    }
}

#[tokio::test]
async fn semantically_invalid_fields_name_the_field() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let cases = [
        (json!({"name": "   "}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "a\u{1b}[31mred"}), "name"),
        (json!({"name": "ci", "scopes": []}), "scopes"),
        (
            json!({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ];
    for (body, field) in cases {
        let res = app
            .request(Method::POST, "/v1/api-keys", &acme.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(res, 422, "invalid_field").await;
        assert_eq!(problem["field"], field, "{body}");
    }
}

#[tokio::test]
async fn unknown_paths_methods_ids_and_queries_get_problems() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let res = app.get("/v1/nothing-here", &acme.key).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = app
        .request(Method::PUT, "/v1/tenant", &acme.key)
        .send()
        .await
        .unwrap();
    assert_problem(res, 405, "method_not_allowed").await;
    for id in [
        "nonsense",
        "key_..%2F..%2Fetc",
        "tnt_00000000000000000000000000000000",
    ] {
        let res = app
            .request(Method::DELETE, &format!("/v1/api-keys/{id}"), &acme.key)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "not_found").await;
    }
    for query in [
        "?limit=abc",
        "?limit=0",
        "?limit=5000",
        "?outcome=maybe",
        "?since=yesterday",
        "?colour=red",
    ] {
        let res = app
            .get(&format!("/v1/audit{query}"), &acme.key)
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_query").await;
    }
}

#[tokio::test]
async fn errors_never_echo_a_presented_secret() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let forged = format!("cpk_{}", "Z".repeat(43));
    let res = app.get("/v1/tenant", &forged).send().await.unwrap();
    let body = res.text().await.unwrap();
    assert!(!body.contains(&forged));
    let res = app
        .request(Method::POST, "/v1/api-keys", &acme.key)
        .json(&json!({"name": acme.key.clone(), "bogus": acme.key.clone()}))
        .send()
        .await
        .unwrap();
    let body = res.text().await.unwrap();
    assert!(!body.contains(&acme.key), "{body}");
}
