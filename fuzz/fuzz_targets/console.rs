//! Admin console queries through the command grammar (`admin::console::parse`), the
//! hand-written stand-in for PgBouncer's regular expressions.
//!
//! Invariants: no panic; accepted parts fit PgBouncer's buffers (command word under 16
//! bytes, argument and SET key under 64, SET value under 256, quotes included before they
//! are removed); a SET key is never empty.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::admin::console::{parse, Command};

fuzz_target!(|data: &[u8]| {
    // The query string of a Query message: read as UTF-8, so other bytes never get here.
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match parse(query) {
        Ok(Command::Cmd { word, arg }) => {
            assert!(
                !word.is_empty() || query.contains("\"\""),
                "empty word from {query:?}"
            );
            assert!(word.len() < 16, "command word {word:?}");
            if let Some(a) = arg {
                assert!(!a.is_empty());
                assert!(a.len() < 64, "argument {a:?}");
            }
        }
        Ok(Command::Set { key, value }) => {
            assert!(!key.is_empty());
            assert!(key.len() < 64, "SET key {key:?}");
            assert!(value.len() < 256, "SET value {value:?}");
        }
        Err(_) => {}
    }
});
