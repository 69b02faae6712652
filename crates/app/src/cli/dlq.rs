//! `rust-app dlq list | replay`: the operator's view of the dead-letter topic.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use infra::kafka::KafkaProducer;
use infra::kafka::dlq::{DeadLetter, ReplayFilter, read_dead_letters, replay};
use infra::settings::Config;

/// `rust-app dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Count the dead-lettered records and show a sample with their error headers.
    List {
        /// How many records to show.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
    /// Publish dead-lettered records again to the topic they came from (key, value and original headers).
    Replay {
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Only records at or after this offset of the dead-letter topic.
        #[arg(long)]
        from_offset: Option<i64>,
        /// Only records at or before this offset of the dead-letter topic.
        #[arg(long)]
        to_offset: Option<i64>,
        /// Show what would be replayed; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// How long reading the dead-letter topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Progress is printed every this many replayed records.
const PROGRESS_EVERY: usize = 100;

/// Runs a `dlq` subcommand; errors are printed and turned into a failing exit code.
pub fn run(config: &Config, action: DlqAction) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let letters = read_dead_letters(&config.kafka, READ_TIMEOUT).await?;
        match action {
            DlqAction::List { sample } => {
                list(&config.kafka.dlq_topic, &letters, sample);
                Ok(())
            }
            DlqAction::Replay { key, from_offset, to_offset, dry_run } => {
                let filter = ReplayFilter { key: key.map(String::into_bytes), from_offset, to_offset };
                replay_selected(config, &letters, &filter, dry_run).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rust-app: dlq: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn list(topic: &str, letters: &[DeadLetter], sample: usize) {
    println!("{topic}: {} dead-lettered record(s)", letters.len());
    for letter in letters.iter().take(sample) {
        println!("{}", describe(letter));
    }
    if letters.len() > sample {
        println!("... {} more (use --sample N)", letters.len() - sample);
    }
}

/// One line per dead letter: where it is, where it came from, why it failed.
fn describe(letter: &DeadLetter) -> String {
    let record = &letter.record;
    let origin = match (letter.original_topic(), letter.original_position()) {
        (Some(topic), Some((partition, offset))) => format!("{topic}/{partition}@{offset}"),
        _ => "unknown origin".to_string(),
    };
    let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    let attempts = letter.attempts().map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let error = letter.error().unwrap_or_default();
    format!(
        "  partition {} offset {}  from {origin}  key {key:?}  attempts {attempts}  error: {error}",
        record.partition, record.offset
    )
}

async fn replay_selected(
    config: &Config,
    letters: &[DeadLetter],
    filter: &ReplayFilter,
    dry_run: bool,
) -> anyhow::Result<()> {
    let selected: Vec<&DeadLetter> = letters.iter().filter(|l| filter.matches(l)).collect();
    let (replayable, orphans): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
        selected.into_iter().partition(|l| l.original_topic().is_some_and(|t| !t.is_empty()));
    for orphan in &orphans {
        eprintln!("skipped (no {} header):{}", infra::kafka::dlq::ORIGINAL_TOPIC, describe(orphan));
    }
    if dry_run {
        println!("dry run: {} record(s) would be replayed", replayable.len());
        for letter in &replayable {
            println!("{}", describe(letter));
        }
        return Ok(());
    }
    let producer = KafkaProducer::connect_lazy(&config.kafka)?;
    let total = replayable.len();
    let progress = Progress { total, on_terminal: std::io::stderr().is_terminal() };
    for (done, letter) in replayable.iter().enumerate() {
        replay(&producer, letter).await?;
        progress.replayed(done + 1, &mut std::io::stderr());
    }
    progress.finish(&mut std::io::stderr());
    println!("replayed {total} record(s) from {}", config.kafka.dlq_topic);
    Ok(())
}

/// A replay's progress: one line on stderr rewritten in place (`\r`), only when stderr is a terminal — in a log
/// file or a pipe those rewrites are noise, and the closing `replayed N record(s)` line says it all.
struct Progress {
    total: usize,
    on_terminal: bool,
}

impl Progress {
    /// Shows `done` of the total every PROGRESS_EVERY records and at the last one.
    fn replayed(&self, done: usize, out: &mut impl Write) {
        if self.on_terminal && (done.is_multiple_of(PROGRESS_EVERY) || done == self.total) {
            let _ = write!(out, "\rreplayed {done}/{}", self.total);
            let _ = out.flush();
        }
    }

    /// Ends the progress line, if one was shown.
    fn finish(&self, out: &mut impl Write) {
        if self.on_terminal && self.total > 0 {
            let _ = writeln!(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(on_terminal: bool, total: usize) -> String {
        let progress = Progress { total, on_terminal };
        let mut out = Vec::new();
        for done in 1..=total {
            progress.replayed(done, &mut out);
        }
        progress.finish(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn progress_is_rewritten_in_place_on_a_terminal() {
        assert_eq!(shown(true, 250), "\rreplayed 100/250\rreplayed 200/250\rreplayed 250/250\n");
        assert_eq!(shown(true, 3), "\rreplayed 3/3\n");
        assert_eq!(shown(true, 0), "");
    }

    #[test]
    fn no_progress_when_not_on_a_terminal() {
        assert_eq!(shown(false, 250), "");
    }
}
