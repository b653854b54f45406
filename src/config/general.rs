//! Setting one `[pgbouncer]` key from its text, for both the ini and the TOML reader (TOML
//! values are turned into the same text first), and showing a key's current value the way
//! SHOW CONFIG does. The key table in `keys.rs` decides which names exist.

use std::path::PathBuf;

use super::keys::{self, Kind};
use super::values::{
    check, format_time, parse_auth_type, parse_bool, parse_list, parse_pool_mode, parse_time,
    parse_u16, parse_u32,
};
use super::{Config, General};
use crate::net::tls::{self, SslMode};

/// Store `value` for `key` in `g`. Errors are complete messages without a position:
/// `unknown parameter: pgbouncer/<key>` (PgBouncer's text) or
/// `invalid value for <key>: "<value>": <reason>`.
pub fn apply_general(g: &mut General, key: &str, value: &str) -> Result<(), String> {
    let info = keys::lookup(key).ok_or_else(|| format!("unknown parameter: pgbouncer/{key}"))?;
    set_field(g, info.kind, key, value)
        .map_err(|reason| format!("invalid value for {key}: {value:?}: {reason}"))
}

/// [`apply_general`] on a whole config, adding the "accepted but not implemented" warning
/// when the key is one pgsluice does not act on yet.
pub fn set_general(cfg: &mut Config, key: &str, value: &str) -> Result<(), String> {
    apply_general(&mut cfg.general, key, value)?;
    if keys::lookup(key).is_some_and(|k| !k.implemented) {
        cfg.warnings.push(format!(
            "{key}: accepted but not implemented by pgsluice yet"
        ));
    }
    Ok(())
}

/// Put back every key whose default is not NULL, leaving NULL-default keys (auth_file,
/// auth_user, …) as they are: what libusual does each time a `[pgbouncer]` section starts.
pub fn reset_defaults(g: &mut General) -> Result<(), String> {
    for k in keys::KEYS {
        if let Some(default) = k.default {
            apply_general(g, k.name, default)?;
        }
    }
    // Defaults of keys without a field are not stored: SHOW CONFIG falls back to the table.
    g.not_implemented
        .retain(|name, _| keys::lookup(name).is_some_and(|k| k.default.is_none()));
    Ok(())
}

fn set_field(g: &mut General, kind: Kind, key: &str, v: &str) -> Result<(), String> {
    let text = || v.to_string();
    match key {
        "listen_addr" => g.listen_addr = parse_list(v),
        "listen_port" => g.listen_port = parse_u16(v)?,
        "unix_socket_dir" => g.unix_socket_dir = text(),
        "unix_socket_mode" => g.unix_socket_mode = parse_u32(v)?,
        "unix_socket_group" => g.unix_socket_group = text(),
        "logfile" => g.logfile = text(),
        "pidfile" => g.pidfile = text(),
        "user" => g.user = text(),
        "stats_period" => g.stats_period = secs(parse_u32(v)?),
        "verbose" => g.verbose = parse_u32(v)?,
        "peer_id" => g.peer_id = parse_u32(v)?,
        "pool_mode" => g.pool_mode = parse_pool_mode(v)?,
        "default_pool_size" => g.default_pool_size = parse_u32(v)?,
        "min_pool_size" => g.min_pool_size = parse_u32(v)?,
        "reserve_pool_size" => g.reserve_pool_size = parse_u32(v)?,
        "reserve_pool_timeout" => g.reserve_pool_timeout = parse_time(v)?,
        "server_round_robin" => g.server_round_robin = parse_bool(v)?,
        "max_prepared_statements" => g.max_prepared_statements = parse_u32(v)?,
        "application_name_add_host" => g.application_name_add_host = parse_bool(v)?,
        "autodb_idle_timeout" => g.autodb_idle_timeout = parse_time(v)?,
        "pool_idle_timeout" => g.pool_idle_timeout = parse_time(v)?,
        "max_client_conn" => g.max_client_conn = parse_u32(v)?,
        "max_db_connections" => g.max_db_connections = parse_u32(v)?,
        "max_db_client_connections" => g.max_db_client_connections = parse_u32(v)?,
        "max_user_connections" => g.max_user_connections = parse_u32(v)?,
        "max_user_client_connections" => g.max_user_client_connections = parse_u32(v)?,
        "max_packet_size" => g.max_packet_size = parse_u32(v)?,
        "pkt_buf" => g.pkt_buf = parse_u32(v)?,
        "sbuf_loopcnt" => g.sbuf_loopcnt = parse_u32(v)?,
        "listen_backlog" => g.listen_backlog = parse_u32(v)?,
        "suspend_timeout" => g.suspend_timeout = parse_time(v)?,
        "server_reset_query" => g.server_reset_query = text(),
        "server_reset_query_always" => g.server_reset_query_always = parse_bool(v)?,
        "track_extra_parameters" => g.track_extra_parameters = parse_list(v),
        "ignore_startup_parameters" => g.ignore_startup_parameters = parse_list(v),
        "disable_pqexec" => g.disable_pqexec = parse_bool(v)?,
        "scram_iterations" => g.scram_iterations = parse_u32(v)?,
        "auth_type" => g.auth_type = parse_auth_type(v)?,
        // Kept as written: PgBouncer opens it relative to its working directory, not to
        // the config file. An empty value means "no auth_file", like the NULL default.
        "auth_file" => g.auth_file = (!v.is_empty()).then(|| PathBuf::from(v)),
        "auth_hba_file" => g.auth_hba_file = text(),
        "auth_ident_file" => g.auth_ident_file = text(),
        "auth_user" => g.auth_user = text(),
        "auth_query" => g.auth_query = text(),
        "auth_dbname" => g.auth_dbname = text(),
        "admin_users" => g.admin_users = parse_list(v),
        "stats_users" => g.stats_users = parse_list(v),
        "syslog" => g.syslog = parse_bool(v)?,
        "syslog_ident" => g.syslog_ident = text(),
        "syslog_facility" => g.syslog_facility = text(),
        "log_connections" => g.log_connections = parse_bool(v)?,
        "log_disconnections" => g.log_disconnections = parse_bool(v)?,
        "log_pooler_errors" => g.log_pooler_errors = parse_bool(v)?,
        "log_stats" => g.log_stats = parse_bool(v)?,
        "server_check_delay" => g.server_check_delay = parse_time(v)?,
        "server_check_query" => g.server_check_query = text(),
        "server_fast_close" => g.server_fast_close = parse_bool(v)?,
        "server_lifetime" => g.server_lifetime = parse_time(v)?,
        "server_idle_timeout" => g.server_idle_timeout = parse_time(v)?,
        "server_connect_timeout" => g.server_connect_timeout = parse_time(v)?,
        "server_login_retry" => g.server_login_retry = parse_time(v)?,
        "client_login_timeout" => g.client_login_timeout = parse_time(v)?,
        "query_timeout" => g.query_timeout = parse_time(v)?,
        "query_wait_timeout" => g.query_wait_timeout = parse_time(v)?,
        "query_wait_notify" => g.query_wait_notify = parse_time(v)?,
        "cancel_wait_timeout" => g.cancel_wait_timeout = parse_time(v)?,
        "client_idle_timeout" => g.client_idle_timeout = parse_time(v)?,
        "idle_transaction_timeout" => g.idle_transaction_timeout = parse_time(v)?,
        "transaction_timeout" => g.transaction_timeout = parse_time(v)?,
        "dns_max_ttl" => g.dns_max_ttl = parse_time(v)?,
        "dns_nxdomain_ttl" => g.dns_nxdomain_ttl = parse_time(v)?,
        "so_reuseport" => g.so_reuseport = parse_bool(v)?,
        "tcp_keepalive" => g.tcp_keepalive = parse_bool(v)?,
        "tcp_keepcnt" => g.tcp_keepcnt = parse_u32(v)?,
        "tcp_keepidle" => g.tcp_keepidle = parse_u32(v)?,
        "tcp_keepintvl" => g.tcp_keepintvl = parse_u32(v)?,
        "tcp_user_timeout" => g.tcp_user_timeout = parse_u32(v)?,
        "client_tls_sslmode" => g.client_tls_sslmode = SslMode::parse(v)?,
        "client_tls_key_file" => g.client_tls_key_file = text(),
        "client_tls_cert_file" => g.client_tls_cert_file = text(),
        "client_tls_ca_file" => g.client_tls_ca_file = text(),
        "client_tls_protocols" => g.client_tls_protocols = checked(v, tls::parse_protocols)?,
        "client_tls_ciphers" => g.client_tls_ciphers = checked(v, tls::parse_tls12_ciphers)?,
        "client_tls13_ciphers" => g.client_tls13_ciphers = checked(v, tls::parse_tls13_ciphers)?,
        "server_tls_sslmode" => g.server_tls_sslmode = SslMode::parse(v)?,
        "server_tls_key_file" => g.server_tls_key_file = text(),
        "server_tls_cert_file" => g.server_tls_cert_file = text(),
        "server_tls_ca_file" => g.server_tls_ca_file = text(),
        "server_tls_protocols" => g.server_tls_protocols = checked(v, tls::parse_protocols)?,
        "server_tls_ciphers" => g.server_tls_ciphers = checked(v, tls::parse_tls12_ciphers)?,
        "server_tls13_ciphers" => g.server_tls13_ciphers = checked(v, tls::parse_tls13_ciphers)?,
        "worker_threads" => g.worker_threads = parse_u32(v)?,
        "prometheus_listen" => g.prometheus_listen = parse_listen(v)?,
        // A key with no field: checked like PgBouncer would, then kept as written.
        _ => {
            check(kind, v)?;
            g.not_implemented.insert(key.to_string(), text());
        }
    }
    Ok(())
}

/// A TLS protocol or cipher list: checked now (an unsupported value is an error naming
/// it), kept as written.
fn checked<T>(v: &str, parse: fn(&str) -> Result<T, String>) -> Result<String, String> {
    parse(v).map(|_| v.to_string())
}

/// `prometheus_listen`: empty (off) or an `ip:port` socket address (`[::1]:9127` for IPv6),
/// checked now so a typo stops startup instead of leaving the endpoint silently off.
fn parse_listen(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    v.parse::<std::net::SocketAddr>()
        .map(|_| v.to_string())
        .map_err(|_| "expected ip:port, e.g. 127.0.0.1:9127".to_string())
}

fn secs(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(n.into())
}

/// The `value` column of SHOW CONFIG for `key`: ints and booleans in decimal, times as
/// seconds, lists joined with `,`. `None` for an unknown key or an unset NULL-default key.
pub fn show_value(g: &General, key: &str) -> Option<String> {
    let info = keys::lookup(key)?;
    let b = |v: bool| Some(if v { "1" } else { "0" }.to_string());
    let n = |v: u32| Some(v.to_string());
    let t = |d| Some(format_time(d));
    let s = |v: &str| Some(v.to_string());
    // PgBouncer leaves these NULL until set; empty text is our "unset".
    let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let l = |v: &[String]| Some(v.join(","));
    match key {
        "listen_addr" => l(&g.listen_addr),
        "listen_port" => n(g.listen_port.into()),
        "unix_socket_dir" => s(&g.unix_socket_dir),
        "unix_socket_mode" => n(g.unix_socket_mode),
        "unix_socket_group" => s(&g.unix_socket_group),
        "logfile" => s(&g.logfile),
        "pidfile" => s(&g.pidfile),
        "user" => opt(&g.user),
        "stats_period" => Some(g.stats_period.as_secs().to_string()),
        "verbose" => n(g.verbose),
        "peer_id" => n(g.peer_id),
        "pool_mode" => s(g.pool_mode.as_str()),
        "default_pool_size" => n(g.default_pool_size),
        "min_pool_size" => n(g.min_pool_size),
        "reserve_pool_size" => n(g.reserve_pool_size),
        "reserve_pool_timeout" => t(g.reserve_pool_timeout),
        "server_round_robin" => b(g.server_round_robin),
        "max_prepared_statements" => n(g.max_prepared_statements),
        "application_name_add_host" => b(g.application_name_add_host),
        "autodb_idle_timeout" => t(g.autodb_idle_timeout),
        "pool_idle_timeout" => t(g.pool_idle_timeout),
        "max_client_conn" => n(g.max_client_conn),
        "max_db_connections" => n(g.max_db_connections),
        "max_db_client_connections" => n(g.max_db_client_connections),
        "max_user_connections" => n(g.max_user_connections),
        "max_user_client_connections" => n(g.max_user_client_connections),
        "max_packet_size" => n(g.max_packet_size),
        "pkt_buf" => n(g.pkt_buf),
        "sbuf_loopcnt" => n(g.sbuf_loopcnt),
        "listen_backlog" => n(g.listen_backlog),
        "suspend_timeout" => t(g.suspend_timeout),
        "server_reset_query" => s(&g.server_reset_query),
        "server_reset_query_always" => b(g.server_reset_query_always),
        "track_extra_parameters" => l(&g.track_extra_parameters),
        "ignore_startup_parameters" => l(&g.ignore_startup_parameters),
        "disable_pqexec" => b(g.disable_pqexec),
        "scram_iterations" => n(g.scram_iterations),
        "auth_type" => s(g.auth_type.as_str()),
        "auth_file" => g.auth_file.as_ref().map(|p| p.display().to_string()),
        "auth_hba_file" => s(&g.auth_hba_file),
        "auth_ident_file" => opt(&g.auth_ident_file),
        "auth_user" => opt(&g.auth_user),
        "auth_query" => s(&g.auth_query),
        "auth_dbname" => opt(&g.auth_dbname),
        "admin_users" => l(&g.admin_users),
        "stats_users" => l(&g.stats_users),
        "syslog" => b(g.syslog),
        "syslog_ident" => s(&g.syslog_ident),
        "syslog_facility" => s(&g.syslog_facility),
        "log_connections" => b(g.log_connections),
        "log_disconnections" => b(g.log_disconnections),
        "log_pooler_errors" => b(g.log_pooler_errors),
        "log_stats" => b(g.log_stats),
        "server_check_delay" => t(g.server_check_delay),
        "server_check_query" => s(&g.server_check_query),
        "server_fast_close" => b(g.server_fast_close),
        "server_lifetime" => t(g.server_lifetime),
        "server_idle_timeout" => t(g.server_idle_timeout),
        "server_connect_timeout" => t(g.server_connect_timeout),
        "server_login_retry" => t(g.server_login_retry),
        "client_login_timeout" => t(g.client_login_timeout),
        "query_timeout" => t(g.query_timeout),
        "query_wait_timeout" => t(g.query_wait_timeout),
        "query_wait_notify" => t(g.query_wait_notify),
        "cancel_wait_timeout" => t(g.cancel_wait_timeout),
        "client_idle_timeout" => t(g.client_idle_timeout),
        "idle_transaction_timeout" => t(g.idle_transaction_timeout),
        "transaction_timeout" => t(g.transaction_timeout),
        "dns_max_ttl" => t(g.dns_max_ttl),
        "dns_nxdomain_ttl" => t(g.dns_nxdomain_ttl),
        "so_reuseport" => b(g.so_reuseport),
        "tcp_keepalive" => b(g.tcp_keepalive),
        "tcp_keepcnt" => n(g.tcp_keepcnt),
        "tcp_keepidle" => n(g.tcp_keepidle),
        "tcp_keepintvl" => n(g.tcp_keepintvl),
        "tcp_user_timeout" => n(g.tcp_user_timeout),
        "client_tls_sslmode" => s(g.client_tls_sslmode.as_str()),
        "client_tls_key_file" => s(&g.client_tls_key_file),
        "client_tls_cert_file" => s(&g.client_tls_cert_file),
        "client_tls_ca_file" => s(&g.client_tls_ca_file),
        "client_tls_protocols" => s(&g.client_tls_protocols),
        "client_tls_ciphers" => s(&g.client_tls_ciphers),
        "client_tls13_ciphers" => opt(&g.client_tls13_ciphers),
        "server_tls_sslmode" => s(g.server_tls_sslmode.as_str()),
        "server_tls_key_file" => s(&g.server_tls_key_file),
        "server_tls_cert_file" => s(&g.server_tls_cert_file),
        "server_tls_ca_file" => s(&g.server_tls_ca_file),
        "server_tls_protocols" => s(&g.server_tls_protocols),
        "server_tls_ciphers" => s(&g.server_tls_ciphers),
        "server_tls13_ciphers" => opt(&g.server_tls13_ciphers),
        "worker_threads" => n(g.worker_threads),
        "prometheus_listen" => s(&g.prometheus_listen),
        _ => g
            .not_implemented
            .get(key)
            .cloned()
            .or(info.default.map(str::to_string)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The table's default text, applied to the defaults, must change nothing: this keeps
    /// `keys::KEYS` and `General::default()` telling the same story.
    #[test]
    fn table_defaults_match_general_default() {
        let mut g = General::default();
        for k in keys::KEYS {
            if let Some(d) = k.default {
                apply_general(&mut g, k.name, d).unwrap();
            }
        }
        // Keys without a field land in `not_implemented`; that is the only difference.
        g.not_implemented.clear();
        assert_eq!(g, General::default());
    }

    /// Every value SHOW CONFIG prints parses back to itself.
    #[test]
    fn show_value_round_trips() {
        let mut g = General::default();
        apply_general(&mut g, "reserve_pool_timeout", "0.25").unwrap();
        apply_general(&mut g, "listen_addr", "127.0.0.1, ::1").unwrap();
        apply_general(&mut g, "auth_file", "/etc/userlist.txt").unwrap();
        for k in keys::KEYS {
            let Some(v) = show_value(&g, k.name) else {
                continue;
            };
            let mut h = g.clone();
            apply_general(&mut h, k.name, &v).unwrap();
            h.not_implemented.clear();
            let mut g0 = g.clone();
            g0.not_implemented.clear();
            assert_eq!(h, g0, "{} = {v}", k.name);
        }
        assert_eq!(show_value(&g, "reserve_pool_timeout").unwrap(), "0.25");
        assert_eq!(show_value(&g, "unix_socket_mode").unwrap(), "511");
        assert_eq!(show_value(&g, "auth_user"), None);
        assert_eq!(show_value(&g, "client_tls_sslmode").unwrap(), "disable");
        assert_eq!(show_value(&g, "nope"), None);
    }

    #[test]
    fn prometheus_listen_is_a_socket_address() {
        let mut g = General::default();
        assert_eq!(show_value(&g, "prometheus_listen").unwrap(), "");
        apply_general(&mut g, "prometheus_listen", "127.0.0.1:9127").unwrap();
        assert_eq!(g.prometheus_listen, "127.0.0.1:9127");
        apply_general(&mut g, "prometheus_listen", "[::1]:9127").unwrap();
        apply_general(&mut g, "prometheus_listen", "").unwrap();
        assert_eq!(g.prometheus_listen, "");
        let e = apply_general(&mut g, "prometheus_listen", "localhost").unwrap_err();
        assert!(e.starts_with("invalid value for prometheus_listen"), "{e}");
        assert!(keys::lookup("prometheus_listen").is_some_and(|k| !k.reloadable));
    }

    #[test]
    fn errors_name_the_key() {
        let mut g = General::default();
        assert_eq!(
            apply_general(&mut g, "listen_prot", "1").unwrap_err(),
            "unknown parameter: pgbouncer/listen_prot"
        );
        let e = apply_general(&mut g, "listen_port", "x").unwrap_err();
        assert!(e.starts_with("invalid value for listen_port: \"x\""), "{e}");
        let e = apply_general(&mut g, "server_tls_sslmode", "maybe").unwrap_err();
        assert!(e.contains("server_tls_sslmode"), "{e}");
        let e = apply_general(&mut g, "client_tls_ciphers", "HIGH:RC4-MD5").unwrap_err();
        assert!(
            e.contains("client_tls_ciphers") && e.contains("RC4-MD5"),
            "{e}"
        );
        let e = apply_general(&mut g, "server_tls_protocols", "tlsv1.1").unwrap_err();
        assert!(e.contains("server_tls_protocols"), "{e}");
    }

    #[test]
    fn not_implemented_keys_warn_and_are_kept() {
        let mut cfg = Config::default();
        set_general(&mut cfg, "client_tls_ecdhcurve", "prime256v1").unwrap();
        set_general(&mut cfg, "stats_period", "30").unwrap();
        assert_eq!(
            cfg.warnings,
            ["client_tls_ecdhcurve: accepted but not implemented by pgsluice yet"]
        );
        assert_eq!(
            cfg.general.not_implemented["client_tls_ecdhcurve"],
            "prime256v1"
        );
        assert_eq!(cfg.general.stats_period, Duration::from_secs(30));
    }
}
