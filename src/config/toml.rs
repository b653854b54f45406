//! The TOML form of the same configuration: tables `[pgbouncer]`, `[databases]`, `[users]`
//! and `[peers]` with PgBouncer's key names. Native TOML values (booleans, integers, float
//! seconds, arrays for lists) are turned into the text the ini form would have, then go
//! through the very setters the ini reader uses, so both forms mean the same thing.
//! A database, user or peer is either a connection string or a table of the same keys.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Spanned, Value};

use super::connstr::{
    database_from_pairs, parse_database, parse_peer, parse_user, peer_from_pairs, user_from_pairs,
};
use super::general::set_general;
use super::keys::{self, Kind};
use super::{Config, ConfigError};

/// A section's entries. Only values carry spans: `Spanned` keys (and a `Spanned` section)
/// fail to deserialize for implicit tables such as the `users` of a lone `[users.bob]`.
/// A table value's span starts at its `[section.name]` header, which is the line to report.
type Entries = BTreeMap<String, Spanned<Value>>;

/// Read a TOML config file. Paths inside (`auth_file`, …) are kept as written, as in the
/// ini form.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    // TOML must be UTF-8; say so with the file name rather than as an I/O error.
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::Msg(format!("{}: not UTF-8 text", path.display())))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    parse_str(&text, &path.display().to_string(), base_dir)
}

/// Parse TOML text. `base_dir` is accepted for symmetry with the ini reader; TOML has no
/// include, so nothing is resolved against it.
pub fn parse_str(text: &str, file_name: &str, _base_dir: &Path) -> Result<Config, ConfigError> {
    let line_of = |offset: usize| {
        text.get(..offset)
            .map_or(1, |s| s.matches('\n').count() + 1)
    };
    let at = |offset: usize, msg: String| ConfigError::At {
        file: file_name.to_string(),
        line: line_of(offset),
        msg,
    };
    let doc: BTreeMap<Spanned<String>, Entries> =
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => at(span.start, e.message().trim_end().to_string()),
            None => ConfigError::Msg(format!("{file_name}: {e}")),
        })?;

    let mut cfg = Config::default();
    for (section, entries) in &doc {
        let apply: fn(&mut Config, &str, &Value) -> Result<(), String> =
            match section.get_ref().as_str() {
                "pgbouncer" => set_pgbouncer,
                "databases" => set_database,
                "users" => set_user,
                "peers" => set_peer,
                other => {
                    return Err(at(
                        section.span().start,
                        format!("unknown section: {other}"),
                    ))
                }
            };
        for (key, value) in entries {
            apply(&mut cfg, key, value.get_ref()).map_err(|msg| at(value.span().start, msg))?;
        }
    }
    Ok(cfg)
}

fn set_pgbouncer(cfg: &mut Config, key: &str, value: &Value) -> Result<(), String> {
    let info = keys::lookup(key).ok_or_else(|| format!("unknown parameter: pgbouncer/{key}"))?;
    let text = to_text(value, info.kind).map_err(|e| format!("invalid value for {key}: {e}"))?;
    set_general(cfg, key, &text)
}

fn set_database(cfg: &mut Config, name: &str, value: &Value) -> Result<(), String> {
    let db = entry(value, "database", name, parse_database, database_from_pairs)?;
    cfg.databases.insert(name.to_string(), db);
    Ok(())
}

fn set_user(cfg: &mut Config, name: &str, value: &Value) -> Result<(), String> {
    let user = entry(value, "user", name, parse_user, user_from_pairs)?;
    cfg.users.insert(name.to_string(), user);
    Ok(())
}

fn set_peer(cfg: &mut Config, id: &str, value: &Value) -> Result<(), String> {
    let peer = entry(value, "peer", id, parse_peer, peer_from_pairs)?;
    cfg.peers.insert(peer.id, peer);
    Ok(())
}

type FromPairs<T> = fn(&str, Vec<(String, String)>) -> Result<T, String>;

/// A database, user or peer entry: the string the ini form would have, or a table of the
/// same keys.
fn entry<T>(
    value: &Value,
    what: &str,
    name: &str,
    from_string: fn(&str, &str) -> Result<T, String>,
    from_pairs: FromPairs<T>,
) -> Result<T, String> {
    match value {
        Value::String(text) => from_string(name, text),
        Value::Table(t) => from_pairs(name, pairs(t)?),
        _ => Err(format!("{what} {name}: expected a string or a table")),
    }
}

/// A `[databases.x]`-style table as connection-string pairs. `host` may be an array (the
/// comma-separated host list); every other value is a single word or number.
fn pairs(table: &toml::Table) -> Result<Vec<(String, String)>, String> {
    table
        .iter()
        .map(|(k, v)| {
            let kind = if k == "host" { Kind::List } else { Kind::Str };
            let text = to_text(v, kind).map_err(|e| format!("invalid value for {k}: {e}"))?;
            Ok((k.clone(), text))
        })
        .collect()
}

/// The ini text for a TOML value of a key of `kind`. A string is always taken as ini text
/// (so `"5.0"` or `"0777"` work); native values are accepted where they fit the kind.
fn to_text(value: &Value, kind: Kind) -> Result<String, String> {
    match (value, kind) {
        (Value::String(s), _) => Ok(s.clone()),
        (Value::Boolean(b), Kind::Bool) => Ok(if *b { "1" } else { "0" }.to_string()),
        (Value::Integer(i), Kind::Int | Kind::Bool | Kind::Time | Kind::Str) => Ok(i.to_string()),
        (Value::Float(f), Kind::Time) => Ok(f.to_string()),
        (Value::Array(items), Kind::List) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or("expected an array of strings".to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        _ => Err(match kind {
            Kind::Bool => "expected a boolean",
            Kind::Int => "expected an integer",
            Kind::Time => "expected seconds (a number)",
            Kind::Str | Kind::Enum(_) => "expected a string",
            Kind::List => "expected a string or an array of strings",
        }
        .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolMode;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, "test.toml", Path::new("."))
    }

    #[test]
    fn native_and_string_values() {
        let cfg = parse(
            r#"
            [pgbouncer]
            listen_addr = ["127.0.0.1", "::1"]
            listen_port = 7000
            unix_socket_mode = "0700"
            reserve_pool_timeout = 0.5
            server_lifetime = "5.0"
            query_timeout = 3
            log_stats = false
            so_reuseport = "yes"
            pool_mode = "transaction"
            admin_users = "a, b"
            "#,
        )
        .unwrap();
        let g = &cfg.general;
        assert_eq!(g.listen_addr, ["127.0.0.1", "::1"]);
        assert_eq!(g.listen_port, 7000);
        assert_eq!(g.unix_socket_mode, 0o700);
        assert_eq!(g.reserve_pool_timeout, Duration::from_millis(500));
        assert_eq!(g.server_lifetime, Duration::from_secs(5));
        assert_eq!(g.query_timeout, Duration::from_secs(3));
        assert!(!g.log_stats && g.so_reuseport);
        assert_eq!(g.pool_mode, PoolMode::Transaction);
        assert_eq!(g.admin_users, ["a", "b"]);
    }

    #[test]
    fn databases_as_strings_or_tables_are_the_same() {
        let as_string = parse(
            r#"
            [databases]
            appdb = "host=127.0.0.1 port=5433 dbname=app pool_size=5 connect_query='SELECT 1'"
            "*" = "host=127.0.0.1"
            [users]
            alice = "pool_mode=statement query_timeout=10"
            [peers]
            1 = "host=/tmp port=6433"
            "#,
        )
        .unwrap();
        let as_table = parse(
            r#"
            [databases.appdb]
            host = "127.0.0.1"
            port = 5433
            dbname = "app"
            pool_size = 5
            connect_query = "SELECT 1"
            [databases."*"]
            host = ["127.0.0.1"]
            [users.alice]
            pool_mode = "statement"
            query_timeout = 10
            [peers.1]
            host = "/tmp"
            port = 6433
            "#,
        )
        .unwrap();
        assert_eq!(as_string, as_table);
        assert_eq!(as_string.databases["appdb"].port, 5433);
        assert_eq!(as_string.databases["*"].host.as_deref(), Some("127.0.0.1"));
        assert_eq!(as_string.peers[&1].host, "/tmp");
    }

    fn err_at(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::At { line, msg, .. }) => (line, msg),
            other => panic!("expected a positioned error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_key_and_line() {
        let (line, msg) = err_at("[pgbouncer]\nlisten_port = 1\nlisten_prot = 2\n");
        assert_eq!(
            (line, msg.as_str()),
            (3, "unknown parameter: pgbouncer/listen_prot")
        );
        let (line, msg) = err_at("[pgbouncer]\n\nlisten_port = true\n");
        assert_eq!(line, 3);
        assert!(msg.contains("listen_port"), "{msg}");
        let (_, msg) = err_at("[pgbouncer]\nlisten_port = \"x\"\n");
        assert!(msg.contains("listen_port"), "{msg}");
        let (line, msg) = err_at("[pgbouncer]\n[databases.app]\nhots = \"a\"\n");
        assert_eq!(
            (line, msg.as_str()),
            (2, "unrecognized connection parameter: hots")
        );
        let (_, msg) = err_at("[users]\nbob = \"nope=1\"\n");
        assert_eq!(msg, "unrecognized user parameter: nope");
        let (line, msg) = err_at("[pgbouncer]\n[pgbouncr]\n");
        assert_eq!((line, msg.as_str()), (2, "unknown section: pgbouncr"));
        assert_eq!(err_at("[databases]\napp = 5\n").0, 2);
        // Plain TOML syntax errors carry a line too.
        assert_eq!(err_at("[pgbouncer]\nlisten_port = = 1\n").0, 2);
    }

    #[test]
    fn not_implemented_keys_warn() {
        let cfg = parse("[pgbouncer]\nclient_tls_ecdhcurve = \"prime256v1\"\n").unwrap();
        assert_eq!(
            cfg.warnings,
            ["client_tls_ecdhcurve: accepted but not implemented by pgsluice yet"]
        );
    }

    #[test]
    fn no_panic_on_odd_input() {
        for text in [
            "",
            "x = 1",
            "[pgbouncer]\nlisten_addr = [1]",
            "[databases]\na = []",
            "[pgbouncer.x]\ny = 1",
            "[[databases]]",
            "\u{0}",
        ] {
            let _ = parse(text);
        }
    }
}
