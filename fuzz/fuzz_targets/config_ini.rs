//! pgbouncer.ini text through `config::ini::parse_str`, which also runs every
//! `[databases]`, `[users]` and `[peers]` value through the connection-string parser and
//! every `[pgbouncer]` value through its key's setter. Invalid UTF-8 is replaced, as
//! `read_lossy` does for files.
//!
//! `%include` is followed inside a scratch directory holding a few fixed files (one of
//! them includes itself, for the nesting limit); an input naming anything outside it is
//! skipped, so the target never reads the machine's files or blocks on a device.
//!
//! Invariants: no panic; an accepted config passes or fails `validate` without panicking;
//! and SHOW CONFIG's text for every key is a fixed point: applying the shown value and
//! showing it again gives the same text (what an operator copies from SHOW CONFIG into the
//! file means what it showed).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgsluice::config::general::{apply_general, show_value};
use pgsluice::config::{ini, keys, General};
use pgsluice_fuzz::lossy;

/// Files `%include` may name, with their contents.
const INCLUDES: &[(&str, &str)] = &[
    (
        "databases.ini",
        "[databases]\nincluded = host=127.0.0.1 port=5433 dbname=postgres pool_size=5\n",
    ),
    (
        "general.ini",
        "[pgbouncer]\nlisten_port = 6433\npool_mode = transaction\n",
    ),
    ("self.ini", "%include self.ini\n"),
    ("broken.ini", "[pgbouncer\n"),
];

fn include_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgsluice-fuzz-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the include directory");
        for (name, text) in INCLUDES {
            std::fs::write(dir.join(name), text).expect("write an include file");
        }
        dir
    })
}

/// Whether every `%include` line stays inside the include directory: a plain file name
/// (no `/`), the same test `ini.rs` uses to spot the line, trimmed the same way.
fn includes_are_local(text: &str) -> bool {
    text.lines()
        .all(|line| match line.trim().strip_prefix("%include") {
            Some(rest) => rest
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
            None => true,
        })
}

/// SHOW CONFIG's value for each key is a fixed point of apply-then-show.
fn show_config_is_stable(g: &General) {
    for k in keys::KEYS {
        let Some(shown) = show_value(g, k.name) else {
            continue;
        };
        let mut again = g.clone();
        if let Err(e) = apply_general(&mut again, k.name, &shown) {
            panic!("SHOW CONFIG value {shown:?} of {} is refused: {e}", k.name);
        }
        assert_eq!(
            show_value(&again, k.name).as_deref(),
            Some(shown.as_str()),
            "SHOW CONFIG value of {} changes when applied again",
            k.name
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = lossy(data);
    if !includes_are_local(&text) {
        return;
    }
    let Ok(cfg) = ini::parse_str(&text, "fuzz.ini", include_dir()) else {
        return;
    };
    let _ = cfg.validate();
    for (name, db) in &cfg.databases {
        assert_eq!(&db.name, name);
        let _ = cfg.database(name);
    }
    let _ = cfg.database("fuzz_no_such_database");
    show_config_is_stable(&cfg.general);
});
