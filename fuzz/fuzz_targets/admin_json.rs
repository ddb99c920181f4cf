//! The admin API's JSON bodies (`PUT /users/{name}/rate`, `PUT /global/rate`).
//!
//! The admin listener reads at most 4096 bytes of body and hands them to
//! `weir::admin::parse_rate_body`, which this target calls directly, for a user's rate
//! ("default" allowed) and the global rate.
//!
//! The whole input is also tried as the rate string itself, so the rate grammar is reached
//! without the fuzzer having to build JSON first.
//!
//! Properties checked beyond "no panic":
//! - an accepted rate is never zero bytes per second, and its display form parses back to the
//!   same rate (what the API answers with can be sent back to it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_shaper::Rate;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_rate(s);
    }
    let body = &data[..data.len().min(4096)];
    for allow_default in [true, false] {
        match weir::admin::parse_rate_body(body, allow_default) {
            Ok(Some(rate)) => check_rate(&rate.to_string()),
            Ok(None) => assert!(allow_default, "\"default\" only where it is allowed"),
            Err(_) => {}
        }
    }
});

fn check_rate(s: &str) {
    let Ok(rate) = s.parse::<Rate>() else {
        return;
    };
    if let Rate::BytesPerSec(b) = rate {
        assert!(b > 0);
    }
    let shown = rate.to_string();
    assert_eq!(shown.parse::<Rate>(), Ok(rate), "{s:?} shown as {shown:?}");
}
