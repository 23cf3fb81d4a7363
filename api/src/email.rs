//! `EmailAddress`: a syntactically plausible, normalised email address.

use std::fmt;

/// Why a string is not accepted as an email address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid email address")]
pub struct InvalidEmail;

/// An email address: one `@`, a non-empty local part, a dotted domain, at
/// most 254 bytes, no whitespace or control characters. Lowercased (ASCII
/// letters) whole: the domain is case-insensitive, and so is the local
/// part at every provider people log in with; one form per address is
/// what lets a login find the person an invitation or the CLI named.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Validates and normalises.
    pub fn parse(value: &str) -> Result<Self, InvalidEmail> {
        let value = value.trim();
        if value.is_empty() || value.len() > 254 {
            return Err(InvalidEmail);
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEmail);
        }
        let (local, domain) = value.split_once('@').ok_or(InvalidEmail)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(InvalidEmail);
        }
        Ok(Self(format!("{local}@{domain}").to_ascii_lowercase()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_addresses_are_accepted_and_normalised() {
        assert_eq!(
            EmailAddress::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(EmailAddress::parse("a.b+tag@sub.example.org").is_ok());
    }

    #[test]
    fn implausible_addresses_are_refused() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "ada@exa mple.com",
            "ada@example..com",
            "ada@.example.com",
            "a\u{0}@x.io",
        ] {
            assert_eq!(EmailAddress::parse(bad), Err(InvalidEmail), "{bad:?}");
        }
        assert!(EmailAddress::parse(&format!("{}@x.io", "a".repeat(300))).is_err());
    }
}
