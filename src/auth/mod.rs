//! Authentication: the client side of login (pgsluice as the server) and the server side
//! (pgsluice logging into PostgreSQL as a client). Pure, sans-I/O state machines; the
//! session and server modules move the bytes.

pub mod md5;
pub mod scram;

/// Compares two byte strings in time that depends only on their lengths.
///
/// Used for everything derived from a secret (MD5 responses, SCRAM keys and signatures) so
/// that response timing does not tell an attacker how many leading bytes were right. The
/// lengths themselves are public (fixed by the protocol), so an early length check is fine.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }
}
