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

/// Masks the secrets of a connection URL, or of a comma-separated list of them (Redis Cluster seed nodes).
///
/// Built so that no spelling of a password can come through, because the values shown here are exactly the
/// ones a human got wrong: a password with an unencoded `#`, `/`, `?` or `&` makes a URL parse differently
/// from what was meant (`postgres://u:12#SECRET@db/app` parses as host `u`, port 12, fragment `SECRET@db/app`).
///
/// - A URL that parses, names a host and has no `@` after its host part is rebuilt: the user-info password
///   becomes `***`, the first query parameter whose name looks secret (`password`, `sslpassword`, `token`, ...)
///   becomes `***` and the parameters after it are left out (an `&` in the password would have made its tail
///   look like further parameters), and the fragment is dropped. Nothing else of it can hold the password.
/// - A list is shown as is only when every item is a plain `host:port` or a URL without user info, query or
///   fragment; a password split across items by a comma always leaves an item that is not plain.
/// - A value without `://`, `@` or a secret-looking word (`localhost:6379`, `26`) is shown as is.
/// - Anything else is masked whole after its scheme: `postgres://***`.
pub fn redact_url(raw: &str) -> String {
    if raw.contains("://") {
        if let Some(url) = unambiguous_url(raw) {
            return redact_parsed(raw, url);
        }
    } else if !raw.contains('@') && !looks_secret(raw) {
        return raw.to_string();
    }
    if raw.contains(',') && raw.split(',').all(is_plain_node) {
        return raw.to_string();
    }
    mask_after_scheme(raw)
}

/// Parses `raw` as a URL with a host, unless the text shows an `@` after the host part: then the user info
/// was cut short by a `/`, `?`, `#` or `\` in the password, and parts of the password sit in the path, query
/// or fragment. Such a URL is refused (configuration) or masked whole (display), never trusted.
pub(crate) fn unambiguous_url(raw: &str) -> Option<url::Url> {
    let url = url::Url::parse(raw).ok()?;
    let (_, after_scheme) = raw.split_once("://")?;
    let authority_end = after_scheme.find(['/', '\\', '?', '#']).unwrap_or(after_scheme.len());
    let has_host = url.host_str().is_some_and(|host| !host.is_empty());
    (has_host && !after_scheme[authority_end..].contains('@')).then_some(url)
}

/// Rebuilds a parsed URL without its secrets; returns `raw` untouched when it has none.
fn redact_parsed(raw: &str, mut url: url::Url) -> String {
    let secret_query = url.query_pairs().any(|(name, _)| looks_secret(&name));
    if url.password().is_none() && !secret_query && url.fragment().is_none() {
        return raw.to_string();
    }
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return mask_after_scheme(raw);
    }
    url.set_fragment(None);
    if secret_query {
        let kept = query_up_to_first_secret(&url);
        url.set_query(Some(&kept));
    }
    url.to_string()
}

/// The query's parameters before the first secret-looking one, then that one with its value masked.
fn query_up_to_first_secret(url: &url::Url) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url.query_pairs() {
        if looks_secret(&name) {
            query.append_pair(&name, MASK);
            break;
        }
        query.append_pair(&name, &value);
    }
    query.finish()
}

/// Words that mark a parameter name (or a non-URL value) as holding a secret, lowercase.
const SECRET_WORDS: [&str; 4] = ["pass", "pwd", "secret", "token"];

fn looks_secret(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| lower.contains(word))
}

/// An item of a list that cannot hold (part of) a password: `host:port`, or a URL with nothing but a scheme,
/// host, port and path.
fn is_plain_node(item: &str) -> bool {
    let item = item.trim();
    if item.contains('@') || looks_secret(item) {
        return false;
    }
    if !item.contains("://") {
        return item.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    }
    unambiguous_url(item).is_some_and(|url| {
        url.username().is_empty() && url.password().is_none() && url.query().is_none() && url.fragment().is_none()
    })
}

/// `scheme://***` when the value starts with a well-formed scheme, `***` otherwise.
fn mask_after_scheme(raw: &str) -> String {
    let scheme = raw.trim().split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(scheme) if is_scheme(scheme) => format!("{scheme}://{MASK}"),
        _ => MASK.to_string(),
    }
}

fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Parsed URLs keep everything but the user-info password and the first secret parameter with what
    /// follows it (an unencoded '&' or '#' in the password: its tail is neither a parameter nor a fragment).
    #[test]
    fn masks_only_the_password_of_a_parsed_url() {
        let cases = [
            (
                "postgres://app:pw@localhost:5432/app?sslmode=disable",
                "postgres://app:***@localhost:5432/app?sslmode=disable",
            ),
            ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://:p@ss@host:6379", "redis://:***@host:6379"),
            ("postgres://user@host/db", "postgres://user@host/db"),
            ("postgres://host/db", "postgres://host/db"),
            ("postgres://u:p@ss@host:0/db", "postgres://u:***@host:0/db"),
            ("postgres://u@db/app?password=SECRET", "postgres://u@db/app?password=***"),
            (
                "postgres://u@db/app?sslmode=disable&sslpassword=SECRET&x=1",
                "postgres://u@db/app?sslmode=disable&sslpassword=***",
            ),
            ("postgres://u@db/app?password=ab&SECRET", "postgres://u@db/app?password=***"),
            ("postgres://u@db/app?password=ab#SECRET", "postgres://u@db/app?password=***"),
            ("postgres://u@db/app?PassWord=SECRET", "postgres://u@db/app?PassWord=***"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }

    #[test]
    fn a_password_that_changes_how_the_url_parses_masks_it_whole() {
        for raw in [
            "postgres://u:abc#SECRET@db/app",
            "postgres://u:12#SECRET@db/app",
            "postgres://u:12/SECRET@db/app",
            "postgres://u:12?SECRET@db/app",
            "http://u:12\\SECRET@collector:4317",
            "postgres://u@db/app?password=ab@SECRET",
            "postgres://u:SECRET@db:99999/app",
        ] {
            let scheme = raw.split_once("://").map(|(scheme, _)| scheme).unwrap_or_default();
            assert_eq!(redact_url(raw), format!("{scheme}://***"), "{raw}");
        }
        assert_eq!(redact_url("postgres://u:p@h/db#SECRET"), "postgres://u:***@h/db", "fragments are dropped");
    }

    #[test]
    fn masks_lists_unless_every_node_is_plain() {
        assert_eq!(redact_url("redis://n1:7000,redis://n2:7000"), "redis://n1:7000,redis://n2:7000");
        assert_eq!(redact_url("n1:7000, n2:7000"), "n1:7000, n2:7000");
        assert_eq!(redact_url("redis://:a@n1:7000,redis://u:b@n2:7000"), "redis://***");
        // A comma in a password splits it into what look like further nodes.
        assert_eq!(redact_url("redis://u:1,redis://SECRET@n1:7000"), "redis://***");
        assert_eq!(redact_url("redis://u:1,SECRET@n1:7000"), "redis://u:***@n1:7000", "one URL, password 1,SECRET");
    }

    #[test]
    fn masks_malformed_values_too() {
        assert_eq!(redact_url("host=db password=hunter2"), MASK);
        assert_eq!(redact_url("u:hunter2@host"), MASK);
        assert_eq!(redact_url("user:pa://ss@host"), MASK, "no well-formed scheme to keep");
        assert_eq!(redact_url("localhost:6379"), "localhost:6379");
        assert_eq!(redact_url("26"), "26");
    }

    #[test]
    fn secrets_are_masked_whole_but_empty_stays_empty() {
        assert_eq!(redact_value("hunter2", Sensitivity::Secret), MASK);
        assert_eq!(redact_value("", Sensitivity::Secret), "");
        assert_eq!(redact_value("plain", Sensitivity::Plain), "plain");
    }

    /// Printable ASCII and a little beyond, with the URL delimiters over-represented, around a marker that
    /// makes "the password appears" meaningful.
    fn password() -> impl Strategy<Value = String> {
        let part = "([#/?@:%&=,+;\\\\\\[\\] ]|[!-~]|é){0,8}";
        (part, part).prop_map(|(before, after)| format!("{before}Pw9marker{after}"))
    }

    fn leaks(shown: &str, password: &str) -> bool {
        let shown = shown.to_lowercase();
        shown.contains("pw9marker") || shown.contains(&password.to_lowercase())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_password_survives_redaction(password in password(), shape in 0..6usize) {
            let raw = match shape {
                0 => format!("postgres://user:{password}@db.internal:5432/app?sslmode=disable"),
                1 => format!("postgres://user@db.internal/app?password={password}"),
                2 => format!("postgres://user@db.internal/app?sslmode=require&sslpassword={password}&x=1"),
                3 => format!("redis://:{password}@cache:6379"),
                4 => format!("redis://:{password}@n1:7000,redis://n2:7000"),
                _ => format!("http://:{password}@collector:4317"),
            };
            let shown = redact_url(&raw);
            prop_assert!(!leaks(&shown, &password), "{raw} shown as {shown}");
        }
    }
}
