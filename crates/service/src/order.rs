//! The order model and the one gate every message passes: `Order::parse_within`, which checks
//! the size limit its caller names (ingest names the bus's), or `Order::parse`, which sets none.
//!
//! "Parse, don't validate": an [`Order`] can only be obtained from that gate, so every
//! later stage (store, cache, HTTP) holds a message that is already known to follow every rule of
//! design.md. The order keeps the raw message as its document: HTTP serves those exact bytes, and
//! fields the model does not name (from a newer producer) are never lost.
//!
//! Parsing is one pass over the bytes with serde into zero-sized checkers, plus a cheap depth scan
//! before it. No `serde_json::Value` tree is built. Only a rejected message pays for a second pass
//! that locates the failing field: serde_path_to_error allocates a `String` per key, which would
//! dominate the happy path.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest accepted `order_uid`, in characters (all ASCII, so also bytes).
pub(crate) const MAX_UID_LEN: usize = 64;

/// Deepest JSON nesting (objects and arrays together) accepted anywhere in a message.
pub(crate) const MAX_DEPTH: usize = 32;

/// The order_uid rule, shared by `UidError` and the rejection of a message.
const UID_RULE: &str = "order_uid must be 1 to 64 characters of A-Z a-z 0-9 _ -";

// Rule texts of the field checkers. A checker's `expecting` is the same text without "expected ",
// because serde renders a wrong type as "invalid type: <what>, expected <expecting>".
const EXPECTED_NON_NEGATIVE_INTEGER: &str = "expected a non-negative integer";
const EXPECTED_NON_EMPTY_STRING: &str = "expected a non-empty string";
const EXPECTED_NON_EMPTY_ARRAY: &str = "expected a non-empty array";
const EXPECTED_DATE_TIME: &str = "expected an RFC 3339 date-time";

/// A validated order id: 1 to 64 chars of A-Z a-z 0-9 _ - (it goes into URLs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderUid(Box<str>);

impl OrderUid {
    /// Checks `s` against the order_uid rule.
    pub fn parse(s: &str) -> Result<OrderUid, UidError> {
        let well_formed = !s.is_empty()
            && s.len() <= MAX_UID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if well_formed {
            Ok(OrderUid(s.into()))
        } else {
            Err(UidError { _private: () })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for OrderUid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Lets a `HashMap<OrderUid, _>` be queried with the `&str` of a URL, without building an OrderUid.
impl Borrow<str> for OrderUid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A string that breaks the order_uid rule; its Display states the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidError {
    _private: (),
}

impl fmt::Display for UidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(UID_RULE)
    }
}

impl std::error::Error for UidError {}

/// A message that passed every rule.
#[derive(Clone, Debug)]
pub struct Order {
    uid: OrderUid,
    date_created: OffsetDateTime,
    customer_id: Box<str>,
    track_number: Box<str>,
    item_count: usize,
    document: String,
}

impl Order {
    /// Parses and checks one raw message of any size: for bytes whose size their source already
    /// bounds (samples, generated orders, tests). With `parse_within`, the only way to obtain an
    /// `Order`.
    pub fn parse(raw: &[u8]) -> Result<Order, Rejection> {
        Order::parse_within(raw, usize::MAX)
    }

    /// Parses and checks one raw message of at most `max_len` bytes: the limit is the caller's,
    /// who knows what the message must fit into afterwards (ingest: a changelog message).
    pub fn parse_within(raw: &[u8], max_len: usize) -> Result<Order, Rejection> {
        if raw.len() > max_len {
            return Err(Rejection::payload(
                RejectKind::TooLarge,
                format!(
                    "{} bytes, more than the {max_len} an order may take",
                    raw.len()
                ),
            ));
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            Rejection::payload(
                RejectKind::NotUtf8,
                format!(
                    "not valid UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        // Before serde sees the message: serde_json recurses once per level and would spend its
        // stack (up to its own limit of 128) on a hostile `[[[[...`. This scan is flat and cheap.
        if nests_deeper_than(text.as_bytes(), MAX_DEPTH) {
            return Err(Rejection::payload(
                RejectKind::TooDeep,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        match parse_fields(text) {
            Ok(fields) => Ok(Order {
                uid: fields.order_uid.0,
                date_created: fields.date_created.0,
                customer_id: fields.customer_id.0,
                track_number: fields.track_number.0,
                item_count: fields.items.0,
                document: text.to_owned(),
            }),
            Err(first) => Err(explain(text, first)),
        }
    }

    /// The order_uid.
    pub fn uid(&self) -> &OrderUid {
        &self.uid
    }

    /// The date_created, as parsed from RFC 3339 (offset kept).
    pub(crate) fn date_created(&self) -> OffsetDateTime {
        self.date_created
    }

    /// The customer_id.
    pub(crate) fn customer_id(&self) -> &str {
        &self.customer_id
    }

    /// The top-level track_number.
    pub(crate) fn track_number(&self) -> &str {
        &self.track_number
    }

    /// How many entries `items` has (at least one).
    pub fn item_count(&self) -> usize {
        self.item_count
    }

    /// The message exactly as received (validated UTF-8 JSON); this is what HTTP serves, byte for byte.
    pub fn document(&self) -> &str {
        &self.document
    }
}

/// Why a message was refused.  Display = "{path}: {rule}", e.g. "payment.amount: expected a non-negative integer".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Where: a field path such as `items[2].rid`, or `payload` for the message as a whole.
    path: String,
    /// What: the rule that was broken, e.g. `missing required field`.
    rule: String,
    kind: RejectKind,
}

impl Rejection {
    /// Which class of rule was broken (a metrics label).
    pub fn kind(&self) -> RejectKind {
        self.kind
    }

    fn payload(kind: RejectKind, rule: impl Into<String>) -> Rejection {
        Rejection {
            path: "payload".to_owned(),
            rule: rule.into(),
            kind,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

impl std::error::Error for Rejection {}

/// The class of a rejection, for metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Larger than the size limit given to `Order::parse_within`.
    TooLarge,
    /// Nested deeper than `MAX_DEPTH`.
    TooDeep,
    /// Not JSON (includes truncated input and trailing garbage).
    BadJson,
    /// Valid JSON, but not an object at the top level.
    NotObject,
    /// A field of the model is absent.
    MissingField,
    /// A field has the wrong JSON type (including null).
    WrongType,
    /// A field has the right type but breaks its rule (empty, negative, malformed, duplicated).
    InvalidValue,
}

impl RejectKind {
    /// The snake_case label, e.g. `missing_field`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectKind::NotUtf8 => "not_utf8",
            RejectKind::TooLarge => "too_large",
            RejectKind::TooDeep => "too_deep",
            RejectKind::BadJson => "bad_json",
            RejectKind::NotObject => "not_object",
            RejectKind::MissingField => "missing_field",
            RejectKind::WrongType => "wrong_type",
            RejectKind::InvalidValue => "invalid_value",
        }
    }
}

/// True if `[`/`{` nest deeper than `max` outside of strings. Flat loop, stops at the first excess.
/// Unbalanced or otherwise broken JSON is left for the parser to report.
fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    false
}

/// The happy path: one serde pass, no path tracking, then no trailing characters allowed.
fn parse_fields(text: &str) -> Result<OrderFields, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let Obj(fields) = Obj::<OrderFields>::deserialize(&mut de)?;
    de.end()?;
    Ok(fields)
}

/// Turns a failed parse into a Rejection. Runs only for rejected messages, so it may re-read the
/// text: first for syntax alone (so that a broken message is `bad_json` whatever field serde met
/// first), then with path tracking to name the field.
fn explain(text: &str, first: serde_json::Error) -> Rejection {
    if let Err(syntax) = check_syntax(text) {
        return bad_json(&syntax);
    }
    if first.classify() != serde_json::error::Category::Data {
        return bad_json(&first);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let err = match serde_path_to_error::deserialize::<_, Obj<OrderFields>>(&mut de) {
        Err(err) => err,
        // Parsing is deterministic, so this is unreachable; still, never accept here nor panic.
        Ok(_) => return from_data_error(String::new(), &first),
    };
    from_data_error(field_path(err.path()), err.inner())
}

fn check_syntax(text: &str) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    de::IgnoredAny::deserialize(&mut de)?;
    de.end()
}

fn bad_json(err: &serde_json::Error) -> Rejection {
    // serde_json's Display carries "at line L column C": for a syntax error that is the only locator.
    Rejection::payload(RejectKind::BadJson, format!("invalid JSON: {err}"))
}

/// `items[0].price` style; empty for the top level.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Maps a serde data error, found at `path`, to a rule. Serde phrases its own errors in fixed
/// forms ("missing field `x`", "invalid type: ..., expected ..."); the checkers below phrase
/// theirs as the finished rule text.
fn from_data_error(path: String, err: &serde_json::Error) -> Rejection {
    let full = err.to_string();
    // The path already says where; the line/column suffix would only add noise to the rule.
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let msg = full.strip_suffix(suffix.as_str()).unwrap_or(&full);

    let child = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let field_name = |rest: &str| rest.strip_suffix('`').unwrap_or(rest).to_owned();
    let expected = |m: &str| match m.rfind(", expected ") {
        Some(at) => m[at + 2..].to_owned(),
        None => m.to_owned(),
    };

    let (kind, path, rule) = if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = field_name(rest);
        (
            RejectKind::MissingField,
            child(&name),
            "missing required field".to_owned(),
        )
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        let name = field_name(rest);
        (
            RejectKind::InvalidValue,
            child(&name),
            "duplicate field".to_owned(),
        )
    } else if msg.starts_with("invalid type: ") {
        if path.is_empty() {
            return Rejection::payload(RejectKind::NotObject, "expected a JSON object");
        }
        (RejectKind::WrongType, path, expected(msg))
    } else if msg.starts_with("invalid value: ") || msg.starts_with("invalid length ") {
        (RejectKind::InvalidValue, path, expected(msg))
    } else {
        (RejectKind::InvalidValue, path, msg.to_owned())
    };
    let path = if path.is_empty() {
        "payload".to_owned()
    } else {
        path
    };
    Rejection { path, rule, kind }
}

// ---- The model, as checkers. ----
//
// Fields the service does not read are zero-sized checkers: they validate and keep nothing, since
// the document already holds them. `dead_code` is allowed because the derive is what reads them.

#[derive(Deserialize)]
#[allow(dead_code)]
struct OrderFields {
    order_uid: UidField,
    track_number: Text,
    entry: NonEmpty,
    delivery: Obj<DeliveryFields>,
    payment: Obj<PaymentFields>,
    items: Items,
    locale: NonEmpty,
    internal_signature: AnyStr,
    customer_id: Text,
    delivery_service: NonEmpty,
    shardkey: NonEmpty,
    sm_id: NonNegInt,
    date_created: DateField,
    oof_shard: NonEmpty,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct DeliveryFields {
    name: NonEmpty,
    phone: NonEmpty,
    zip: NonEmpty,
    city: NonEmpty,
    address: NonEmpty,
    region: NonEmpty,
    email: NonEmpty,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PaymentFields {
    transaction: NonEmpty,
    request_id: AnyStr,
    currency: NonEmpty,
    provider: NonEmpty,
    amount: NonNegInt,
    payment_dt: NonNegInt,
    bank: NonEmpty,
    delivery_cost: NonNegInt,
    goods_total: NonNegInt,
    custom_fee: NonNegInt,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ItemFields {
    chrt_id: NonNegInt,
    track_number: NonEmpty,
    price: NonNegInt,
    rid: NonEmpty,
    name: NonEmpty,
    sale: NonNegInt,
    size: NonEmpty,
    total_price: NonNegInt,
    nm_id: NonNegInt,
    brand: NonEmpty,
    status: NonNegInt,
}

/// A JSON object only. A derived struct alone would also accept a JSON array of its field values
/// in order (serde_json's `deserialize_struct` takes both), so the derive is fed through a map.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(Obj)
    }
}

/// A non-empty array of item objects; keeps only the count.
struct Items(usize);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut count = 0usize;
                while seq.next_element::<Obj<ItemFields>>()?.is_some() {
                    count += 1;
                }
                if count == 0 {
                    return Err(de::Error::custom(EXPECTED_NON_EMPTY_ARRAY));
                }
                Ok(Items(count))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Defines a string checker: `$check` maps the text to the value or to a rule text.
macro_rules! string_field {
    ($(#[$doc:meta])* $name:ident($ty:ty), $check:expr) => {
        $(#[$doc])*
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    // serde_json hands over borrowed and unescaped strings alike through here,
                    // without allocating: a checker that keeps nothing costs no allocation.
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        let check: fn(&str) -> Result<$ty, &'static str> = $check;
                        check(s).map($name).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

fn non_empty(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err(EXPECTED_NON_EMPTY_STRING)
    } else {
        Ok(())
    }
}

string_field!(
    /// Any string, "" included (internal_signature, request_id).
    AnyStr(()),
    |_| Ok(())
);
string_field!(
    /// A non-empty string, checked and dropped.
    NonEmpty(()),
    non_empty
);
string_field!(
    /// A non-empty string the Order keeps.
    Text(Box<str>),
    |s| non_empty(s).map(|()| s.into())
);
string_field!(
    /// The order_uid.
    UidField(OrderUid),
    |s| OrderUid::parse(s).map_err(|_| UID_RULE)
);
string_field!(
    /// An RFC 3339 date-time.
    DateField(OffsetDateTime),
    |s| OffsetDateTime::parse(s, &Rfc3339).map_err(|_| EXPECTED_DATE_TIME)
);

/// A JSON integer that fits u64. serde_json visits u64 for non-negative integers, i64 for
/// negative ones and f64 for anything with a fraction or exponent (or beyond u64), so those are
/// the cases to refuse; other JSON types fall to serde's "invalid type".
struct NonNegInt;

impl<'de> Deserialize<'de> for NonNegInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonNegInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NonNegInt, E> {
                Ok(NonNegInt)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NonNegInt, E> {
                if v >= 0 {
                    Ok(NonNegInt)
                } else {
                    Err(E::custom(EXPECTED_NON_NEGATIVE_INTEGER))
                }
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NonNegInt, E> {
                Err(E::custom(EXPECTED_NON_NEGATIVE_INTEGER))
            }
        }
        d.deserialize_u64(V)
    }
}

/// The value of the first `"order_uid": "…"` in a raw message, valid JSON or not (cut short,
/// broken), if it is an order_uid: found by a plain search, whatever the message's size.
pub(crate) fn uid_field(payload: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"order_uid\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = payload[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let len = rest
        .iter()
        .take(MAX_UID_LEN + 1)
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
        .count();
    if len == 0 || len > MAX_UID_LEN || rest.get(len) != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()
}

/// The order_uid a raw message names, if it is a JSON object with a string `order_uid` (valid
/// order or not).
pub(crate) fn named_order(payload: &[u8]) -> Option<String> {
    /// Only the id: every other field is skipped, whatever it holds.
    #[derive(Deserialize)]
    struct Head {
        order_uid: String,
    }
    serde_json::from_slice::<Head>(payload)
        .ok()
        .map(|head| head.order_uid)
}

/// Which of `uids` a raw message carries, if any: the one a JSON object names as its
/// `order_uid`, or, for bytes that are no such object (truncated, broken, not JSON at all), one
/// that appears in them literally. Erasure uses it on every copy it can find (the streams'
/// messages, `rejected_messages`): a message that is not a valid order may still hold the
/// order's personal data, and one that names another order is that order's, whatever ids its
/// other fields mention.
pub(crate) fn carried_order<'a, S: Borrow<str> + Eq + std::hash::Hash>(
    payload: &[u8],
    uids: &'a std::collections::HashSet<S>,
) -> Option<&'a str> {
    if let Some(named) = named_order(payload) {
        return uids.get(named.as_str()).map(Borrow::borrow);
    }
    uids.iter().map(Borrow::borrow).find(|uid: &&str| {
        !uid.is_empty()
            && payload
                .windows(uid.len())
                .any(|window| window == uid.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = include_str!("../../../testdata/model.json");

    fn reject(raw: impl AsRef<[u8]>) -> Rejection {
        match Order::parse(raw.as_ref()) {
            Ok(order) => panic!("accepted: {}", order.document()),
            Err(r) => r,
        }
    }

    /// `raw` with the `n`-th (from 0) occurrence of `from` replaced by `to`.
    fn replace_nth(raw: &str, from: &str, n: usize, to: &str) -> String {
        let (at, _) = raw
            .match_indices(from)
            .nth(n)
            .unwrap_or_else(|| panic!("no occurrence {n} of {from:?}"));
        format!("{}{to}{}", &raw[..at], &raw[at + from.len()..])
    }

    fn accept(raw: impl AsRef<[u8]>) -> Order {
        match Order::parse(raw.as_ref()) {
            Ok(order) => order,
            Err(r) => panic!("rejected: {r}"),
        }
    }

    /// model.json with the first occurrence of `from` replaced by `to` (which must exist).
    fn model_with(from: &str, to: &str) -> String {
        assert!(MODEL.contains(from), "model.json has no {from:?}");
        MODEL.replacen(from, to, 1)
    }

    fn assert_rejected(raw: impl AsRef<[u8]>, kind: RejectKind, path: &str, rule: &str) {
        let r = reject(raw);
        assert_eq!(
            (r.kind(), r.path.as_str(), r.rule.as_str()),
            (kind, path, rule),
            "got {r}"
        );
    }

    /// An order with `n` copies of the model's item, and a given uid.
    fn order_with_items(uid: &str, n: usize) -> String {
        let item = r#"{"chrt_id": 9934930, "track_number": "WBILMTESTTRACK", "price": 453,
            "rid": "ab4219087a764ae0btest", "name": "Mascaras", "sale": 30, "size": "0",
            "total_price": 317, "nm_id": 2389212, "brand": "Vivienne Sabo", "status": 202}"#;
        let items = vec![item; n].join(",");
        let start = MODEL.find("\"items\"").unwrap();
        let end = MODEL.find("\"locale\"").unwrap();
        let body = format!(
            "{}\"items\": [{items}],\n  {}",
            &MODEL[..start],
            &MODEL[end..]
        );
        body.replacen("b563feb7b2b84b6test", uid, 1)
    }

    // ---- Accepted messages ----

    #[test]
    fn the_model_sample_is_accepted_and_its_document_is_byte_identical() {
        let order = accept(MODEL);
        assert_eq!(order.document(), MODEL);
        assert_eq!(order.uid().as_str(), "b563feb7b2b84b6test");
        assert_eq!(order.customer_id(), "test");
        assert_eq!(order.track_number(), "WBILMTESTTRACK");
        assert_eq!(order.item_count(), 1);
        assert_eq!(
            order.date_created(),
            time::macros::datetime!(2021-11-26 06:22:19 UTC)
        );
    }

    #[test]
    fn a_compact_single_line_order_is_accepted() {
        let compact: String = MODEL.lines().map(str::trim).collect();
        let order = accept(&compact);
        assert_eq!(order.document(), compact);
    }

    #[test]
    fn surrounding_whitespace_is_accepted_and_kept() {
        let padded = format!(" \n\t{MODEL}\r\n ");
        assert_eq!(accept(&padded).document(), padded);
    }

    #[test]
    fn extra_fields_are_accepted_and_kept_in_the_document() {
        let raw = model_with(
            "\"entry\": \"WBIL\",",
            "\"entry\": \"WBIL\", \"future\": {\"a\": [1, null, true, {\"b\": 2.5}]},",
        )
        .replacen("\"zip\"", "\"floor\": 3, \"zip\"", 1)
        .replacen("\"status\": 202", "\"status\": 202, \"gift\": false", 1);
        let order = accept(&raw);
        assert_eq!(order.document(), raw);
        assert!(order.document().contains("\"future\""));
        assert!(order.document().contains("\"gift\": false"));
    }

    #[test]
    fn strings_with_escapes_and_markup_are_accepted_unchanged() {
        let raw = model_with("\"Mascaras\"", r#""a\"b<script>alert(1)</script>\u00e9\n""#)
            .replacen(
                "\"customer_id\": \"test\"",
                r#""customer_id": "t\\e\"st""#,
                1,
            );
        let order = accept(&raw);
        assert_eq!(order.document(), raw);
        assert_eq!(order.customer_id(), r#"t\e"st"#);
    }

    #[test]
    fn unicode_text_is_accepted() {
        let raw = model_with("\"Test Testov\"", "\"Тест Тестов 🚚\"");
        assert_eq!(accept(&raw).document(), raw);
    }

    #[test]
    fn a_multi_item_order_reports_its_item_count() {
        assert_eq!(accept(order_with_items("multi", 3)).item_count(), 3);
    }

    #[test]
    fn a_ten_thousand_item_order_is_accepted_by_the_parser() {
        // Larger than a max payload, which `parse` does not care about: the parser itself has no
        // item limit.
        let raw = order_with_items("big-order", 10_000);
        let order = accept(&raw);
        assert_eq!(order.item_count(), 10_000);
        assert_eq!(order.uid().as_str(), "big-order");
    }

    #[test]
    fn internal_signature_and_request_id_may_be_empty() {
        // The model itself has both empty; make sure they are also fine non-empty.
        assert!(MODEL.contains("\"internal_signature\": \"\""));
        assert!(MODEL.contains("\"request_id\": \"\""));
        let raw = model_with("\"request_id\": \"\"", "\"request_id\": \"r1\"").replacen(
            "\"internal_signature\": \"\"",
            "\"internal_signature\": \"s\"",
            1,
        );
        accept(raw);
    }

    #[test]
    fn arithmetic_between_payment_and_items_is_not_checked() {
        let raw = model_with("\"amount\": 1817", "\"amount\": 5").replacen(
            "\"total_price\": 317",
            "\"total_price\": 999999",
            1,
        );
        accept(raw);
    }

    #[test]
    fn the_largest_u64_is_accepted_as_an_integer() {
        accept(model_with(
            "\"amount\": 1817",
            "\"amount\": 18446744073709551615",
        ));
    }

    #[test]
    fn a_date_with_an_offset_and_fraction_is_accepted() {
        let order = accept(model_with(
            "2021-11-26T06:22:19Z",
            "2021-11-26T09:22:19.123+03:00",
        ));
        assert_eq!(order.date_created().offset().whole_hours(), 3);
    }

    #[test]
    fn an_escaped_field_name_counts_as_that_field() {
        let raw = model_with("\"order_uid\"", "\"order\\u005fuid\"");
        assert_eq!(accept(raw).uid().as_str(), "b563feb7b2b84b6test");
    }

    #[test]
    fn nesting_exactly_max_depth_is_accepted() {
        // The order is depth 1; the extra field adds MAX_DEPTH - 1 levels.
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        accept(model_with(
            "\"entry\"",
            &format!("\"x\": {deep}, \"entry\""),
        ));
    }

    // ---- Payload-level rejections ----

    #[test]
    fn non_utf8_bytes_are_rejected_with_their_offset() {
        let mut raw = MODEL.as_bytes().to_vec();
        let at = MODEL.find("Mascaras").unwrap();
        raw[at] = 0xff;
        assert_rejected(
            raw,
            RejectKind::NotUtf8,
            "payload",
            &format!("not valid UTF-8 (invalid byte at offset {at})"),
        );
    }

    #[test]
    fn one_level_over_max_depth_is_rejected_as_too_deep() {
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_rejected(
            model_with("\"entry\"", &format!("\"x\": {deep}, \"entry\"")),
            RejectKind::TooDeep,
            "payload",
            "nested deeper than 32 levels",
        );
    }

    #[test]
    fn deep_nesting_inside_an_unknown_object_field_is_rejected() {
        let deep = format!("{}{}", "{\"a\":".repeat(40), "}".repeat(40));
        let r = reject(model_with(
            "\"entry\"",
            &format!("\"x\": {deep}, \"entry\""),
        ));
        assert_eq!(r.kind(), RejectKind::TooDeep);
    }

    #[test]
    fn a_megabyte_of_open_brackets_is_rejected_as_too_deep() {
        // The scan stops at level 33, so it never walks the rest.
        assert_rejected(
            vec![b'['; 1024 * 1024],
            RejectKind::TooDeep,
            "payload",
            "nested deeper than 32 levels",
        );
    }

    /// The model padded (in customer_id) to exactly `len` bytes.
    fn model_of_len(len: usize) -> String {
        let short = model_with("\"customer_id\": \"test\"", "\"customer_id\": \"\"");
        let padding = "c".repeat(len - short.len());
        model_with(
            "\"customer_id\": \"test\"",
            &format!("\"customer_id\": \"{padding}\""),
        )
    }

    /// A size limit for the tests of `parse_within` (the bus's own is tested in `bus`).
    const LIMIT: usize = 2000;

    fn reject_within(raw: impl AsRef<[u8]>, max_len: usize) -> Rejection {
        match Order::parse_within(raw.as_ref(), max_len) {
            Ok(order) => panic!("accepted: {}", order.document()),
            Err(r) => r,
        }
    }

    #[test]
    fn a_document_of_the_limit_is_accepted_and_one_byte_more_is_too_large() {
        let order = Order::parse_within(model_of_len(LIMIT).as_bytes(), LIMIT).expect("accepted");
        assert_eq!(order.document().len(), LIMIT);
        let r = reject_within(model_of_len(LIMIT + 1), LIMIT);
        assert_eq!(
            (r.kind(), r.path.as_str(), r.rule.as_str()),
            (
                RejectKind::TooLarge,
                "payload",
                "2001 bytes, more than the 2000 an order may take"
            )
        );
        // Size comes first: what is too large is not read at all.
        assert_eq!(
            reject_within(vec![0xFF; LIMIT + 1], LIMIT).kind(),
            RejectKind::TooLarge
        );
    }

    #[test]
    fn parse_sets_no_size_limit() {
        let big = model_of_len(4 * 1024 * 1024);
        assert_eq!(accept(&big).document().len(), big.len());
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_depth() {
        let brackets = format!("{}\\\"{}", "[{".repeat(100), "]".repeat(50));
        accept(model_with("\"Mascaras\"", &format!("\"{brackets}\"")));
    }

    #[test]
    fn an_escaped_quote_does_not_end_a_string_for_the_depth_scan() {
        // If `\"` ended the string, the 40 brackets after it would count and reject the order.
        let s = format!("\"a\\\"{}\"", "[".repeat(40));
        accept(model_with("\"Mascaras\"", &s));
        // An escaped backslash before the quote does end the string.
        assert!(nests_deeper_than(
            format!("\"a\\\\\"{}", "[".repeat(40)).as_bytes(),
            MAX_DEPTH
        ));
    }

    #[test]
    fn empty_input_is_rejected_as_bad_json() {
        assert_rejected(
            "",
            RejectKind::BadJson,
            "payload",
            "invalid JSON: EOF while parsing a value at line 1 column 0",
        );
    }

    #[test]
    fn whitespace_only_input_is_rejected_as_bad_json() {
        assert_eq!(reject(" \n\t ").kind(), RejectKind::BadJson);
    }

    #[test]
    fn plain_text_is_rejected_as_bad_json() {
        let r = reject("hello, order");
        assert_eq!(r.kind(), RejectKind::BadJson);
        assert!(r.rule.starts_with("invalid JSON: "), "{r}");
        assert!(r.rule.contains("line 1 column"), "{r}");
    }

    #[test]
    fn truncated_input_is_rejected_as_bad_json_with_its_position() {
        let raw = &MODEL[..MODEL.find("\"payment_dt\"").unwrap()];
        let r = reject(raw);
        assert_eq!(
            (r.kind(), r.path.as_str()),
            (RejectKind::BadJson, "payload")
        );
        assert!(r.rule.starts_with("invalid JSON: EOF while parsing"), "{r}");
        assert!(r.rule.contains(" at line "), "{r}");
    }

    #[test]
    fn trailing_garbage_after_the_object_is_rejected_as_bad_json() {
        let r = reject(format!("{MODEL} x"));
        assert_eq!(r.kind(), RejectKind::BadJson);
        assert!(r.rule.contains("trailing characters"), "{r}");
        assert_eq!(
            reject(format!("{MODEL}{MODEL}")).kind(),
            RejectKind::BadJson
        );
    }

    #[test]
    fn a_byte_order_mark_is_rejected_as_bad_json() {
        assert_eq!(
            reject(format!("\u{feff}{MODEL}")).kind(),
            RejectKind::BadJson
        );
    }

    #[test]
    fn a_syntax_error_wins_over_a_field_error_met_earlier() {
        // serde meets the bad amount first, but the message is not JSON at all.
        let raw = model_with("\"amount\": 1817", "\"amount\": -1");
        let broken = &raw[..raw.len() - 3];
        assert_eq!(reject(broken).kind(), RejectKind::BadJson);
    }

    #[test]
    fn json_that_is_not_an_object_is_rejected_as_not_object() {
        for raw in [
            "[]",
            "[1, 2]",
            "\"x\"",
            "42",
            "null",
            "true",
            &format!("[{MODEL}]"),
        ] {
            assert_rejected(
                raw,
                RejectKind::NotObject,
                "payload",
                "expected a JSON object",
            );
        }
    }

    #[test]
    fn an_unterminated_array_is_bad_json_not_a_non_object() {
        assert_eq!(reject("[1, 2").kind(), RejectKind::BadJson);
    }

    #[test]
    fn an_empty_object_is_rejected_for_its_first_missing_field() {
        let r = reject("{}");
        assert_eq!(r.kind(), RejectKind::MissingField);
        assert_eq!(r.rule, "missing required field");
    }

    // ---- Missing fields ----

    #[test]
    fn a_missing_top_level_field_is_rejected_with_its_name() {
        let raw = model_with("\"oof_shard\": \"1\"", "\"x\": 1").replacen(
            "\"date_created\": \"2021-11-26T06:22:19Z\",",
            "",
            1,
        );
        let r = reject(raw);
        assert_eq!(r.kind(), RejectKind::MissingField);
        // serde reports the first missing field in declaration order.
        assert_eq!(r.to_string(), "date_created: missing required field");
    }

    #[test]
    fn a_missing_payment_amount_is_rejected_with_its_full_path() {
        assert_rejected(
            model_with("\"amount\": 1817,", ""),
            RejectKind::MissingField,
            "payment.amount",
            "missing required field",
        );
    }

    #[test]
    fn a_missing_delivery_email_is_rejected_with_its_full_path() {
        assert_rejected(
            model_with(",\n    \"email\": \"test@gmail.com\"", ""),
            RejectKind::MissingField,
            "delivery.email",
            "missing required field",
        );
    }

    #[test]
    fn a_fault_in_a_later_item_names_that_item_by_its_index() {
        for (items, from, n, to, reason) in [
            (
                3,
                "\"rid\"",
                2,
                "\"rid_old\"",
                "items[2].rid: missing required field",
            ),
            (
                5,
                "\"price\": 453",
                3,
                "\"price\": 4.5",
                "items[3].price: expected a non-negative integer",
            ),
        ] {
            let raw = replace_nth(&order_with_items("later", items), from, n, to);
            assert_eq!(reject(raw).to_string(), reason);
        }
    }

    #[test]
    fn every_model_field_is_required() {
        let fields = [
            ("\"order_uid\"", "order_uid"),
            ("\"entry\"", "entry"),
            ("\"delivery\"", "delivery"),
            ("\"name\"", "delivery.name"),
            ("\"phone\"", "delivery.phone"),
            ("\"zip\"", "delivery.zip"),
            ("\"city\"", "delivery.city"),
            ("\"address\"", "delivery.address"),
            ("\"region\"", "delivery.region"),
            ("\"email\"", "delivery.email"),
            ("\"payment\"", "payment"),
            ("\"transaction\"", "payment.transaction"),
            ("\"request_id\"", "payment.request_id"),
            ("\"currency\"", "payment.currency"),
            ("\"provider\"", "payment.provider"),
            ("\"amount\"", "payment.amount"),
            ("\"payment_dt\"", "payment.payment_dt"),
            ("\"bank\"", "payment.bank"),
            ("\"delivery_cost\"", "payment.delivery_cost"),
            ("\"goods_total\"", "payment.goods_total"),
            ("\"custom_fee\"", "payment.custom_fee"),
            ("\"items\"", "items"),
            ("\"chrt_id\"", "items[0].chrt_id"),
            ("\"price\"", "items[0].price"),
            ("\"rid\"", "items[0].rid"),
            ("\"sale\"", "items[0].sale"),
            ("\"size\"", "items[0].size"),
            ("\"total_price\"", "items[0].total_price"),
            ("\"nm_id\"", "items[0].nm_id"),
            ("\"brand\"", "items[0].brand"),
            ("\"status\"", "items[0].status"),
            ("\"locale\"", "locale"),
            ("\"internal_signature\"", "internal_signature"),
            ("\"customer_id\"", "customer_id"),
            ("\"delivery_service\"", "delivery_service"),
            ("\"shardkey\"", "shardkey"),
            ("\"sm_id\"", "sm_id"),
            ("\"date_created\"", "date_created"),
            ("\"oof_shard\"", "oof_shard"),
        ];
        for (key, path) in fields {
            // Renaming the key keeps the JSON valid and makes the field unknown, hence missing.
            let raw = model_with(key, &format!("\"renamed_{}", &key[1..]));
            assert_rejected(
                raw,
                RejectKind::MissingField,
                path,
                "missing required field",
            );
        }
        // The two track_numbers: top level and the item's.
        let top = MODEL.replacen("\"track_number\"", "\"tn\"", 1);
        assert_rejected(
            top,
            RejectKind::MissingField,
            "track_number",
            "missing required field",
        );
        let last = MODEL.rfind("\"track_number\"").unwrap();
        let item = format!("{}\"tn\"{}", &MODEL[..last], &MODEL[last + 14..]);
        assert_rejected(
            item,
            RejectKind::MissingField,
            "items[0].track_number",
            "missing required field",
        );
    }

    // ---- Types and values ----

    #[test]
    fn a_null_required_field_is_rejected_as_wrong_type() {
        assert_rejected(
            model_with("\"amount\": 1817", "\"amount\": null"),
            RejectKind::WrongType,
            "payment.amount",
            "expected a non-negative integer",
        );
        assert_rejected(
            model_with("\"customer_id\": \"test\"", "\"customer_id\": null"),
            RejectKind::WrongType,
            "customer_id",
            "expected a string",
        );
        assert_rejected(
            model_with("\"payment\": {", "\"payment\": null, \"p\": {"),
            RejectKind::WrongType,
            "payment",
            "expected an object",
        );
    }

    #[test]
    fn a_negative_amount_is_rejected_with_its_field_path() {
        let r = reject(model_with("\"amount\": 1817", "\"amount\": -1"));
        assert_eq!(r.kind(), RejectKind::InvalidValue);
        assert_eq!(
            r.to_string(),
            "payment.amount: expected a non-negative integer"
        );
    }

    #[test]
    fn numbers_that_are_not_non_negative_integers_are_rejected() {
        let cases = [
            ("1.0", RejectKind::InvalidValue),
            ("1e3", RejectKind::InvalidValue),
            ("-1", RejectKind::InvalidValue),
            ("-9223372036854775808", RejectKind::InvalidValue),
            ("18446744073709551616", RejectKind::InvalidValue),
            ("\"12\"", RejectKind::WrongType),
            ("true", RejectKind::WrongType),
            ("null", RejectKind::WrongType),
            ("[1]", RejectKind::WrongType),
            ("{}", RejectKind::WrongType),
        ];
        for (value, kind) in cases {
            let raw = model_with("\"sm_id\": 99", &format!("\"sm_id\": {value}"));
            assert_rejected(raw, kind, "sm_id", "expected a non-negative integer");
        }
    }

    #[test]
    fn every_integer_field_is_checked() {
        let fields = [
            ("\"sm_id\": 99", "sm_id"),
            ("\"amount\": 1817", "payment.amount"),
            ("\"payment_dt\": 1637907727", "payment.payment_dt"),
            ("\"delivery_cost\": 1500", "payment.delivery_cost"),
            ("\"goods_total\": 317", "payment.goods_total"),
            ("\"custom_fee\": 0", "payment.custom_fee"),
            ("\"chrt_id\": 9934930", "items[0].chrt_id"),
            ("\"price\": 453", "items[0].price"),
            ("\"sale\": 30", "items[0].sale"),
            ("\"total_price\": 317", "items[0].total_price"),
            ("\"nm_id\": 2389212", "items[0].nm_id"),
            ("\"status\": 202", "items[0].status"),
        ];
        for (pair, path) in fields {
            let key = pair.split(':').next().unwrap();
            let raw = model_with(pair, &format!("{key}: \"1\""));
            assert_rejected(
                raw,
                RejectKind::WrongType,
                path,
                "expected a non-negative integer",
            );
        }
    }

    #[test]
    fn every_string_field_rejects_a_number_and_the_non_empty_ones_reject_empty() {
        // (exact "key": "value" text in model.json, path, may be empty)
        let fields = [
            ("\"entry\": \"WBIL\"", "entry", false),
            ("\"name\": \"Test Testov\"", "delivery.name", false),
            ("\"phone\": \"+9720000000\"", "delivery.phone", false),
            ("\"zip\": \"2639809\"", "delivery.zip", false),
            ("\"city\": \"Kiryat Mozkin\"", "delivery.city", false),
            (
                "\"address\": \"Ploshad Mira 15\"",
                "delivery.address",
                false,
            ),
            ("\"region\": \"Kraiot\"", "delivery.region", false),
            ("\"email\": \"test@gmail.com\"", "delivery.email", false),
            (
                "\"transaction\": \"b563feb7b2b84b6test\"",
                "payment.transaction",
                false,
            ),
            ("\"request_id\": \"\"", "payment.request_id", true),
            ("\"currency\": \"USD\"", "payment.currency", false),
            ("\"provider\": \"wbpay\"", "payment.provider", false),
            ("\"bank\": \"alpha\"", "payment.bank", false),
            ("\"rid\": \"ab4219087a764ae0btest\"", "items[0].rid", false),
            ("\"name\": \"Mascaras\"", "items[0].name", false),
            ("\"size\": \"0\"", "items[0].size", false),
            ("\"brand\": \"Vivienne Sabo\"", "items[0].brand", false),
            ("\"locale\": \"en\"", "locale", false),
            ("\"internal_signature\": \"\"", "internal_signature", true),
            ("\"customer_id\": \"test\"", "customer_id", false),
            ("\"delivery_service\": \"meest\"", "delivery_service", false),
            ("\"shardkey\": \"9\"", "shardkey", false),
            ("\"oof_shard\": \"1\"", "oof_shard", false),
            ("\"order_uid\": \"b563feb7b2b84b6test\"", "order_uid", false),
            (
                "\"date_created\": \"2021-11-26T06:22:19Z\"",
                "date_created",
                false,
            ),
        ];
        for (pair, path, may_be_empty) in fields {
            let key = pair.split(':').next().unwrap();
            let number = model_with(pair, &format!("{key}: 7"));
            assert_rejected(number, RejectKind::WrongType, path, "expected a string");
            let empty = model_with(pair, &format!("{key}: \"\""));
            if may_be_empty {
                accept(empty);
            } else {
                let r = reject(empty);
                assert_eq!(
                    (r.kind(), r.path.as_str()),
                    (RejectKind::InvalidValue, path)
                );
            }
        }
    }

    #[test]
    fn an_empty_string_is_rejected_as_expected_non_empty() {
        assert_rejected(
            model_with("\"bank\": \"alpha\"", "\"bank\": \"\""),
            RejectKind::InvalidValue,
            "payment.bank",
            "expected a non-empty string",
        );
    }

    #[test]
    fn both_track_numbers_must_be_non_empty_strings() {
        let top = MODEL.replacen("\"WBILMTESTTRACK\"", "\"\"", 1);
        assert_rejected(
            top,
            RejectKind::InvalidValue,
            "track_number",
            "expected a non-empty string",
        );
        let last = MODEL.rfind("\"WBILMTESTTRACK\"").unwrap();
        let item = format!("{}[]{}", &MODEL[..last], &MODEL[last + 16..]);
        assert_rejected(
            item,
            RejectKind::WrongType,
            "items[0].track_number",
            "expected a string",
        );
    }

    #[test]
    fn delivery_and_payment_must_be_objects() {
        assert_rejected(
            model_with("\"delivery\": {", "\"delivery\": \"home\", \"d\": {"),
            RejectKind::WrongType,
            "delivery",
            "expected an object",
        );
        // An array of the right values in the right order is still not an object.
        let values = r#"["n", "p", "z", "c", "a", "r", "e"]"#;
        assert_rejected(
            model_with(
                "\"delivery\": {",
                &format!("\"delivery\": {values}, \"d\": {{"),
            ),
            RejectKind::WrongType,
            "delivery",
            "expected an object",
        );
        assert_rejected(
            model_with("\"payment\": {", "\"payment\": [], \"p\": {"),
            RejectKind::WrongType,
            "payment",
            "expected an object",
        );
    }

    #[test]
    fn items_must_be_a_non_empty_array_of_objects() {
        let start = MODEL.find("\"items\"").unwrap();
        let end = MODEL.find("\"locale\"").unwrap();
        let with_items =
            |v: &str| format!("{}\"items\": {v},\n  {}", &MODEL[..start], &MODEL[end..]);
        assert_rejected(
            with_items("[]"),
            RejectKind::InvalidValue,
            "items",
            "expected a non-empty array",
        );
        assert_rejected(
            with_items("{}"),
            RejectKind::WrongType,
            "items",
            "expected a non-empty array",
        );
        assert_rejected(
            with_items("null"),
            RejectKind::WrongType,
            "items",
            "expected a non-empty array",
        );
        let raw = order_with_items("objs", 3);
        let last = raw.rfind("{\"chrt_id\"").unwrap();
        let raw = format!("{}7, {}", &raw[..last], &raw[last..]);
        assert_rejected(raw, RejectKind::WrongType, "items[2]", "expected an object");
    }

    #[test]
    fn an_order_uid_that_breaks_the_rule_is_rejected_with_the_rule() {
        let long = "a".repeat(MAX_UID_LEN + 1);
        for bad in ["", "bad uid/../x", "ü", "a.b", &long, "a\\u0000"] {
            assert_rejected(
                model_with("\"b563feb7b2b84b6test\"", &format!("\"{bad}\"")),
                RejectKind::InvalidValue,
                "order_uid",
                "order_uid must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            );
        }
    }

    #[test]
    fn a_date_that_is_not_rfc_3339_is_rejected() {
        for bad in [
            "26.11.2021",
            "2021-11-26",
            "2021-11-26 06:22:19",
            "2021-11-26T06:22:19",
            "",
        ] {
            assert_rejected(
                model_with("\"2021-11-26T06:22:19Z\"", &format!("\"{bad}\"")),
                RejectKind::InvalidValue,
                "date_created",
                "expected an RFC 3339 date-time",
            );
        }
    }

    #[test]
    fn a_duplicated_known_field_is_rejected() {
        assert_rejected(
            model_with("\"order_uid\"", "\"order_uid\": \"other\", \"order_uid\""),
            RejectKind::InvalidValue,
            "order_uid",
            "duplicate field",
        );
        assert_rejected(
            model_with("\"amount\"", "\"amount\": 1, \"amount\""),
            RejectKind::InvalidValue,
            "payment.amount",
            "duplicate field",
        );
        // Escapes do not hide a duplicate.
        let r = reject(model_with(
            "\"order_uid\"",
            "\"order\\u005fuid\": \"x\", \"order_uid\"",
        ));
        assert_eq!(r.to_string(), "order_uid: duplicate field");
    }

    #[test]
    fn a_duplicated_unknown_field_is_kept_like_any_extra_field() {
        accept(model_with("\"entry\"", "\"x\": 1, \"x\": 2, \"entry\""));
    }

    // ---- The public types ----

    #[test]
    fn order_uid_parse_accepts_the_allowed_alphabet_up_to_64() {
        let max = "Z".repeat(MAX_UID_LEN);
        for good in ["a", "A-z_0-9", max.as_str()] {
            let uid = OrderUid::parse(good).unwrap();
            assert_eq!(uid.as_str(), good);
            assert_eq!(uid.to_string(), good);
            assert_eq!(AsRef::<str>::as_ref(&uid), good);
        }
        let err = OrderUid::parse("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "order_uid must be 1 to 64 characters of A-Z a-z 0-9 _ -"
        );
    }

    #[test]
    fn an_order_uid_can_be_looked_up_by_str() {
        let mut map = std::collections::HashMap::new();
        map.insert(OrderUid::parse("abc").unwrap(), 1);
        assert_eq!(map.get("abc"), Some(&1));
    }

    #[test]
    fn reject_kinds_have_snake_case_labels() {
        let labels: Vec<_> = [
            RejectKind::NotUtf8,
            RejectKind::TooLarge,
            RejectKind::TooDeep,
            RejectKind::BadJson,
            RejectKind::NotObject,
            RejectKind::MissingField,
            RejectKind::WrongType,
            RejectKind::InvalidValue,
        ]
        .into_iter()
        .map(RejectKind::as_str)
        .collect();
        assert_eq!(
            labels,
            [
                "not_utf8",
                "too_large",
                "too_deep",
                "bad_json",
                "not_object",
                "missing_field",
                "wrong_type",
                "invalid_value"
            ]
        );
    }

    #[test]
    fn every_reject_kind_is_produced_by_some_input() {
        let mut bad_utf8 = MODEL.as_bytes().to_vec();
        bad_utf8[3] = 0xc3;
        let inputs: Vec<(Vec<u8>, RejectKind)> = vec![
            (bad_utf8, RejectKind::NotUtf8),
            (vec![b' '; LIMIT + 1], RejectKind::TooLarge),
            ("[".repeat(33).into_bytes(), RejectKind::TooDeep),
            (b"{".to_vec(), RejectKind::BadJson),
            (b"[]".to_vec(), RejectKind::NotObject),
            (b"{}".to_vec(), RejectKind::MissingField),
            (
                model_with("\"sm_id\": 99", "\"sm_id\": \"99\"").into_bytes(),
                RejectKind::WrongType,
            ),
            (
                model_with("\"sm_id\": 99", "\"sm_id\": -99").into_bytes(),
                RejectKind::InvalidValue,
            ),
        ];
        for (raw, kind) in inputs {
            let r = reject_within(&raw, LIMIT);
            assert_eq!(r.kind(), kind, "{r}");
            assert_eq!(r.to_string(), format!("{}: {}", r.path, r.rule));
        }
    }

    #[test]
    fn a_rejection_is_a_std_error() {
        let err: Box<dyn std::error::Error> = Box::new(reject("[]"));
        assert_eq!(err.to_string(), "payload: expected a JSON object");
    }

    // ---- Robustness ----

    #[test]
    fn every_truncation_of_the_model_is_rejected_without_panic() {
        let bytes = MODEL.as_bytes();
        // The model ends in "}\n": only the prefixes missing the closing brace are incomplete.
        let closing = MODEL.rfind('}').unwrap();
        for len in 0..=closing {
            let r = reject(&bytes[..len]);
            assert_eq!(r.kind(), RejectKind::BadJson, "prefix {len}: {r}");
        }
        accept(&bytes[..=closing]);
    }

    #[test]
    fn random_byte_mutations_never_panic_and_always_explain_a_rejection() {
        // xorshift64: reproducible without extra crates.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let interesting = b"{}[]\",:\\0-1.eE nul\xff\xc3";
        let mut accepted = 0;
        for _ in 0..5_000 {
            let mut raw = MODEL.as_bytes().to_vec();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % raw.len();
                match next() % 4 {
                    0 => raw[at] = next() as u8,
                    1 => raw[at] = interesting[(next() as usize) % interesting.len()],
                    2 => {
                        raw.remove(at);
                    }
                    _ => raw.insert(at, interesting[(next() as usize) % interesting.len()]),
                }
            }
            match Order::parse(&raw) {
                Ok(order) => {
                    accepted += 1;
                    assert_eq!(order.document().as_bytes(), &raw[..]);
                }
                Err(r) => {
                    assert!(!r.to_string().is_empty());
                    assert!(!r.path.is_empty() && !r.rule.is_empty(), "{r:?}");
                }
            }
        }
        // Some mutations land in whitespace or inside free text and must still be accepted.
        assert!(accepted > 0);
    }

    // ---- Testdata ----

    #[test]
    fn every_testdata_sample_parses_as_its_name_says() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
        let mut checked = 0;
        let mut uids = std::collections::HashSet::new();
        let read =
            |rel: &str| std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));

        let mut valid = vec!["model.json".to_owned()];
        for entry in std::fs::read_dir(root.join("valid")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            valid.push(format!("valid/{name}"));
        }
        for rel in &valid {
            let raw = read(rel);
            let order = Order::parse(&raw).unwrap_or_else(|r| panic!("{rel}: {r}"));
            assert_eq!(order.document().as_bytes(), &raw[..], "{rel}");
            assert!(uids.insert(order.uid().to_string()), "{rel}: uid reused");
            checked += 1;
        }

        let expected = [
            ("not-utf8.bin", RejectKind::NotUtf8, "payload"),
            ("not-json.txt", RejectKind::BadJson, "payload"),
            ("truncated.json", RejectKind::BadJson, "payload"),
            ("not-object.json", RejectKind::NotObject, "payload"),
            ("deeply-nested.json", RejectKind::TooDeep, "payload"),
            (
                "missing-field.json",
                RejectKind::MissingField,
                "payment.amount",
            ),
            ("wrong-type.json", RejectKind::WrongType, "payment.amount"),
            (
                "negative-amount.json",
                RejectKind::InvalidValue,
                "payment.amount",
            ),
            ("bad-uid.json", RejectKind::InvalidValue, "order_uid"),
            ("bad-date.json", RejectKind::InvalidValue, "date_created"),
            ("empty-items.json", RejectKind::InvalidValue, "items"),
        ];
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("invalid"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = expected.iter().map(|(n, ..)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "every invalid sample needs an expectation");
        for (name, kind, path) in expected {
            let raw = read(&format!("invalid/{name}"));
            let r = reject(&raw);
            assert_eq!((r.kind(), r.path.as_str()), (kind, path), "{name}: {r}");
            // The uid, wherever one can be read, must not collide with another sample's.
            if let Some(uid) = sample_uid(&raw) {
                assert!(uids.insert(uid.clone()), "{name}: uid {uid} reused");
            }
            checked += 1;
        }
        assert_eq!(checked, 16);
    }

    /// The first `"order_uid": "..."` value in a sample, read loosely (samples may be broken).
    fn sample_uid(raw: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(raw);
        let after = &text[text.find("\"order_uid\"")? + 11..];
        let start = after.find('"')? + 1;
        let len = after[start..].find('"')?;
        Some(after[start..start + len].to_owned())
    }

    #[test]
    fn a_message_carries_the_order_it_names_or_an_id_it_holds_when_it_names_none() {
        let uids: std::collections::HashSet<&str> = ["b563feb7b2b84b6test", "other1"].into();
        assert_eq!(
            carried_order(MODEL.as_bytes(), &uids),
            Some("b563feb7b2b84b6test")
        );
        // Another order's message that mentions the id in a field is that other order's.
        let mentions = r#"{"order_uid": "third", "note": "b563feb7b2b84b6test"}"#;
        assert_eq!(carried_order(mentions.as_bytes(), &uids), None);
        // Truncated, or not JSON: the literal id.
        assert_eq!(
            carried_order(&MODEL.as_bytes()[..200], &uids),
            Some("b563feb7b2b84b6test")
        );
        assert_eq!(
            carried_order(b"garbage other1 garbage", &uids),
            Some("other1")
        );
        assert_eq!(carried_order(b"garbage", &uids), None);
        // Deeper than the parser goes: still found by its bytes.
        let deep = format!("{}\"other1\"{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(carried_order(deep.as_bytes(), &uids), Some("other1"));
    }

    #[test]
    fn the_uid_field_is_found_in_a_message_cut_short_and_nowhere_else() {
        assert_eq!(uid_field(MODEL.as_bytes()), Some("b563feb7b2b84b6test"));
        assert_eq!(
            uid_field(&MODEL.as_bytes()[..40]),
            Some("b563feb7b2b84b6test")
        );
        assert_eq!(uid_field(br#"{"order_uid" :  "a-1" , "x"#), Some("a-1"));
        // Cut inside the id: it may be another id's prefix, so nothing is taken.
        assert_eq!(uid_field(br#"{"order_uid": "a-"#), None);
        assert_eq!(uid_field(br#"{"order_uid": "a b"}"#), None);
        assert_eq!(uid_field(br#"{"order_uid": 5}"#), None);
        let long = format!(r#"{{"order_uid": "{}"}}"#, "x".repeat(65));
        assert_eq!(uid_field(long.as_bytes()), None);
        assert_eq!(uid_field(b"garbage"), None);
    }
}
