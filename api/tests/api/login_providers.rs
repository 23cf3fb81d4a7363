//! Login with several identity providers at once (two real
//! `oidc-provider` processes): a page chooses, one person logs in with
//! either, a code from one provider is refused on a login started at the
//! other; behind https the cookies carry `__Host-` names and planted
//! plain-named ones open nothing.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with};
use crate::login::{Browser, Oidc, api, api_json, free_port, log_in, tenant_owned_by};

/// A server offering two providers: `default` (the flags) and `second`
/// (as from the settings file's `[[oidc_providers]]`).
async fn app_with_two_providers() -> (TestApp, Oidc, Oidc) {
    app_with_providers(true).await
}

/// As `app_with_two_providers`, the second linking existing people by
/// address or not.
async fn app_with_providers(second_links_existing: bool) -> (TestApp, Oidc, Oidc) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let first = Oidc::start(&format!("{public}/auth/callback")).await;
    let second = Oidc::start(&format!("{public}/auth/callback")).await;
    let (one, two) = (first.issuer.clone(), second.issuer.clone());
    let app = spawn_app_with(|s| {
        s.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        s.oidc_issuer = Some(one);
        s.oidc_client_id = Some("carapace".into());
        s.oidc_client_secret = Some("carapace-test-secret".into());
        s.oidc_providers = Some(vec![carapace_api::login::ProviderArgs {
            name: "second".into(),
            label: Some("Second <IdP>".into()),
            issuer: two,
            client_id: "carapace".into(),
            client_secret: "carapace-test-secret".into(),
            groups_claim: None,
            link_existing: Some(second_links_existing),
        }]);
        s.public_url = Some(public);
    })
    .await;
    (app, first, second)
}

/// Logs `login` in at `provider` with `browser`; the final page's URL,
/// status and text.
async fn log_in_with(
    app: &TestApp,
    browser: &mut Browser,
    provider: &str,
    login: &str,
) -> (String, StatusCode, String) {
    browser
        .follow(
            format!("{}/auth/login?provider={provider}", app.address),
            login,
        )
        .await
}

/// The callback URL a login at `provider` comes back to, not visited.
async fn code_from(app: &TestApp, browser: &mut Browser, provider: &str, login: &str) -> String {
    let callback = format!("{}/auth/callback", app.address);
    let (url, status, _) = browser
        .follow_until(
            format!("{}/auth/login?provider={provider}", app.address),
            login,
            Some(&callback),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{url}");
    url
}

fn query(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn several_providers_are_offered_and_one_person_logs_in_with_either() {
    let (app, _first, _second) = app_with_two_providers().await;
    let client = Browser::new().client;
    // No provider named: a page offering both (the label escaped).
    let res = client
        .get(format!("{}/auth/login", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("/auth/login?provider=default"), "{page}");
    assert!(page.contains("/auth/login?provider=second"), "{page}");
    assert!(page.contains("Log in with Second &lt;IdP&gt;"), "{page}");
    let res = client
        .get(format!("{}/auth/login?provider=nope", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Unknown identity provider")
    );
    // Ann signs up through the second provider...
    let mut at_second = Browser::new();
    let (_, status, page) = log_in_with(&app, &mut at_second, "second", "ann@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut at_second, "/v1/tenant").await;
    // ...and, with the same verified address, lands in the same tenant
    // through the first.
    let mut at_first = Browser::new();
    let (_, status, page) = log_in_with(&app, &mut at_first, "default", "ann@example.com").await;
    assert_eq!(status, 200, "{page}");
    let again: Value = api_json(&app, &mut at_first, "/v1/tenant").await;
    assert_eq!(again["id"], tenant["id"]);
    // Each session says which provider it came through.
    let sessions: Value = api_json(&app, &mut at_first, "/v1/sessions").await;
    let mut providers: Vec<&str> = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["provider"].as_str().unwrap())
        .collect();
    providers.sort_unstable();
    assert_eq!(providers, ["default", "second"], "{sessions}");
    // One person: both accounts are linked to her.
    let members: Value = api_json(&app, &mut at_first, "/v1/members").await;
    assert_eq!(members["data"].as_array().unwrap().len(), 1, "{members}");
}

#[tokio::test]
async fn a_code_from_one_provider_is_refused_on_a_login_started_at_another() {
    let (app, _first, second) = app_with_two_providers().await;
    let mut browser = Browser::new();
    // A code issued by the second provider...
    let from_second = code_from(&app, &mut browser, "second", "bob@example.com").await;
    let code = query(&from_second, "code").unwrap();
    // ...slipped into a login this browser started at the first, saying
    // who issued it: refused before the code goes anywhere.
    let to_first = code_from(&app, &mut browser, "default", "bob@example.com").await;
    let state = query(&to_first, "state").unwrap();
    let mut forged = reqwest::Url::parse(&format!("{}/auth/callback", app.address)).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state)
        .append_pair("iss", &second.issuer);
    let res = browser.send(Method::GET, forged.as_str(), None, &[]).await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("another identity provider"), "{page}");
    // Without the `iss` that gives it away: the first provider is asked
    // to redeem it, and refuses.
    let to_first = code_from(&app, &mut browser, "default", "bob@example.com").await;
    let state = query(&to_first, "state").unwrap();
    let mut forged = reqwest::Url::parse(&format!("{}/auth/callback", app.address)).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    let res = browser.send(Method::GET, forged.as_str(), None, &[]).await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("code was refused"), "{page}");
    assert!(browser.cookie(&app.address, "carapace_session").is_none());
    // The honest way still works: the second provider's code at the
    // second provider's login.
    let from_second = code_from(&app, &mut browser, "second", "bob@example.com").await;
    let (_, status, page) = browser.follow(from_second, "bob@example.com").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Signed in as bob@example.com"), "{page}");
}

#[tokio::test]
async fn behind_https_the_cookies_carry_host_prefixes_and_plain_names_are_ignored() {
    let port = free_port();
    let oidc = Oidc::start(&format!("https://127.0.0.1:{port}/auth/callback")).await;
    let issuer = oidc.issuer.clone();
    let app = spawn_app_with(|s| {
        s.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        s.oidc_issuer = Some(issuer);
        s.oidc_client_id = Some("carapace".into());
        s.oidc_client_secret = Some("carapace-test-secret".into());
        s.public_url = Some(format!("https://127.0.0.1:{port}"));
    })
    .await;
    // The login's binding: `__Host-`, Secure, HttpOnly, path `/`, no
    // domain.
    let res = Browser::new()
        .client
        .get(format!("{}/auth/login", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert_host_cookie(&set, "__Host-carapace_login", true);
    // A whole login (the provider sends the browser to the https URL;
    // this test's server speaks http on the same port): the session and
    // CSRF cookies are `__Host-` too.
    let mut browser = Browser::new();
    let callback = format!("https://127.0.0.1:{port}/auth/callback");
    let (url, _, _) = browser
        .follow_until(
            format!("{}/auth/login", app.address),
            "zoe@example.com",
            Some(&callback),
        )
        .await;
    let res = browser
        .send(
            Method::GET,
            &url.replacen("https://", "http://", 1),
            None,
            &[],
        )
        .await;
    assert_eq!(res.status(), 303);
    let sets: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let find = |name: &str| {
        sets.iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}: {sets:?}"))
            .clone()
    };
    assert_host_cookie(
        &find("__Host-carapace_session"),
        "__Host-carapace_session",
        true,
    );
    assert_host_cookie(&find("__Host-carapace_csrf"), "__Host-carapace_csrf", false);
    // A session (made as a login makes one) opens the API only under its
    // `__Host-` name; the same token under the plain name, as a
    // neighbouring site or a plain-http page could plant it, opens nothing.
    let (created, _) = tenant_owned_by(&app, "cy@example.com").await;
    let token = "cps_https-session-token-for-the-test";
    let signed_in = carapace_api::db::sessions::SignedIn {
        user: created.owner_id.clone(),
        tenant: created.tenant.id.clone(),
        role: carapace_api::access::Role::Owner,
        signed_up: false,
    };
    carapace_api::db::sessions::create_session(
        &app.db,
        carapace_api::db::sessions::NewSession {
            token_hash: &carapace_api::auth::session_token_hash(token),
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
    let with_cookie = |method: Method, path: &str, cookie: String| {
        Browser::new()
            .client
            .request(method, format!("{}{path}", app.address))
            .header("cookie", cookie)
    };
    let res = with_cookie(
        Method::GET,
        "/v1/tenant",
        format!("carapace_session={token}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 401);
    let res = with_cookie(
        Method::GET,
        "/v1/tenant",
        format!("__Host-carapace_session={token}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    // CSRF: the token must come from the `__Host-` cookie too.
    let csrf = "a-csrf-token-of-enough-length";
    let invite = serde_json::json!({"email": "dee@example.com"});
    let res = with_cookie(
        Method::POST,
        "/v1/invitations",
        format!("__Host-carapace_session={token}; carapace_csrf={csrf}"),
    )
    .header("x-csrf-token", csrf)
    .json(&invite)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let res = with_cookie(
        Method::POST,
        "/v1/invitations",
        format!("__Host-carapace_session={token}; __Host-carapace_csrf={csrf}"),
    )
    .header("x-csrf-token", csrf)
    .json(&invite)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    drop(oidc);
}

#[tokio::test]
async fn a_login_its_tenants_policy_refuses_writes_nothing() {
    let (app, _oidc) = crate::login::app_with_login(|s| {
        s.signup = Some(carapace_api::login::SignupMode::Closed);
    })
    .await;
    let (_, key) = tenant_owned_by(&app, "eng-boss@example.com").await;
    let key = key.reveal().to_owned();
    let res = app
        .request(Method::PUT, "/v1/access-policy", &key)
        .json(&serde_json::json!({"required_groups": ["eng"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .post(
            "/v1/invitations",
            &key,
            &serde_json::json!({"email": "sal@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // Sal (in `sales`, not `eng`) is refused, and the refusal left no
    // trace but its audit record: the invitation is still pending, no
    // person or linked account was made.
    let (_, status, page) = log_in_at(&app, "sal@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("groups eng"), "{page}");
    let pending: Value = app.get_json("/v1/invitations", &key).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1, "{pending}");
    for (table, column) in [("users", "email"), ("tenants", "name")] {
        assert_eq!(
            count(&app, table, column, "sal@example.com").await,
            0,
            "{table}"
        );
    }
    assert_eq!(count_all(&app, "identities").await, 0);
    // The tenant that only invited Sal learns the invitation was refused,
    // not where Sal was.
    let audit = app.audit(&key, "?action=login&outcome=denied").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        audit[0]["principal"].as_str().unwrap(),
        "invitee:sal@example.com"
    );
    assert!(audit[0]["client_ip"].is_null(), "{audit:?}");
    // Another tenant invites Sal too and admits the login: Sal joins it,
    // and the first tenant's invitation stays pending.
    let other = app.create_tenant("Beta").await;
    let res = app
        .post(
            "/v1/invitations",
            &other.key,
            &serde_json::json!({"email": "sal@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let mut sal = Browser::new();
    let (_, status, page) = log_in(&app, &mut sal, "sal@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut sal, "/v1/tenant").await;
    assert_eq!(tenant["name"], "Beta");
    let pending: Value = app.get_json("/v1/invitations", &key).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1, "{pending}");
    // The tenant lifts the requirement: the same invitation lets Sal in.
    let res = app
        .request(Method::PUT, "/v1/access-policy", &key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, status, page) = log_in(&app, &mut sal, "sal@example.com").await;
    assert_eq!(status, 200, "{page}");
    let members: Value = app.get_json("/v1/members", &key).await;
    let sal_there = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "sal@example.com")
        .unwrap_or_else(|| panic!("{members}"));
    assert_eq!(sal_there["role"], "admin");
}

/// `set` sets `name` as browsers accept a `__Host-` cookie: `Secure`,
/// path `/`, no domain (and `HttpOnly` if `http_only`).
fn assert_host_cookie(set: &str, name: &str, http_only: bool) {
    assert!(set.starts_with(&format!("{name}=")), "{set}");
    let attributes: Vec<String> = set
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attributes.iter().any(|a| a == "secure"), "{set}");
    assert!(attributes.iter().any(|a| a == "path=/"), "{set}");
    assert!(!attributes.iter().any(|a| a.starts_with("domain")), "{set}");
    assert_eq!(
        attributes.iter().any(|a| a == "httponly"),
        http_only,
        "{set}"
    );
}

async fn log_in_at(app: &TestApp, login: &str) -> (String, StatusCode, String) {
    log_in(app, &mut Browser::new(), login).await
}

async fn count_all(app: &TestApp, table: &str) -> i64 {
    scalar(app, &format!("SELECT COUNT(*) AS n FROM {table}")).await
}

async fn count(app: &TestApp, table: &str, column: &str, value: &str) -> i64 {
    scalar(
        app,
        &format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = '{value}'"),
    )
    .await
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    app.db
        .query_one(sea_orm::Statement::from_string(backend, sql.to_owned()))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap()
}

#[tokio::test]
async fn a_tenant_can_keep_to_some_providers_at_login_and_on_every_request() {
    let (app, _first, _second) = app_with_two_providers().await;
    let mut via_second = Browser::new();
    let (_, status, page) = log_in_with(&app, &mut via_second, "second", "uma@example.com").await;
    assert_eq!(status, 200, "{page}");
    let url = format!("{}/v1/access-policy", app.address);
    // A name the server does not offer is refused: it would lock
    // everyone out.
    let res = via_second
        .change(
            Method::PUT,
            &url,
            Some(serde_json::json!({"allowed_providers": ["okta"]})),
        )
        .await;
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("okta"),
        "{problem}"
    );
    let res = via_second
        .change(
            Method::PUT,
            &url,
            Some(serde_json::json!({"allowed_providers": ["second"]})),
        )
        .await;
    assert_eq!(res.status(), 200);
    // The other provider's login is refused, with the reason.
    let (_, status, page) =
        log_in_with(&app, &mut Browser::new(), "default", "uma@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("identity provider default"), "{page}");
    // Switched to the other provider only: her live session's next
    // request is refused.
    let res = via_second
        .change(
            Method::PUT,
            &url,
            Some(serde_json::json!({"allowed_providers": ["default"]})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = api(&app, &mut via_second, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 403);
    let (_, status, page) =
        log_in_with(&app, &mut Browser::new(), "default", "uma@example.com").await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test]
async fn a_provider_that_may_not_link_existing_people_cannot_take_one_over_by_address() {
    let (app, _first, _second) = app_with_providers(false).await;
    // Ann logs in with the first provider...
    let (_, status, page) =
        log_in_with(&app, &mut Browser::new(), "default", "ann@example.com").await;
    assert_eq!(status, 200, "{page}");
    // ...and an account at the second with her address is not her.
    let (_, status, page) =
        log_in_with(&app, &mut Browser::new(), "second", "ann@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("another account"), "{page}");
    // Someone new at the second provider signs up as usual.
    let (_, status, page) =
        log_in_with(&app, &mut Browser::new(), "second", "bea@example.com").await;
    assert_eq!(status, 200, "{page}");
}
