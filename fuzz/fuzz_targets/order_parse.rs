//! Any bytes from the bus: `Order::parse_within` at the bus's limit, as ingest calls it, must
//! return, never panic, never run away, and an accepted order must serve exactly the bytes it
//! was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordersvc_service::bus;
use ordersvc_service::order::Order;

fuzz_target!(|data: &[u8]| {
    match Order::parse_within(data, bus::MAX_DOCUMENT) {
        Ok(order) => {
            assert_eq!(order.document().as_bytes(), data);
            assert!(!order.uid().as_str().is_empty());
        }
        Err(rejection) => assert!(!rejection.to_string().is_empty()),
    }
});
