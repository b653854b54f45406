//! pgbouncer.ini syntax, as libusual's `cfparser.c` reads it: `;`/`#` comment lines,
//! `[section]` lines, `key = value` where the value runs to the end of the line (no inline
//! comments, no quoting: quotes are part of the value), and `%include <file>`, which may
//! nest. Values go through the same setters as TOML (`general.rs`, `connstr.rs`).

use std::path::Path;

use super::connstr::{parse_database, parse_peer, parse_user};
use super::general::{reset_defaults, set_general};
use super::values::unquote;
use super::{read_lossy, Config, ConfigError};

/// libusual's limit; it also stops a file that includes itself.
const MAX_INCLUDE_DEPTH: usize = 10;

/// Read a pgbouncer.ini file. `%include` paths are taken relative to the directory of the
/// file that includes them. (libusual opens the path as written, i.e. relative to the
/// working directory; the two agree when the pooler is started from the config's
/// directory, and ours does not depend on where it was started.)
/// `auth_file`, `logfile` and `pidfile` are kept as written, i.e. relative to the working
/// directory, as PgBouncer does.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_lossy(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut parser = Parser::default();
    parser.text(&text, &path.display().to_string(), dir_of(path), 0)?;
    Ok(parser.cfg)
}

/// Parse ini text that did not come from a file; `file_name` is used in error messages
/// and `base_dir` resolves relative `%include` paths.
pub fn parse_str(text: &str, file_name: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let mut parser = Parser::default();
    parser.text(text, file_name, base_dir, 0)?;
    Ok(parser.cfg)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    PgBouncer,
    Databases,
    Users,
    Peers,
}

#[derive(Default)]
struct Parser {
    cfg: Config,
    /// Carried into and out of included files, as libusual shares it across them.
    section: Option<Section>,
}

impl Parser {
    fn text(
        &mut self,
        text: &str,
        file_name: &str,
        base_dir: &Path,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let at = |msg: String| ConfigError::At {
                file: file_name.to_string(),
                line: i + 1,
                msg,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(target) = include_target(line) {
                if target.is_empty() {
                    return Err(at(
                        "syntax error in configuration: %include without a file".into()
                    ));
                }
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(at(format!("include nesting level too deep: {target}")));
                }
                let path = base_dir.join(target);
                let included = read_lossy(&path)
                    .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                self.text(
                    &included,
                    &path.display().to_string(),
                    dir_of(&path),
                    depth + 1,
                )?;
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                self.section(rest).map_err(at)?;
                continue;
            }
            let (key, value) = split_key_value(line).map_err(at)?;
            self.set(&key, value).map_err(at)?;
        }
        Ok(())
    }

    /// A `[name]` line, after the `[`.
    fn section(&mut self, rest: &str) -> Result<(), String> {
        let (name, after) = rest
            .split_once(']')
            .ok_or("syntax error in configuration: missing ']'")?;
        let after = after.trim_start();
        if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
            return Err("syntax error in configuration: text after ']'".into());
        }
        let section = match name {
            "pgbouncer" => Section::PgBouncer,
            "databases" => Section::Databases,
            "users" => Section::Users,
            "peers" => Section::Peers,
            _ => return Err(format!("unknown section: {name}")),
        };
        if section == Section::PgBouncer {
            // libusual refills every default that is not NULL each time the section
            // starts, so a second `[pgbouncer]` (say, in an included file) forgets what
            // the first one set. Kept, so a file means the same thing to both poolers.
            reset_defaults(&mut self.cfg.general)?;
        }
        self.section = Some(section);
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let cfg = &mut self.cfg;
        match self.section {
            None => return Err(format!("value without section: {key}")),
            Some(Section::PgBouncer) => set_general(cfg, key, value)?,
            Some(Section::Databases) => {
                cfg.databases
                    .insert(key.to_string(), parse_database(key, value)?);
            }
            Some(Section::Users) => {
                cfg.users.insert(key.to_string(), parse_user(key, value)?);
            }
            Some(Section::Peers) => {
                let peer = parse_peer(key, value)?;
                cfg.peers.insert(peer.id, peer);
            }
        }
        Ok(())
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// `%include <file>` → the file (possibly empty); `None` if the line is not an include.
fn include_target(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("%include")?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some(rest.trim())
}

/// `key = value`, `"quoted key" = value`. Unquoted keys use libusual's characters
/// (ASCII letters, digits, `_.-*`); a double-quoted key may hold anything, `""` being a
/// quote, which is how database names outside that set are written.
fn split_key_value(line: &str) -> Result<(String, &str), String> {
    let syntax = |what: &str| format!("syntax error in configuration: {what}");
    let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
        unquote(quoted, '"').ok_or_else(|| syntax("unterminated quoted name"))?
    } else {
        let end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c)))
            .unwrap_or(line.len());
        (line[..end].to_string(), &line[end..])
    };
    if key.is_empty() {
        return Err(syntax("expected a name"));
    }
    let value = rest
        .trim_start_matches([' ', '\t'])
        .strip_prefix('=')
        .ok_or_else(|| syntax(&format!("expected '=' after {key:?}")))?;
    Ok((key, value.trim()))
}

#[cfg(test)]
#[path = "ini_tests.rs"]
mod tests;
