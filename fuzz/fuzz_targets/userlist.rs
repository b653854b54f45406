//! auth_file (userlist.txt) text through `UserList::parse_str`, invalid UTF-8 replaced as
//! `read_lossy` does, and the text as a single secret through `Secret::parse`.
//!
//! Invariants: no panic; accepted user names and secrets are within PgBouncer's limits;
//! a SCRAM secret has a positive iteration count and a salt; an MD5 secret is `md5` and 32
//! lowercase hex digits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::config::{Secret, UserList};
use pgsluice_fuzz::lossy;

fn check_secret(s: &Secret) {
    match s {
        Secret::Plain(_) => {}
        Secret::Md5(text) => {
            let hex = text.strip_prefix("md5").expect("md5 prefix");
            assert_eq!(hex.len(), 32);
            assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
        Secret::Scram(scram) => {
            assert!(scram.iterations > 0);
            assert!(!scram.salt.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = lossy(data);
    if let Ok(list) = UserList::parse_str(&text, "userlist.txt") {
        for (user, secret) in &list.users {
            assert!(user.len() < 128, "user name of {} bytes", user.len());
            if let Secret::Plain(p) | Secret::Md5(p) = secret {
                assert!(p.len() < 65531);
            }
            check_secret(secret);
        }
    }
    if let Ok(s) = Secret::parse(&text) {
        check_secret(&s);
    }
});
