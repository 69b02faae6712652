//! Where configuration values come from, and which source wins.
//!
//! Precedence, highest first: the process environment, then a `.env` file in the working directory, then the
//! built-in default. Sources are plain maps so tests can build them without touching the process environment
//! (which is global and would make parallel tests interfere).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// The source a configuration value was taken from, shown by `rust-app config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it: the built-in default applies.
    Default,
    /// The `.env` file in the working directory.
    DotEnv,
    /// The process environment.
    Environment,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::DotEnv => ".env",
            Origin::Environment => "environment",
        })
    }
}

/// The raw name → value maps configuration is read from.
#[derive(Clone, Default)]
pub struct Sources {
    environment: HashMap<String, String>,
    dotenv: HashMap<String, String>,
    dotenv_error: Option<String>,
}

impl fmt::Debug for Sources {
    // Values may be secrets: show only which names are present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut env: Vec<_> = self.environment.keys().collect();
        let mut dotenv: Vec<_> = self.dotenv.keys().collect();
        env.sort();
        dotenv.sort();
        f.debug_struct("Sources").field("environment", &env).field("dotenv", &dotenv).finish()
    }
}

impl Sources {
    /// Reads the process environment and, when it exists, the `.env` file at `dotenv_path`.
    ///
    /// A `.env` file that cannot be parsed is not fatal here: it becomes one of the configuration problems
    /// reported together by [`crate::settings::Config::from_sources`].
    pub fn from_process(dotenv_path: &Path) -> Self {
        let environment = std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        let (dotenv, dotenv_error) = read_dotenv(dotenv_path);
        Sources { environment, dotenv, dotenv_error }
    }

    /// Builds sources from explicit maps; used by tests and by callers that embed the library.
    pub fn from_maps<E, D>(environment: E, dotenv: D) -> Self
    where
        E: IntoIterator<Item = (String, String)>,
        D: IntoIterator<Item = (String, String)>,
    {
        Sources {
            environment: environment.into_iter().collect(),
            dotenv: dotenv.into_iter().collect(),
            dotenv_error: None,
        }
    }

    /// Convenience for tests: only environment variables, no `.env`.
    pub fn from_env_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::from_maps(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())), [])
    }

    /// The value set for `name`, with its origin. An empty value counts as unset, so `VAR=` in a compose file
    /// or `.env` falls back to the default instead of becoming an invalid empty setting.
    pub fn lookup(&self, name: &str) -> Option<(&str, Origin)> {
        non_empty(&self.environment, name)
            .map(|v| (v, Origin::Environment))
            .or_else(|| non_empty(&self.dotenv, name).map(|v| (v, Origin::DotEnv)))
    }

    /// Why the `.env` file could not be read, if it exists but is malformed.
    pub fn dotenv_error(&self) -> Option<&str> {
        self.dotenv_error.as_deref()
    }
}

fn non_empty<'m>(map: &'m HashMap<String, String>, name: &str) -> Option<&'m str> {
    map.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn read_dotenv(path: &Path) -> (HashMap<String, String>, Option<String>) {
    if !path.exists() {
        return (HashMap::new(), None);
    }
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(err) => return (HashMap::new(), Some(describe_dotenv_error(&err))),
    };
    let mut values = HashMap::new();
    for item in iter {
        match item {
            Ok((k, v)) => {
                values.insert(k, v);
            }
            Err(err) => return (values, Some(describe_dotenv_error(&err))),
        }
    }
    (values, None)
}

/// dotenvy's parse errors quote the offending line, which may hold a secret: keep only the position.
fn describe_dotenv_error(err: &dotenvy::Error) -> String {
    match err {
        dotenvy::Error::LineParse(_, index) => format!("cannot be parsed near character {index}"),
        dotenvy::Error::Io(io) => format!("cannot be read: {io}"),
        _ => "cannot be parsed".to_string(),
    }
}
