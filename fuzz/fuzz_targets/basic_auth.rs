//! Basic auth parsing (`weir::server::auth::decode_basic`).
//!
//! Input (text, so seeds are readable): a header line, a flags line (bits 0-4: the case of
//! each letter of `Basic`, bit 8: whitespace around the header), a user line, and the password
//! (the rest of the input, newlines included). The header line is decoded as is; user and
//! password are encoded and decoded.
//!
//! Properties checked beyond "no panic":
//! - whatever is accepted was the `Basic` scheme (any case) followed by a space, the user name
//!   has no colon, and re-encoding the pair decodes to the same pair;
//! - any user name without a colon and any password (colons included) survive encode/decode,
//!   whatever the scheme's case and the whitespace around the header.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use weir::server::auth::decode_basic;

/// One input, from text: the header line, a flags line (scheme case bits, padding), the user
/// line, and the password (the rest, newlines included).
struct Input<'a> {
    header: &'a str,
    user: &'a str,
    pass: &'a str,
    scheme_case: u8,
    padding: bool,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let mut next = || parts.next().unwrap_or("");
    let header = next();
    let flags = next().trim().parse::<u16>().unwrap_or(0);
    let (user, pass) = (next(), next());
    check(Input {
        header,
        user,
        pass,
        scheme_case: flags as u8,
        padding: flags & 0x100 != 0,
    });
});

fn check(input: Input) {
    if let Some((u, p)) = decode_basic(input.header) {
        let h = input.header.trim();
        assert!(
            h.len() > 6 && h[..6].eq_ignore_ascii_case("basic "),
            "{h:?}"
        );
        assert!(!u.contains(':'));
        let again = format!("Basic {}", STANDARD.encode(format!("{u}:{p}")));
        assert_eq!(decode_basic(&again), Some((u, p)));
    }

    let user: String = input.user.chars().filter(|&c| c != ':').collect();
    let scheme: String = "Basic"
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if input.scheme_case >> i & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let encoded = STANDARD.encode(format!("{user}:{}", input.pass));
    let header = if input.padding {
        format!(" \t{scheme} {encoded}\t ")
    } else {
        format!("{scheme} {encoded}")
    };
    assert_eq!(
        decode_basic(&header),
        Some((user, input.pass.to_owned())),
        "{header:?}"
    );
}
