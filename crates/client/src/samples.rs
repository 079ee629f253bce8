//! The testdata samples, embedded so that `ordersvc publish` with no -j works from any directory.
//!
//! They are the same files the order tests read from testdata/, so a sample that the publisher
//! sends is one whose verdict is already tested.

/// One embedded sample message.
pub struct Sample {
    /// The path under testdata/, e.g. `valid/multi-item.json` (`invalid/…` holds the refused).
    pub name: &'static str,
    /// The message, byte for byte.
    pub bytes: &'static [u8],
}

macro_rules! sample {
    ($name:literal) => {
        Sample {
            name: $name,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../testdata/",
                $name
            )),
        }
    };
}

/// Every sample under testdata/, valid first.
pub const SAMPLES: &[Sample] = &[
    sample!("model.json"),
    sample!("valid/multi-item.json"),
    sample!("valid/extra-fields.json"),
    sample!("valid/html-in-fields.json"),
    sample!("valid/unicode.json"),
    sample!("invalid/not-utf8.bin"),
    sample!("invalid/not-json.txt"),
    sample!("invalid/truncated.json"),
    sample!("invalid/not-object.json"),
    sample!("invalid/deeply-nested.json"),
    sample!("invalid/missing-field.json"),
    sample!("invalid/wrong-type.json"),
    sample!("invalid/negative-amount.json"),
    sample!("invalid/bad-uid.json"),
    sample!("invalid/bad-date.json"),
    sample!("invalid/empty-items.json"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use ordersvc_service::order::Order;

    /// Whether `Order::parse` must accept a sample: its folder says so (`invalid/…` is refused).
    fn is_valid(sample: &Sample) -> bool {
        !sample.name.starts_with("invalid/")
    }

    #[test]
    fn each_sample_is_valid_exactly_when_order_parse_accepts_it() {
        for sample in SAMPLES {
            let verdict = Order::parse(sample.bytes);
            assert_eq!(
                verdict.is_ok(),
                is_valid(sample),
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
            .position(|s| !is_valid(s))
            .unwrap_or(SAMPLES.len());
        assert!(SAMPLES[first_invalid..].iter().all(|s| !is_valid(s)));
    }

    #[test]
    fn every_file_under_testdata_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
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
