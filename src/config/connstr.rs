//! The `key=value key='quoted value' ...` strings of `[databases]`, `[users]` and `[peers]`,
//! read the way PgBouncer's `loader.c` reads them (libpq is not involved): pairs are
//! separated by blanks, a value is either a bare word or single-quoted with `''` standing
//! for one quote, and empty values are refused. The TOML reader turns its table form into
//! the same pairs, so each key is interpreted in exactly one place.

use std::time::Duration;

use super::values::{
    parse_connstr_count, parse_connstr_seconds, parse_load_balance_hosts, parse_pool_mode, unquote,
};
use super::{Database, Peer, Secret, UserSettings};

/// Split a connection string into `(key, value)` pairs, unquoting values. Only `''` is an
/// escape inside quotes, as in PgBouncer; a backslash is an ordinary character there, so
/// `'C:\'` means `C:\`.
pub fn split_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start_matches(is_blank);
    while !rest.is_empty() {
        let key_end = rest.find(|c| c == '=' || is_blank(c)).unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start_matches(is_blank);
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err(format!("missing '=' after {key:?}"));
        };
        if key.is_empty() {
            return Err("missing parameter name before '='".into());
        }
        let after_eq = after_eq.trim_start_matches(is_blank);
        let (value, after_value) = if let Some(quoted) = after_eq.strip_prefix('\'') {
            let (value, after) = unquote(quoted, '\'')
                .ok_or_else(|| format!("unterminated quote in value of {key}"))?;
            // PgBouncer silently eats the character after the closing quote; we insist it
            // is a blank, so `a='x'b=1` is an error rather than a surprise.
            if after.starts_with(|c| !is_blank(c)) {
                return Err(format!("missing blank after the quoted value of {key}"));
            }
            (value, after)
        } else {
            let end = after_eq.find(is_blank).unwrap_or(after_eq.len());
            (after_eq[..end].to_string(), &after_eq[end..])
        };
        if value.is_empty() {
            return Err(format!("empty value for {key}"));
        }
        pairs.push((key.to_string(), value));
        rest = after_value.trim_start_matches(is_blank);
    }
    Ok(pairs)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// One `[databases]` entry from its connection string. `name` is the ini key, already
/// unquoted; `*` is the fallback entry.
pub fn parse_database(name: &str, connstr: &str) -> Result<Database, String> {
    let pairs =
        split_pairs(connstr).map_err(|e| format!("syntax error in connection string: {e}"))?;
    database_from_pairs(name, pairs)
}

/// One `[databases]` entry from already separated pairs (the TOML table form).
pub fn database_from_pairs(name: &str, pairs: Vec<(String, String)>) -> Result<Database, String> {
    // The admin console owns this name (PgBouncer's check_reserved_database).
    if name == "pgbouncer" {
        return Err(format!("database name {name:?} is reserved"));
    }
    let mut db = Database {
        name: name.to_string(),
        ..Database::default()
    };
    for (key, val) in pairs {
        non_empty(&key, &val)?;
        set_database_key(&mut db, &key, &val)?;
    }
    Ok(db)
}

fn set_database_key(db: &mut Database, key: &str, val: &str) -> Result<(), String> {
    let text = || Some(val.to_string());
    let count = || parse_connstr_count(val).map_err(|e| invalid(key, val, &e));
    match key {
        "dbname" => db.dbname = text(),
        "host" => db.host = text(),
        "port" => db.port = parse_port(val)?,
        "user" => db.user = text(),
        "password" => {
            // Classified here only to refuse a malformed SCRAM secret early; the text is kept.
            Secret::parse(val).map_err(|e| format!("password: {e}"))?;
            db.password = text();
        }
        "auth_user" => db.auth_user = text(),
        "auth_query" => db.auth_query = text(),
        "auth_dbname" => db.auth_dbname = text(),
        "client_encoding" => db.client_encoding = text(),
        "datestyle" => db.datestyle = text(),
        "timezone" => db.timezone = text(),
        "application_name" => db.application_name = text(),
        "connect_query" => db.connect_query = text(),
        "pool_size" => db.pool_size = count()?,
        "min_pool_size" => db.min_pool_size = count()?,
        // `reserve_pool` is the spelling PgBouncer has always read; both are accepted.
        "reserve_pool" | "reserve_pool_size" => db.reserve_pool_size = count()?,
        "max_db_connections" => db.max_db_connections = count()?,
        "max_db_client_connections" => db.max_db_client_connections = count()?,
        // PgBouncer uses 0 as "not set" here: the global server_lifetime applies.
        "server_lifetime" => db.server_lifetime = zero_is_unset(seconds(key, val)?),
        // Here -1 is "not set" and 0 means "no limit for this database".
        "query_wait_timeout" => db.query_wait_timeout = seconds(key, val)?,
        "pool_mode" => {
            db.pool_mode =
                Some(parse_pool_mode(val).map_err(|_| format!("invalid pool mode: {val}"))?)
        }
        "load_balance_hosts" => {
            db.load_balance_hosts = Some(
                parse_load_balance_hosts(val)
                    .map_err(|_| format!("invalid load_balance_hosts: {val}"))?,
            )
        }
        // Overrides server_tls_sslmode for this database, as PgBouncer #163 asks.
        "sslmode" => {
            db.sslmode = Some(
                crate::net::tls::SslMode::parse(val)
                    .map_err(|_| format!("invalid sslmode: {val}"))?,
            )
        }
        _ => return Err(format!("unrecognized connection parameter: {key}")),
    }
    Ok(())
}

/// One `[users]` entry from its `key=value ...` string.
pub fn parse_user(name: &str, settings: &str) -> Result<UserSettings, String> {
    let pairs = split_pairs(settings).map_err(|e| format!("syntax error in user settings: {e}"))?;
    user_from_pairs(name, pairs)
}

/// One `[users]` entry from already separated pairs (the TOML table form).
pub fn user_from_pairs(name: &str, pairs: Vec<(String, String)>) -> Result<UserSettings, String> {
    let mut u = UserSettings {
        name: name.to_string(),
        ..UserSettings::default()
    };
    for (key, val) in pairs {
        non_empty(&key, &val)?;
        let (key, val) = (key.as_str(), val.as_str());
        let count = || parse_connstr_count(val).map_err(|e| invalid(key, val, &e));
        // Per-user timeouts are "not set" at 0 in PgBouncer (the global one applies),
        // except query_wait_timeout, whose "not set" is -1.
        let timeout = || seconds(key, val).map(zero_is_unset);
        match key {
            "pool_mode" => {
                u.pool_mode =
                    Some(parse_pool_mode(val).map_err(|_| format!("invalid pool mode: {val}"))?)
            }
            "pool_size" => u.pool_size = count()?,
            "reserve_pool_size" => u.reserve_pool_size = count()?,
            "max_user_connections" => u.max_user_connections = count()?,
            "max_user_client_connections" => u.max_user_client_connections = count()?,
            "query_timeout" => u.query_timeout = timeout()?,
            "query_wait_timeout" => u.query_wait_timeout = seconds(key, val)?,
            "idle_transaction_timeout" => u.idle_transaction_timeout = timeout()?,
            "transaction_timeout" => u.transaction_timeout = timeout()?,
            "client_idle_timeout" => u.client_idle_timeout = timeout()?,
            _ => return Err(format!("unrecognized user parameter: {key}")),
        }
    }
    Ok(u)
}

/// One `[peers]` entry: `id` is the ini key, a number 1..=65535.
pub fn parse_peer(id: &str, connstr: &str) -> Result<Peer, String> {
    let pairs =
        split_pairs(connstr).map_err(|e| format!("syntax error in connection string: {e}"))?;
    peer_from_pairs(id, pairs)
}

/// One `[peers]` entry from already separated pairs (the TOML table form).
pub fn peer_from_pairs(id: &str, pairs: Vec<(String, String)>) -> Result<Peer, String> {
    let id: u16 = match id.parse() {
        Ok(n) if n > 0 => n,
        _ => return Err("ids of peers must be a number larger than 0 and at most 65535".into()),
    };
    let mut host = None;
    let mut port = 6432;
    let mut pool_size = None;
    for (key, val) in pairs {
        non_empty(&key, &val)?;
        match key.as_str() {
            "host" => host = Some(val),
            "port" => port = parse_port(&val)?,
            "pool_size" => {
                pool_size = parse_connstr_count(&val).map_err(|e| invalid(&key, &val, &e))?
            }
            _ => return Err(format!("unrecognized connection parameter: {key}")),
        }
    }
    let host = host.ok_or_else(|| format!("host was not provided for peer {id}"))?;
    Ok(Peer {
        id,
        host,
        port,
        pool_size,
    })
}

/// PgBouncer refuses port 0 ("invalid port"); we also refuse what is not a port number.
fn parse_port(val: &str) -> Result<u16, String> {
    match val.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port: {val}")),
    }
}

fn seconds(key: &str, val: &str) -> Result<Option<Duration>, String> {
    parse_connstr_seconds(val).map_err(|e| invalid(key, val, &e))
}

fn zero_is_unset(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

/// The string form refuses empty values while splitting; the table form gets the same rule.
fn non_empty(key: &str, val: &str) -> Result<(), String> {
    if val.is_empty() {
        return Err(format!("empty value for {key}"));
    }
    Ok(())
}

fn invalid(key: &str, val: &str, reason: &str) -> String {
    format!("invalid value for {key}: {val:?}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadBalanceHosts, PoolMode};

    fn pairs(text: &str) -> Vec<(String, String)> {
        split_pairs(text).unwrap()
    }

    #[test]
    fn splits_bare_and_quoted_values() {
        assert_eq!(
            pairs("  host=db1  port = 5433 auth_query='SELECT p FROM t WHERE u=$1' "),
            [
                ("host".into(), "db1".into()),
                ("port".into(), "5433".into()),
                ("auth_query".into(), "SELECT p FROM t WHERE u=$1".into()),
            ]
        );
        assert_eq!(pairs("a='it''s'")[0].1, "it's");
        assert_eq!(pairs("a='C:\\'")[0].1, "C:\\");
        assert_eq!(pairs("a=x=y")[0].1, "x=y");
        assert_eq!(pairs("a=\t'x'\tb=1").len(), 2);
        assert!(pairs("").is_empty());
    }

    #[test]
    fn split_errors() {
        for bad in ["host", "=x", "a=", "a=''", "a='open", "a='x'b=1", "a b=1"] {
            assert!(split_pairs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_keys() {
        let db = parse_database(
            "app",
            "host=10.0.0.1,10.0.0.2 port=6000 dbname=real user=u password=p pool_size=5 \
             min_pool_size=1 reserve_pool=2 max_db_connections=9 max_db_client_connections=50 \
             pool_mode=Transaction connect_query='SELECT 1' client_encoding=UTF8 \
             datestyle=ISO timezone=UTC application_name=x server_lifetime=30 \
             query_wait_timeout=0 auth_user=a auth_query='SELECT 2' auth_dbname=authdb \
             load_balance_hosts=disable",
        )
        .unwrap();
        assert_eq!(db.name, "app");
        assert_eq!(db.host.as_deref(), Some("10.0.0.1,10.0.0.2"));
        assert_eq!(db.port, 6000);
        assert_eq!(db.dbname.as_deref(), Some("real"));
        assert_eq!(db.reserve_pool_size, Some(2));
        assert_eq!(db.pool_mode, Some(PoolMode::Transaction));
        assert_eq!(db.connect_query.as_deref(), Some("SELECT 1"));
        assert_eq!(db.server_lifetime, Some(Duration::from_secs(30)));
        assert_eq!(db.query_wait_timeout, Some(Duration::ZERO));
        assert_eq!(db.load_balance_hosts, Some(LoadBalanceHosts::Disable));
        assert_eq!(db.auth_dbname.as_deref(), Some("authdb"));

        let plain = parse_database("x", "").unwrap();
        assert_eq!(plain.port, 5432);
        assert_eq!(plain.host, None);
        let unset = parse_database("x", "server_lifetime=0 pool_size=-1").unwrap();
        assert_eq!((unset.server_lifetime, unset.pool_size), (None, None));
    }

    #[test]
    fn database_errors() {
        let err = |s| parse_database("x", s).unwrap_err();
        assert_eq!(err("hots=a"), "unrecognized connection parameter: hots");
        assert_eq!(err("port=0"), "invalid port: 0");
        assert_eq!(err("pool_mode=tx"), "invalid pool mode: tx");
        assert!(err("pool_size=lots").contains("pool_size"));
        assert!(err("host='x").starts_with("syntax error in connection string"));
        assert!(err("password=SCRAM-SHA-256$bad").starts_with("password:"));
        assert_eq!(
            parse_database("pgbouncer", "").unwrap_err(),
            "database name \"pgbouncer\" is reserved"
        );
    }

    #[test]
    fn user_keys() {
        let u = parse_user(
            "alice",
            "pool_mode=statement pool_size=3 reserve_pool_size=1 max_user_connections=4 \
             max_user_client_connections=8 query_timeout=10 query_wait_timeout=-1 \
             idle_transaction_timeout=0 transaction_timeout=2.7 client_idle_timeout=60",
        )
        .unwrap();
        assert_eq!(u.pool_mode, Some(PoolMode::Statement));
        assert_eq!(u.pool_size, Some(3));
        assert_eq!(u.query_timeout, Some(Duration::from_secs(10)));
        assert_eq!(u.query_wait_timeout, None);
        assert_eq!(u.idle_transaction_timeout, None);
        assert_eq!(u.transaction_timeout, Some(Duration::from_secs(2)));
        assert_eq!(u.client_idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            parse_user("a", "host=x").unwrap_err(),
            "unrecognized user parameter: host"
        );
        assert!(parse_user("a", "pool_mode")
            .unwrap_err()
            .starts_with("syntax error in user settings"));
    }

    #[test]
    fn peers() {
        let p = parse_peer("2", "host=/tmp pool_size=4").unwrap();
        assert_eq!(
            (p.id, p.host.as_str(), p.port, p.pool_size),
            (2, "/tmp", 6432, Some(4))
        );
        assert!(parse_peer("0", "host=a").is_err());
        assert!(parse_peer("65536", "host=a").is_err());
        assert_eq!(
            parse_peer("1", "port=1").unwrap_err(),
            "host was not provided for peer 1"
        );
        assert_eq!(
            parse_peer("1", "host=a dbname=x").unwrap_err(),
            "unrecognized connection parameter: dbname"
        );
    }
}
