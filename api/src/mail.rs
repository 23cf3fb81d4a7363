//! Outgoing mail over SMTP (`lettre`): invitations to join a tenant. Off
//! unless `smtp_url` and `mail_from` are set. The SMTP URL (it may hold a
//! password) is never logged, and a password only ever travels over TLS;
//! a message takes at most fifteen seconds to hand over, and a failure is
//! reported to the caller by its kind (the server's own words go to the
//! log only), never retried blindly.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::access::Role;
use crate::email::EmailAddress;
use crate::rate_limit::WindowLimiter;
use crate::secret::Secret;

/// How long one SMTP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one message may take to hand over, in all.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

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
        // The URL may hold a password: never repeated in an error.
        let parsed =
            url::Url::parse(&smtp_url).map_err(|_| anyhow::anyhow!("smtp_url is not a URL"))?;
        let tls = match parsed.scheme() {
            "smtps" => true,
            "smtp" => {
                let mode = parsed
                    .query_pairs()
                    .find(|(k, _)| k == "tls")
                    .map(|(_, v)| v.into_owned());
                match mode.as_deref() {
                    Some("required") => true,
                    None => false,
                    // STARTTLS that an attacker on the path can strip.
                    Some(_) => bail!("smtp_url: tls must be `required` when given"),
                }
            }
            _ => bail!("smtp_url must start with smtp:// or smtps://"),
        };
        if !tls && (!parsed.username().is_empty() || parsed.password().is_some()) {
            bail!("smtp_url has credentials: they go only over TLS (smtps:// or ?tls=required)");
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
    /// The SMTP server could not be reached or refused it: what kind of
    /// failure (`timeout`, `tls`, `rejected`, `temporary`, `connection`);
    /// the server's own words are logged, not returned.
    #[error("the mail server did not take the message ({0})")]
    Transport(&'static str),
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
            .timeout(Some(COMMAND_TIMEOUT))
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
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_tls() {
                    "tls"
                } else if e.is_permanent() {
                    "rejected"
                } else if e.is_transient() {
                    "temporary"
                } else {
                    "connection"
                };
                tracing::warn!(error = %e, kind, "the mail server did not take a message");
                Err(MailError::Transport(kind))
            }
            Err(_) => Err(MailError::Transport("timeout")),
        }
    }
}

/// Invitation emails a tenant may send per hour.
pub const PER_TENANT_PER_HOUR: u32 = 30;
/// Invitation emails one address may receive per day (from all tenants).
pub const PER_RECIPIENT_PER_DAY: u32 = 3;
/// Invitation emails this replica sends per hour, in all.
pub const OVERALL_PER_HOUR: u32 = 300;

/// The allowances that keep an open sign-up from making this server a
/// spam relay: per tenant, per recipient (re-inviting one address does
/// not mail it again and again) and overall; on each replica.
pub struct MailLimits {
    per_tenant: WindowLimiter,
    per_recipient: WindowLimiter,
    overall: WindowLimiter,
}

impl Default for MailLimits {
    fn default() -> Self {
        MailLimits {
            per_tenant: WindowLimiter::per_window(PER_TENANT_PER_HOUR, Duration::from_secs(3600)),
            per_recipient: WindowLimiter::per_window(
                PER_RECIPIENT_PER_DAY,
                Duration::from_secs(24 * 3600),
            ),
            overall: WindowLimiter::per_window(OVERALL_PER_HOUR, Duration::from_secs(3600)),
        }
    }
}

impl MailLimits {
    /// Counts one invitation email from `tenant` to `to`; which allowance
    /// is spent, if one is.
    pub fn allow(&self, tenant: &str, to: &EmailAddress) -> Result<(), &'static str> {
        if !self.per_recipient.allow(to.as_str()) {
            return Err("this address has had its invitation emails for today");
        }
        if !self.per_tenant.allow(tenant) {
            return Err("the tenant's hourly allowance of invitation emails is spent");
        }
        if !self.overall.allow("all") {
            return Err("this server's hourly allowance of invitation emails is spent");
        }
        Ok(())
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
        for bad in [
            "http://user:hunter2@mail.example",
            "smtp://user:hunter2@mail.example:25",
            "smtp://user:hunter2@mail.example:25?tls=opportunistic",
        ] {
            let err = MailConfig::resolve(Some(bad.into()), Some("a@b.example".into()))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(
            MailConfig::resolve(
                Some("smtp://user:hunter2@mail.example:587?tls=required".into()),
                Some("a@b.example".into())
            )
            .is_ok()
        );
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
