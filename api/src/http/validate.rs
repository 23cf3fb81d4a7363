//! Validation of free-text fields from outside.

use crate::error::Error;

/// Most egress hosts per agent or sandbox.
pub const MAX_EGRESS_HOSTS: usize = 50;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// A human label: trimmed, 1 to `max` characters, no control characters.
pub fn label(field: &'static str, value: &str, max: usize) -> Result<String, Error> {
    let value = value.trim();
    let invalid = |message: String| Error::Invalid { field, message };
    if value.is_empty() {
        return Err(invalid("must not be empty".to_owned()));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".to_owned()));
    }
    Ok(value.to_owned())
}

/// `builtin` or an OCI image reference (field `image`).
pub fn image(image: &str) -> Result<String, Error> {
    let ok = image == "builtin"
        || ((1..=500).contains(&image.len())
            && image
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".:/@_-".contains(&b)));
    ok.then(|| image.to_owned())
        .ok_or_else(|| invalid("image", "must be `builtin` or an OCI image reference"))
}

/// An egress allow-list (field `egress_allow`): host names or
/// `*.domain` wildcards, lower-cased; internal names and addresses refused.
pub fn hosts(hosts: Vec<String>) -> Result<Vec<String>, Error> {
    if hosts.len() > MAX_EGRESS_HOSTS {
        return Err(invalid(
            "egress_allow",
            format!("at most {MAX_EGRESS_HOSTS} hosts"),
        ));
    }
    hosts
        .into_iter()
        .map(|host| {
            let host = host.trim().to_ascii_lowercase();
            let wildcard = host.starts_with("*.");
            let name = host.strip_prefix("*.").unwrap_or(&host);
            // Internal names and addresses are refused here as well as by
            // the egress proxy at connect time; a wildcard needs at least a
            // registrable domain under it (`*.example.com`, not `*.com`).
            let internal = name == "localhost"
                || [
                    ".localhost",
                    ".local",
                    ".internal",
                    ".localdomain",
                    ".home.arpa",
                ]
                .iter()
                .any(|suffix| name.ends_with(suffix))
                || name.parse::<std::net::IpAddr>().is_ok()
                || name
                    .split('.')
                    .all(|l| l.bytes().all(|b| b.is_ascii_digit()));
            let too_wide = wildcard && name.split('.').count() < 2;
            let ok = !internal
                && !too_wide
                && (1..=253).contains(&name.len())
                && name.split('.').all(|label| {
                    (1..=63).contains(&label.len())
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if ok {
                Ok(host)
            } else {
                Err(invalid(
                    "egress_allow",
                    format!("`{host}` is not a host name"),
                ))
            }
        })
        .collect()
}

const MAX_ARGS: usize = 256;
const MAX_ARGV_BYTES: usize = 256 * 1024;
const MAX_ENV: usize = 100;

/// A command line: a program, at most 256 arguments and 256 KiB, no NUL.
pub fn command(argv: &[String]) -> Result<(), Error> {
    let invalid = |message: String| Error::Invalid {
        field: "command",
        message,
    };
    if argv.first().is_none_or(String::is_empty) {
        return Err(invalid("must name a program".into()));
    }
    if argv.len() > MAX_ARGS || argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
        return Err(invalid(format!(
            "at most {MAX_ARGS} arguments and {MAX_ARGV_BYTES} bytes"
        )));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("arguments cannot contain NUL".into()));
    }
    Ok(())
}

/// Environment variables: at most 100, names of letters, digits and `_`
/// not starting with a digit, values without NUL of at most 64 KiB.
pub fn env(env: &std::collections::BTreeMap<String, String>) -> Result<(), Error> {
    let invalid = |message: String| Error::Invalid {
        field: "env",
        message,
    };
    if env.len() > MAX_ENV {
        return Err(invalid(format!("at most {MAX_ENV} variables")));
    }
    for (key, value) in env {
        let name_ok = !key.is_empty()
            && key.len() <= 256
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if !name_ok || value.contains('\0') || value.len() > 64 * 1024 {
            return Err(invalid(format!("`{key}` is not a valid variable")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_trimmed_and_bounded() {
        assert_eq!(label("name", "  ci  ", 10).unwrap(), "ci");
        assert!(label("name", "   ", 10).is_err());
        assert!(label("name", &"é".repeat(11), 10).is_err());
        assert!(label("name", &"é".repeat(10), 10).is_ok());
        assert!(label("name", "a\u{7}b", 10).is_err());
    }
}
