//! Outgoing mail over SMTP (`lettre`): invitations to join a tenant. Off
//! unless `smtp_url` and `mail_from` are set. The SMTP URL (it may hold a
//! password) is never logged; a message takes at most ten seconds to hand
//! over, and a failure is reported to the caller, never retried blindly.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::access::Role;
use crate::email::EmailAddress;
use crate::secret::Secret;

/// How long one message may take to hand over.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Mail settings, resolved.
#[derive(Clone)]
pub struct MailConfig {
    /// `smtps://[USER:PASSWORD@]HOST[:PORT]` (TLS),
    /// `smtp://…?tls=required` (STARTTLS) or `smtp://HOST:PORT` (plain,
    /// for a relay on the same host).
    pub smtp_url: Secret<String>,
    /// The sender, e.g. `Carapace <no-reply@example.com>`.
    pub from: Mailbox,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl MailConfig {
    /// Validates the settings; `None` when mail is off (neither is set).
    pub fn resolve(smtp_url: Option<String>, from: Option<String>) -> anyhow::Result<Option<Self>> {
        let (smtp_url, from) = match (smtp_url, from) {
            (None, None) => return Ok(None),
            (Some(url), Some(from)) => (url, from),
            _ => bail!("smtp_url and mail_from go together"),
        };
        if !(smtp_url.starts_with("smtp://") || smtp_url.starts_with("smtps://")) {
            // The URL may hold a password: not repeated.
            bail!("smtp_url must start with smtp:// or smtps://");
        }
        // Checked now, not at the first invitation.
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp_url)
            .map_err(|_| anyhow::anyhow!("smtp_url is not a valid SMTP URL"))?;
        let from: Mailbox = from
            .parse()
            .context("mail_from must be an address, e.g. `Carapace <no-reply@example.com>`")?;
        Ok(Some(MailConfig {
            smtp_url: Secret::new(smtp_url),
            from,
        }))
    }
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message could not be made (an address lettre refuses).
    #[error("the message could not be made: {0}")]
    Message(String),
    /// The SMTP server could not be reached or refused it.
    #[error("the mail server did not take the message: {0}")]
    Transport(String),
}

/// Sends mail.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A mailer for `config` (nothing is connected yet).
    pub fn new(config: &MailConfig) -> anyhow::Result<Mailer> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(config.smtp_url.expose())
            .map_err(|_| anyhow::anyhow!("smtp_url is not a valid SMTP URL"))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        Ok(Mailer {
            transport,
            from: config.from.clone(),
        })
    }

    /// Sends a plain-text message to one address.
    pub async fn send(
        &self,
        to: &EmailAddress,
        subject: &str,
        body: String,
    ) -> Result<(), MailError> {
        let to: Mailbox = to
            .as_str()
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Message(e.to_string()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Message(e.to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT * 2, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(MailError::Transport(e.to_string())),
            Err(_) => Err(MailError::Transport("timed out".to_owned())),
        }
    }
}

/// Text without control characters (a tenant's name in a subject line
/// must not start a header of its own), at most `max` characters.
fn plain(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// The invitation's subject and text: who invites, to what, as what,
/// where to log in and until when.
pub fn invitation(
    tenant_name: &str,
    role: Role,
    email: &EmailAddress,
    login_url: &str,
    expires_at: DateTime<Utc>,
) -> (String, String) {
    let tenant = plain(tenant_name, 100);
    let subject = format!("You are invited to join \"{tenant}\" on Carapace");
    let body = format!(
        "Hello,\n\n\
         You are invited to join the tenant \"{tenant}\" on Carapace as {article} {role}.\n\n\
         To accept, log in at\n\n    {login_url}\n\n\
         with an account whose verified email address is {email}. The \
         invitation expires on {expires}.\n\n\
         If you did not expect this, ignore this message: nothing happens \
         until you log in.\n",
        article = if role == Role::Admin || role == Role::Owner {
            "an"
        } else {
            "a"
        },
        expires = expires_at.format("%Y-%m-%d %H:%M UTC"),
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_go_together_and_are_checked() {
        assert!(MailConfig::resolve(None, None).unwrap().is_none());
        assert!(MailConfig::resolve(Some("smtp://127.0.0.1:25".into()), None).is_err());
        let err = MailConfig::resolve(
            Some("http://user:hunter2@mail.example".into()),
            Some("a@b.example".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            MailConfig::resolve(Some("smtp://127.0.0.1:25".into()), Some("nope".into())).is_err()
        );
        let config = MailConfig::resolve(
            Some("smtps://user:hunter2@mail.example".into()),
            Some("Carapace <no-reply@example.com>".into()),
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn a_hostile_tenant_name_cannot_start_a_header() {
        let email = EmailAddress::parse("ann@example.com").unwrap();
        let (subject, body) = invitation(
            "Acme\r\nBcc: everyone@example.com",
            Role::Admin,
            &email,
            "https://carapace.example/auth/login",
            Utc::now(),
        );
        assert!(!subject.contains('\n') && !subject.contains('\r'));
        assert!(body.contains("as an admin"));
        assert!(body.contains("ann@example.com"));
    }
}
