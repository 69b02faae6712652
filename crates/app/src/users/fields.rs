//! The values a user is made of, parsed once at the edge: an [`Email`], a [`Name`] or a [`Password`] that
//! exists is valid, so nothing downstream checks again.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The longest email address accepted, in characters as sent (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest display name, in characters as sent.
pub const MAX_NAME_CHARS: usize = 100;
/// The shortest password, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password, in characters: hashing cost grows with length, so it is bounded.
pub const MAX_PASSWORD_CHARS: usize = 1024;

// The rules below are regular expressions so that the parsers and the OpenAPI document (`pattern`) share them:
// written in the subset that ECMA-262 (JSON Schema), Python (the schema fuzzer) and the `regex` crate read
// alike (`\xNN`, `\uNNNN`, classes, no look-around). "Space" is what `str::trim` removes (Unicode White_Space),
// "control" is `char::is_control` (Cc).
macro_rules! space {
    () => {
        r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}
macro_rules! space_or_control {
    () => {
        r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}
macro_rules! control {
    () => {
        r"\x00-\x1f\x7f-\x9f"
    };
}
macro_rules! domain_label {
    () => {
        concat!(
            r"[^",
            space_or_control!(),
            r"@.\-](?:[^",
            space_or_control!(),
            r"@.]*[^",
            space_or_control!(),
            r"@.\-])?"
        )
    };
}

macro_rules! atext {
    () => {
        r"A-Za-z0-9!#$%&'*+/=?^_`{|}~"
    };
}
macro_rules! host_label {
    () => {
        r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    };
}

/// What a new email address must look like (registration, a change): RFC 5321's common form, as JSON Schema's
/// `format: email` validators accept it — 1–64 characters of letters, digits and ``!#$%&'*+/=?^_`{|}~.-``
/// before the `@` (no dot first or last), a host name of at least two labels of letters, digits and `-` (1–63
/// characters, no `-` first or last). Two rules a portable pattern cannot say are checked besides: no `..`
/// before the `@`, and no label with `--` as its 3rd and 4th characters (reserved for IDNA, `xn--`).
pub const EMAIL_PATTERN: &str = concat!(
    "^[",
    atext!(),
    "-](?:[",
    atext!(),
    ".-]{0,62}[",
    atext!(),
    "-])?@",
    host_label!(),
    r"(?:\.",
    host_label!(),
    ")+$"
);

/// What an email address may look like to sign in, and as stored (accepted before the rule above was the
/// contract): surrounding spaces allowed (they are trimmed), 1–64 characters before the only `@`, a domain of
/// dot-separated labels (at least two) that neither start nor end with `-`, no spaces or control characters.
pub const SIGN_IN_EMAIL_PATTERN: &str = concat!(
    "^[",
    space!(),
    "]*[^",
    space_or_control!(),
    "@]{1,64}@",
    domain_label!(),
    r"(?:\.",
    domain_label!(),
    ")+[",
    space!(),
    "]*$"
);

/// What a display name must look like, surrounding spaces allowed (they are trimmed): at least one character
/// that is not a space, no control characters inside.
pub const NAME_PATTERN: &str = concat!(
    "^[",
    space!(),
    "]*[^",
    space_or_control!(),
    "](?:[^",
    control!(),
    "]*[^",
    space_or_control!(),
    "])?[",
    space!(),
    "]*$"
);

// Compiled once. The unit tests compile both patterns: a typo fails them (here it would refuse every value).
static EMAIL_RULE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(EMAIL_PATTERN).ok());
static SIGN_IN_EMAIL_RULE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(SIGN_IN_EMAIL_PATTERN).ok());
static NAME_RULE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(NAME_PATTERN).ok());

/// Whether `value` matches `rule` (a rule that did not compile matches nothing).
fn matches(rule: &LazyLock<Option<Regex>>, value: &str) -> bool {
    rule.as_ref().is_some_and(|rule| rule.is_match(value))
}

/// An email address as the user typed it (case kept), unique ignoring case, at most [`MAX_EMAIL_CHARS`]
/// characters. A new one ([`Email::parse_new`]) matches [`EMAIL_PATTERN`]; one to sign in with or read from
/// storage ([`Email::try_from`]) only the looser [`SIGN_IN_EMAIL_PATTERN`], so addresses accepted before stay
/// usable. Deliberately not a full RFC 5322 parser (no quoted local parts, no address literals).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// The address, trimmed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    /// A new address (registration, a change of email): [`EMAIL_PATTERN`], kept as sent.
    pub fn parse_new(raw: String) -> Result<Self, String> {
        let padded = raw.trim().len() != raw.len();
        let email = Email::try_from(raw)?;
        if padded {
            return Err("must not start or end with spaces".into());
        }
        let (local, domain) = email.0.split_once('@').unwrap_or_default();
        let idna_reserved = domain.split('.').any(|label| label.get(2..4) == Some("--"));
        if !matches(&EMAIL_RULE, &email.0) || local.contains("..") || idna_reserved {
            return Err("must be an email address such as ada@example.com (letters, digits and .!#$%&'*+/=?^_`{|}~- \
                        before the @, a host name after it)"
                .into());
        }
        Ok(email)
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    /// An address to sign in with, or as stored: [`SIGN_IN_EMAIL_PATTERN`], trimmed.
    fn try_from(raw: String) -> Result<Self, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.chars().count() > MAX_EMAIL_CHARS {
            return Err(format!("must be at most {MAX_EMAIL_CHARS} characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces".into());
        }
        if !matches(&SIGN_IN_EMAIL_RULE, &raw) {
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

/// A display name: at most 100 characters as sent, [`NAME_PATTERN`] (not only spaces, no control characters),
/// trimmed.
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
        if raw.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if !matches(&NAME_RULE, &raw) {
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
    /// A new password: 8 to 1024 characters. Not trimmed: spaces are part of it.
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
        if raw.chars().count() > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
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
    fn the_patterns_compile_and_decide_like_the_parsers() {
        assert!(EMAIL_RULE.is_some() && SIGN_IN_EMAIL_RULE.is_some() && NAME_RULE.is_some());
        for raw in [" ada@example.com\t", "ada@b.c", "a.b+c@sub.example.co", "é@ü.de", "a@b..c", "a@b.c-", "a@-b.c"] {
            assert!(matches(&SIGN_IN_EMAIL_RULE, raw) == email(raw).is_ok(), "{raw:?}");
        }
        assert!(matches(&NAME_RULE, "\u{3000} Ada Lovelace\n") && !matches(&NAME_RULE, "\u{3000}\n"));
        assert!(!matches(&NAME_RULE, "Ada\u{85}Lovelace") && matches(&NAME_RULE, "\u{85}Ada"));
        assert!(Name::try_from("\u{85}Ada".to_string()).is_ok(), "U+0085 is a space at the edges");
    }

    #[test]
    fn new_addresses_take_the_common_form_and_stored_ones_stay_readable() {
        let new = |raw: &str| Email::parse_new(raw.to_string());
        for good in ["ada@example.com", "Ada.Lovelace+x@Sub.Example.CO", "a!#$%&'*+/=?^_`{|}~-@x.io", "a@1.2"] {
            assert!(new(good).is_ok(), "{good:?}");
        }
        let bad =
            ["é@ü.de", " ada@example.com", "a..b@x.io", ".a@x.io", "a.@x.io", "a@x_y.io", "a@ab--c.io", "a@x.io."];
        for bad in bad {
            assert!(new(bad).is_err(), "{bad:?} must be refused as a new address");
        }
        assert!(new(&format!("{}@x.io", "a".repeat(65))).is_err());
        assert!(new(&format!("a@{}.io", "b".repeat(64))).is_err());
        assert!(email("é@ü.de").is_ok() && email(" Ada@x.io").is_ok(), "signing in keeps the old rule");
    }

    #[test]
    fn lengths_count_the_characters_as_sent() {
        assert!(Name::try_from(format!(" {}", "x".repeat(MAX_NAME_CHARS))).is_err());
        assert!(email(&format!(" {}@example.com", "a".repeat(64).repeat(4))).is_err());
        assert!(email(&format!("{}@{}.com", "é".repeat(64), "ü".repeat(60))).is_ok(), "characters, not bytes");
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
        assert!(Password::parse("x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
        assert!(Password::parse("é".repeat(MAX_PASSWORD_CHARS)).is_ok(), "characters, not bytes");
        let password = Password::parse("correct horse".into()).expect("valid");
        assert!(!format!("{password:?}").contains("horse"));
        assert!(Password::candidate("short".into()).is_ok(), "login does not apply the creation rules");
    }
}
