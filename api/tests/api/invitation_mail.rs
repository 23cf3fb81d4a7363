//! Invitation emails through a real SMTP server (PyPI's `aiosmtpd`,
//! started per test, writing what it receives to a Maildir): the invited
//! address gets a message saying where to log in and as what; a mail
//! server that is down fails the email, not the invitation; a tenant's
//! hourly allowance bounds what an open sign-up could send.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::TestApp;
use crate::login::{Browser, Oidc, api_json, app_with_login, free_port, log_in, tenant_owned_by};

/// An SMTP server for one test, and the Maildir it delivers to.
struct Smtp {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    async fn start() -> Smtp {
        // infra/install-deps puts aiosmtpd in this interpreter's venv.
        let python = std::env::var("CARAPACE_TEST_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/carapace/venv/bin/python",
                std::env::var("HOME").unwrap()
            )
        });
        let maildir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("box"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python -m aiosmtpd");
        let smtp = Smtp {
            child,
            port,
            maildir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return smtp;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("aiosmtpd did not start");
    }

    fn delivered(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("box").join("new"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    /// The messages delivered, waiting up to five seconds for `n`.
    async fn messages(&self, n: usize) -> Vec<String> {
        for _ in 0..50 {
            let files = Self::delivered(self.maildir.path());
            if files.len() >= n {
                return files
                    .iter()
                    .map(|f| std::fs::read_to_string(f).unwrap())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fewer than {n} messages arrived");
    }
}

async fn app_sending_to(smtp_port: u16) -> (TestApp, Oidc) {
    app_with_login(|s| {
        s.smtp_url = Some(format!("smtp://127.0.0.1:{smtp_port}"));
        s.mail_from = Some("Carapace <no-reply@carapace.test>".into());
    })
    .await
}

async fn invite(app: &TestApp, key: &str, email: &str) -> Value {
    let res = app
        .post(
            "/v1/invitations",
            key,
            &serde_json::json!({"email": email, "role": "admin"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[tokio::test]
async fn an_invited_address_is_told_where_to_log_in_and_joins() {
    let smtp = Smtp::start().await;
    let (app, _oidc) = app_sending_to(smtp.port).await;
    let (_, key) = tenant_owned_by(&app, "lena@example.com").await;
    let key = key.reveal().to_owned();
    let invitation = invite(&app, &key, "Kim@Example.com").await;
    assert_eq!(invitation["email_delivery"], "sent", "{invitation}");
    let messages = smtp.messages(1).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    for expected in [
        "From: Carapace <no-reply@carapace.test>",
        "To: kim@example.com",
        "Subject: You are invited to join \"Acme\" on Carapace",
        &format!("{}/auth/login", app.address),
        "as an admin",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
    // Listing shows the invitation, not how its email went.
    let pending: Value = app.get_json("/v1/invitations", &key).await;
    assert!(
        pending["data"][0].get("email_delivery").is_none(),
        "{pending}"
    );
    let audit = app.audit(&key, "?action=invitation.email").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "success");
    // Kim follows the email: in, as an admin.
    let mut kim = Browser::new();
    let (_, status, page) = log_in(&app, &mut kim, "kim@example.com").await;
    assert_eq!(status, 200, "{page}");
    let tenant: Value = api_json(&app, &mut kim, "/v1/tenant").await;
    assert_eq!(tenant["role"], "admin");
}

#[tokio::test]
async fn a_mail_server_that_is_down_fails_the_email_not_the_invitation_and_the_allowance_holds() {
    // Nothing listens on this port.
    let (app, _oidc) = app_sending_to(free_port()).await;
    let (_, key) = tenant_owned_by(&app, "max@example.com").await;
    let key = key.reveal().to_owned();
    let invitation = invite(&app, &key, "ned@example.com").await;
    assert_eq!(invitation["email_delivery"], "failed", "{invitation}");
    let pending: Value = app.get_json("/v1/invitations", &key).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1);
    let audit = app.audit(&key, "?action=invitation.email").await;
    assert_eq!(audit[0]["outcome"], "failed", "{audit:?}");
    // 30 emails an hour per tenant (the failed one counted): the 31st
    // invitation is made but not emailed.
    for n in 1..30 {
        let invitation = invite(&app, &key, &format!("guest{n}@example.com")).await;
        assert_eq!(invitation["email_delivery"], "failed", "{n}");
    }
    let invitation = invite(&app, &key, "one-too-many@example.com").await;
    assert_eq!(invitation["email_delivery"], "rate_limited", "{invitation}");
    let denied = app
        .audit(&key, "?action=invitation.email&outcome=denied")
        .await;
    assert_eq!(denied.len(), 1, "{denied:?}");
}

#[tokio::test]
async fn without_a_mail_server_invitations_are_not_emailed() {
    let (app, _oidc) = app_with_login(|_| {}).await;
    let (_, key) = tenant_owned_by(&app, "ola@example.com").await;
    let invitation = invite(&app, key.reveal(), "pia@example.com").await;
    assert_eq!(invitation["email_delivery"], "not_configured");
}
