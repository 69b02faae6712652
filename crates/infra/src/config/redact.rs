//! Masking secrets before a value is shown anywhere (config listing, error messages, logs).

const MASK: &str = "***";

/// How a configuration value is shown to humans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    /// Printed as is.
    Plain,
    /// A whole-value secret (a password): printed as `***` when set.
    Secret,
    /// A connection URL whose password part is masked (`postgres://user:***@host/db`).
    Url,
}

/// Shows `raw` according to its sensitivity: secrets become `***`, URLs keep everything but the password.
pub fn redact_value(raw: &str, sensitivity: Sensitivity) -> String {
    match sensitivity {
        Sensitivity::Plain => raw.to_string(),
        Sensitivity::Secret if raw.is_empty() => String::new(),
        Sensitivity::Secret => MASK.to_string(),
        Sensitivity::Url => redact_url(raw),
    }
}

/// Masks the password of a connection URL (`postgres://user:secret@host/db` → `postgres://user:***@host/db`).
///
/// Works on malformed URLs too, because those are exactly the ones printed in error messages: the user-info
/// part is located textually (between `://` and the last `@` before the path), and anything that still looks
/// like it could carry a password (`password=` in a key/value string) is masked whole. A comma-separated list
/// of URLs (Redis Cluster seed nodes) has each URL masked; a comma inside a password stays part of its URL.
pub fn redact_url(raw: &str) -> String {
    let mut urls: Vec<String> = Vec::new();
    for part in raw.split(',') {
        match urls.last_mut() {
            Some(url) if !part.contains("://") => {
                url.push(',');
                url.push_str(part);
            }
            _ => urls.push(part.to_string()),
        }
    }
    urls.iter().map(|url| redact_one_url(url)).collect::<Vec<_>>().join(",")
}

fn redact_one_url(raw: &str) -> String {
    if let Some(scheme_end) = raw.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &raw[rest_start..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let masked_userinfo = match userinfo.find(':') {
                Some(colon) => format!("{}:{MASK}", &userinfo[..colon]),
                None => userinfo.to_string(),
            };
            return format!("{}{}{}", &raw[..rest_start], masked_userinfo, &rest[at..]);
        }
        if !raw.to_ascii_lowercase().contains("password") {
            return raw.to_string();
        }
    } else if !raw.contains('@') && !raw.to_ascii_lowercase().contains("password") {
        return raw.to_string();
    }
    MASK.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_password_of_a_url() {
        assert_eq!(
            redact_url("postgres://rust_app_user:rust_app_password@localhost:5432/rust_app?sslmode=disable"),
            "postgres://rust_app_user:***@localhost:5432/rust_app?sslmode=disable"
        );
        assert_eq!(redact_url("redis://:pw@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("postgres://user@host/db"), "postgres://user@host/db");
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
    }

    #[test]
    fn masks_every_url_of_a_list() {
        assert_eq!(redact_url("redis://:a@n1:7000,redis://u:b@n2:7000"), "redis://:***@n1:7000,redis://u:***@n2:7000");
        assert_eq!(redact_url("redis://:pa,ss@n1:7000"), "redis://:***@n1:7000");
        assert_eq!(redact_url("n1:7000, n2:7000"), "n1:7000, n2:7000");
    }

    #[test]
    fn masks_malformed_urls_too() {
        // A password containing '@' and a broken port: still masked.
        assert_eq!(redact_url("postgres://u:p@ss@host:99999/db"), "postgres://u:***@host:99999/db");
        assert_eq!(redact_url("host=db password=hunter2"), MASK);
        assert_eq!(redact_url("u:hunter2@host"), MASK);
        assert_eq!(redact_url("postgres://host/db?password=hunter2"), MASK);
    }

    #[test]
    fn secrets_are_masked_whole_but_empty_stays_empty() {
        assert_eq!(redact_value("hunter2", Sensitivity::Secret), MASK);
        assert_eq!(redact_value("", Sensitivity::Secret), "");
        assert_eq!(redact_value("plain", Sensitivity::Plain), "plain");
    }
}

/// A secret as the configuration reader shows it: `***` when set, empty when not. Never its text. Parsers of
/// secret variables return it so the value listed by `rust-app config` and in problems is the mask.
#[derive(Default)]
pub struct Masked(pub secrecy::SecretString);

impl std::fmt::Display for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use secrecy::ExposeSecret;
        f.write_str(if self.0.expose_secret().is_empty() { "" } else { "***" })
    }
}
