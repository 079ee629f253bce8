//! `ordersvc publish`: puts messages on the stream exactly as given (no validation: the point is
//! to exercise the service's defences), with publish acks pipelined.

use std::future::IntoFuture;
use std::io::Read;
use std::path::PathBuf;

use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use color_eyre::eyre::{bail, Result, WrapErr};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::bus;
use crate::config::NatsArgs;
use crate::order::OrderUid;
use crate::samples::SAMPLES;

/// A progress bar is shown from this many messages on.
const PROGRESS_FROM: usize = 20;

/// Settings of `ordersvc publish`.
#[derive(Args, Clone, Debug)]
pub struct PublishArgs {
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
}

/// What happened to the published messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Stored in the stream.
    pub published: u64,
    /// Dropped by the server as a repeat within the duplicate window (same `Nats-Msg-Id`).
    pub duplicates: u64,
    /// Not acknowledged by the server.
    pub failed: u64,
}

/// Publishes and prints the summary; fails if any message could not be published.
pub fn run(args: PublishArgs) -> Result<()> {
    let messages = collect(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    let summary = runtime.block_on(publish(&args, messages))?;
    println!(
        "published {}, duplicates dropped by the server {}, failed {}",
        summary.published, summary.duplicates, summary.failed
    );
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

async fn publish(args: &PublishArgs, messages: Vec<(String, Bytes)>) -> Result<Summary> {
    let client = bus::connect(&args.nats.nats_url, "ordersvc publish").await?;
    let js = jetstream::new(client);
    bus::ensure_stream(&js, &args.nats).await?;

    let progress = if messages.len() >= PROGRESS_FROM {
        let bar = ProgressBar::new(messages.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = Summary::default();
    let mut acks = FuturesUnordered::new();
    let window = args.in_flight as usize;
    for (label, payload) in messages {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(uid) = message_id(&payload) {
            headers.insert("Nats-Msg-Id", uid.as_str());
        }
        match js
            .publish_with_headers(args.nats.subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => acks.push(labelled(label, ack.into_future())),
            Err(e) => {
                progress.suspend(|| eprintln!("{label}: cannot publish: {e}"));
                summary.failed += 1;
            }
        }
        while acks.len() >= window {
            if let Some(result) = acks.next().await {
                count(&mut summary, result, &progress);
            }
        }
    }
    while let Some(result) = acks.next().await {
        count(&mut summary, result, &progress);
    }
    progress.finish_and_clear();
    Ok(summary)
}

async fn labelled<F, T>(label: String, future: F) -> (String, T)
where
    F: std::future::Future<Output = T>,
{
    (label, future.await)
}

fn count(
    summary: &mut Summary,
    (label, result): (
        String,
        Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ),
    progress: &ProgressBar,
) {
    progress.inc(1);
    match result {
        Ok(ack) if ack.duplicate => summary.duplicates += 1,
        Ok(_) => summary.published += 1,
        Err(e) => {
            progress.suspend(|| eprintln!("{label}: not acknowledged: {e}"));
            summary.failed += 1;
        }
    }
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
            nats: NatsArgs {
                nats_url: String::new(),
                stream: String::new(),
                subject: String::new(),
            },
            files: vec![file],
            lines: true,
            in_flight: 1,
        };
        let messages = collect(&args).expect("collect");
        std::fs::remove_dir_all(&dir).ok();
        let payloads: Vec<&[u8]> = messages.iter().map(|(_, b)| b.as_ref()).collect();
        assert_eq!(payloads, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
    }
}
