//! The values a user is made of, parsed once at the edge: an [`Email`], a [`Name`] or a [`Password`] that
//! exists is valid, so nothing downstream checks again.

use serde::{Deserialize, Serialize};

/// The longest email address accepted (RFC 5321's path limit).
const MAX_EMAIL_LEN: usize = 254;
/// The longest local part (before the `@`).
const MAX_LOCAL_LEN: usize = 64;
/// The longest display name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// The shortest password, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password, in bytes: hashing cost grows with length, so it is bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// An email address as the user typed it (case kept), unique ignoring case. Deliberately not a full RFC 5322
/// parser: one `@`, a non-empty local part, a domain with a dot, no spaces or control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// The address, trimmed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("must not be empty".into());
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(format!("must be at most {MAX_EMAIL_LEN} characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces".into());
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err("must be an email address such as ada@example.com".into());
        };
        let domain_ok = domain.contains('.')
            && !domain.contains('@')
            && domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if local.is_empty() || local.len() > MAX_LOCAL_LEN || !domain_ok {
            return Err("must be an email address such as ada@example.com".into());
        }
        Ok(Email(email.to_string()))
    }
}

impl From<Email> for String {
    fn from(email: Email) -> String {
        email.0
    }
}

/// A display name: 1–100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name, trimmed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Name(name.to_string()))
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

/// A password in clear, only ever on its way to being hashed or verified. `Debug` never shows it and it is
/// not `Serialize`.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// A new password: 8 or more characters, at most 1024 bytes. Not trimmed: spaces are part of it.
    pub fn parse(raw: String) -> Result<Self, String> {
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
        }
        Self::candidate(raw)
    }

    /// A password offered at login: only the length bound applies (a rule added later must not lock out
    /// existing users).
    pub fn candidate(raw: String) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
        }
        Ok(Password(raw))
    }

    /// The clear text, for the hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Result<Email, String> {
        Email::try_from(raw.to_string())
    }

    #[test]
    fn emails_parse_or_say_why_not() {
        assert_eq!(email("  Ada@Example.com ").expect("valid").as_str(), "Ada@Example.com");
        for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "a@b@example.com", "a@-x.com"]
        {
            assert!(email(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::try_from(" Ada ".to_string()).expect("valid").as_str(), "Ada");
        assert!(Name::try_from("   ".to_string()).is_err());
        assert!(Name::try_from("x".repeat(101)).is_err());
        assert!(Name::try_from("é".repeat(100)).is_ok(), "characters, not bytes");
        assert!(Name::try_from("a\u{7}b".to_string()).is_err());
    }

    #[test]
    fn passwords_are_bounded_and_never_shown() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        let password = Password::parse("correct horse".into()).expect("valid");
        assert!(!format!("{password:?}").contains("horse"));
        assert!(Password::candidate("short".into()).is_ok(), "login does not apply the creation rules");
    }
}
