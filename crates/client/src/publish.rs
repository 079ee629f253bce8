//! `ordersvc publish`: puts messages on the stream exactly as given (no validation: the point is
//! to exercise the service's defences), with publish acks pipelined.

use std::io::Read;
use std::path::PathBuf;

use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use color_eyre::eyre::{bail, Result, WrapErr};
use serde::Deserialize;

use crate::generate;
use crate::publisher::{self, Outcome, Pipeline, PublishSummary, RetryArgs};
use crate::samples::SAMPLES;
use ordersvc_service::bus;
use ordersvc_service::config::NatsArgs;
use ordersvc_service::order::OrderUid;

/// A progress bar is shown from this many messages on.
const PROGRESS_FROM: u64 = 20;

/// Settings of `ordersvc publish`.
#[derive(Args, Clone, Debug)]
pub struct PublishArgs {
    /// Where the stream is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// File to publish as one message; `-` reads stdin. Repeatable. Without it, the embedded
    /// testdata samples (valid and invalid) are published.
    #[arg(short = 'j', long = "json", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Publish every non-empty line of each file as its own message (JSON Lines).
    #[arg(long)]
    pub lines: bool,
    /// Publish acks awaited at once (the pipelining window).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub in_flight: u32,
    /// How long each message may be retried.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Publish N generated valid orders (1 to 20 items, ids `bench-<seed>-<n>`) instead of files.
    #[arg(long, value_name = "N", conflicts_with_all = ["files", "lines"])]
    pub generate: Option<u64>,
    /// Seed of `--generate`: the same seed gives the same orders (a fresh one if not given).
    #[arg(long, requires = "generate")]
    pub seed: Option<u64>,
}

/// Publishes and prints the summary; fails if any message could not be published.
pub fn run(args: PublishArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    let summary = match args.generate {
        Some(count) => {
            let seed = args.seed.unwrap_or_else(generate::random_seed);
            eprintln!(
                "publishing {count} generated orders, seed {seed}: ids {} and on",
                generate::uid(seed, 0)
            );
            // Generated one at a time as they are sent: a million orders never sit in memory.
            let generated = (0..count).map(move |n| {
                (
                    generate::uid(seed, n),
                    Bytes::from(generate::order_bytes(seed, n)),
                )
            });
            runtime.block_on(publish(&args, count, generated))?
        }
        None => {
            let messages = collect(&args)?;
            runtime.block_on(publish(&args, messages.len() as u64, messages))?
        }
    };
    println!("{summary}");
    if summary.failed > 0 {
        bail!("{} message(s) could not be published", summary.failed);
    }
    Ok(())
}

/// The messages to publish, each with a label for error messages.
fn collect(args: &PublishArgs) -> Result<Vec<(String, Bytes)>> {
    if args.files.is_empty() {
        return Ok(SAMPLES
            .iter()
            .map(|s| (s.name.to_owned(), Bytes::from_static(s.bytes)))
            .collect());
    }
    let mut messages = Vec::new();
    for path in &args.files {
        let label = path.display().to_string();
        let content = if label == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .wrap_err("cannot read stdin")?;
            buf
        } else {
            std::fs::read(path).wrap_err_with(|| format!("cannot read {label}"))?
        };
        if args.lines {
            for (n, line) in content.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    messages.push((format!("{label}:{}", n + 1), Bytes::copy_from_slice(line)));
                }
            }
        } else {
            messages.push((label, Bytes::from(content)));
        }
    }
    Ok(messages)
}

async fn publish(
    args: &PublishArgs,
    count: u64,
    messages: impl IntoIterator<Item = (String, Bytes)>,
) -> Result<PublishSummary> {
    let client = bus::connect(&args.nats, "ordersvc publish").await?;
    let js = jetstream::new(client);
    let stream = bus::ensure_stream_within(&js, &args.nats, args.retry.publish_timeout).await?;
    let last_sequence = stream.cached_info().state.last_sequence;
    let progress = publisher::progress_bar(count, PROGRESS_FROM);
    let report = |outcome: Outcome<String>| {
        if let Err(failure) = &outcome.result {
            progress.suspend(|| eprintln!("{}: {failure}", outcome.tag));
        }
    };
    let mut pipeline = Pipeline::new(js, &args.nats.subject, args.in_flight as usize, report)
        .with_progress(progress.clone())
        .with_publish_timeout(args.retry.publish_timeout)
        .with_last_sequence_before(last_sequence);
    for (label, payload) in messages {
        let id = message_id(&payload);
        pipeline
            .send(label, payload, id.as_ref().map(OrderUid::as_str))
            .await;
    }
    let summary = pipeline.finish().await;
    progress.finish_and_clear();
    Ok(summary)
}

/// The message's order_uid, if it has a valid one: JetStream then drops repeats of it.
fn message_id(payload: &[u8]) -> Option<OrderUid> {
    #[derive(Deserialize)]
    struct Probe {
        order_uid: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(payload).ok()?;
    OrderUid::parse(probe.order_uid?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_the_order_uid_when_it_is_valid() {
        assert_eq!(
            message_id(br#"{"order_uid":"abc-1","x":[1]}"#).map(|u| u.to_string()),
            Some("abc-1".into())
        );
        assert_eq!(message_id(br#"{"order_uid":"bad uid"}"#), None);
        assert_eq!(message_id(br#"{"order_uid":5}"#), None);
        assert_eq!(message_id(b"not json"), None);
    }

    #[test]
    fn lines_mode_skips_blank_lines_and_strips_carriage_returns() {
        let dir =
            std::env::temp_dir().join(format!("ordersvc-publish-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("in.jsonl");
        std::fs::write(&file, b"{\"a\":1}\r\n\n  \n{\"b\":2}").expect("write");
        let args = PublishArgs {
            nats: crate::testing::nats_args(),
            files: vec![file],
            lines: true,
            in_flight: 1,
            retry: RetryArgs {
                publish_timeout: std::time::Duration::from_secs(1),
            },
            generate: None,
            seed: None,
        };
        let messages = collect(&args).expect("collect");
        std::fs::remove_dir_all(&dir).ok();
        let payloads: Vec<&[u8]> = messages.iter().map(|(_, b)| b.as_ref()).collect();
        assert_eq!(payloads, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
    }
}
