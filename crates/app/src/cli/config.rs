//! `rust-app config`: the effective configuration, for an operator wondering where a value came from.

use std::fmt::Write;

use infra::settings::Config;

/// The effective configuration as an aligned table: variable, value, source.
pub fn render_effective_config(config: &Config) -> String {
    let entries = config.effective();
    let name_width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0).max("VARIABLE".len());
    let value_width = entries.iter().map(|e| e.value.len()).max().unwrap_or(0).max("VALUE".len());
    let mut out = String::new();
    let mut line = |name: &str, value: &str, source: &str| {
        let _ = writeln!(out, "{name:<name_width$}  {value:<value_width$}  {source}");
    };
    line("VARIABLE", "VALUE", "SOURCE");
    for entry in entries {
        line(entry.name, &entry.value, &entry.origin.to_string());
    }
    out
}
