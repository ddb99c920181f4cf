//! Password hashes: argon2id with the crate's default parameters, stored as PHC strings.
//!
//! Hashing and verifying are slow on purpose (tens of milliseconds and ~19 MiB of memory each), so
//! the server calls them from its auth threads, never from an I/O worker, and caches the result.
//!
//! ```
//! let phc = weir::password::hash_password("correct horse").unwrap();
//! assert!(phc.starts_with("$argon2id$"));
//! assert!(weir::password::verify_password("correct horse", &phc));
//! assert!(!weir::password::verify_password("wrong horse", &phc));
//! ```

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// An empty password is refused: it would let anyone in.
    #[error("the password is empty")]
    Empty,
    /// argon2 refused the input (for example a password longer than it accepts).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Hashes `pw` with argon2id and a fresh random salt from the OS, returning a PHC string
/// (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) that records its own parameters.
pub fn hash_password(pw: &str) -> Result<String, PasswordError> {
    if pw.is_empty() {
        return Err(PasswordError::Empty);
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Make argon2's work memory (~19 MiB per verification) go back to the OS after each use.
///
/// glibc's malloc serves a block that large with `mmap` at first, but after the first one is
/// freed it raises its mmap threshold to that size ("dynamic threshold") and serves the next
/// from its per-thread arenas, which keep the pages: a few logins on a few threads left
/// ~200 MB resident. Fixing the threshold (4 MiB) keeps every such block a private mapping,
/// unmapped on free. Smaller allocations are unaffected. Idempotent; a no-op off glibc.
pub fn release_work_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning; it takes the allocator's own
        // lock, is safe to call at any time from any thread, and touches no Rust-owned memory.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        }
    }
}

/// Whether `pw` matches the PHC string `phc`. The final comparison is constant time (argon2's
/// own verify); a malformed PHC string never matches.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(pw.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_verify() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &a));
        assert!(verify_password("s3cret", &b));
        assert!(!verify_password("s3cret ", &a));
        assert!(!verify_password("", &a));
    }

    #[test]
    fn malformed_hash_never_matches() {
        assert!(!verify_password("x", ""));
        assert!(!verify_password("x", "$argon2id$garbage"));
        assert!(!verify_password("x", "plaintext"));
    }

    #[test]
    fn empty_password_is_refused() {
        assert!(matches!(hash_password(""), Err(PasswordError::Empty)));
    }
}
