//! A tenant's access policy for people who log in: who may (addresses,
//! domains, groups), how (identity providers, multi-factor
//! authentication), from where (address ranges) and for how long (session
//! age, idle time). It is checked when
//! someone logs in and again on every request of their session, so a
//! change applies to the very next request. Pure: storage is
//! `db::sessions`, the checks' callers are `http::routes::login` and
//! `auth::extract`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::email::EmailAddress;

/// Most entries in each list.
const MAX_ENTRIES: usize = 500;

/// `amr` values (RFC 8176) that show a second factor.
const MFA_METHODS: &[&str] = &[
    "mfa", "otp", "hwk", "sms", "swk", "fpt", "face", "iris", "retina",
];

/// The policy as stored and as the API shows it. Empty lists and absent
/// limits allow everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Addresses allowed to log in (besides the domains below).
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// Domains whose addresses are allowed (`example.com`).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Require the provider to say a second factor was used (`amr`).
    #[serde(default)]
    pub require_mfa: bool,
    /// Groups allowed (the provider's groups claim): a person must be in
    /// one of them. Empty: no group needed.
    #[serde(default)]
    pub required_groups: Vec<String>,
    /// Longest a session may last, in minutes, whatever the server allows.
    #[serde(default)]
    pub max_session_age_minutes: Option<u32>,
    /// A session unused this long (minutes) ends.
    #[serde(default)]
    pub idle_timeout_minutes: Option<u32>,
    /// Client address ranges allowed (`203.0.113.0/24`, `2001:db8::/32`).
    #[serde(default)]
    pub allowed_ip_ranges: Vec<String>,
    /// Identity providers (the server's names for them) whose logins are
    /// allowed. Empty: any the server offers.
    #[serde(default)]
    pub allowed_providers: Vec<String>,
}

/// What a check knows of a session (or of a login about to become one).
#[derive(Debug, Clone)]
pub struct SessionFacts {
    /// The person's address.
    pub email: String,
    /// The authentication methods the provider reported.
    pub amr: Vec<String>,
    /// The person's groups, as the provider reported them at login.
    pub groups: Vec<String>,
    /// The identity provider they logged in with (its configured name).
    pub provider: String,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last request.
    pub last_seen_at: DateTime<Utc>,
}

impl AccessPolicy {
    /// Checks the fields; what is wrong, for a person.
    pub fn validate(&mut self) -> Result<(), (&'static str, String)> {
        for (field, list) in [
            ("allowed_emails", &self.allowed_emails),
            ("allowed_domains", &self.allowed_domains),
            ("allowed_ip_ranges", &self.allowed_ip_ranges),
            ("required_groups", &self.required_groups),
            ("allowed_providers", &self.allowed_providers),
        ] {
            if list.len() > MAX_ENTRIES {
                return Err((field, format!("at most {MAX_ENTRIES} entries")));
            }
        }
        let mut emails = Vec::new();
        for email in &self.allowed_emails {
            let parsed = EmailAddress::parse(email).map_err(|_| {
                (
                    "allowed_emails",
                    format!("{email:?} is not an email address"),
                )
            })?;
            emails.push(parsed.as_str().to_owned());
        }
        self.allowed_emails = emails;
        for domain in &mut self.allowed_domains {
            *domain = domain.trim().to_ascii_lowercase();
            let ok = !domain.is_empty()
                && domain.len() <= 253
                && domain.contains('.')
                && domain.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err((
                    "allowed_domains",
                    format!("{domain:?} is not a domain name"),
                ));
            }
        }
        if self
            .required_groups
            .iter()
            .any(|g| g.is_empty() || g.len() > 200)
        {
            return Err(("required_groups", "names of 1 to 200 bytes".to_owned()));
        }
        if let Some(bad) = self.allowed_providers.iter().find(|p| {
            p.is_empty()
                || p.len() > 32
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }) {
            return Err((
                "allowed_providers",
                format!("{bad:?} is not a provider name (1 to 32 of a-z, 0-9, -)"),
            ));
        }
        for range in &self.allowed_ip_ranges {
            range.parse::<ipnet::IpNet>().map_err(|_| {
                (
                    "allowed_ip_ranges",
                    format!("{range:?} is not an address range"),
                )
            })?;
        }
        for (field, minutes) in [
            ("max_session_age_minutes", self.max_session_age_minutes),
            ("idle_timeout_minutes", self.idle_timeout_minutes),
        ] {
            if minutes.is_some_and(|m| !(1..=43_200).contains(&m)) {
                return Err((field, "must be between 1 and 43200 minutes".to_owned()));
            }
        }
        Ok(())
    }

    /// Why a login or a request of a session is refused, if it is.
    pub fn refusal(
        &self,
        facts: &SessionFacts,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let email = facts.email.to_ascii_lowercase();
        if !self.allowed_emails.is_empty() || !self.allowed_domains.is_empty() {
            let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
            let listed = self
                .allowed_emails
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&email))
                || self.allowed_domains.iter().any(|d| d == domain);
            if !listed {
                return Some(format!("the tenant's access policy does not allow {email}"));
            }
        }
        if !self.allowed_providers.is_empty() && !self.allowed_providers.contains(&facts.provider) {
            return Some(format!(
                "the tenant's access policy does not allow logins with the identity provider {}",
                facts.provider
            ));
        }
        if self.require_mfa
            && !facts
                .amr
                .iter()
                .any(|m| MFA_METHODS.contains(&m.to_ascii_lowercase().as_str()))
        {
            return Some(
                "the tenant's access policy requires multi-factor authentication".to_owned(),
            );
        }
        if !self.required_groups.is_empty()
            && !facts
                .groups
                .iter()
                .any(|g| self.required_groups.contains(g))
        {
            return Some(format!(
                "the tenant's access policy requires membership of one of the groups {}",
                self.required_groups.join(", ")
            ));
        }
        if !self.allowed_ip_ranges.is_empty() {
            // An IPv4 client of a server listening on `[::]` shows as
            // `::ffff:a.b.c.d`: judged as the IPv4 address it is.
            let allowed = client_ip.map(|ip| ip.to_canonical()).is_some_and(|ip| {
                self.allowed_ip_ranges
                    .iter()
                    .filter_map(|r| r.parse::<ipnet::IpNet>().ok())
                    .any(|net| net.contains(&ip))
            });
            if !allowed {
                return Some(
                    "the tenant's access policy does not allow this client address".to_owned(),
                );
            }
        }
        if let Some(minutes) = self.max_session_age_minutes
            && now - facts.created_at > chrono::TimeDelta::minutes(i64::from(minutes))
        {
            return Some("the session is older than the tenant's access policy allows".to_owned());
        }
        if let Some(minutes) = self.idle_timeout_minutes
            // Requests are noted at most once a minute: one minute of slack.
            && now - facts.last_seen_at > chrono::TimeDelta::minutes(i64::from(minutes) + 1)
        {
            return Some(
                "the session was idle longer than the tenant's access policy allows".to_owned(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(email: &str) -> SessionFacts {
        SessionFacts {
            email: email.to_owned(),
            amr: vec!["pwd".to_owned()],
            groups: vec!["eng".to_owned()],
            provider: "default".to_owned(),
            created_at: Utc::now(),
            last_seen_at: Utc::now(),
        }
    }

    #[test]
    fn an_empty_policy_allows_everything() {
        assert_eq!(
            AccessPolicy::default().refusal(&facts("a@b.c"), None, Utc::now()),
            None
        );
    }

    #[test]
    fn each_rule_refuses_what_it_should() {
        let now = Utc::now();
        let mut policy = AccessPolicy {
            allowed_emails: vec!["Boss@Other.org".into()],
            allowed_domains: vec!["Example.COM".into()],
            allowed_ip_ranges: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        policy.validate().unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            policy.refusal(&facts("ann@example.com"), Some(inside), now),
            None
        );
        assert_eq!(
            policy.refusal(&facts("boss@other.org"), Some(inside), now),
            None
        );
        assert!(
            policy
                .refusal(&facts("eve@evil.com"), Some(inside), now)
                .is_some()
        );
        assert!(
            policy
                .refusal(
                    &facts("ann@example.com"),
                    Some("192.0.2.1".parse().unwrap()),
                    now
                )
                .is_some()
        );
        assert!(
            policy
                .refusal(&facts("ann@example.com"), None, now)
                .is_some()
        );
        let mfa = AccessPolicy {
            require_mfa: true,
            ..Default::default()
        };
        assert!(mfa.refusal(&facts("a@b.c"), None, now).is_some());
        let mut with_otp = facts("a@b.c");
        with_otp.amr.push("otp".into());
        assert_eq!(mfa.refusal(&with_otp, None, now), None);
        let aged = AccessPolicy {
            max_session_age_minutes: Some(10),
            idle_timeout_minutes: Some(5),
            ..Default::default()
        };
        let mut old = facts("a@b.c");
        old.created_at = now - chrono::TimeDelta::minutes(11);
        assert!(aged.refusal(&old, None, now).is_some());
        let mut idle = facts("a@b.c");
        idle.last_seen_at = now - chrono::TimeDelta::minutes(7);
        assert!(aged.refusal(&idle, None, now).is_some());
        let okta_only = AccessPolicy {
            allowed_providers: vec!["okta".into()],
            ..Default::default()
        };
        let reason = okta_only.refusal(&facts("a@b.c"), None, now).unwrap();
        assert!(reason.contains("identity provider default"), "{reason}");
        let mut via_okta = facts("a@b.c");
        via_okta.provider = "okta".into();
        assert_eq!(okta_only.refusal(&via_okta, None, now), None);
    }

    #[test]
    fn bad_policies_are_refused() {
        for mut bad in [
            AccessPolicy {
                allowed_emails: vec!["nope".into()],
                ..Default::default()
            },
            AccessPolicy {
                allowed_domains: vec!["no_tld".into()],
                ..Default::default()
            },
            AccessPolicy {
                allowed_ip_ranges: vec!["10.0.0.0/33".into()],
                ..Default::default()
            },
            AccessPolicy {
                allowed_providers: vec!["Okta!".into()],
                ..Default::default()
            },
            AccessPolicy {
                idle_timeout_minutes: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
