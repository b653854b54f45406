//! The connection strings of `[databases]`, `[users]` and `[peers]` on their own, for
//! more executions per second than through a whole ini file: the input is
//! `name\nconnstr` (or just a connection string, named `fuzzdb`).
//!
//! Invariants: no panic; `split_pairs` output quoted back (`key='value'`, `''` for a quote)
//! splits into the same pairs; an accepted `password=` classifies with `Secret::parse`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::config::connstr::{parse_database, parse_peer, parse_user, split_pairs};
use pgsluice::config::Secret;
use pgsluice_fuzz::lossy;

fuzz_target!(|data: &[u8]| {
    let text = lossy(data);
    let (name, connstr) = text.split_once('\n').unwrap_or(("fuzzdb", &text));

    if let Ok(pairs) = split_pairs(connstr) {
        let mut requoted = String::new();
        for (k, v) in &pairs {
            assert!(
                !k.is_empty() && !v.is_empty(),
                "empty key or value: {k:?}={v:?}"
            );
            assert!(!k.contains(['=', ' ', '\t']), "key {k:?}");
            requoted.push_str(k);
            requoted.push_str("='");
            requoted.push_str(&v.replace('\'', "''"));
            requoted.push_str("' ");
        }
        assert_eq!(
            split_pairs(&requoted).as_ref(),
            Ok(&pairs),
            "{requoted:?} splits differently"
        );
    }
    if let Ok(db) = parse_database(name, connstr) {
        assert_eq!(db.name, name);
        if let Some(pw) = &db.password {
            assert!(
                Secret::parse(pw).is_ok(),
                "accepted password does not parse"
            );
        }
    }
    if let Ok(u) = parse_user(name, connstr) {
        assert_eq!(u.name, name);
    }
    if let Ok(p) = parse_peer(name, connstr) {
        assert!(p.id > 0);
    }
    let _ = Secret::parse(connstr);
});
