//! Validation of free-text fields from outside.

use crate::error::Error;

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
