//! PostgreSQL's MD5 password scheme, for both directions of a login.
//!
//! A stored MD5 secret is `"md5" + hex(md5(password ‖ user))`. During a login the server
//! sends a 4-byte salt and the client answers `"md5" + hex(md5(hex_part ‖ salt))`, where
//! `hex_part` is the stored secret without its prefix. The secret is therefore
//! password-equivalent for MD5 logins, which is what lets a pooler holding only MD5 secrets
//! log into PostgreSQL on a client's behalf.
//!
//! This module also holds the cleartext (`auth_type = plain`) check, because it has to
//! compare a password against every kind of stored secret.

use md5::{Digest, Md5};

use super::ct_eq;
use super::scram;
use crate::config::Secret;

/// Length of `"md5"` + 32 hex digits, the only shape of MD5 secret and MD5 response.
const MD5_TEXT_LEN: usize = 35;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

/// The stored form of a password: `"md5" + hex(md5(password ‖ user))`.
pub fn md5_secret(password: &str, user: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The PasswordMessage value for an MD5 login: `"md5" + hex(md5(hex_part ‖ salt))`.
///
/// `secret` is an MD5 secret (`md5…`); a missing prefix is tolerated so that callers holding
/// the bare hex digest get the same answer.
pub fn md5_response(secret: &str, salt: [u8; 4]) -> String {
    let hex_part = secret.strip_prefix("md5").unwrap_or(secret);
    format!("md5{}", md5_hex(&[hex_part.as_bytes(), &salt]))
}

/// What pgsluice sends to a PostgreSQL server that asked for MD5 authentication.
///
/// `None` for a SCRAM secret: a SCRAM verifier cannot produce an MD5 response, and the caller
/// reports "server login failed: wrong password type".
pub fn client_response_for(secret: &Secret, user: &str, salt: [u8; 4]) -> Option<String> {
    match secret {
        Secret::Plain(password) => Some(md5_response(&md5_secret(password, user), salt)),
        Secret::Md5(md5) => Some(md5_response(md5, salt)),
        Secret::Scram(_) => None,
    }
}

/// Checks a client's MD5 PasswordMessage against the stored secret.
///
/// A SCRAM secret never matches: the caller switches an `md5` login to SCRAM for users with
/// SCRAM secrets, as PgBouncer does. Empty stored passwords never match either, because
/// PostgreSQL treats an empty password as "no password" rather than as one anybody can type.
pub fn verify_client(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    let expected = match secret {
        Secret::Plain(password) if !password.is_empty() => {
            md5_response(&md5_secret(password, user), salt)
        }
        Secret::Md5(md5) if md5.len() == MD5_TEXT_LEN && md5.starts_with("md5") => {
            md5_response(md5, salt)
        }
        _ => return false,
    };
    ct_eq(expected.as_bytes(), response.as_bytes())
}

/// Checks a cleartext password (`auth_type = plain`, or an hba `password` rule) against the
/// stored secret of any kind.
///
/// For a SCRAM secret this runs PBKDF2 with the secret's own salt and iteration count, so its
/// cost is that of a SCRAM login. An empty password never matches (see [`verify_client`]).
pub fn verify_plain(secret: &Secret, user: &str, password: &str) -> bool {
    if password.is_empty() {
        return false;
    }
    match secret {
        Secret::Plain(stored) => ct_eq(stored.as_bytes(), password.as_bytes()),
        Secret::Md5(stored) => ct_eq(stored.as_bytes(), md5_secret(password, user).as_bytes()),
        Secret::Scram(stored) => scram::verify_password(stored, password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 4] = [0x01, 0x02, 0xfe, 0xff];

    /// hex(md5(bytes)) computed with the md5 crate's own formatting, independent of `hex`.
    fn reference_md5(bytes: &[u8]) -> String {
        format!("{:x}", Md5::digest(bytes))
    }

    #[test]
    fn secret_known_vector() {
        let expected = format!("md5{}", reference_md5(b"secretpostgres"));
        assert_eq!(md5_secret("secret", "postgres"), expected);
        // The same value as the postgres-protocol client library computes.
        assert_eq!(
            expected,
            postgres_protocol::password::md5(b"secret", "postgres")
        );
        assert_eq!(expected.len(), MD5_TEXT_LEN);
    }

    #[test]
    fn response_known_vector() {
        let secret = md5_secret("secret", "postgres");
        let mut input = secret.as_bytes()[3..].to_vec();
        input.extend_from_slice(&SALT);
        let expected = format!("md5{}", reference_md5(&input));
        assert_eq!(md5_response(&secret, SALT), expected);
        assert_eq!(md5_response(&secret[3..], SALT), expected);
    }

    #[test]
    fn client_response_per_secret_kind() {
        let md5 = md5_secret("secret", "postgres");
        let expected = md5_response(&md5, SALT);
        let plain = Secret::Plain("secret".into());
        assert_eq!(
            client_response_for(&plain, "postgres", SALT),
            Some(expected.clone())
        );
        assert_eq!(
            client_response_for(&Secret::Md5(md5), "postgres", SALT),
            Some(expected)
        );
        let scram = Secret::Scram(scram::secret_from_password("secret", 16));
        assert_eq!(client_response_for(&scram, "postgres", SALT), None);
    }

    #[test]
    fn verify_client_accepts_right_and_rejects_wrong() {
        let good = md5_response(&md5_secret("secret", "postgres"), SALT);
        let bad = md5_response(&md5_secret("Secret", "postgres"), SALT);
        let other_salt = md5_response(&md5_secret("secret", "postgres"), [0; 4]);
        for secret in [
            Secret::Plain("secret".into()),
            Secret::Md5(md5_secret("secret", "postgres")),
        ] {
            assert!(verify_client(&secret, "postgres", SALT, &good));
            assert!(!verify_client(&secret, "postgres", SALT, &bad));
            assert!(!verify_client(&secret, "postgres", SALT, &other_salt));
            assert!(!verify_client(&secret, "postgres", SALT, ""));
            assert!(!verify_client(&secret, "postgres", SALT, &good[..34]));
        }
        // The user name is part of the secret.
        let plain = Secret::Plain("secret".into());
        assert!(!verify_client(&plain, "other", SALT, &good));
    }

    #[test]
    fn verify_client_refuses_scram_empty_and_bad_secrets() {
        let scram = Secret::Scram(scram::secret_from_password("secret", 16));
        let good = md5_response(&md5_secret("secret", "postgres"), SALT);
        assert!(!verify_client(&scram, "postgres", SALT, &good));

        let empty = Secret::Plain(String::new());
        let empty_response = md5_response(&md5_secret("", "postgres"), SALT);
        assert!(!verify_client(&empty, "postgres", SALT, &empty_response));

        // A response computed from a truncated "secret" must not log in.
        let broken = Secret::Md5("md5abc".into());
        let broken_response = md5_response("md5abc", SALT);
        assert!(!verify_client(&broken, "postgres", SALT, &broken_response));
    }

    #[test]
    fn verify_plain_per_secret_kind() {
        let plain = Secret::Plain("secret".into());
        assert!(verify_plain(&plain, "postgres", "secret"));
        assert!(!verify_plain(&plain, "postgres", "secret "));

        let md5 = Secret::Md5(md5_secret("secret", "postgres"));
        assert!(verify_plain(&md5, "postgres", "secret"));
        assert!(!verify_plain(&md5, "postgres", "wrong"));
        assert!(!verify_plain(&md5, "other", "secret"));

        let scram = Secret::Scram(scram::secret_from_password("secret", 64));
        assert!(verify_plain(&scram, "postgres", "secret"));
        assert!(!verify_plain(&scram, "postgres", "wrong"));

        let empty = Secret::Plain(String::new());
        assert!(!verify_plain(&empty, "postgres", ""));
    }
}
