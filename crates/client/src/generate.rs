//! Realistic generated orders, for load: `bench ingest` publishes them and `publish --generate`
//! puts them on the stream for a person to try the service with more than the samples.
//!
//! Order `n` of seed `s` is a pure function of `(s, n)`: nothing is stored between orders, any
//! order can be generated again (a duplicate is the same bytes re-generated), and a run can be
//! reproduced from its seed. The random numbers come from SplitMix64, written out here rather than
//! taken from `rand`, because `rand` does not promise the same sequence across its releases and a
//! seed printed in a benchmark report must mean the same orders next year.
//!
//! The shape follows model.json: the strings are plausible (Russian and English names, cities,
//! product titles of the length a marketplace really has), the sums add up, and the item count is
//! skewed like real baskets: most orders have 1 to 3 items, a few have up to 20. A 1-item order is
//! about 0.9 to 1.2 KB of JSON, a 20-item one about 7.5 to 8.5 KB, the mean about 2.4 KB. Generating
//! 1,000,000 takes about 3.5 s on one core (release build).

use serde::Serialize;

/// Most items in a generated order.
pub const MAX_ITEMS: usize = 20;

/// A small, fast, seedable random number generator (SplitMix64): the same seed gives the same
/// numbers on every platform and in every version of this program.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for item `n` of stream `stream` under `seed`: independent of every other
    /// `(n, stream)`, so that callers can draw for any item in any order (or from any thread).
    pub fn for_item(seed: u64, n: u64, stream: u64) -> Rng {
        Rng(mix(seed ^ mix(n ^ mix(stream))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (0 when `n` is 0), without modulo bias worth speaking of.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One element of a non-empty slice.
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random stream of the valid order bodies (other users of `Rng::for_item` pick other streams).
const STREAM_ORDER: u64 = 1;
/// Random stream of the choice of defect in an invalid message.
const STREAM_INVALID: u64 = 2;

/// A seed for runs that were not given one: different every time (callers print it, so that a
/// run can be repeated), and short enough to read in the ids it appears in.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000_000
}

/// The order_uid of order `n` under `seed`: `bench-<seed>-<n, 10 digits>`, at most 37 characters
/// of `[A-Za-z0-9_-]`, unique per `(seed, n)`.
pub fn uid(seed: u64, n: u64) -> String {
    format!("{}{n:010}", uid_prefix(seed))
}

/// What every order_uid of `seed` starts with, and no other seed's does (the seed ends at the
/// dash).
pub fn uid_prefix(seed: u64) -> String {
    format!("bench-{seed}-")
}

/// Appends order `n` of `seed`, compact JSON that passes `Order::parse`, to `out`.
pub fn order(seed: u64, n: u64, out: &mut Vec<u8>) {
    let uid = uid(seed, n);
    let mut rng = Rng::for_item(seed, n, STREAM_ORDER);
    // The items repeat the order's track number: made first so that the draft can borrow it.
    let track_number = format!("WBIL{}", letters(&mut rng, 10));
    let draft = Draft::new(&uid, &track_number, &mut rng);
    // Serialising plain structs into a Vec cannot fail: no map keys to convert, no I/O.
    if let Err(e) = serde_json::to_writer(&mut *out, &draft) {
        unreachable!("serialising a generated order failed: {e}");
    }
}

/// Order `n` of `seed` as a fresh buffer.
pub fn order_bytes(seed: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    order(seed, n, &mut out);
    out
}

/// The ways `invalid` breaks a message; each is a different rule of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Not JSON: the valid document cut in half.
    BadJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// The right type but a broken rule (empty items, a malformed id or date).
    BadValue,
}

impl Defect {
    /// Every defect, in the order `invalid` cycles through them.
    pub const ALL: [Defect; 4] = [
        Defect::BadJson,
        Defect::MissingField,
        Defect::WrongType,
        Defect::BadValue,
    ];
}

/// Appends an invalid message to `out`: order `n` of `seed` with one defect, chosen from `(seed, n)`.
pub fn invalid(seed: u64, n: u64, out: &mut Vec<u8>) -> Defect {
    let mut rng = Rng::for_item(seed, n, STREAM_INVALID);
    let defect = Defect::ALL[rng.below(Defect::ALL.len() as u64) as usize];
    let valid = order_bytes(seed, n);
    if defect == Defect::BadJson {
        // Cut on a character boundary: the message must fail as JSON, not as UTF-8.
        let mut cut = valid.len() / 2;
        while cut > 0 && valid[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        out.extend_from_slice(&valid[..cut]);
        return defect;
    }
    // Invalid messages are a small share of a run: a Value tree is simple and fast enough here.
    let mut doc: serde_json::Value = match serde_json::from_slice(&valid) {
        Ok(doc) => doc,
        Err(e) => unreachable!("a generated order is not JSON: {e}"),
    };
    let variant = rng.below(3);
    match (defect, variant) {
        (Defect::MissingField, 0) => remove(&mut doc, &["payment"], "amount"),
        (Defect::MissingField, 1) => remove(&mut doc, &["delivery"], "email"),
        (Defect::MissingField, _) => remove(&mut doc, &[], "customer_id"),
        (Defect::WrongType, 0) => set(&mut doc, &["payment"], "amount", "1817".into()),
        (Defect::WrongType, 1) => set(&mut doc, &[], "items", serde_json::json!({})),
        (Defect::WrongType, _) => set(&mut doc, &[], "sm_id", serde_json::Value::Null),
        (Defect::BadValue, 0) => set(&mut doc, &[], "items", serde_json::json!([])),
        (Defect::BadValue, 1) => set(&mut doc, &[], "order_uid", "not a valid uid".into()),
        (Defect::BadValue, _) => set(&mut doc, &[], "date_created", "yesterday".into()),
        (Defect::BadJson, _) => {}
    }
    if let Err(e) = serde_json::to_writer(&mut *out, &doc) {
        unreachable!("serialising a JSON value failed: {e}");
    }
    defect
}

fn object_at<'a>(
    doc: &'a mut serde_json::Value,
    path: &[&str],
) -> Option<&'a mut serde_json::Map<String, serde_json::Value>> {
    let mut at = doc;
    for key in path {
        at = at.get_mut(*key)?;
    }
    at.as_object_mut()
}

fn remove(doc: &mut serde_json::Value, path: &[&str], key: &str) {
    if let Some(obj) = object_at(doc, path) {
        obj.remove(key);
    }
}

fn set(doc: &mut serde_json::Value, path: &[&str], key: &str, value: serde_json::Value) {
    if let Some(obj) = object_at(doc, path) {
        obj.insert(key.to_owned(), value);
    }
}

// ---- The document. Field order follows model.json. ----

#[derive(Serialize)]
struct Draft<'a> {
    order_uid: &'a str,
    track_number: &'a str,
    entry: &'static str,
    delivery: Delivery,
    payment: Payment<'a>,
    items: Vec<Item<'a>>,
    locale: &'static str,
    internal_signature: &'static str,
    customer_id: String,
    delivery_service: &'static str,
    shardkey: String,
    sm_id: u64,
    date_created: String,
    oof_shard: &'static str,
}

#[derive(Serialize)]
struct Delivery {
    name: String,
    phone: String,
    zip: String,
    city: &'static str,
    address: String,
    region: &'static str,
    email: String,
}

#[derive(Serialize)]
struct Payment<'a> {
    transaction: &'a str,
    request_id: String,
    currency: &'static str,
    provider: &'static str,
    amount: u64,
    payment_dt: u64,
    bank: &'static str,
    delivery_cost: u64,
    goods_total: u64,
    custom_fee: u64,
}

#[derive(Serialize)]
struct Item<'a> {
    chrt_id: u64,
    track_number: &'a str,
    price: u64,
    rid: String,
    name: String,
    sale: u64,
    size: &'static str,
    total_price: u64,
    nm_id: u64,
    brand: &'static str,
    status: u64,
}

/// 2021-01-01T00:00:00Z and 2025-12-31T23:59:59Z: the span of generated `date_created`.
const FIRST_DATE: u64 = 1_609_459_200;
const LAST_DATE: u64 = 1_767_225_599;

impl<'a> Draft<'a> {
    fn new(uid: &'a str, track_number: &'a str, rng: &mut Rng) -> Draft<'a> {
        let created = rng.range(FIRST_DATE, LAST_DATE);
        let items_count = item_count(rng);
        let mut items = Vec::with_capacity(items_count);
        for _ in 0..items_count {
            items.push(Item::new(track_number, rng));
        }
        let goods_total = items.iter().map(|i| i.total_price).sum::<u64>();
        let delivery_cost = if rng.chance(0.6) {
            0
        } else {
            rng.range(1, 30) * 50
        };
        let custom_fee = if rng.chance(0.9) {
            0
        } else {
            rng.range(1, 500)
        };
        let latin = rng.chance(0.3);
        let (first, last) = if latin {
            (rng.pick(FIRST_NAMES_LATIN), rng.pick(LAST_NAMES_LATIN))
        } else {
            (rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES))
        };
        let login_first = rng.pick(FIRST_NAMES_LATIN).to_ascii_lowercase();
        let login_last = rng.pick(LAST_NAMES_LATIN).to_ascii_lowercase();
        let email = format!(
            "{login_first}.{login_last}{}@{}",
            rng.below(1000),
            rng.pick(MAIL_DOMAINS)
        );
        let address = if rng.chance(0.7) {
            format!(
                "{} {}, кв. {}",
                rng.pick(STREETS),
                rng.range(1, 120),
                rng.range(1, 400)
            )
        } else {
            format!("{} {}", rng.pick(STREETS), rng.range(1, 120))
        };
        let city_index = rng.below(CITIES.len() as u64) as usize;
        let (city, region) = CITIES[city_index];
        let request_id = if rng.chance(0.7) {
            String::new()
        } else {
            hex(rng, 16)
        };
        Draft {
            order_uid: uid,
            track_number,
            entry: "WBIL",
            delivery: Delivery {
                name: format!("{first} {last}"),
                phone: format!("+79{:09}", rng.below(1_000_000_000)),
                zip: format!("{:06}", rng.range(100_000, 699_999)),
                city,
                address,
                region,
                email,
            },
            payment: Payment {
                transaction: uid,
                request_id,
                currency: weighted(rng, CURRENCIES),
                provider: rng.pick(PROVIDERS),
                amount: goods_total + delivery_cost + custom_fee,
                // Paid within an hour of the order.
                payment_dt: created + rng.below(3600),
                bank: rng.pick(BANKS),
                delivery_cost,
                goods_total,
                custom_fee,
            },
            items,
            locale: if latin { "en" } else { "ru" },
            internal_signature: "",
            customer_id: format!("cust{:08}", rng.below(100_000_000)),
            delivery_service: rng.pick(DELIVERY_SERVICES),
            shardkey: rng.below(10).to_string(),
            sm_id: rng.range(1, 999),
            date_created: rfc3339(created),
            oof_shard: if rng.chance(0.5) { "1" } else { "2" },
        }
    }
}

impl<'a> Item<'a> {
    fn new(track_number: &'a str, rng: &mut Rng) -> Item<'a> {
        let price = rng.range(99, 25_000);
        let sale = if rng.chance(0.4) { 0 } else { rng.range(5, 70) };
        let mut name = String::with_capacity(200);
        name.push_str(rng.pick(PRODUCTS));
        for _ in 0..rng.range(2, 6) {
            name.push(' ');
            name.push_str(rng.pick(FEATURES));
        }
        name.push_str(", ");
        name.push_str(rng.pick(COLOURS));
        if rng.chance(0.5) {
            name.push_str(", арт. ");
            name.push_str(&letters(rng, 3));
            name.push('-');
            name.push_str(&rng.range(100, 99_999).to_string());
        }
        Item {
            chrt_id: rng.range(1_000_000, 99_999_999),
            track_number,
            price,
            rid: format!("{}test", hex(rng, 17)),
            name,
            sale,
            size: rng.pick(SIZES),
            total_price: price * (100 - sale) / 100,
            nm_id: rng.range(1_000_000, 99_999_999),
            brand: rng.pick(BRANDS),
            status: weighted(rng, STATUSES),
        }
    }
}

/// Item count: most baskets are small. 60% have 1–3 items, 30% 4–10, 10% 11–20.
fn item_count(rng: &mut Rng) -> usize {
    let roll = rng.unit();
    let (lo, hi) = if roll < 0.6 {
        (1, 3)
    } else if roll < 0.9 {
        (4, 10)
    } else {
        (11, MAX_ITEMS as u64)
    };
    rng.range(lo, hi) as usize
}

fn letters(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.below(26) as u8))
        .collect()
}

fn hex(rng: &mut Rng, n: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..n)
        .map(|_| char::from(DIGITS[rng.below(16) as usize]))
        .collect()
}

/// Picks from `(value, weight)` pairs.
fn weighted<T: Copy>(rng: &mut Rng, from: &[(T, u64)]) -> T {
    let total: u64 = from.iter().map(|(_, w)| w).sum();
    let mut roll = rng.below(total);
    for &(value, weight) in from {
        if roll < weight {
            return value;
        }
        roll -= weight;
    }
    from[from.len() - 1].0
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, by arithmetic alone (Howard Hinnant's civil_from_days),
/// so that formatting has no error path and costs no allocation beyond the string.
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---- Word lists. ----

const FIRST_NAMES: &[&str] = &[
    "Александр",
    "Мария",
    "Дмитрий",
    "Анна",
    "Сергей",
    "Елена",
    "Андрей",
    "Ольга",
    "Михаил",
    "Наталья",
    "Иван",
    "Татьяна",
    "Алексей",
    "Екатерина",
    "Никита",
    "Юлия",
];
const LAST_NAMES: &[&str] = &[
    "Иванов",
    "Смирнова",
    "Кузнецов",
    "Попова",
    "Васильев",
    "Петрова",
    "Соколов",
    "Михайлова",
    "Новиков",
    "Федорова",
    "Морозов",
    "Волкова",
    "Лебедев",
    "Козлова",
];
const FIRST_NAMES_LATIN: &[&str] = &[
    "Alexander",
    "Maria",
    "Dmitry",
    "Anna",
    "Sergey",
    "Elena",
    "Andrey",
    "Olga",
    "Mikhail",
    "Natalia",
    "Ivan",
    "Tatiana",
    "Test",
];
const LAST_NAMES_LATIN: &[&str] = &[
    "Ivanov",
    "Smirnova",
    "Kuznetsov",
    "Popova",
    "Vasiliev",
    "Petrova",
    "Sokolov",
    "Novikov",
    "Morozov",
    "Volkova",
    "Testov",
];
const MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "yandex.ru",
    "mail.ru",
    "outlook.com",
    "rambler.ru",
];
const CITIES: &[(&str, &str)] = &[
    ("Москва", "Москва"),
    ("Санкт-Петербург", "Санкт-Петербург"),
    ("Новосибирск", "Новосибирская область"),
    ("Екатеринбург", "Свердловская область"),
    ("Казань", "Республика Татарстан"),
    ("Нижний Новгород", "Нижегородская область"),
    ("Краснодар", "Краснодарский край"),
    ("Самара", "Самарская область"),
    ("Kiryat Mozkin", "Kraiot"),
    ("Almaty", "Almaty Region"),
];
const STREETS: &[&str] = &[
    "ул. Ленина",
    "пр. Мира",
    "ул. Гагарина",
    "Ploshad Mira",
    "ул. Советская",
    "Невский пр.",
    "ул. Пушкина",
    "Ленинградское ш.",
    "ул. Садовая",
];
const CURRENCIES: &[(&str, u64)] = &[("RUB", 80), ("USD", 8), ("KZT", 6), ("BYN", 3), ("EUR", 3)];
const PROVIDERS: &[&str] = &["wbpay", "sbp", "card", "applepay", "googlepay"];
const BANKS: &[&str] = &[
    "sber",
    "alpha",
    "tinkoff",
    "vtb",
    "gazprombank",
    "raiffeisen",
];
const DELIVERY_SERVICES: &[&str] = &["meest", "wb-courier", "cdek", "boxberry", "pochta"];
const STATUSES: &[(u64, u64)] = &[(202, 85), (200, 5), (100, 5), (300, 5)];
const SIZES: &[&str] = &[
    "0", "XS", "S", "M", "L", "XL", "XXL", "42", "44", "46", "48", "38",
];
const BRANDS: &[&str] = &[
    "Vivienne Sabo",
    "Maybelline New York",
    "L'Oréal Paris",
    "Adidas",
    "Nike",
    "Gloria Jeans",
    "Xiaomi",
    "Samsung",
    "Tefal",
    "LEGO",
    "Zarina",
    "Befree",
    "Love Republic",
    "Ecco",
];
const PRODUCTS: &[&str] = &[
    "Тушь для ресниц",
    "Футболка хлопковая",
    "Кроссовки беговые",
    "Наушники беспроводные",
    "Платье летнее миди",
    "Сковорода с антипригарным покрытием",
    "Конструктор",
    "Рюкзак городской",
    "Смартфон",
    "Джинсы прямого кроя",
    "Крем для лица увлажняющий",
    "Mascara",
    "Wireless earbuds",
    "Running shoes",
    "Cotton T-shirt",
];
const FEATURES: &[&str] = &[
    "объемная",
    "удлиняющая",
    "водостойкая",
    "oversize",
    "с шумоподавлением",
    "дышащие",
    "на каждый день",
    "для спорта и фитнеса",
    "премиум качества",
    "подарочная упаковка",
    "новая коллекция 2024",
    "унисекс",
    "lightweight",
    "with long battery life",
    "non-slip sole",
];
const COLOURS: &[&str] = &[
    "черный",
    "белый",
    "бежевый",
    "темно-синий",
    "пудровый",
    "хаки",
    "black",
    "white",
    "navy blue",
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use ordersvc_service::order::{Order, RejectKind};

    #[test]
    fn generated_orders_pass_order_parse_and_keep_their_uid() {
        for n in 0..2_000 {
            let bytes = order_bytes(7, n);
            let order = Order::parse(&bytes).unwrap_or_else(|e| {
                panic!(
                    "order {n} rejected: {e}\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(order.uid().as_str(), uid(7, n));
        }
    }

    #[test]
    fn the_same_seed_and_number_give_the_same_bytes_and_other_seeds_do_not() {
        assert_eq!(order_bytes(1, 42), order_bytes(1, 42));
        assert_ne!(order_bytes(1, 42), order_bytes(2, 42));
        assert_ne!(order_bytes(1, 42), order_bytes(1, 43));
    }

    #[test]
    fn uids_are_unique_and_follow_the_order_uid_rule() {
        let mut seen = HashSet::new();
        for n in 0..10_000 {
            let id = uid(u64::MAX, n);
            assert!(
                ordersvc_service::order::OrderUid::parse(&id).is_ok(),
                "{id}"
            );
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn sizes_span_small_to_large_orders_and_items_one_to_twenty() {
        let (mut min, mut max) = (usize::MAX, 0);
        let mut counts = HashSet::new();
        for n in 0..5_000 {
            let bytes = order_bytes(3, n);
            min = min.min(bytes.len());
            max = max.max(bytes.len());
            counts.insert(
                Order::parse(&bytes)
                    .expect("a generated order is valid")
                    .item_count(),
            );
        }
        assert!((600..1_000).contains(&min), "smallest {min} B");
        assert!((8_000..12_000).contains(&max), "largest {max} B");
        assert_eq!(counts, (1..=MAX_ITEMS).collect::<HashSet<_>>());
    }

    #[test]
    fn every_invalid_message_is_rejected_for_its_defect() {
        let mut seen = HashSet::new();
        for n in 0..200 {
            let mut bytes = Vec::new();
            let defect = invalid(5, n, &mut bytes);
            let rejection = Order::parse(&bytes).expect_err("an invalid message is rejected");
            let expected: &[RejectKind] = match defect {
                Defect::BadJson => &[RejectKind::BadJson],
                Defect::MissingField => &[RejectKind::MissingField],
                Defect::WrongType => &[RejectKind::WrongType],
                Defect::BadValue => &[RejectKind::InvalidValue],
            };
            assert!(
                expected.contains(&rejection.kind()),
                "{defect:?} gave {rejection}"
            );
            seen.insert(format!("{defect:?}"));
        }
        assert_eq!(seen.len(), Defect::ALL.len());
    }

    #[test]
    fn dates_are_rfc3339_and_agree_with_the_time_crate() {
        use time::format_description::well_known::Rfc3339;
        for t in [0, FIRST_DATE, 951_782_400, 1_709_251_199, LAST_DATE] {
            let expected = time::OffsetDateTime::from_unix_timestamp(t as i64)
                .expect("in range")
                .format(&Rfc3339)
                .expect("formats");
            assert_eq!(rfc3339(t), expected);
        }
    }

    #[test]
    fn below_and_range_stay_in_bounds() {
        let mut rng = Rng::new(9);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
            assert!((3..=5).contains(&rng.range(3, 5)));
        }
        assert_eq!(rng.below(0), 0);
    }
}
