//! A batch of pulled messages and what becomes of each one: the pure decisions of a write.
//!
//! Which message of a batch is the candidate for its order_uid, and whether a message whose
//! order_uid is already stored repeats it (a duplicate, acked) or contradicts it (a conflicting
//! duplicate, recorded as rejected). Kept apart from `store` so that these rules, which the
//! design states exactly, are tested without a database; `store` only runs the statements.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::order::{Order, OrderUid, Rejection};

/// Reason recorded for a message whose order_uid is stored with other content (the design's wording).
pub const CONFLICTING_DUPLICATE: &str = "conflicting duplicate";
/// The `kind` label of such a message.
const CONFLICTING_DUPLICATE_KIND: &str = "conflicting_duplicate";
/// The `kind` label of a message whose order was erased (`ordersvc erase`): it is recorded
/// without its payload, which holds the personal data that was erased.
pub const ERASED_KIND: &str = "erased";

/// One message pulled from the stream, parsed or refused, waiting to be written.
#[derive(Debug)]
pub struct Incoming {
    /// Stream sequence number of the message.
    pub seq: u64,
    /// Subject it was published on.
    pub subject: String,
    /// The payload as received.
    pub raw: Bytes,
    /// What `Order::parse` made of it.
    pub parsed: Result<Order, Rejection>,
}

/// What happened to one message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new order, now stored.
    Stored,
    /// The same order was already stored (or earlier in the batch): nothing written.
    Duplicate,
    /// Recorded in `rejected_messages`; the label says why (a `RejectKind` or `conflicting_duplicate`).
    Rejected(&'static str),
}

/// A committed batch: one outcome per message, and the stored documents the cache must hold.
#[derive(Debug, Default)]
pub struct Written {
    /// Outcomes, in the order of the batch.
    pub outcomes: Vec<Outcome>,
    /// (order_uid, stored document) for every order of the batch that is in the database.
    pub to_cache: Vec<(OrderUid, String)>,
}

/// A message to record in `rejected_messages`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the batch.
    pub index: usize,
    /// The `kind` label.
    pub kind: &'static str,
    /// The reason, naming the rule and the field path.
    pub reason: String,
    /// Whether the message's bytes are kept: not for an erased order's.
    pub keep_payload: bool,
}

/// For each order_uid in the batch, the index of its first valid message: the one offered for
/// insertion. The others are compared with whatever ends up stored.
pub fn candidates(batch: &[Incoming]) -> HashMap<&str, usize> {
    let mut first = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        if let Ok(order) = &m.parsed {
            first.entry(order.uid().as_str()).or_insert(i);
        }
    }
    first
}

/// What the database said of a batch's candidates when they were offered for insertion.
#[derive(Debug, Default)]
pub struct Found {
    /// The order_uids that were new, and are now stored.
    pub inserted: HashSet<String>,
    /// The stored documents of the others.
    pub existing: HashMap<String, String>,
    /// Those with a tombstone: erased, never to be stored again.
    pub erased: HashSet<String>,
}

/// Decides every message's outcome once the candidates were offered for insertion.
pub fn decide(
    batch: &[Incoming],
    first: &HashMap<&str, usize>,
    found: &Found,
) -> (Written, Vec<Rejected>) {
    let Found {
        inserted,
        existing,
        erased,
    } = found;
    let mut written = Written::default();
    let mut rejected = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        let order = match &m.parsed {
            Ok(order) => order,
            Err(rejection) => {
                let kind = rejection.kind().as_str();
                rejected.push(Rejected {
                    index: i,
                    kind,
                    reason: rejection.to_string(),
                    keep_payload: true,
                });
                written.outcomes.push(Outcome::Rejected(kind));
                continue;
            }
        };
        let uid = order.uid().as_str();
        if erased.contains(uid) {
            rejected.push(Rejected {
                index: i,
                kind: ERASED_KIND,
                reason: format!("order {uid} was erased"),
                keep_payload: false,
            });
            written.outcomes.push(Outcome::Rejected(ERASED_KIND));
            continue;
        }
        let is_first = first.get(uid) == Some(&i);
        if is_first && inserted.contains(uid) {
            written.outcomes.push(Outcome::Stored);
            written
                .to_cache
                .push((order.uid().clone(), order.document().to_owned()));
            continue;
        }
        // The stored document: the earlier one in the database, or the candidate of this batch.
        let winner = match existing.get(uid) {
            Some(stored) => stored.as_str(),
            None => match first.get(uid).map(|&j| &batch[j].parsed) {
                Some(Ok(candidate)) => candidate.document(),
                _ => order.document(),
            },
        };
        if same_content(winner, order.document()) {
            written.outcomes.push(Outcome::Duplicate);
            if is_first {
                // Re-feed the cache: harmless if it has the order, a repair if it had not.
                written
                    .to_cache
                    .push((order.uid().clone(), winner.to_owned()));
            }
        } else {
            rejected.push(Rejected {
                index: i,
                kind: CONFLICTING_DUPLICATE_KIND,
                reason: CONFLICTING_DUPLICATE.to_owned(),
                keep_payload: true,
            });
            written
                .outcomes
                .push(Outcome::Rejected(CONFLICTING_DUPLICATE_KIND));
        }
    }
    (written, rejected)
}

/// The order_uids that refused messages (kept with their payload) give in an `order_uid`
/// field, to look up among the tombstones: a message that is not a valid order (cut short, a
/// field broken) may still be an erased order's, carrying its personal data. One field per
/// message, found by a plain search, so that a storm of garbage costs ingest no more than a
/// scan of its bytes.
pub fn ids_named_by_refused<'a>(batch: &'a [Incoming], rejected: &[Rejected]) -> Vec<&'a str> {
    let ids: HashSet<&str> = rejected
        .iter()
        .filter(|r| r.keep_payload)
        .filter_map(|r| crate::order::uid_field(&batch[r.index].raw))
        .collect();
    ids.into_iter().collect()
}

/// Refused messages whose `order_uid` field names an erased order are recorded as `erased`,
/// without their payload, like a valid message of that order.
pub fn refuse_as_erased(
    batch: &[Incoming],
    written: &mut Written,
    rejected: &mut [Rejected],
    erased: &HashSet<String>,
) {
    if erased.is_empty() {
        return;
    }
    for r in rejected.iter_mut().filter(|r| r.keep_payload) {
        let Some(uid) = crate::order::uid_field(&batch[r.index].raw) else {
            continue;
        };
        if erased.contains(uid) {
            r.reason = format!("order {uid} was erased");
            r.kind = ERASED_KIND;
            r.keep_payload = false;
            if let Some(outcome) = written.outcomes.get_mut(r.index) {
                *outcome = Outcome::Rejected(ERASED_KIND);
            }
        }
    }
}

/// Two documents are the same order if they are the same bytes or the same JSON value
/// (a producer that re-serialises with other spacing or key order is not in conflict).
fn same_content(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = include_str!("../../../testdata/model.json");

    fn incoming(payload: &str) -> Incoming {
        Incoming {
            seq: 0,
            subject: "orders".into(),
            raw: Bytes::copy_from_slice(payload.as_bytes()),
            parsed: Order::parse(payload.as_bytes()),
        }
    }

    /// The model with another `amount`: the same order_uid, other content.
    fn conflicting() -> String {
        let changed = MODEL.replacen("\"amount\": 1817", "\"amount\": 1818", 1);
        assert_ne!(changed, MODEL, "the model has the amount this test changes");
        changed
    }

    fn uid() -> String {
        Order::parse(MODEL.as_bytes())
            .expect("the model is valid")
            .uid()
            .as_str()
            .to_owned()
    }

    #[test]
    fn same_content_ignores_spacing_and_key_order_but_not_values() {
        assert!(same_content(
            r#"{"a":1,"b":[2]}"#,
            r#"{ "b": [2], "a": 1 }"#
        ));
        assert!(!same_content(r#"{"a":1}"#, r#"{"a":2}"#));
    }

    #[test]
    fn the_first_message_of_an_order_is_stored_and_a_repeat_in_the_batch_is_a_duplicate() {
        let batch = [incoming(MODEL), incoming(MODEL), incoming("not json")];
        let first = candidates(&batch);
        assert_eq!(first.get(uid().as_str()), Some(&0));
        let found = Found {
            inserted: HashSet::from([uid()]),
            ..Found::default()
        };
        let (written, rejected) = decide(&batch, &first, &found);
        assert_eq!(written.outcomes[..2], [Outcome::Stored, Outcome::Duplicate]);
        assert!(matches!(written.outcomes[2], Outcome::Rejected(_)));
        assert_eq!(
            written.to_cache.len(),
            1,
            "the repeat adds nothing to cache"
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 2);
    }

    #[test]
    fn other_content_under_an_id_in_the_batch_is_a_conflict_and_the_first_is_kept() {
        let batch = [incoming(MODEL), incoming(&conflicting())];
        let first = candidates(&batch);
        let found = Found {
            inserted: HashSet::from([uid()]),
            ..Found::default()
        };
        let (written, rejected) = decide(&batch, &first, &found);
        assert_eq!(
            written.outcomes,
            [Outcome::Stored, Outcome::Rejected("conflicting_duplicate")]
        );
        assert_eq!(rejected[0].reason, CONFLICTING_DUPLICATE);
        assert_eq!(written.to_cache[0].1, MODEL);
    }

    #[test]
    fn against_a_stored_order_a_reserialised_copy_is_a_duplicate_and_other_content_a_conflict() {
        let stored: serde_json::Value = serde_json::from_str(MODEL).expect("valid JSON");
        // Same value, other spacing: what a producer that re-serialises sends.
        let reserialised = stored.to_string();
        let found = Found {
            existing: HashMap::from([(uid(), MODEL.to_owned())]),
            ..Found::default()
        };

        let batch = [incoming(&reserialised)];
        let (written, rejected) = decide(&batch, &candidates(&batch), &found);
        assert_eq!(written.outcomes, [Outcome::Duplicate]);
        assert!(rejected.is_empty());
        assert_eq!(
            written.to_cache[0].1, MODEL,
            "the cache gets the stored bytes, not the repeat's"
        );

        let batch = [incoming(&conflicting())];
        let (written, rejected) = decide(&batch, &candidates(&batch), &found);
        assert_eq!(
            written.outcomes,
            [Outcome::Rejected("conflicting_duplicate")]
        );
        assert_eq!(rejected.len(), 1);
        assert!(written.to_cache.is_empty());
    }

    #[test]
    fn a_message_of_an_erased_order_is_refused_without_its_payload_and_not_cached() {
        let batch = [incoming(MODEL), incoming(&conflicting())];
        let found = Found {
            erased: HashSet::from([uid()]),
            ..Found::default()
        };
        let (written, rejected) = decide(&batch, &candidates(&batch), &found);
        assert_eq!(
            written.outcomes,
            [
                Outcome::Rejected(ERASED_KIND),
                Outcome::Rejected(ERASED_KIND)
            ]
        );
        assert!(written.to_cache.is_empty());
        assert!(rejected
            .iter()
            .all(|r| !r.keep_payload && r.kind == ERASED_KIND));
        assert!(
            !rejected[0].reason.contains("Test Testov"),
            "no personal data"
        );
    }

    #[test]
    fn a_refused_message_that_carries_an_erased_order_loses_its_payload_too() {
        let truncated = &MODEL[..300];
        let batch = [
            incoming(truncated),
            incoming("{\"order_uid\": \"someone-else\"}"),
        ];
        let (mut written, mut rejected) = decide(&batch, &candidates(&batch), &Found::default());
        let named = ids_named_by_refused(&batch, &rejected);
        assert!(named.contains(&uid().as_str()), "{named:?}");
        let erased = HashSet::from([uid()]);
        refuse_as_erased(&batch, &mut written, &mut rejected, &erased);
        assert_eq!(written.outcomes[0], Outcome::Rejected(ERASED_KIND));
        assert!(!rejected[0].keep_payload);
        assert_ne!(written.outcomes[1], Outcome::Rejected(ERASED_KIND));
        assert!(
            rejected[1].keep_payload,
            "another order's message keeps its payload"
        );
    }
}
