//! Browser login against a real OpenID Connect provider (npm's
//! `oidc-provider`, started per test by `infra/oidc-provider.mjs`): sign-up
//! creates a tenant, a second login lands in it, the session cookie opens
//! the API (with CSRF on changes), sessions end on logout, revocation and
//! membership removal; replayed states, foreign browsers and unverified
//! addresses are refused and audited.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with};

/// A provider process for one test.
pub(crate) struct Oidc {
    child: Child,
    pub(crate) issuer: String,
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Oidc {
    pub(crate) async fn start(redirect: &str) -> Oidc {
        let modules = std::env::var("CARAPACE_TEST_OIDC_MODULES").expect(
            "CARAPACE_TEST_OIDC_MODULES is not set: run the tests with infra/test (it installs oidc-provider)",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/oidc-provider.mjs");
        let port = free_port();
        let child = Command::new("node")
            .args([script, &modules, &port.to_string(), redirect])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        // Owned at once: dropping it (a panic below included) kills and
        // reaps the process.
        let oidc = Oidc {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if reqwest::get(format!("{}/.well-known/openid-configuration", oidc.issuer))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return oidc;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("oidc-provider did not start");
    }
}

/// A server with login on, and its provider.
pub(crate) async fn app_with_login(
    adjust: impl FnOnce(&mut carapace_api::config::SettingsArgs),
) -> (TestApp, Oidc) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let oidc = Oidc::start(&format!("{public}/auth/callback")).await;
    let issuer = oidc.issuer.clone();
    let app = spawn_app_with(|s| {
        s.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        s.oidc_issuer = Some(issuer);
        s.oidc_client_id = Some("carapace".into());
        s.oidc_client_secret = Some("carapace-test-secret".into());
        s.public_url = Some(public);
        adjust(s);
    })
    .await;
    (app, oidc)
}

/// A browser: no automatic redirects, its own cookies per host and port.
pub(crate) struct Browser {
    pub(crate) client: reqwest::Client,
    cookies: BTreeMap<(String, String), String>,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn origin(url: &str) -> String {
        let url = reqwest::Url::parse(url).unwrap();
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    pub(crate) fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookies
            .get(&(Self::origin(url), name.to_owned()))
            .cloned()
    }

    fn remember(&mut self, url: &str, res: &reqwest::Response) {
        let origin = Self::origin(url);
        for value in res.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap();
            let (name, val) = pair.split_once('=').unwrap();
            let expired = value.to_ascii_lowercase().contains("max-age=0") || val.is_empty();
            let key = (origin.clone(), name.trim().to_owned());
            if expired {
                self.cookies.remove(&key);
            } else {
                self.cookies.insert(key, val.trim().to_owned());
            }
        }
    }

    pub(crate) fn cookie_header(&self, url: &str) -> String {
        let origin = Self::origin(url);
        self.cookies
            .iter()
            .filter(|((o, _), _)| *o == origin)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A JSON request as the page's script would send it: the cookies,
    /// and the CSRF cookie repeated in its header.
    pub(crate) async fn change(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, url)
            .header("cookie", self.cookie_header(url))
            .header(
                "x-csrf-token",
                self.cookie(url, "carapace_csrf").unwrap_or_default(),
            );
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        url: &str,
        form: Option<Vec<(&str, String)>>,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, url)
            .header("cookie", self.cookie_header(url));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(form) = form {
            req = req.form(&form);
        }
        let res = req.send().await.unwrap();
        self.remember(url, &res);
        res
    }

    /// Follows redirects and the provider's login and consent forms (as
    /// `login`) from `url` to the first answer that is neither; that
    /// answer's URL and response.
    pub(crate) async fn follow(
        &mut self,
        url: String,
        login: &str,
    ) -> (String, StatusCode, String) {
        self.follow_until(url, login, None).await
    }

    /// As `follow`, but stops short of a URL starting with `stop`: that
    /// URL, unvisited, with status 303 and no body.
    pub(crate) async fn follow_until(
        &mut self,
        mut url: String,
        login: &str,
        stop: Option<&str>,
    ) -> (String, StatusCode, String) {
        for _ in 0..20 {
            if stop.is_some_and(|stop| url.starts_with(stop)) {
                return (url, StatusCode::SEE_OTHER, String::new());
            }
            let res = self.send(Method::GET, &url, None, &[]).await;
            if res.status().is_redirection() {
                let next = res.headers()["location"].to_str().unwrap().to_owned();
                url = reqwest::Url::parse(&url)
                    .unwrap()
                    .join(&next)
                    .unwrap()
                    .to_string();
                continue;
            }
            let here = url.clone();
            let status = res.status();
            let body = res.text().await.unwrap();
            let provider_form = body.contains("name=\"prompt\"");
            let Some(action) = attribute(&body, "action=\"").filter(|_| provider_form) else {
                return (here, status, body);
            };
            let prompt = attribute(&body, "name=\"prompt\" value=\"").unwrap_or_default();
            let mut form = vec![("prompt", prompt.clone())];
            if prompt == "login" {
                form.push(("login", login.to_owned()));
                form.push(("password", "any".to_owned()));
            }
            let target = reqwest::Url::parse(&here)
                .unwrap()
                .join(&action)
                .unwrap()
                .to_string();
            let res = self.send(Method::POST, &target, Some(form), &[]).await;
            assert!(
                res.status().is_redirection(),
                "form post answered {}",
                res.status()
            );
            let next = res.headers()["location"].to_str().unwrap().to_owned();
            url = reqwest::Url::parse(&target)
                .unwrap()
                .join(&next)
                .unwrap()
                .to_string();
        }
        panic!("too many redirects");
    }
}

/// A tenant "Acme" made the way `carapace tenant create` does, owned by
/// `email`: what it returns, and the owner's key.
pub(crate) async fn tenant_owned_by(
    app: &TestApp,
    email: &str,
) -> (
    carapace_api::db::TenantWithOwner,
    carapace_api::auth::api_key::ApiKeySecret,
) {
    carapace_api::bootstrap::create_tenant(
        &app.db,
        "Acme",
        email,
        &carapace_api::audit::Actor::cli(),
    )
    .await
    .unwrap()
}

pub(crate) async fn execute(app: &TestApp, sql: &str) {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    app.db
        .execute(sea_orm::Statement::from_string(backend, sql.to_owned()))
        .await
        .unwrap();
}

/// The tenant's audit records as (action, outcome).
async fn audit_rows(app: &TestApp, tenant: &str) -> Vec<(String, String)> {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    let rows = app
        .db
        .query_all(sea_orm::Statement::from_string(
            backend,
            format!("SELECT action, outcome FROM audit_events WHERE tenant_id = '{tenant}'"),
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get::<String>("", "action").unwrap(),
                r.try_get::<String>("", "outcome").unwrap(),
            )
        })
        .collect()
}

fn attribute(html: &str, start: &str) -> Option<String> {
    let from = html.find(start)? + start.len();
    let len = html[from..].find('"')?;
    Some(html[from..from + len].replace("&amp;", "&"))
}

/// `GET path` through `browser`'s session: its JSON.
pub(crate) async fn api_json(app: &TestApp, browser: &mut Browser, path: &str) -> Value {
    api(app, browser, Method::GET, path, false)
        .await
        .json()
        .await
        .unwrap()
}

/// The sign-up page's text.
async fn signup_page(app: &TestApp) -> String {
    let res = reqwest::get(format!("{}/auth/signup", app.address))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// Logs `login` in with `browser`; the final page's URL, status and text.
pub(crate) async fn log_in(
    app: &TestApp,
    browser: &mut Browser,
    login: &str,
) -> (String, StatusCode, String) {
    browser
        .follow(format!("{}/auth/login", app.address), login)
        .await
}

pub(crate) async fn api(
    app: &TestApp,
    browser: &mut Browser,
    method: Method,
    path: &str,
    csrf: bool,
) -> reqwest::Response {
    let url = format!("{}{path}", app.address);
    let headers: Vec<(&str, String)> = match (csrf, browser.cookie(&url, "carapace_csrf")) {
        (true, Some(token)) => vec![("x-csrf-token", token)],
        _ => vec![],
    };
    browser.send(method, &url, None, &headers).await
}

#[tokio::test]
async fn a_first_login_signs_up_and_the_session_opens_the_api() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let mut browser = Browser::new();
    let (url, status, page) = log_in(&app, &mut browser, "alice@example.com").await;
    assert!(url.ends_with("/auth/session"), "{url}: {page}");
    assert_eq!(status, 200);
    assert!(page.contains("Signed in as alice@example.com"), "{page}");
    // The session cookie is HttpOnly; the API takes it like a key.
    let tenant: Value = api_json(&app, &mut browser, "/v1/tenant").await;
    assert_eq!(tenant["name"], "alice@example.com");
    assert_eq!(tenant["role"], "owner");
    assert_eq!(tenant["principal"]["type"], "session");
    // A change needs the CSRF header (a wrong one will not do); with it,
    // it goes through.
    let url = format!("{}/v1/agents", app.address);
    let token = browser.cookie(&url, "carapace_csrf").unwrap();
    for header in [None, Some("0123456789abcdef0123456789abcdef")] {
        let mut req = browser
            .client
            .post(&url)
            .header("cookie", browser.cookie_header(&url))
            .json(&serde_json::json!({"name": "forged", "model": "m"}));
        if let Some(header) = header {
            req = req.header("x-csrf-token", header);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403);
    }
    let res = browser
        .client
        .post(&url)
        .header("cookie", browser.cookie_header(&url))
        .header("x-csrf-token", token)
        .json(&serde_json::json!({"name": "first", "model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // A second login (another browser) lands in the same tenant.
    let mut other = Browser::new();
    log_in(&app, &mut other, "alice@example.com").await;
    let again: Value = api_json(&app, &mut other, "/v1/tenant").await;
    assert_eq!(again["id"], tenant["id"]);
    let sessions: Value = api_json(&app, &mut other, "/v1/sessions").await;
    let list = sessions["data"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{sessions}");
    // The second browser ends the first one's session.
    let first = list.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = api(
        &app,
        &mut other,
        Method::DELETE,
        &format!("/v1/sessions/{first}"),
        true,
    )
    .await;
    assert_eq!(res.status(), 204);
    let res = api(&app, &mut browser, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 401);
    // Logging out ends the second.
    let url = format!("{}/auth/logout", app.address);
    let token = other.cookie(&url, "carapace_csrf").unwrap();
    let res = other
        .send(Method::POST, &url, Some(vec![("csrf", token)]), &[])
        .await;
    assert_eq!(res.status(), 303);
    let res = api(&app, &mut other, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 401);
    // All of it is in the tenant's audit log.
    let rows = audit_rows(&app, tenant["id"].as_str().unwrap()).await;
    for action in ["tenant.create", "login", "session.revoke", "logout"] {
        assert!(
            rows.iter().any(|(a, o)| a == action && o == "success"),
            "{action}: {rows:?}"
        );
    }
}

#[tokio::test]
async fn replays_foreign_browsers_and_unverified_addresses_are_refused() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let mut browser = Browser::new();
    // Walk to the provider's redirect back to us, without following it.
    let login = format!("{}/auth/login", app.address);
    let res = browser.send(Method::GET, &login, None, &[]).await;
    let mut url = res.headers()["location"].to_str().unwrap().to_owned();
    let callback = loop {
        let res = browser.send(Method::GET, &url, None, &[]).await;
        if res.status().is_redirection() {
            let next = res.headers()["location"].to_str().unwrap().to_owned();
            let next = reqwest::Url::parse(&url)
                .unwrap()
                .join(&next)
                .unwrap()
                .to_string();
            if next.contains("/auth/callback") {
                break next;
            }
            url = next;
            continue;
        }
        let body = res.text().await.unwrap();
        let action = attribute(&body, "action=\"").unwrap();
        let prompt = attribute(&body, "name=\"prompt\" value=\"").unwrap();
        let mut form = vec![("prompt", prompt.clone())];
        if prompt == "login" {
            form.push(("login", "bob@example.com".to_owned()));
            form.push(("password", "x".to_owned()));
        }
        let target = reqwest::Url::parse(&url)
            .unwrap()
            .join(&action)
            .unwrap()
            .to_string();
        let res = browser.send(Method::POST, &target, Some(form), &[]).await;
        let next = res.headers()["location"].to_str().unwrap().to_owned();
        url = reqwest::Url::parse(&target)
            .unwrap()
            .join(&next)
            .unwrap()
            .to_string();
    };
    // Another browser presenting the callback: refused (login CSRF).
    let mut thief = Browser::new();
    let res = thief.send(Method::GET, &callback, None, &[]).await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("another browser"));
    // The state was used up by that attempt: the right browser cannot
    // use it now either (a replay, whoever sends it).
    let res = browser.send(Method::GET, &callback, None, &[]).await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("already used"));

    // A made-up state, a provider error.
    let res = browser
        .send(
            Method::GET,
            &format!("{}/auth/callback?code=x&state=forged", app.address),
            None,
            &[],
        )
        .await;
    assert_eq!(res.status(), 400);
    let res = browser
        .send(
            Method::GET,
            &format!("{}/auth/callback?error=access_denied", app.address),
            None,
            &[],
        )
        .await;
    assert_eq!(res.status(), 400);

    // An address the provider has not verified.
    let mut other = Browser::new();
    let (_, status, page) = log_in(&app, &mut other, "unverified@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("not verified"), "{page}");
    assert!(other.cookie(&app.address, "carapace_session").is_none());
}

#[tokio::test]
async fn with_sign_up_closed_only_members_get_in_and_removal_cuts_a_session_off() {
    let (app, _oidc) = app_with_login(|s| {
        s.signup = Some(carapace_api::login::SignupMode::Closed);
    })
    .await;
    // The sign-up page says how to get in.
    let signup = signup_page(&app).await;
    assert!(signup.contains("Sign-up is closed"), "{signup}");
    assert!(signup.contains("/auth/login?provider=default"), "{signup}");
    // A stranger: refused, with a clear page.
    let mut stranger = Browser::new();
    let (_, status, page) = log_in(&app, &mut stranger, "mallory@example.com").await;
    assert_eq!(status, 403);
    assert!(page.contains("sign-up is closed"), "{page}");
    // The owner of a tenant made by the operator gets in.
    let (created, _key) = tenant_owned_by(&app, "carol@example.com").await;
    let tenant_id = created.tenant.id.to_string();
    let mut carol = Browser::new();
    let (_, status, page) = log_in(&app, &mut carol, "carol@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut carol, "/v1/tenant").await;
    assert_eq!(tenant["id"], tenant_id.as_str());
    // Her membership goes: the very next request is refused.
    execute(
        &app,
        &format!(
            "DELETE FROM memberships WHERE tenant_id = '{tenant_id}' AND user_id = \
             (SELECT id FROM users WHERE email = 'carol@example.com')"
        ),
    )
    .await;
    let res = api(&app, &mut carol, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn an_address_stays_with_the_provider_account_that_first_used_it() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let mut first = Browser::new();
    let (_, status, page) = log_in(&app, &mut first, "one|dan@example.com").await;
    assert_eq!(status, 200, "{page}");
    // Another account at the same provider claiming the same address.
    let mut second = Browser::new();
    let (_, status, page) = log_in(&app, &mut second, "two|dan@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("another account"), "{page}");
    // The first account still gets in, to the same tenant.
    let mut again = Browser::new();
    let (_, status, _) = log_in(&app, &mut again, "one|dan@example.com").await;
    assert_eq!(status, 200);
    let a: Value = api_json(&app, &mut first, "/v1/tenant").await;
    let b: Value = api_json(&app, &mut again, "/v1/tenant").await;
    assert_eq!(a["id"], b["id"]);
    // A session cookie holding an API key is not a session.
    let t = app.create_tenant("Keyed").await;
    let res = reqwest::Client::new()
        .get(format!("{}/v1/tenant", app.address))
        .header("cookie", format!("carapace_session={}", t.key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_access_policy_applies_at_login_and_on_every_request() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let mut alice = Browser::new();
    let (_, status, _) = log_in(&app, &mut alice, "alice@example.com").await;
    assert_eq!(status, 200);
    let put = |browser: &Browser, body: Value| {
        let url = format!("{}/v1/access-policy", app.address);
        browser
            .client
            .put(&url)
            .header("cookie", browser.cookie_header(&url))
            .header(
                "x-csrf-token",
                browser.cookie(&url, "carapace_csrf").unwrap_or_default(),
            )
            .json(&body)
            .send()
    };
    // Invalid policies are refused with the field.
    let res = put(
        &alice,
        serde_json::json!({"allowed_ip_ranges": ["10.0.0.0/33"]}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    // Her own domain only: she goes on.
    let res = put(
        &alice,
        serde_json::json!({"allowed_domains": ["example.com"]}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let res = api(&app, &mut alice, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 200);
    let policy: Value = api_json(&app, &mut alice, "/v1/access-policy").await;
    assert_eq!(
        policy["allowed_domains"],
        serde_json::json!(["example.com"])
    );
    // Another domain only: her very next request is refused, and so is a
    // new login, with the reason, audited.
    let res = put(
        &alice,
        serde_json::json!({"allowed_domains": ["other.org"]}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let res = api(&app, &mut alice, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 403);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("does not allow alice@example.com"),
        "{problem}"
    );
    let mut again = Browser::new();
    let (_, status, page) = log_in(&app, &mut again, "alice@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("access policy"), "{page}");
    assert!(again.cookie(&app.address, "carapace_session").is_none());
}

#[tokio::test]
async fn mfa_and_address_ranges_are_required_when_the_policy_says_so() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let (created, key) = tenant_owned_by(&app, "erin@example.com").await;
    let key = key.reveal().to_owned();
    let set = |body: Value| {
        app.request(Method::PUT, "/v1/access-policy", &key)
            .json(&body)
            .send()
    };
    // A member's key may read the policy, not change it.
    let (status, member) = app
        .create_key(&key, serde_json::json!({"name": "m", "role": "member"}))
        .await;
    assert_eq!(status, 201);
    let member = member["key"].as_str().unwrap().to_owned();
    let res = app
        .request(Method::PUT, "/v1/access-policy", &member)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The provider here reports no second factor: refused.
    assert_eq!(
        set(serde_json::json!({"require_mfa": true}))
            .await
            .unwrap()
            .status(),
        200
    );
    let mut erin = Browser::new();
    let (_, status, page) = log_in(&app, &mut erin, "erin@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("multi-factor"), "{page}");
    // Only from 10.0.0.0/8: this test's 127.0.0.1 is refused.
    assert_eq!(
        set(serde_json::json!({"allowed_ip_ranges": ["10.0.0.0/8"]}))
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, status, page) = log_in(&app, &mut Browser::new(), "erin@example.com").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("client address"), "{page}");
    // Loopback allowed: in.
    assert_eq!(
        set(serde_json::json!({"allowed_ip_ranges": ["127.0.0.0/8", "::1/128"]}))
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, status, page) = log_in(&app, &mut erin, "erin@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut erin, "/v1/tenant").await;
    assert_eq!(tenant["id"], created.tenant.id.to_string().as_str());
    let audit = app.audit(&key, "?action=access_policy.update").await;
    assert_eq!(audit.len(), 3, "{audit:?}");
}

#[tokio::test]
async fn sensitive_actions_need_a_recent_login() {
    // Every login is "too old" at once: sensitive actions through a
    // session are refused; the rest goes on.
    let (app, _oidc) = app_with_login(|s| s.reauth_minutes = Some(0)).await;
    let mut frank = Browser::new();
    let (_, status, _) = log_in(&app, &mut frank, "frank@example.com").await;
    assert_eq!(status, 200);
    let url = format!("{}/v1/api-keys", app.address);
    let res = frank
        .change(
            Method::POST,
            &url,
            Some(serde_json::json!({"name": "from-a-browser"})),
        )
        .await;
    assert_eq!(res.status(), 403);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("log in again"),
        "{problem}"
    );
    let res = api(&app, &mut frank, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn an_invited_person_joins_at_login_and_a_removed_one_is_cut_off() {
    let (app, _oidc) =
        app_with_login(|s| s.signup = Some(carapace_api::login::SignupMode::Closed)).await;
    let (created, key) = tenant_owned_by(&app, "gina@example.com").await;
    let key = key.reveal().to_owned();
    let tenant_id = created.tenant.id.to_string();
    let invite = |email: &str, role: &str| {
        app.request(Method::POST, "/v1/invitations", &key)
            .json(&serde_json::json!({"email": email, "role": role}))
            .send()
    };
    // A member may not invite.
    let (_, member) = app
        .create_key(&key, serde_json::json!({"name": "m", "role": "member"}))
        .await;
    let res = app
        .post(
            "/v1/invitations",
            member["key"].as_str().unwrap(),
            &serde_json::json!({"email": "x@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = invite("not-an-address", "member").await.unwrap();
    assert_eq!(res.status(), 422);
    let res = invite("Hank@Example.com", "admin").await.unwrap();
    assert_eq!(res.status(), 201);
    // Hank logs in (sign-up is closed): the invitation lets him in, as admin.
    let mut hank = Browser::new();
    let (_, status, page) = log_in(&app, &mut hank, "hank@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut hank, "/v1/tenant").await;
    assert_eq!(tenant["id"], tenant_id.as_str());
    assert_eq!(tenant["role"], "admin");
    let members: Value = app
        .get("/v1/members", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = members["data"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{members}");
    let hank_id = list
        .iter()
        .find(|m| m["email"] == "hank@example.com")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gina_id = list
        .iter()
        .find(|m| m["email"] == "gina@example.com")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending: Value = app
        .get("/v1/invitations", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["data"], serde_json::json!([]));
    // A withdrawn invitation lets nobody in.
    let res = invite("ivy@example.com", "member").await.unwrap();
    let ivy = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .request(Method::DELETE, &format!("/v1/invitations/{ivy}"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (_, status, _) = log_in(&app, &mut Browser::new(), "ivy@example.com").await;
    assert_eq!(status, 403);
    // Hank makes an API key through his session.
    let url = format!("{}/v1/api-keys", app.address);
    let res = hank
        .change(
            Method::POST,
            &url,
            Some(serde_json::json!({"name": "hanks-key"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let hanks_key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.get("/v1/tenant", &hanks_key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The last owner stays; Hank goes, and his session and key with him.
    let res = app
        .request(Method::DELETE, &format!("/v1/members/{gina_id}"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let res = app
        .request(Method::DELETE, &format!("/v1/members/{hank_id}"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = api(&app, &mut hank, Method::GET, "/v1/tenant", false).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        app.get("/v1/tenant", &hanks_key)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let audit = app.audit(&key, "").await;
    for action in [
        "invitation.create",
        "invitation.accept",
        "invitation.withdraw",
        "member.remove",
    ] {
        assert!(
            audit.iter().any(|r| r["action"] == action),
            "{action}: {audit:?}"
        );
    }
}

#[tokio::test]
async fn sign_up_can_be_kept_to_domains_and_logging_out_everywhere_ends_every_session() {
    let (app, _oidc) = app_with_login(|s| s.signup_domains = Some("example.com".into())).await;
    let signup = signup_page(&app).await;
    assert!(
        signup.contains("Addresses at example.com may sign up"),
        "{signup}"
    );
    let (_, status, page) = log_in(&app, &mut Browser::new(), "olga@elsewhere.org").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("sign-up is closed"), "{page}");
    let mut first = Browser::new();
    let mut second = Browser::new();
    for browser in [&mut first, &mut second] {
        let (_, status, page) = log_in(&app, browser, "paul@example.com").await;
        assert_eq!(status, 200, "{page}");
    }
    let url = format!("{}/v1/sessions", app.address);
    let res = first.change(Method::DELETE, &url, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["ended"], 2);
    for browser in [&mut first, &mut second] {
        let res = api(&app, browser, Method::GET, "/v1/tenant", false).await;
        assert_eq!(res.status(), 401);
    }
}

#[tokio::test]
async fn a_policy_can_require_a_group_from_the_providers_claim() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let (_, key) = tenant_owned_by(&app, "eng-lead@example.com").await;
    let key = key.reveal().to_owned();
    let res = app
        .request(Method::PUT, "/v1/access-policy", &key)
        .json(&serde_json::json!({"required_groups": ["eng"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .request(Method::POST, "/v1/invitations", &key)
        .json(&serde_json::json!({"email": "sam@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // In `eng` (the provider's groups claim, asked for as a scope): in.
    let mut lead = Browser::new();
    let (_, status, page) = log_in(&app, &mut lead, "eng-lead@example.com").await;
    assert_eq!(status, 200, "{page}");
    // In `sales` only: the invitation is refused, and left pending; with
    // sign-up open it does not stand in Sam's way: he gets his own tenant
    // (any tenant can invite anyone, so an invitation must not be a way
    // to keep someone out).
    let mut sam = Browser::new();
    let (_, status, page) = log_in(&app, &mut sam, "sam@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut sam, "/v1/tenant").await;
    assert_eq!(tenant["name"], "sam@example.com");
    assert_eq!(tenant["role"], "owner");
    let pending: Value = app.get_json("/v1/invitations", &key).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1, "{pending}");
}
