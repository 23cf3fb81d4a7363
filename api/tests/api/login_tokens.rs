//! Forged and defective ID tokens are refused at the login callback.
//!
//! A fake OpenID Connect provider runs inside the test process (an actix
//! server on port 0): discovery, a JWKS whose keys the test changes at
//! will, and a token endpoint that answers each authorization code with
//! the ID token the test put there for it. The test plays the browser: it
//! starts a login at `/auth/login`, reads `state` and `nonce` from the
//! redirect to the provider, signs an ID token itself (RS256 with fixed
//! 2048-bit test keys, embedded below because generating RSA keys in an
//! unoptimised test build takes too long) and comes back to
//! `/auth/callback` with the login cookie.
//!
//! It proves that:
//! - a correct token signs in (303 to `/auth/session`, a session cookie),
//!   so the provider is a fair one and the refusals below mean something;
//! - a forged signature, an expired token, another audience, a wrong
//!   nonce, `alg: none`, a key id the provider does not publish (after one
//!   fresh fetch of its keys) and another issuer are each refused with 400
//!   "Login refused", no session cookie, and a `login`/`denied` audit
//!   record saying why;
//! - a key the provider publishes only after the server cached its keys
//!   (a rotation) is fetched and accepted.
//!
//! Each server allows 20 logins a minute from one address (`/auth/login`
//! and `/auth/callback` both count) and audits 10 refused ones, so a test
//! makes at most 10 attempts (the refusals test makes 7).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::prelude::{BASE64_URL_SAFE_NO_PAD, Engine as _};
use reqwest::StatusCode;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, spawn_app_with};

/// The server's client id at the fake provider.
const CLIENT_ID: &str = "carapace";

/// The DER prefix of a PKCS#1 v1.5 SHA-256 signature (the DigestInfo
/// before the hash), as RFC 8017 section 9.2 gives it.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// What the fake provider serves, shared with the test.
struct Shared {
    issuer: String,
    /// The JWKS's keys, as published now.
    jwks: Mutex<Vec<Value>>,
    /// How many times the JWKS was fetched.
    jwks_fetches: AtomicUsize,
    /// The ID token to answer each authorization code with (once).
    tokens: Mutex<HashMap<String, String>>,
}

/// The fake provider.
struct FakeOidc {
    issuer: String,
    shared: Arc<Shared>,
}

impl FakeOidc {
    /// Starts a provider publishing `keys`.
    async fn start(keys: Vec<Value>) -> FakeOidc {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            jwks: Mutex::new(keys),
            jwks_fetches: AtomicUsize::new(0),
            tokens: Mutex::new(HashMap::new()),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/jwks", web::get().to(jwks))
                .route("/token", web::post().to(token))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap();
        tokio::spawn(server.run());
        FakeOidc { issuer, shared }
    }

    fn publish(&self, key: Value) {
        self.shared.jwks.lock().unwrap().push(key);
    }

    fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(shared: web::Data<Shared>) -> HttpResponse {
    let issuer = &shared.issuer;
    HttpResponse::Ok().json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(shared: web::Data<Shared>) -> HttpResponse {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = shared.jwks.lock().unwrap().clone();
    HttpResponse::Ok().json(json!({ "keys": keys }))
}

/// The code exchange (client authentication and PKCE are not checked).
async fn token(
    shared: web::Data<Shared>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let code = form.get("code").cloned().unwrap_or_default();
    let id_token = shared.tokens.lock().unwrap().remove(&code);
    match id_token {
        Some(id_token) => HttpResponse::Ok().json(json!({
            "access_token": "at",
            "token_type": "Bearer",
            "expires_in": 3600,
            "id_token": id_token,
        })),
        None => HttpResponse::BadRequest().json(json!({ "error": "invalid_grant" })),
    }
}

/// A signing key.
struct Key {
    kid: &'static str,
    private: RsaPrivateKey,
}

impl Key {
    fn load(kid: &'static str, pem: &str) -> Key {
        Key {
            kid,
            private: RsaPrivateKey::from_pkcs8_pem(pem).unwrap(),
        }
    }

    /// Its public half, as a JWK.
    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": BASE64_URL_SAFE_NO_PAD.encode(self.private.n().to_bytes_be()),
            "e": BASE64_URL_SAFE_NO_PAD.encode(self.private.e().to_bytes_be()),
        })
    }

    /// A JWT of `claims` signed with this key, its header naming `kid`.
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(&json!({ "alg": "RS256", "kid": kid })),
            b64(claims)
        );
        let mut digest_info = SHA256_DIGEST_INFO.to_vec();
        digest_info.extend_from_slice(Sha256::digest(input.as_bytes()).as_slice());
        let signature = self
            .private
            .sign(Pkcs1v15Sign::new_unprefixed(), &digest_info)
            .unwrap();
        format!("{input}.{}", BASE64_URL_SAFE_NO_PAD.encode(signature))
    }
}

fn b64(json: &Value) -> String {
    BASE64_URL_SAFE_NO_PAD.encode(json.to_string())
}

/// The provider's key `k1`, and `k2`, which it does not publish at first.
fn keys() -> (Key, Key) {
    (Key::load("k1", K1_PEM), Key::load("k2", K2_PEM))
}

/// Claims that pass every check.
fn valid_claims(issuer: &str, nonce: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": issuer,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": nonce,
        "email": "eve@example.com",
        "email_verified": true,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with login through `oidc`.
async fn app_with(oidc: &FakeOidc) -> TestApp {
    let port = free_port();
    let issuer = oidc.issuer.clone();
    spawn_app_with(|s| {
        s.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        s.oidc_issuer = Some(issuer);
        s.oidc_client_id = Some(CLIENT_ID.into());
        s.oidc_client_secret = Some("fake-provider-secret".into());
        s.public_url = Some(format!("http://127.0.0.1:{port}"));
    })
    .await
}

/// A client that does not follow redirects (cookies are handled by hand).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The cookies a response sets, as (name, value).
fn set_cookies(res: &reqwest::Response) -> Vec<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| {
            let pair = v.to_str().unwrap().split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// A login on its way to the provider.
struct Attempt {
    login_cookie: String,
    state: String,
    nonce: String,
}

/// `GET /auth/login`: the cookie it sets and what it sends the provider.
async fn start_login(app: &TestApp, oidc: &FakeOidc, client: &reqwest::Client) -> Attempt {
    let res = client
        .get(format!("{}/auth/login", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/authorize?", oidc.issuer)),
        "{location}"
    );
    let query: HashMap<String, String> = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(
        query["redirect_uri"],
        format!("{}/auth/callback", app.address)
    );
    let login_cookie = set_cookies(&res)
        .into_iter()
        .find(|(name, _)| name == "carapace_login")
        .expect("no login cookie")
        .1;
    Attempt {
        login_cookie,
        state: query["state"].clone(),
        nonce: query["nonce"].clone(),
    }
}

/// Comes back to `/auth/callback` with a code the provider will answer
/// with `id_token`.
async fn finish_login(
    app: &TestApp,
    oidc: &FakeOidc,
    client: &reqwest::Client,
    attempt: &Attempt,
    id_token: String,
) -> reqwest::Response {
    let code = format!("code-{}", attempt.state);
    oidc.shared
        .tokens
        .lock()
        .unwrap()
        .insert(code.clone(), id_token);
    let mut url = reqwest::Url::parse(&format!("{}/auth/callback", app.address)).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &attempt.state);
    client
        .get(url)
        .header("cookie", format!("carapace_login={}", attempt.login_cookie))
        .send()
        .await
        .unwrap()
}

/// The answer signed the browser in: a session cookie that opens
/// `/auth/session`.
async fn assert_signed_in(app: &TestApp, client: &reqwest::Client, res: reqwest::Response) {
    let cookies = set_cookies(&res);
    let status = res.status();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location.as_deref(), Some("/auth/session"));
    let session = cookies
        .iter()
        .find(|(name, value)| name == "carapace_session" && !value.is_empty())
        .map(|(_, value)| value.clone())
        .expect("no session cookie");
    let page = client
        .get(format!("{}/auth/session", app.address))
        .header("cookie", format!("carapace_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Signed in as eve@example.com"), "{page}");
}

/// The reasons of the audited `login`/`denied` records, oldest first.
async fn denied_logins(app: &TestApp) -> Vec<String> {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    let rows = app
        .db
        .query_all(sea_orm::Statement::from_string(
            backend,
            "SELECT action, outcome, reason FROM audit_events ORDER BY id".to_owned(),
        ))
        .await
        .unwrap();
    rows.iter()
        .filter(|r| {
            r.try_get::<String>("", "action").unwrap() == "login"
                && r.try_get::<String>("", "outcome").unwrap() == "denied"
        })
        .map(|r| {
            r.try_get::<Option<String>>("", "reason")
                .unwrap()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn a_correct_id_token_from_the_fake_provider_signs_in() {
    let (k1, _) = keys();
    let oidc = FakeOidc::start(vec![k1.jwk()]).await;
    let app = app_with(&oidc).await;
    let client = browser();
    let attempt = start_login(&app, &oidc, &client).await;
    let fetched = oidc.jwks_fetches();
    assert!(fetched >= 1, "the keys were not fetched at discovery");
    let id_token = k1.sign("k1", &valid_claims(&oidc.issuer, &attempt.nonce));
    let res = finish_login(&app, &oidc, &client, &attempt, id_token).await;
    assert_signed_in(&app, &client, res).await;
    // A good token needs no fresh look at the keys.
    assert_eq!(oidc.jwks_fetches(), fetched);
    assert!(denied_logins(&app).await.is_empty());
}

/// The ID token of a refused `case`: valid `claims`, spoilt one way.
fn forge(case: &str, k1: &Key, k2: &Key, mut claims: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    match case {
        // Signed by another key than the one its header names.
        "forged signature" => return k2.sign("k1", &claims),
        "alg none" => return format!("{}.{}.", b64(&json!({ "alg": "none" })), b64(&claims)),
        "unpublished kid" => return k2.sign("k2", &claims),
        "expired" => {
            claims["exp"] = json!(now - 600);
            claims["iat"] = json!(now - 1200);
        }
        "wrong audience" => claims["aud"] = json!("another-client"),
        "wrong nonce" => claims["nonce"] = json!("not-the-nonce-of-this-login"),
        "wrong issuer" => claims["iss"] = json!("https://issuer.example.com"),
        other => panic!("no such case: {other}"),
    }
    k1.sign("k1", &claims)
}

#[tokio::test]
async fn forged_expired_and_misdirected_id_tokens_are_refused_and_audited() {
    let (k1, k2) = keys();
    let oidc = FakeOidc::start(vec![k1.jwk()]).await;
    let app = app_with(&oidc).await;
    let client = browser();
    // Each case, and what the audited reason names.
    let cases = [
        ("forged signature", "Signature verification failed"),
        ("expired", "Expired"),
        ("wrong audience", "Invalid audiences"),
        ("wrong nonce", "Invalid nonce"),
        ("alg none", "Signature verification failed"),
        ("unpublished kid", "Signature verification failed"),
        ("wrong issuer", "Invalid issuer"),
    ];
    for (i, (case, why)) in cases.into_iter().enumerate() {
        let attempt = start_login(&app, &oidc, &client).await;
        let fetched = oidc.jwks_fetches();
        let id_token = forge(case, &k1, &k2, valid_claims(&oidc.issuer, &attempt.nonce));
        let res = finish_login(&app, &oidc, &client, &attempt, id_token).await;
        let cookies = set_cookies(&res);
        let status = res.status();
        let page = res.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {page}");
        assert!(page.contains("Login refused"), "{case}: {page}");
        assert!(
            !cookies.iter().any(|(name, _)| name == "carapace_session"),
            "{case}: {cookies:?}"
        );
        // Audited, as a refusal of the token (not of the state or the
        // browser), for this case's reason.
        let denied = denied_logins(&app).await;
        assert_eq!(denied.len(), i + 1, "{case}: {denied:?}");
        let reason = denied.last().unwrap();
        assert!(
            reason.starts_with("the ID token is not valid") && reason.contains(why),
            "{case}: {reason}"
        );
        if case == "unpublished kid" {
            // The server fetched the provider's keys again, once, and
            // still found no `k2`.
            assert_eq!(oidc.jwks_fetches(), fetched + 1, "{case}");
        }
    }
}

#[tokio::test]
async fn a_key_published_after_the_keys_were_cached_is_fetched_and_accepted() {
    let (k1, k2) = keys();
    let oidc = FakeOidc::start(vec![k1.jwk()]).await;
    let app = app_with(&oidc).await;
    let client = browser();
    let attempt = start_login(&app, &oidc, &client).await;
    let fetched = oidc.jwks_fetches();
    assert!(fetched >= 1, "the keys were not fetched at discovery");
    // The provider rotates to `k2` after the server cached its keys.
    oidc.publish(k2.jwk());
    let id_token = k2.sign("k2", &valid_claims(&oidc.issuer, &attempt.nonce));
    let res = finish_login(&app, &oidc, &client, &attempt, id_token).await;
    assert_signed_in(&app, &client, res).await;
    assert_eq!(oidc.jwks_fetches(), fetched + 1);
    assert!(denied_logins(&app).await.is_empty());
}

/// Test-only keys (`openssl genpkey -algorithm RSA
/// -pkeyopt rsa_keygen_bits:2048`), used for nothing else.
const K1_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDgj3ItN3BEjqgP
YGtSxRyD1kKSDg+eZRAbPytWS3dx8zIkfSBelWdRgOjepHTzBbaYhdxEPiSpOpCZ
qqXXajjD/6M77fMp81rB4ZaVZzF9tVlw4cOG+rxkuBLeHkZNlUUXCciaOOjy9ba0
Tf/P4gafVeEKBlxn0fD+iUShuGPJ0PfIlAgV9fMjMLKTQiTxQpDmxMBPrtJJBlAX
GWg9s59GotQQvHjkESU9YTnC9MhQ3g+QJCfqkk9NfpGnGTN9OfRJxi9BA9dUrGKO
Bewb3fLL4vAx4lu/f71mnCbRnLCtli8/QdBwoweITOTZ88mfH5jmu77o025colLT
OUms5RpJAgMBAAECggEAGAVwNsMH6OWDt8VeJaf9MWMhkuMbK5vu+aMrvRrsh412
zy1tYYDE4RSTlIFuGzMAwdcL5WbqYAnqPu3guKbdtKWrbfU5vkKQck3x4EB+LE7S
Zv9XfaBjt7hzGDyP06vEjL7YrRqqXJcJOMdhNnkcsT2sCXj9uINeLrQ7WbtSPVvA
YeFSOCdOhKyApL08y0obs53RudVuHpwvZgXfvuwPV50vqpI9+mJ2QULlMJOxU32w
X12aQ+F1/pZ2SQPmdapfoMxuTnErE8d4Z1GY36fs5zQXa70eDhTA67Zmc1ZyCBHn
KJyikPeHavSu0tkYhDprFxPO+yrwRcJfNzxW0I7jKQKBgQDwN3PD6H76ldzqxLPo
TSmdMNtwRzBICa2iOc6p95pX0uE2i98VJyN8DO2yLaXIUYB0tHrAYi0OT9PWXEmP
rwRRssBpL/tt94sMG6hF/U9tgMBWHq2emaYOT0HBv32MmBUVsRdkJKtGlGhG8iOZ
dYLvTcIydDnI5NsBnkRNe5m0rQKBgQDvUKYBQwIz38NKb7U8RlzfkD5iSTI0I8Pk
SO7gNIqUpFvjT6nTh3Owr262EehfnBOJLpeLAmOwLqyB3uEdLzjbKow0t3VbuguM
f8R0Wy6EKCJXeY+QNPT65qoo0/AFX3ienxlFnzQ6wSrwDHE/8bUUnBnFwD9TGOva
YLOxBtrTjQKBgQDnuGYovjb3HOdtZHAzj3OsGXwks9dENmnTSrYryRiOzXLIvmZk
rkuRl5sXPOdl9BDZA1xCBrJ10tWDO6UOQIMHGEp5bXq52oe8F1Xcpf0foYpnyNIs
YwUHWrcQ4dqHbBEyypDI3oKF5BUvEtb6apvyoezJ5Mn1G6aTygsTPz7HRQKBgQCL
ITLxpthf+iYaX2lZOnsCCmUKVQ2X3Hclf/VIaaNrmUZGl+jerm/m94cA2NZkx2Ng
LLMzwNbd9bSa6E2t3udKG6lZeJMFGdte+mTnVJ9te7vDaUu6hd8rAvFIPTbcmM2S
QmK55D3ELstctY8dotMowTwGiKcIE4QC+JdfQuHzfQKBgQDgjCGnB+E1t9fsH8Y1
AAjovtCY8iOOcgh7wO7mJ20GpPDKeEl2/TNRNSsgNV3bbID0Q4cgbibOrwnkSnJf
Xd4dOU2Ljnu0DwaDSqUjiEND2hSRxMZd+Y3MpsMSs9w79464btaMmNdsCyhvLo1i
X5cv8oQWz4yZ+1YcN6ALGkZgmw==
-----END PRIVATE KEY-----
";

const K2_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDd1AY1cy4ekxc4
doO51DbBL8YrncoS8uTyjCdpeG4kKW1MKBm89nh7fQ6ssccEkE6+DnoX/oZ+/Ayf
12a+2Mo74qtlUUfdG70hVAOKmBf/qMe3F0JJqYqA7KxM8M5ZhGHpKLkEAWpXXiBp
bto+gF+PGwSLfj0adgvQkI5LvdQrngTF1tnezIdyh73juvGs8mncWPxc3ylkKOXu
IVnPsl8vsZ9L6Kjslq8I9nNBBGQns6OW2BFiLSF2kgchrDYe3bXMBve3GM2WUlcd
EeDamnMxzMsbQEYYnJ/mYsTXe/nclIULnlxZulNXMoc3YqOXToCcHu0ImGYE72Vr
2KWEeSjtAgMBAAECggEADnhNK2FnCcGIiztX3mBUbgeiwqeZTeEgRB4WWA/uB1fY
dFZNT4E4XL3MnkE+fTK4oDcribMlrNTeMfMIFbzofD2N9p71tBuiG7FyRbEkJ54n
4O6YeVug2EYX+zDeFQLIrD/mybcZ67cNIDOF8vvGv/wAMOU8MSSwIpu7XH92fp3C
DpM8NhGtVsmFze4Q9w3WbHjR1B+KFuCN3JdLD0PeE8LyRr9tft/F24/n1WU1LK37
+CBTvzUvRbpPfc5ybkhUUY88OgXB2hMgRgcv7D6I77mKvnG/U4euH/VHH2nOkXnQ
w/z2KwU2oMXiqaO9UNO9Ny0ddE6vvt1TgKAXtQkElQKBgQD4Fcd9YbaDFFjllolc
ItncX8TGbprFAiWrwtZg8DIilAbrGB+rDXAAHQ5yADCFf3Nh2q/gE4d0SJy76VCl
OnS1qLQ3u1A9ZLTS1yAobxaz2unYoIn6pDA3yuswMJIVTT+nbvQn/IuaHvKQA7zC
iAMlvtORfZgzXBVvPnhKjWAmLwKBgQDk58sq082nZtB+Y9ZUI9PWldXDvLjKwgbG
pWKWRapvDUN2mdfyp82X6AcuJcIM5MiDADns8tm++FP0rqFgGo8M1v/DzPS0X4wC
jqytnX1UQMLSYgLHdLj1NqFBIjeP7Z/TJOpFIeAePkRuRxX7nSdsLPqY9So7jJUS
++Ca2k93owKBgQDvOilFid0yp4NV2YUZmO3W6W7aHrwWMAzdhaOulNDzsSS+vWOE
Ug/nvB06513izdUYzoX8oThkdMTXG5TN0AHNTyKB/5nPqfYIvrPe6cjNpNMNNzn2
vS9WDdIfhSbJbdVtArxkds6zzxX+s+vo9rl6Q3rG+IK1PB3bSTU8RvoptwKBgG4O
nHps95YjMt9x9RzjVPj5dZv04wxpmYRtBCeoOzfFssgVU+TRlWISJ1GiydgVL+r8
ct1gLh1JnGQqimCApILR5IspwgXvYovgOVoIPLgDoygwA5IOptcPexyr7PcAkzWb
rB+tF+qymYhEGWeuucOjJKHiTnnvL8W+4NDTYh3tAoGBAMtvV+Z6fP4W1yjrHvQ9
uagUsOK6btDfrjE/VoWQzKD1udsD1cZ1ANwMWAbzanfa4sQyBLeh/58XDWO3bOz/
kQ90uMc9d1sojCbtkTmX6ajAw6G2NiRLAzd7QmzrzrdW0rk5vWGR+8Xg1kXm7Ycs
ocvjGMFQdRSCrunGr2mZVqei
-----END PRIVATE KEY-----
";
