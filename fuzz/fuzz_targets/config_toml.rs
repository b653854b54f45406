//! The TOML form of the configuration through `config::toml::parse_str` (the `toml` crate,
//! then the same setters and connection-string parser as the ini form).
//!
//! Invariants: no panic; an accepted config passes or fails `validate` without panicking.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pgsluice::config::toml;

fuzz_target!(|data: &[u8]| {
    // TOML files must be UTF-8; `toml::load` refuses anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::parse_str(text, "fuzz.toml", Path::new(".")) {
        let _ = cfg.validate();
    }
});
