//! Reads typed values out of [`Sources`], collecting every problem instead of stopping at the first.
//!
//! Each read returns a usable value (the default when the raw value is bad) so the caller can keep reading and
//! the user sees all problems in one run, one line each. Every read is also recorded with its origin so
//! `rust-app config` can show the effective configuration.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use super::redact::{Sensitivity, redact_url, redact_value};
use super::source::{Origin, Sources};

/// The unit a bare number stands for in a duration variable (the seed's convention: timeouts in seconds,
/// lifetimes and idle times in minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A bare `500` means half a second (thresholds below a second).
    Milliseconds,
    /// A bare `5` means five seconds.
    Seconds,
    /// A bare `5` means five minutes.
    Minutes,
}

impl Unit {
    fn duration(self, amount: u64) -> Option<Duration> {
        match self {
            Unit::Milliseconds => Some(Duration::from_millis(amount)),
            Unit::Seconds => Some(Duration::from_secs(amount)),
            Unit::Minutes => amount.checked_mul(60).map(Duration::from_secs),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
            Unit::Minutes => "minutes",
        }
    }
}

/// One configuration problem: the variable, its offending value (secrets masked) and the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Variable name, e.g. `REDIS_POOL_SIZE`.
    pub name: String,
    /// The offending value as shown to humans (already redacted), `None` when the value is absent.
    pub value: Option<String>,
    /// Where the value came from.
    pub origin: Origin,
    /// The rule the value breaks, e.g. `must be a positive integer`.
    pub rule: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={:?} ({}): {}", self.name, value, self.origin, self.rule),
            None => write!(f, "{} ({}): {}", self.name, self.origin, self.rule),
        }
    }
}

/// One line of the effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Variable name.
    pub name: &'static str,
    /// Effective value, redacted where secret.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// Reads variables one by one, recording problems and the effective configuration.
#[derive(Debug)]
pub struct Reader<'a> {
    sources: &'a Sources,
    problems: Vec<Problem>,
    entries: Vec<Entry>,
}

impl<'a> Reader<'a> {
    /// Starts reading from `sources`.
    pub fn new(sources: &'a Sources) -> Self {
        let mut problems = Vec::new();
        if let Some(error) = sources.dotenv_error() {
            problems.push(Problem {
                name: ".env".to_string(),
                value: None,
                origin: Origin::DotEnv,
                rule: format!("the file {error}"),
            });
        }
        Reader { sources, problems, entries: Vec::new() }
    }

    /// A required, non-empty string.
    pub fn string(&mut self, name: &'static str, default: &str) -> String {
        self.read(name, Sensitivity::Plain, default.to_string(), |raw| Ok(raw.trim().to_string()))
    }

    /// A string with a custom parser that returns the rule broken on failure.
    pub fn parsed<T, F>(&mut self, name: &'static str, sensitivity: Sensitivity, default: T, parse: F) -> T
    where
        T: fmt::Display,
        F: FnOnce(&str) -> Result<T, String>,
    {
        self.read(name, sensitivity, default, parse)
    }

    /// A secret; the empty default means "not set".
    pub fn secret(&mut self, name: &'static str) -> SecretString {
        let (raw, origin) = self.raw(name);
        let value = raw.map(str::to_string).unwrap_or_default();
        let shown = if value.is_empty() { String::new() } else { "***".to_string() };
        self.entries.push(Entry { name, value: shown, origin });
        SecretString::from(value)
    }

    /// A URL-like secret (DSN): the password part is masked wherever it is shown.
    pub fn secret_url<F>(&mut self, name: &'static str, default: &str, validate: F) -> SecretString
    where
        F: FnOnce(&str) -> Result<(), String>,
    {
        let (raw, origin) = self.raw(name);
        let value = raw.unwrap_or(default).trim().to_string();
        if let Err(rule) = validate(&value) {
            self.problem(name, Some(redact_value(&value, Sensitivity::Url)), origin, rule);
        }
        self.entries.push(Entry { name, value: redact_value(&value, Sensitivity::Url), origin });
        SecretString::from(value)
    }

    /// An integer in `min..=max`.
    pub fn int<T>(&mut self, name: &'static str, default: T, min: i64, max: i64) -> T
    where
        T: TryFrom<i64> + Copy + fmt::Display,
    {
        let rule = integer_rule(min, max);
        self.read(name, Sensitivity::Plain, default, |raw| {
            let n: i64 = raw.trim().parse().map_err(|_| rule.clone())?;
            if n < min || n > max {
                return Err(rule.clone());
            }
            T::try_from(n).map_err(|_| rule.clone())
        })
    }

    /// A duration: a bare number in `unit`, or a value with its unit (`500ms`, `2m`, `1h`).
    /// `allow_zero` is for settings where zero means "no limit".
    pub fn duration(&mut self, name: &'static str, default: Duration, unit: Unit, allow_zero: bool) -> Duration {
        let (raw, origin) = self.raw(name);
        let value = match raw {
            None => default,
            Some(raw) => match parse_duration(raw, unit, allow_zero) {
                Ok(value) => value,
                Err(rule) => {
                    self.problem(name, Some(raw.to_string()), origin, rule);
                    default
                }
            },
        };
        self.entries.push(Entry { name, value: humantime::format_duration(value).to_string(), origin });
        value
    }

    /// One of a fixed set of words, compared case-insensitively; returns the canonical spelling.
    pub fn choice(&mut self, name: &'static str, default: &'static str, allowed: &[&'static str]) -> &'static str {
        let rule = format!("must be one of {}", allowed.join(", "));
        self.read(name, Sensitivity::Plain, default, |raw| {
            allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(raw.trim())).ok_or(rule)
        })
    }

    /// A boolean: true/false, 1/0, yes/no, on/off (any case).
    pub fn bool(&mut self, name: &'static str, default: bool) -> bool {
        self.read(name, Sensitivity::Plain, default, |raw| match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("must be true or false".to_string()),
        })
    }

    /// An optional path to a file that must exist and be readable; empty means not set.
    pub fn optional_file(&mut self, name: &'static str) -> Option<std::path::PathBuf> {
        let (raw, origin) = self.raw(name);
        let path = raw.map(|raw| std::path::PathBuf::from(raw.trim()));
        if let Some(path) = &path
            && let Err(err) = std::fs::File::open(path)
        {
            self.problem(name, raw.map(str::to_string), origin, format!("must be a readable file ({err})"));
        }
        let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        self.entries.push(Entry { name, value: shown, origin });
        path
    }

    /// Records a problem found by a rule that spans several variables (e.g. idle > open connections).
    pub fn cross_check(&mut self, name: &'static str, rule: String) {
        let (raw, origin) = self.raw(name);
        // Masked: a URL among the variables (REDIS_ADDR, a DSN) may carry a password.
        let shown = raw.map(redact_url);
        self.problem(name, shown, origin, rule);
    }

    /// Where `name`'s value comes from.
    pub fn origin(&self, name: &str) -> Origin {
        self.raw(name).1
    }

    /// The problems found so far.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Ends reading: the effective configuration, or every problem found.
    pub fn finish(self) -> Result<Vec<Entry>, Vec<Problem>> {
        if self.problems.is_empty() { Ok(self.entries) } else { Err(self.problems) }
    }

    fn read<T, F>(&mut self, name: &'static str, sensitivity: Sensitivity, default: T, parse: F) -> T
    where
        T: fmt::Display,
        F: FnOnce(&str) -> Result<T, String>,
    {
        let (raw, origin) = self.raw(name);
        let value = match raw {
            None => default,
            Some(raw) => match parse(raw) {
                Ok(value) => value,
                Err(rule) => {
                    self.problem(name, Some(redact_value(raw, sensitivity)), origin, rule);
                    default
                }
            },
        };
        self.entries.push(Entry { name, value: redact_value(&value.to_string(), sensitivity), origin });
        value
    }

    fn raw(&self, name: &str) -> (Option<&'a str>, Origin) {
        match self.sources.lookup(name) {
            Some((value, origin)) => (Some(value), origin),
            None => (None, Origin::Default),
        }
    }

    fn problem(&mut self, name: &str, value: Option<String>, origin: Origin, rule: String) {
        self.problems.push(Problem { name: name.to_string(), value, origin, rule });
    }
}

/// Upper bounds at or above this read as "no upper bound" in messages (nobody needs 4 billion connections).
const UNBOUNDED: i64 = u32::MAX as i64;

fn integer_rule(min: i64, max: i64) -> String {
    match (min, max) {
        (0, UNBOUNDED..) => "must be a non-negative integer".to_string(),
        (1, UNBOUNDED..) => "must be a positive integer".to_string(),
        (min, UNBOUNDED..) => format!("must be an integer of at least {min}"),
        (min, max) => format!("must be an integer from {min} to {max}"),
    }
}

/// Parses a duration the way the seed's variables expect: a bare number is in `unit`; a value with a unit
/// suffix is read by `humantime` (`500ms`, `30s`, `2m`, `1h`, `1h 30m`).
pub fn parse_duration(raw: &str, unit: Unit, allow_zero: bool) -> Result<Duration, String> {
    let raw = raw.trim();
    let shape = format!(
        "must be a duration: a whole number of {} or a number with a unit such as 500ms, 30s, 2m, 1h",
        unit.name()
    );
    if raw.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let value = if raw.bytes().all(|b| b.is_ascii_digit()) {
        let amount: u64 = raw.parse().map_err(|_| shape.clone())?;
        unit.duration(amount).ok_or_else(|| shape.clone())?
    } else {
        humantime::parse_duration(raw).map_err(|_| shape)?
    };
    if value.is_zero() && !allow_zero {
        return Err("must be greater than zero".to_string());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_take_the_variables_unit() {
        assert_eq!(parse_duration("5", Unit::Seconds, false), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5", Unit::Minutes, false), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn values_with_a_unit_are_accepted() {
        assert_eq!(parse_duration("500ms", Unit::Seconds, false), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m", Unit::Seconds, false), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h", Unit::Minutes, false), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 1h 30m ", Unit::Minutes, false), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn zero_is_accepted_only_where_it_means_no_limit() {
        assert_eq!(parse_duration("0", Unit::Minutes, true), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0", Unit::Seconds, false), Err("must be greater than zero".to_string()));
        assert_eq!(parse_duration("0ms", Unit::Seconds, false), Err("must be greater than zero".to_string()));
    }

    #[test]
    fn garbage_and_negative_values_are_rejected() {
        assert_eq!(parse_duration("-5", Unit::Seconds, false), Err("must not be negative".to_string()));
        for raw in ["abc", "5 parsecs", "1.5", "", "99999999999999999999"] {
            let err = parse_duration(raw, Unit::Seconds, true).expect_err(raw);
            assert!(err.starts_with("must be a duration"), "{raw}: {err}");
        }
    }

    #[test]
    fn integer_rules_read_naturally() {
        assert_eq!(integer_rule(1, i64::MAX), "must be a positive integer");
        assert_eq!(integer_rule(1, i64::from(u32::MAX)), "must be a positive integer");
        assert_eq!(integer_rule(0, i64::from(u32::MAX)), "must be a non-negative integer");
        assert_eq!(integer_rule(1, 65535), "must be an integer from 1 to 65535");
    }
}
