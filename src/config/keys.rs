//! The table of every `[pgbouncer]` key PgBouncer documents (§1.1–1.12 of the reference),
//! plus pgsluice's own keys. It is the single list both parsers check names against, the
//! source of SHOW CONFIG's `default` and `changeable` columns, and the record of which keys
//! pgsluice acts on yet. Order is alphabetical because SHOW CONFIG lists keys that way.

/// How a key's value is written; decides which parser checks it (see `values.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PgBouncer stores these as ints: `0`/`1` (pgsluice also takes yes/no/on/off/true/false).
    Bool,
    /// Integer with base auto-detection (`0777` octal, `0x1F` hex), as `strtol(.., 0)`.
    Int,
    /// Float seconds without unit, e.g. `5.0` or `0.5`.
    Time,
    /// Free text, kept as written.
    Str,
    /// Comma-separated list; items are trimmed.
    List,
    /// One of the given words, compared case-insensitively.
    Enum(&'static [&'static str]),
}

/// One `[pgbouncer]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: &'static str,
    pub kind: Kind,
    /// Default as SHOW CONFIG prints it (PgBouncer's `main.c` text); `None` = SQL NULL.
    pub default: Option<&'static str>,
    /// `false` = PgBouncer's `CF_NO_RELOAD` ("NR"): only read at startup, ignored on RELOAD.
    pub reloadable: bool,
    /// `false` = accepted (so an unchanged pgbouncer.ini loads) but not acted on yet; the
    /// parsers add a warning when such a key is set.
    pub implemented: bool,
}

pub const POOL_MODES: &[&str] = &["session", "transaction", "statement"];
pub const AUTH_TYPES: &[&str] = &[
    "cert",
    "md5",
    "scram-sha-256",
    "plain",
    "trust",
    "any",
    "hba",
    "ldap",
    "pam",
];
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
pub const LOAD_BALANCE_HOSTS: &[&str] = &["round-robin", "disable"];

/// PgBouncer enables `tcp_defer_accept` where the OS has `TCP_DEFER_ACCEPT` (Linux).
const DEFER_ACCEPT_DEFAULT: &str = if cfg!(target_os = "linux") { "1" } else { "0" };

const fn key(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    reloadable: bool,
    implemented: bool,
) -> KeyInfo {
    KeyInfo {
        name,
        kind,
        default,
        reloadable,
        implemented,
    }
}

// Short forms so each table row fits on one line: R = reloadable, NR = not reloadable;
// Y = implemented, N = accepted but not implemented yet.
const R: bool = true;
const NR: bool = false;
const Y: bool = true;
const N: bool = false;
use Kind::{Bool, Int, List, Str, Time};
const fn s(text: &'static str) -> Option<&'static str> {
    Some(text)
}
const NULL: Option<&'static str> = None;

const AUTH_QUERY_DEFAULT: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// Every key, alphabetically. `service_name` is PgBouncer's Windows alias of `job_name`;
/// it is accepted everywhere so one ini works on every platform.
pub static KEYS: &[KeyInfo] = &[
    key("admin_users", List, s(""), R, Y),
    key("application_name_add_host", Bool, s("0"), R, Y),
    key("auth_dbname", Str, NULL, R, Y),
    key("auth_file", Str, NULL, R, Y),
    key("auth_hba_file", Str, s(""), R, N),
    key("auth_ident_file", Str, NULL, R, N),
    key("auth_ldap_options", Str, NULL, R, N),
    key("auth_query", Str, s(AUTH_QUERY_DEFAULT), R, Y),
    key("auth_type", Kind::Enum(AUTH_TYPES), s("md5"), R, Y),
    key("auth_user", Str, NULL, R, Y),
    key("autodb_idle_timeout", Time, s("3600"), R, Y),
    key("cancel_wait_timeout", Time, s("10"), R, Y),
    key("client_idle_timeout", Time, s("0"), R, Y),
    key("client_login_timeout", Time, s("60"), R, Y),
    key("client_tls13_ciphers", Str, NULL, R, Y),
    key("client_tls_ca_file", Str, s(""), R, Y),
    key("client_tls_cert_file", Str, s(""), R, Y),
    key("client_tls_ciphers", Str, s("default"), R, Y),
    key("client_tls_dheparams", Str, s("auto"), R, N),
    key("client_tls_ecdhcurve", Str, s("auto"), R, N),
    key("client_tls_key_file", Str, s(""), R, Y),
    key("client_tls_protocols", Str, s("secure"), R, Y),
    key(
        "client_tls_sslmode",
        Kind::Enum(SSL_MODES),
        s("disable"),
        R,
        Y,
    ),
    key("conffile", Str, NULL, R, N),
    key("default_pool_size", Int, s("20"), R, Y),
    key("disable_pqexec", Bool, s("0"), NR, N),
    key("dns_max_ttl", Time, s("15"), R, Y),
    key("dns_nxdomain_ttl", Time, s("15"), R, Y),
    key("dns_zone_check_period", Time, s("0"), R, N),
    key("idle_transaction_timeout", Time, s("0"), R, Y),
    key("ignore_startup_parameters", List, s(""), R, Y),
    key("job_name", Str, s("pgbouncer"), NR, N),
    key("listen_addr", List, s(""), NR, Y),
    key("listen_backlog", Int, s("128"), NR, Y),
    key("listen_port", Int, s("6432"), NR, Y),
    key("log_connections", Bool, s("1"), R, Y),
    key("log_disconnections", Bool, s("1"), R, Y),
    key("log_pooler_errors", Bool, s("1"), R, Y),
    key("log_stats", Bool, s("1"), R, Y),
    key("logfile", Str, s(""), R, Y),
    key("login_notify_message", Str, s(""), R, N),
    key("max_client_conn", Int, s("100"), R, Y),
    key("max_db_client_connections", Int, s("0"), R, Y),
    key("max_db_connections", Int, s("0"), R, Y),
    key("max_packet_size", Int, s("2147483647"), R, Y),
    key("max_prepared_statements", Int, s("200"), R, Y),
    key("max_user_client_connections", Int, s("0"), R, Y),
    key("max_user_connections", Int, s("0"), R, Y),
    key("min_pool_size", Int, s("0"), R, Y),
    key("peer_id", Int, s("0"), R, N),
    key("pidfile", Str, s(""), NR, Y),
    key("pkt_buf", Int, s("4096"), NR, Y),
    key("pool_idle_timeout", Time, s("0"), R, Y),
    key("pool_mode", Kind::Enum(POOL_MODES), s("session"), R, Y),
    // pgsluice's own: `ip:port` of the Prometheus /metrics endpoint, empty = off.
    key("prometheus_listen", Str, s(""), NR, Y),
    key("query_timeout", Time, s("0"), R, Y),
    key("query_wait_notify", Time, s("5"), R, Y),
    key("query_wait_timeout", Time, s("120"), R, Y),
    key("reserve_pool_size", Int, s("0"), R, Y),
    key("reserve_pool_timeout", Time, s("5"), R, Y),
    key("resolv_conf", Str, s(""), NR, N),
    key("sbuf_loopcnt", Int, s("5"), R, Y),
    key("scram_iterations", Int, s("4096"), R, Y),
    key("server_check_delay", Time, s("30"), R, Y),
    key("server_check_query", Str, s("<empty>"), R, Y),
    key("server_connect_timeout", Time, s("15"), R, Y),
    key("server_fast_close", Bool, s("0"), R, Y),
    key("server_idle_timeout", Time, s("600"), R, Y),
    key("server_lifetime", Time, s("3600"), R, Y),
    key("server_login_retry", Time, s("15"), R, Y),
    key("server_reset_query", Str, s("DISCARD ALL"), R, Y),
    key("server_reset_query_always", Bool, s("0"), R, Y),
    key("server_round_robin", Bool, s("0"), R, Y),
    key("server_tls13_ciphers", Str, NULL, R, Y),
    key("server_tls_ca_file", Str, s(""), R, Y),
    key("server_tls_cert_file", Str, s(""), R, Y),
    key("server_tls_ciphers", Str, s("default"), R, Y),
    key("server_tls_key_file", Str, s(""), R, Y),
    key("server_tls_protocols", Str, s("secure"), R, Y),
    key(
        "server_tls_sslmode",
        Kind::Enum(SSL_MODES),
        s("prefer"),
        R,
        Y,
    ),
    key("service_name", Str, NULL, NR, N),
    key("so_reuseport", Bool, s("0"), NR, Y),
    // PgBouncer parses stats_period as an int (whole seconds), not as a time.
    key("stats_period", Int, s("60"), R, Y),
    key("stats_users", List, s(""), R, Y),
    key("suspend_timeout", Time, s("10"), R, N),
    key("syslog", Bool, s("0"), R, N),
    key("syslog_facility", Str, s("daemon"), R, N),
    key("syslog_ident", Str, s("pgbouncer"), R, N),
    key("tcp_defer_accept", Bool, s(DEFER_ACCEPT_DEFAULT), R, N),
    key("tcp_keepalive", Bool, s("1"), R, Y),
    key("tcp_keepcnt", Int, s("0"), R, Y),
    key("tcp_keepidle", Int, s("0"), R, Y),
    key("tcp_keepintvl", Int, s("0"), R, Y),
    key("tcp_socket_buffer", Int, s("0"), R, N),
    key("tcp_user_timeout", Int, s("0"), R, Y),
    key("track_extra_parameters", List, s("IntervalStyle"), NR, Y),
    key("transaction_timeout", Time, s("0"), R, Y),
    key("unix_socket_dir", Str, s("/tmp"), NR, Y),
    key("unix_socket_group", Str, s(""), NR, N),
    key("unix_socket_mode", Int, s("0777"), NR, Y),
    key("user", Str, NULL, NR, Y),
    // NULL in PgBouncer's table because `-v` sets it before the file is read; 0 in effect.
    key("verbose", Int, NULL, R, Y),
    // pgsluice's own: tokio worker threads, 0 = one per core (one on 2 cores or fewer).
    // Fixed at startup.
    key("worker_threads", Int, s("0"), NR, Y),
];

/// The key called exactly `name` (case-sensitive, as PgBouncer's `strcmp`).
pub fn lookup(name: &str) -> Option<&'static KeyInfo> {
    KEYS.binary_search_by(|k| k.name.cmp(name))
        .ok()
        .and_then(|i| KEYS.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in KEYS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn lookup_is_case_sensitive() {
        assert_eq!(lookup("listen_port").map(|k| k.reloadable), Some(false));
        assert!(lookup("Listen_Port").is_none());
        assert!(lookup("no_such_key").is_none());
        assert!(lookup("worker_threads").is_some_and(|k| k.implemented));
        assert!(lookup("client_tls_sslmode").is_some_and(|k| k.implemented));
        assert!(lookup("client_tls_ecdhcurve").is_some_and(|k| !k.implemented));
    }

    #[test]
    fn every_key_is_found() {
        for k in KEYS {
            assert_eq!(lookup(k.name), Some(k));
        }
    }
}
