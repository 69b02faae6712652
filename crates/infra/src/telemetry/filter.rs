//! Which spans and events a layer takes, from `RUST_LOG`-style directives.
//!
//! `EnvFilter` reads the directives of every kind, span and field ones included (`[http.request]=debug`), and
//! pays for them on every span: as a per-layer filter it takes a shared read lock on its span map when a span is
//! created, entered, exited and closed, whether or not a directive names a span. The usual directives name only
//! targets and levels (`info`, `info,infra=debug`), which `Targets` decides from the callsite alone — so those
//! get a `Targets`, and `EnvFilter` is kept for the directives that need it.

use std::fmt;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::registry::LookupSpan;

/// A parsed filter: [`Targets`] for target and level directives, [`EnvFilter`] for anything more.
pub enum LogFilter {
    /// Only targets and levels.
    Targets(Box<Targets>),
    /// Span or field directives too.
    Env(Box<EnvFilter>),
}

impl LogFilter {
    /// Parses `directives` (`RUST_LOG` syntax); the error says what is wrong.
    pub fn parse(directives: &str) -> Result<Self, String> {
        let directives = directives.trim();
        // Span and field directives are written in brackets (`target[span{field=value}]=level`); `Targets`
        // would parse and drop them, so they go to `EnvFilter`, as does anything `Targets` refuses.
        let names_spans = directives.contains(['[', '{']);
        match directives.parse::<Targets>() {
            // An empty `Targets` enables nothing where an empty `EnvFilter` keeps errors: left to `EnvFilter`.
            Ok(targets) if !names_spans && !directives.is_empty() => Ok(LogFilter::Targets(Box::new(targets))),
            _ => EnvFilter::try_new(directives).map(|env| LogFilter::Env(Box::new(env))).map_err(|err| err.to_string()),
        }
    }

    /// The filter for a layer of subscriber `S`.
    pub fn boxed<S>(self) -> Box<dyn Filter<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        match self {
            LogFilter::Targets(targets) => targets,
            LogFilter::Env(env) => env,
        }
    }
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogFilter::Targets(targets) => write!(f, "Targets({targets})"),
            LogFilter::Env(env) => write!(f, "Env({env})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_level_directives_are_targets_and_span_directives_keep_env_filter() {
        for plain in ["info", "warn,infra=debug", "off", "info,h2=off,opentelemetry_sdk=off", " debug "] {
            assert!(matches!(LogFilter::parse(plain), Ok(LogFilter::Targets(_))), "{plain}");
        }
        for dynamic in ["[http.request]=debug", "info,[{user_id}]=trace", "app[span{field=1}]=trace"] {
            assert!(matches!(LogFilter::parse(dynamic), Ok(LogFilter::Env(_))), "{dynamic}");
        }
        assert!(LogFilter::parse("info,infra=loud").is_err());
        assert!(matches!(LogFilter::parse(""), Ok(LogFilter::Env(_))), "an empty filter keeps EnvFilter's default");
    }

    #[test]
    fn targets_decide_as_env_filter_does() {
        use tracing::Level;
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;

        let decisions = |filter: LogFilter| {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let recorder = Recorder(seen.clone());
            let subscriber = tracing_subscriber::registry().with(recorder.with_filter(filter.boxed()));
            tracing::subscriber::with_default(subscriber, || {
                tracing::event!(target: "app::http", Level::INFO, "a");
                tracing::event!(target: "app::http", Level::DEBUG, "b");
                tracing::event!(target: "infra::redis", Level::DEBUG, "c");
                tracing::event!(target: "infra::redis::cache", Level::TRACE, "d");
                tracing::event!(target: "h2", Level::WARN, "e");
            });
            seen.lock().map(|seen| seen.clone()).unwrap_or_default()
        };
        let directives = "INFO,infra=Debug,infra::redis::cache=trace,h2=off";
        let targets = decisions(LogFilter::parse(directives).expect("parses"));
        let env = decisions(LogFilter::Env(Box::new(EnvFilter::new(directives))));
        assert_eq!(targets, ["a", "c", "d"]);
        assert_eq!(targets, env);
    }

    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut message = String::new();
            event.record(&mut |field: &tracing::field::Field, value: &dyn fmt::Debug| {
                if field.name() == "message" {
                    message = format!("{value:?}");
                }
            });
            if let Ok(mut seen) = self.0.lock() {
                seen.push(message);
            }
        }
    }
}
