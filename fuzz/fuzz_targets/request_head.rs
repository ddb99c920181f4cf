//! The request head parser (`weir::http::parse_request`) on arbitrary bytes, with the default
//! limits and with tight ones derived from the input.
//!
//! Properties checked beyond "no panic":
//! - `Partial` only while the buffer is shorter than `max_head_bytes`;
//! - a complete head used at most `max_head_bytes` of the buffer and ends with a line feed;
//! - the same head is returned for exactly the bytes it consumed (pipelined bytes after it do
//!   not change it), and every shorter prefix of a valid head is `Partial` (a head split across
//!   reads at any byte is still accepted);
//! - the target starts with `/`, target and query fit `max_target_len`, and every field weir
//!   copies out is a substring of the head, trimmed, without CR or LF;
//! - the method, version and error statuses agree with the request line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::http::{parse_request, Limits, Method, Parsed, RequestError};

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    // Tight limits so the 414/431 paths and the header-slot clamp are reached by small inputs.
    let n = data.len();
    let tight = Limits {
        max_head_bytes: 16 + n % 97,
        max_headers: n % 5,
        max_target_len: 1 + n % 23,
    };
    check(data, &tight);
    let huge_slots = Limits {
        max_headers: usize::MAX,
        ..Limits::default()
    };
    check(data, &huge_slots);
});

fn check(data: &[u8], limits: &Limits) {
    let result = parse_request(data, limits);
    match &result {
        Ok(Parsed::Partial) => {
            assert!(
                data.len() < limits.max_head_bytes,
                "Partial with {} bytes >= max_head_bytes {}",
                data.len(),
                limits.max_head_bytes
            );
        }
        Ok(Parsed::Complete { head, consumed }) => {
            let consumed = *consumed;
            assert!(consumed <= data.len() && consumed <= limits.max_head_bytes);
            assert!(consumed > 0 && data[consumed - 1] == b'\n');
            let raw = &data[..consumed];

            // The head alone parses to the same result; every shorter prefix is Partial.
            assert_eq!(parse_request(raw, limits), result);
            for cut in [consumed - 1, consumed / 2, consumed * 3 / 4] {
                assert_eq!(
                    parse_request(&raw[..cut], limits),
                    Ok(Parsed::Partial),
                    "prefix of {cut} bytes of a valid head of {consumed}"
                );
            }

            assert!(head.target.starts_with('/'));
            let target_len = head.target.len() + head.query.as_ref().map_or(0, |q| q.len() + 1);
            assert!(target_len <= limits.max_target_len);
            assert!(contains(raw, head.target.as_bytes()));
            if let Some(q) = &head.query {
                assert!(contains(raw, q.as_bytes()));
                assert!(!q.contains([' ', '\r', '\n']));
            }
            assert!(!head.target.contains([' ', '?', '\r', '\n']));
            for v in [
                &head.range,
                &head.if_range,
                &head.if_modified_since,
                &head.authorization,
            ]
            .into_iter()
            .flatten()
            {
                assert!(contains(raw, v.as_bytes()), "{v:?} is not in the head");
                field_value(v);
            }
            if let Some(inm) = &head.if_none_match {
                // A list joined from several field lines (an empty line adds an empty element,
                // which RFC 9110 §5.6.1 allows), so only line breaks are ruled out.
                assert!(!inm.contains(['\r', '\n']), "{inm:?}");
            }

            // The request line agrees.
            let line_start = raw.iter().position(|&b| b != b'\r' && b != b'\n').unwrap();
            let line = &raw[line_start..];
            match head.method {
                Method::Get => assert!(line.starts_with(b"GET ")),
                Method::Head => assert!(line.starts_with(b"HEAD ")),
            }
            let eol = line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap();
            let version = &line[..eol];
            if head.http10 {
                assert!(version.ends_with(b" HTTP/1.0"));
            } else {
                assert!(version.ends_with(b" HTTP/1.1"));
                assert!(has_field(raw, b"host"), "HTTP/1.1 without Host accepted");
            }
            assert!(!has_field(raw, b"transfer-encoding"));
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 414 | 431 | 505));
            assert_eq!(
                e.extra_headers().is_empty(),
                !matches!(e, RequestError::MethodNotAllowed)
            );
            // Deterministic.
            assert_eq!(parse_request(data, limits), result);
        }
    }
}

/// A value weir copies out of a field line: trimmed, no line breaks.
fn field_value(v: &str) {
    assert!(!v.contains(['\r', '\n']), "{v:?}");
    assert!(
        !v.starts_with([' ', '\t']) && !v.ends_with([' ', '\t']),
        "{v:?}"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether some line of the head starts with `name:` (any case).
fn has_field(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    })
}
