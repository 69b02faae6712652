//! `rust-app outbox parked | unpark`: the operator's view of the outbox events parked after OUTBOX_MAX_ATTEMPTS
//! rejections (docs/architecture.md). Un-parking hands them back to the relay, which sends them again (and parks them
//! again if Kafka still rejects them).

use std::process::ExitCode;

use clap::Subcommand;
use infra::postgres::{PostgresClient, sql};
use infra::settings::Config;
use time::OffsetDateTime;

/// `rust-app outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List the parked events: seq, event type, key, size, attempts, when parked and the last error.
    Parked,
    /// Hand parked events back to the relay (their attempts start again from zero).
    Unpark {
        /// The `seq` of the events to un-park, as `parked` lists them.
        #[arg(required_unless_present = "all")]
        seq: Vec<i64>,
        /// Every parked event.
        #[arg(long, conflicts_with = "seq")]
        all: bool,
    },
}

/// A parked row: seq, event type, key, payload bytes, attempts, parked at, last error.
type ParkedRow = (i64, String, String, i32, i32, Option<OffsetDateTime>, Option<String>);

/// Runs an `outbox` subcommand; errors are printed and turned into a failing exit code.
pub fn run(config: &Config, action: OutboxAction) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let client = PostgresClient::connect_lazy(&config.postgres)?;
        let result = match action {
            OutboxAction::Parked => list(&client).await,
            OutboxAction::Unpark { seq, all } => unpark(&client, &seq, all).await,
        };
        client.close().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rust-app: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn list(client: &PostgresClient) -> anyhow::Result<()> {
    let rows: Vec<ParkedRow> = client
        .query(sql("SELECT seq, event_type, key, octet_length(payload::text), attempts, parked_at, last_error \
             FROM outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL ORDER BY seq"))
        .await?;
    println!("{} parked event(s)", rows.len());
    for (seq, event_type, key, bytes, attempts, parked_at, last_error) in rows {
        let parked_at = parked_at.map(|at| at.to_string()).unwrap_or_default();
        let error = last_error.unwrap_or_default();
        println!(
            "seq={seq} type={event_type} key={key} bytes={bytes} attempts={attempts} parked_at={parked_at} error={error}"
        );
    }
    Ok(())
}

async fn unpark(client: &PostgresClient, seqs: &[i64], all: bool) -> anyhow::Result<()> {
    let statement = sql("UPDATE outbox SET parked_at = NULL, attempts = 0 \
         WHERE parked_at IS NOT NULL AND sent_at IS NULL AND ($1 OR seq = ANY($2))")
    .bind(all)
    .bind(seqs.to_vec());
    let unparked = client.exec(statement).await?;
    println!("{unparked} event(s) handed back to the relay");
    Ok(())
}
