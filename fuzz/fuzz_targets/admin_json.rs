//! The admin API's JSON bodies (`PUT /users/{name}/rate`, `PUT /global/rate`).
//!
//! The admin listener reads at most 4096 bytes of body as UTF-8, parses it as a
//! `serde_json::Value`, takes the string `rate` and parses it as a `weir_shaper::Rate` (or
//! "default" for a user). That function (`admin::parse_rate_body`) is private and takes a
//! `tiny_http::Request`, so this target replays the same steps with the same public types.
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
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    let Some(rate) = v.get("rate").and_then(|r| r.as_str()) else {
        return;
    };
    check_rate(rate);
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
