//! Any request target: resolving it must never panic, and an order id it accepts must obey the
//! order_uid rule (it goes into URLs and into the cache).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordersvc_service::http::{resolve, Route};

fuzz_target!(|data: &[u8]| {
    // hyper hands over the target as an ASCII str; anything else never reaches the router.
    let Ok(target) = std::str::from_utf8(data) else { return };
    let route = resolve(target);
    let _ = route.name();
    if let Route::Order(Ok(uid)) = route {
        let id = uid.as_str();
        assert!((1..=64).contains(&id.len()));
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
});
