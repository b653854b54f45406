//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, in both roles.
//!
//! * [`ScramServer`] authenticates a client against a stored [`ScramSecret`]. On success it
//!   also recovers the client's ClientKey (proof XOR ClientSignature) and the ServerKey:
//!   together they are enough to log into PostgreSQL as that user when PostgreSQL holds the
//!   same secret (same salt and iteration count). That is PgBouncer's SCRAM pass-through.
//! * [`ScramClient`] logs pgsluice into PostgreSQL, either from a cleartext password or from
//!   keys recovered by a [`ScramServer`].
//!
//! Channel binding is not implemented: pgsluice never advertises SCRAM-SHA-256-PLUS, so
//! clients may send the GS2 header `n,,` or `y,,` and a `p=` header is refused. PostgreSQL's
//! quirks are kept: the `n=` user name is ignored (the startup packet's user counts) and
//! passwords go through SASLprep, falling back to the raw bytes when SASLprep rejects them.
//!
//! Everything is sans-I/O: methods take the SASL payload bytes and return the reply bytes;
//! the caller wraps them in AuthenticationSASL* / SASLResponse messages.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::ct_eq;
use crate::config::ScramSecret;

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientCredential, ScramClient};
pub use server::ScramServer;

/// The SASL mechanism name pgsluice advertises and accepts.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iteration count of PostgreSQL's `scram_iterations` default, for secrets built here.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The largest iteration count a PostgreSQL server may ask pgsluice to compute.
///
/// The count drives a PBKDF2 loop on a pooler thread, so an unbounded value from a hostile or
/// misconfigured server (PostgreSQL's `scram_iterations` goes up to 2^31-1) would stall
/// logins. One million costs roughly half a second of CPU and is 244 times PostgreSQL's
/// default of 4096; a server configured above it cannot be logged into with a password.
pub const MAX_SERVER_ITERATIONS: u32 = 1_000_000;

/// Salt length of secrets built here; PostgreSQL's default.
const SALT_LEN: usize = 16;
/// Random bytes in a nonce; base64 makes 24 printable characters, as PostgreSQL's do.
const NONCE_RAW_LEN: usize = 18;
/// Bound on the client-role key cache (see [`ScramClient`]).
const KEY_CACHE_CAP: usize = 256;
/// Longest `e=` text from a server that is kept for logs.
const SERVER_ERROR_MAX: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// ClientKey and ServerKey of one password, salt and iteration count.
///
/// Holding them is as good as holding the password for SCRAM logins with that salt and
/// iteration count, so `Debug` does not show them.
#[derive(Clone)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// A failed SCRAM exchange. `Display` is for logs; [`ScramError::client_text`] is what a
/// client may be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A client's message (server role) does not follow the protocol.
    #[error("malformed SCRAM message from client: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=` GS2 header), which is not offered.
    #[error("client requires SCRAM channel binding, but SCRAM-SHA-256-PLUS is not offered")]
    ChannelBindingUnsupported,
    /// Wrong proof, or an unknown user answered by a mock exchange.
    #[error("SCRAM proof does not match the stored secret")]
    AuthFailed,
    /// A server's message (client role) does not follow the protocol.
    #[error("malformed SCRAM message from server: {0}")]
    MalformedServerMessage(&'static str),
    /// The server asked for more PBKDF2 iterations than [`MAX_SERVER_ITERATIONS`].
    #[error(
        "server asked for {0} SCRAM iterations, more than the limit of {MAX_SERVER_ITERATIONS}"
    )]
    TooManyIterations(u64),
    /// The server's signature does not match: it does not know the password.
    #[error("SCRAM server signature does not match")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<text>`.
    #[error("server reported SCRAM error: {0}")]
    Server(String),
    /// A method was called out of turn; the exchange is over.
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

impl ScramError {
    /// PgBouncer's client-facing text for this failure.
    ///
    /// Server-role failures are all "SASL authentication failed", as in PgBouncer, so that a
    /// client cannot tell a wrong password from an unknown user or a parse error. For client-
    /// role failures PgBouncer only has texts for the signature check; an unusable
    /// server message is reported as not verifiable, which is the closest of them.
    pub fn client_text(&self) -> &'static str {
        match self {
            Self::Malformed(_)
            | Self::ChannelBindingUnsupported
            | Self::AuthFailed
            | Self::OutOfOrder => "SASL authentication failed",
            Self::InvalidServerSignature => "server login failed: invalid server signature",
            Self::MalformedServerMessage(_) | Self::TooManyIterations(_) | Self::Server(_) => {
                "server login failed: failed to verify server signature"
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Primitives

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// PBKDF2-HMAC-SHA-256 with one output block, RFC 5802's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let Ok(keyed) = HmacSha256::new_from_slice(password) else {
        unreachable!("HMAC accepts keys of any length")
    };
    // Keying once and cloning the state skips re-hashing the key pads in every round.
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out = xor32(&out, &u);
    }
    out
}

/// SASLprep the password as PostgreSQL does: on failure (prohibited characters) the raw
/// bytes are used, because PostgreSQL built the stored secret the same way.
fn normalize(password: &str) -> Cow<'_, [u8]> {
    match stringprep::saslprep(password) {
        Ok(Cow::Borrowed(p)) => Cow::Borrowed(p.as_bytes()),
        Ok(Cow::Owned(p)) => Cow::Owned(p.into_bytes()),
        Err(_) => Cow::Borrowed(password.as_bytes()),
    }
}

/// A random key per process, for values that must look stable for one user name but must
/// not be predictable (mock salts, cache ids).
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        key
    })
}

fn new_nonce() -> String {
    let mut raw = [0u8; NONCE_RAW_LEN];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

/// Derives ClientKey and ServerKey (SaltedPassword = PBKDF2-HMAC-SHA-256). Costs one PBKDF2
/// run, so callers logging in often with the same password may cache the result.
pub fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let salted = hi(&normalize(password), salt, iterations.max(1));
    ScramKeys {
        client_key: hmac(&salted, &[b"Client Key"]),
        server_key: hmac(&salted, &[b"Server Key"]),
    }
}

/// [`derive_keys`] behind a small process-wide cache, for the client role only: its
/// passwords come from the configuration and the salts from the servers, so nobody outside
/// can fill it. Entries are keyed by a keyed hash rather than the password itself.
fn derive_keys_cached(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], ScramKeys>>> = OnceLock::new();
    let id = hmac(
        process_key(),
        &[
            b"key cache",
            &(password.len() as u64).to_be_bytes(),
            password.as_bytes(),
            &iterations.to_be_bytes(),
            salt,
        ],
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(keys) = cache.lock().get(&id) {
        return keys.clone();
    }
    // Computed without the lock: PBKDF2 takes milliseconds.
    let keys = derive_keys(password, salt, iterations);
    let mut map = cache.lock();
    if map.len() >= KEY_CACHE_CAP {
        // Crude, but the working set (configured passwords × server salts) is small.
        map.clear();
    }
    map.insert(id, keys.clone());
    keys
}

/// Builds a secret for `password` with a random 16-byte salt.
pub fn secret_from_password(password: &str, iterations: u32) -> ScramSecret {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    secret_from_password_salt(password, &salt, iterations)
}

/// Builds a secret for `password` with the given salt. An iteration count of 0 is taken as 1,
/// PostgreSQL's minimum.
pub fn secret_from_password_salt(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
    let iterations = iterations.max(1);
    let keys = derive_keys(password, salt, iterations);
    ScramSecret {
        iterations,
        salt: salt.to_vec(),
        stored_key: sha256(&keys.client_key),
        server_key: keys.server_key,
    }
}

/// The text form PostgreSQL stores in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, all base64.
pub fn format_secret(secret: &ScramSecret) -> String {
    format!(
        "{SCRAM_SHA_256}${}:{}${}:{}",
        secret.iterations,
        B64.encode(&secret.salt),
        B64.encode(secret.stored_key),
        B64.encode(secret.server_key)
    )
}

/// Whether `password` is the one `secret` was built from (cleartext login against a SCRAM
/// secret). Both stored keys must match.
pub fn verify_password(secret: &ScramSecret, password: &str) -> bool {
    let keys = derive_keys(password, &secret.salt, secret.iterations);
    let stored_ok = ct_eq(&sha256(&keys.client_key), &secret.stored_key);
    let server_ok = ct_eq(&keys.server_key, &secret.server_key);
    stored_ok & server_ok
}

// ---------------------------------------------------------------------------------------
// Message parsing. SCRAM messages are `,`-separated `x=value` attributes; values that may
// contain `,` are escaped by the sender, so splitting on `,` is exact.

fn split_attrs(msg: &[u8]) -> Vec<&[u8]> {
    msg.split(|b| *b == b',').collect()
}

/// The value of attribute `name` if `part` is `name=value`.
fn attr(part: &[u8], name: u8) -> Option<&[u8]> {
    match part {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    }
}

/// Extensions (`x=value` with an unknown letter) are allowed by RFC 5802 and ignored.
fn check_extensions<E>(parts: &[&[u8]], err: E) -> Result<(), E> {
    let well_formed = parts
        .iter()
        .all(|p| matches!(p, [n, b'=', ..] if n.is_ascii_alphabetic()));
    if well_formed {
        Ok(())
    } else {
        Err(err)
    }
}

/// A nonce: non-empty, printable ASCII other than `,` (RFC 5802 `printable`).
fn nonce_text(value: &[u8]) -> Option<&str> {
    let printable = value
        .iter()
        .all(|b| (0x21..=0x7e).contains(b) && *b != b',');
    if value.is_empty() || !printable {
        return None;
    }
    std::str::from_utf8(value).ok()
}

fn b64_32(value: &[u8]) -> Option<[u8; 32]> {
    B64.decode(value).ok()?.try_into().ok()
}
