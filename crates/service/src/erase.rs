//! `ordersvc erase`: an order's personal data out of every copy ordersvc keeps or can find.
//!
//! The steps, in this order, each idempotent, so that a run that fails half-way is finished by
//! running the same command again:
//! 1. PostgreSQL: the order's row is deleted and a tombstone (id, time, reason) takes its
//!    place, in one transaction, so that no later message can store it again; then rejected
//!    messages that carry it lose their payload (`store::erase`).
//! 2. An erasure notice on the changelog: every running replica drops the order from memory and
//!    refuses it from then on (`cache::Change::Erase`). A replica that starts later reads the
//!    tombstones in its restore.
//! 3. The changelog's messages that carry the order are deleted, once the other orders they
//!    carried are published again (`Changelog::scrub`).
//! 4. The input stream's messages that carry the order are deleted.
//! 5. The tombstones are marked complete.
//!
//! PostgreSQL first: once the tombstone is committed, nothing brings the order back, whatever
//! fails after. Which messages carry an order is `order::carried_order`'s rule.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;

use async_nats::jetstream;
use clap::Args;
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use tracing::info;

use crate::bus;
use crate::changelog::Changelog;
use crate::config::ServiceArgs;
use crate::order::{carried_order, named_order, OrderUid};
use crate::store::Store;

/// Settings of `ordersvc erase`.
#[derive(Args, Clone, Debug)]
pub struct EraseArgs {
    /// Ids of the orders to erase. An id that no order has is not an error: its tombstone is
    /// kept, so that the order can never arrive later.
    #[arg(value_name = "ORDER_UID")]
    pub order_uids: Vec<String>,
    /// Also erase the ids in this file, one per line (`-` reads stdin); blank lines and lines
    /// starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Why the orders are erased: kept in each tombstone and logged. Put no personal data here.
    #[arg(long, default_value = "erasure request")]
    pub reason: String,
    /// The service to erase from.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Erases the orders named on the command line and in `--from-file`.
pub fn run(args: EraseArgs) -> Result<()> {
    let uids = order_uids(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    runtime.block_on(erase(&args, &uids))
}

/// The ids to erase, each checked against the order_uid rule, without repeats.
fn order_uids(args: &EraseArgs) -> Result<Vec<OrderUid>> {
    let mut given = args.order_uids.clone();
    if let Some(path) = &args.from_file {
        given.extend(read_ids(path)?);
    }
    let mut seen = HashSet::new();
    let mut uids = Vec::new();
    for id in given {
        let uid = OrderUid::parse(&id).map_err(|e| eyre!("{id:?} is not an order_uid: {e}"))?;
        if seen.insert(id) {
            uids.push(uid);
        }
    }
    if uids.is_empty() {
        bail!("no order_uid to erase: name them as arguments or in --from-file");
    }
    Ok(uids)
}

/// The ids in a file (or stdin for `-`), one per line.
fn read_ids(path: &PathBuf) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .wrap_err_with(|| format!("cannot open {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut ids = Vec::new();
    for line in reader.lines() {
        let line = line.wrap_err_with(|| format!("cannot read {}", path.display()))?;
        let id = line.trim();
        if !id.is_empty() && !id.starts_with('#') {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The steps after PostgreSQL's, as the report names them.
const NATS_STEPS: [&str; 3] = [
    "the erasure notice to every replica (changelog)",
    "the changelog's copies",
    "the input stream's copies",
];

async fn erase(args: &EraseArgs, uids: &[OrderUid]) -> Result<()> {
    let ids: Vec<String> = uids.iter().map(|uid| uid.as_str().to_owned()).collect();
    let store = Store::connect(&args.service.db.database_url)
        .await
        .wrap_err("nothing was erased")?;
    store.migrate().await.wrap_err("nothing was erased")?;
    let found = store
        .erase(&ids, &args.reason)
        .await
        .wrap_err("cannot erase in PostgreSQL: nothing was erased")?;
    let found: HashSet<&str> = found.iter().map(String::as_str).collect();
    for uid in &ids {
        // The audit line: the id and the reason, never the order's contents.
        info!(order_uid = %uid, reason = %args.reason, stored = found.contains(uid.as_str()), "order erased from PostgreSQL");
    }
    let rejected_payloads = store.erase_rejected_payloads(&ids).await.wrap_err(
        "the orders are deleted and their tombstones kept (they cannot be stored again), but \
         not done: the payloads of rejected messages, the replicas' memory, both streams. Run \
         the same command again to finish.",
    )?;
    println!(
        "PostgreSQL: {} order(s) erased: {} found, {} unknown (tombstones kept); {rejected_payloads} rejected message payload(s) erased",
        ids.len(),
        found.len(),
        ids.len() - found.len(),
    );

    let mut done = 0;
    if let Err(e) = nats_steps(args, uids, &store, &mut done).await {
        let not_done = NATS_STEPS[done..].join("; ");
        println!("not done: {not_done}");
        return Err(e.wrap_err(format!(
            "the erasure is not complete: PostgreSQL holds the tombstones (the orders cannot be \
             stored again), but not done: {not_done}. Run the same command again to finish."
        )));
    }
    store
        .complete_erasures(&ids)
        .await
        .wrap_err("every copy is erased, but the tombstones could not be marked complete; run the same command again")?;
    store.close().await;
    println!("erasure complete for {} order(s)", ids.len());
    Ok(())
}

/// Steps 2 to 4; `done` counts those that finished.
async fn nats_steps(
    args: &EraseArgs,
    uids: &[OrderUid],
    store: &Store,
    done: &mut usize,
) -> Result<()> {
    let client = bus::connect(&args.service.nats, "ordersvc-erase").await?;
    let js = jetstream::new(client);
    let changelog = Changelog::new(js.clone(), &args.service.nats, &args.service.durable);
    let wanted: HashSet<&str> = uids.iter().map(OrderUid::as_str).collect();

    if changelog.publish_erase(uids).await? {
        println!(
            "changelog {}: erasure notice published to every replica",
            changelog.name()
        );
    } else {
        println!(
            "changelog {}: none (no replica has run); a replica that starts reads the tombstones",
            changelog.name()
        );
    }
    *done += 1;

    let scrubbed = changelog.scrub(&wanted, store).await?;
    println!(
        "changelog {}: {} message(s) read, {} deleted, {} other order(s) in them published again",
        changelog.name(),
        scrubbed.read,
        scrubbed.deleted,
        scrubbed.republished
    );
    *done += 1;

    let (read, deleted) = erase_from_input(&js, &args.service.nats.stream, &wanted).await?;
    println!(
        "stream {}: {read} message(s) read, {deleted} deleted",
        args.service.nats.stream
    );
    *done += 1;
    Ok(())
}

/// Deletes every message of the input stream that carries one of the orders: its payload names
/// it, or, for a payload that names none (broken), its `Nats-Msg-Id` is its id (as publishers
/// set it) or its bytes hold the id (`carried_order`). Returns the messages read and deleted.
async fn erase_from_input(
    js: &jetstream::Context,
    stream: &str,
    wanted: &HashSet<&str>,
) -> Result<(u64, u64)> {
    let Some(mut stream) = bus::existing_stream(js, stream).await? else {
        return Ok((0, 0));
    };
    let (found, read) = bus::scan::matching(&mut stream, |message| {
        // A payload that names an order is that order's, whatever its header says: deleting
        // another order's message on a producer's mislabelled header would lose that order.
        if let Some(named) = named_order(&message.payload) {
            return wanted.contains(named.as_str());
        }
        let by_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .is_some_and(|id| wanted.contains(id.as_str()));
        by_id || carried_order(&message.payload, wanted).is_some()
    })
    .await?;
    let mut deleted = 0;
    for message in found {
        let seq = message
            .info()
            .map_err(|e| eyre!("a message without its sequence: {e}"))?
            .stream_sequence;
        bus::scan::erase_message(&stream, seq)
            .await
            .wrap_err("cannot delete a message that carries an erased order")?;
        deleted += 1;
    }
    Ok((read, deleted))
}
