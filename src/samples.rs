//! The testdata samples, embedded so that `ordersvc publish` with no -j works from any directory.
//!
//! They are the same files the order tests read from testdata/, so a sample that the publisher
//! sends is one whose verdict is already tested.

/// One embedded sample message.
pub struct Sample {
    /// The path under testdata/, e.g. `valid/multi-item.json`.
    pub name: &'static str,
    /// The message, byte for byte.
    pub bytes: &'static [u8],
    /// Whether `Order::parse` accepts it.
    pub valid: bool,
}

macro_rules! sample {
    ($name:literal, $valid:literal) => {
        Sample {
            name: $name,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/", $name)),
            valid: $valid,
        }
    };
}

/// Every sample under testdata/, valid first.
pub const SAMPLES: &[Sample] = &[
    sample!("model.json", true),
    sample!("valid/multi-item.json", true),
    sample!("valid/extra-fields.json", true),
    sample!("valid/html-in-fields.json", true),
    sample!("valid/unicode.json", true),
    sample!("invalid/not-utf8.bin", false),
    sample!("invalid/not-json.txt", false),
    sample!("invalid/truncated.json", false),
    sample!("invalid/not-object.json", false),
    sample!("invalid/deeply-nested.json", false),
    sample!("invalid/missing-field.json", false),
    sample!("invalid/wrong-type.json", false),
    sample!("invalid/negative-amount.json", false),
    sample!("invalid/bad-uid.json", false),
    sample!("invalid/bad-date.json", false),
    sample!("invalid/empty-items.json", false),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Order;

    #[test]
    fn each_sample_is_valid_exactly_when_order_parse_accepts_it() {
        for sample in SAMPLES {
            let verdict = Order::parse(sample.bytes);
            assert_eq!(
                verdict.is_ok(),
                sample.valid,
                "{}: {:?}",
                sample.name,
                verdict.err()
            );
        }
    }

    #[test]
    fn valid_samples_come_first() {
        let first_invalid = SAMPLES
            .iter()
            .position(|s| !s.valid)
            .unwrap_or(SAMPLES.len());
        assert!(SAMPLES[first_invalid..].iter().all(|s| !s.valid));
    }

    #[test]
    fn every_file_under_testdata_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut on_disk = vec![];
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).unwrap();
                    on_disk.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = SAMPLES.iter().map(|s| s.name.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
