//! Typed configuration. Field names and defaults are PgBouncer's (`[pgbouncer]`,
//! `[databases]`, `[users]`), so an unchanged `pgbouncer.ini` maps onto it one to one.
//! `ini.rs` (pgbouncer.ini syntax) and `toml.rs` both produce a [`Config`]; validation
//! that does not depend on the syntax lives here and is shared.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub mod connstr;
pub mod general;
pub mod ini;
pub mod keys;
pub mod toml;
pub mod userlist;
pub mod values;

pub use userlist::{ScramSecret, Secret, UserList};

/// A text file PgBouncer would read: it reads bytes, so a stray Latin-1 comment in
/// pgbouncer.ini or userlist.txt must not stop pgsluice either; such bytes become U+FFFD.
pub(crate) fn read_lossy(path: &std::path::Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A configuration error. `line` is 1-based and names the line of the file where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}: {msg}")]
    At {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Msg(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    #[default]
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthType {
    Cert,
    #[default]
    Md5,
    ScramSha256,
    Plain,
    Trust,
    Any,
    Hba,
    Ldap,
    Pam,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Cert => "cert",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Plain => "plain",
            AuthType::Trust => "trust",
            AuthType::Any => "any",
            AuthType::Hba => "hba",
            AuthType::Ldap => "ldap",
            AuthType::Pam => "pam",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalanceHosts {
    #[default]
    RoundRobin,
    Disable,
}

impl LoadBalanceHosts {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalanceHosts::RoundRobin => "round-robin",
            LoadBalanceHosts::Disable => "disable",
        }
    }
}

/// The whole configuration: `[pgbouncer]` + `[databases]` + `[users]` + `[peers]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub general: General,
    /// `[databases]` by client-side name; the fallback entry is stored under `"*"`.
    pub databases: BTreeMap<String, Database>,
    /// `[users]` by user name.
    pub users: BTreeMap<String, UserSettings>,
    /// `[peers]` by peer id (1..=65535).
    pub peers: BTreeMap<u16, Peer>,
    /// Path the config was read from (PgBouncer's `conffile`).
    pub conffile: Option<PathBuf>,
    /// Non-fatal findings, e.g. known PgBouncer keys that pgsluice does not implement yet.
    /// Not part of equality between an ini and a TOML file of the same setup.
    pub warnings: Vec<String>,
}

/// `[pgbouncer]` section. Times are `Duration`s (PgBouncer: float seconds); 0 = disabled
/// where PgBouncer says so. Counts use `u32`; 0 means "unlimited" where PgBouncer says so.
#[derive(Debug, Clone, PartialEq)]
pub struct General {
    // generic / process
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    pub unix_socket_dir: String,
    pub unix_socket_mode: u32,
    pub unix_socket_group: String,
    pub logfile: String,
    pub pidfile: String,
    pub user: String,
    pub stats_period: Duration,
    pub verbose: u32,
    pub peer_id: u32,
    // pooling
    pub pool_mode: PoolMode,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: Duration,
    pub server_round_robin: bool,
    pub max_prepared_statements: u32,
    pub application_name_add_host: bool,
    pub autodb_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    // limits
    pub max_client_conn: u32,
    pub max_db_connections: u32,
    pub max_db_client_connections: u32,
    pub max_user_connections: u32,
    pub max_user_client_connections: u32,
    pub max_packet_size: u32,
    pub pkt_buf: u32,
    pub sbuf_loopcnt: u32,
    pub listen_backlog: u32,
    pub suspend_timeout: Duration,
    // session state
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub track_extra_parameters: Vec<String>,
    pub ignore_startup_parameters: Vec<String>,
    pub disable_pqexec: bool,
    pub scram_iterations: u32,
    // auth
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    pub auth_hba_file: String,
    pub auth_ident_file: String,
    pub auth_user: String,
    pub auth_query: String,
    pub auth_dbname: String,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    // logging
    pub syslog: bool,
    pub syslog_ident: String,
    pub syslog_facility: String,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    pub log_stats: bool,
    // timeouts
    pub server_check_delay: Duration,
    pub server_check_query: String,
    pub server_fast_close: bool,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,
    pub client_login_timeout: Duration,
    pub query_timeout: Duration,
    pub query_wait_timeout: Duration,
    pub query_wait_notify: Duration,
    pub cancel_wait_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub transaction_timeout: Duration,
    pub dns_max_ttl: Duration,
    pub dns_nxdomain_ttl: Duration,
    // network
    pub so_reuseport: bool,
    pub tcp_keepalive: bool,
    pub tcp_keepcnt: u32,
    pub tcp_keepidle: u32,
    pub tcp_keepintvl: u32,
    pub tcp_user_timeout: u32,
    // TLS (see net/tls.rs); file names and cipher texts as written, empty = unset
    pub client_tls_sslmode: crate::net::tls::SslMode,
    pub client_tls_key_file: String,
    pub client_tls_cert_file: String,
    pub client_tls_ca_file: String,
    pub client_tls_protocols: String,
    pub client_tls_ciphers: String,
    pub client_tls13_ciphers: String,
    pub server_tls_sslmode: crate::net::tls::SslMode,
    pub server_tls_key_file: String,
    pub server_tls_cert_file: String,
    pub server_tls_ca_file: String,
    pub server_tls_protocols: String,
    pub server_tls_ciphers: String,
    pub server_tls13_ciphers: String,
    // pgsluice's own keys
    /// Tokio worker threads; 0 = number of cores.
    pub worker_threads: u32,
    /// `ip:port` of the Prometheus `/metrics` endpoint; empty = off. Checked when parsed.
    pub prometheus_listen: String,
    /// Keys PgBouncer knows but pgsluice has no field for yet (TLS, dns_zone_check_period,
    /// …), as written, by key. Kept so SHOW CONFIG can show them and a later field can be
    /// filled from here; see [`keys::KEYS`].
    pub not_implemented: BTreeMap<String, String>,
}

impl Default for General {
    fn default() -> Self {
        let secs = Duration::from_secs;
        General {
            listen_addr: Vec::new(),
            listen_port: 6432,
            unix_socket_dir: "/tmp".into(),
            unix_socket_mode: 0o777,
            unix_socket_group: String::new(),
            logfile: String::new(),
            pidfile: String::new(),
            user: String::new(),
            stats_period: secs(60),
            verbose: 0,
            peer_id: 0,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: secs(5),
            server_round_robin: false,
            max_prepared_statements: 200,
            application_name_add_host: false,
            autodb_idle_timeout: secs(3600),
            pool_idle_timeout: Duration::ZERO,
            max_client_conn: 100,
            max_db_connections: 0,
            max_db_client_connections: 0,
            max_user_connections: 0,
            max_user_client_connections: 0,
            max_packet_size: 2_147_483_647,
            pkt_buf: 4096,
            sbuf_loopcnt: 5,
            listen_backlog: 128,
            suspend_timeout: secs(10),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            track_extra_parameters: vec!["IntervalStyle".into()],
            ignore_startup_parameters: Vec::new(),
            disable_pqexec: false,
            scram_iterations: 4096,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: String::new(),
            auth_ident_file: String::new(),
            auth_user: String::new(),
            auth_query: "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin".into(),
            auth_dbname: String::new(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            syslog: false,
            syslog_ident: "pgbouncer".into(),
            syslog_facility: "daemon".into(),
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            server_check_delay: secs(30),
            server_check_query: "<empty>".into(),
            server_fast_close: false,
            server_lifetime: secs(3600),
            server_idle_timeout: secs(600),
            server_connect_timeout: secs(15),
            server_login_retry: secs(15),
            client_login_timeout: secs(60),
            query_timeout: Duration::ZERO,
            query_wait_timeout: secs(120),
            query_wait_notify: secs(5),
            cancel_wait_timeout: secs(10),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            dns_max_ttl: secs(15),
            dns_nxdomain_ttl: secs(15),
            so_reuseport: false,
            tcp_keepalive: true,
            tcp_keepcnt: 0,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_user_timeout: 0,
            client_tls_sslmode: crate::net::tls::SslMode::Disable,
            client_tls_key_file: String::new(),
            client_tls_cert_file: String::new(),
            client_tls_ca_file: String::new(),
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "default".into(),
            client_tls13_ciphers: String::new(),
            server_tls_sslmode: crate::net::tls::SslMode::Prefer,
            server_tls_key_file: String::new(),
            server_tls_cert_file: String::new(),
            server_tls_ca_file: String::new(),
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "default".into(),
            server_tls13_ciphers: String::new(),
            worker_threads: 0,
            prometheus_listen: String::new(),
            not_implemented: BTreeMap::new(),
        }
    }
}

/// One `[databases]` entry (a connection string). `None` = inherit the global value.
#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    /// Client-side name (the ini key); `"*"` for the fallback entry.
    pub name: String,
    /// Host list as written (comma-separated names, IPs, or a socket directory starting
    /// with `/`). `None` = Unix socket in `unix_socket_dir`.
    pub host: Option<String>,
    pub port: u16,
    /// Target database; `None` = the client-side name.
    pub dbname: Option<String>,
    /// Forced user (one pool for the db whatever the client user).
    pub user: Option<String>,
    /// As written; [`Secret::parse`] tells plain, MD5 and SCRAM apart (already checked).
    pub password: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub max_db_connections: Option<u32>,
    pub max_db_client_connections: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    pub connect_query: Option<String>,
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    pub application_name: Option<String>,
    /// Integer seconds, as PgBouncer parses per-db timeouts. `server_lifetime=0` is stored
    /// as `None`, because PgBouncer then uses the global value; `query_wait_timeout=0`
    /// stays `Some(0)` (no limit) and `-1` is `None`.
    pub server_lifetime: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// `sslmode=`: overrides server_tls_sslmode for this database (PgBouncer #163).
    pub sslmode: Option<crate::net::tls::SslMode>,
}

impl Default for Database {
    /// PgBouncer's `parse_database` starts from port 5432, not 0.
    fn default() -> Self {
        Database {
            name: String::new(),
            host: None,
            port: 5432,
            dbname: None,
            user: None,
            password: None,
            pool_size: None,
            min_pool_size: None,
            reserve_pool_size: None,
            max_db_connections: None,
            max_db_client_connections: None,
            pool_mode: None,
            connect_query: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            application_name: None,
            server_lifetime: None,
            query_wait_timeout: None,
            auth_user: None,
            auth_query: None,
            auth_dbname: None,
            load_balance_hosts: None,
            sslmode: None,
        }
    }
}

/// One `[users]` entry. `None` = inherit. Timeouts are integer seconds; 0 is stored as
/// `None` (PgBouncer's "not set", the global value applies) except for
/// `query_wait_timeout`, whose "not set" is -1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserSettings {
    pub name: String,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub max_user_connections: Option<u32>,
    pub max_user_client_connections: Option<u32>,
    pub query_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub transaction_timeout: Option<Duration>,
    pub client_idle_timeout: Option<Duration>,
}

/// One `[peers]` entry: another process of the same peer group, used to forward cancel
/// requests whose key it issued (§4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u16,
    /// IP, host name or Unix socket directory; required, as in PgBouncer.
    pub host: String,
    /// Default 6432 (PgBouncer's `parse_peer`).
    pub port: u16,
    /// Cancel requests in flight to this peer at most; `None` = `default_pool_size`.
    pub pool_size: Option<u32>,
}

impl Config {
    /// Load a config file: `.toml` → TOML, anything else → pgbouncer.ini syntax. The result
    /// has passed [`Config::validate`].
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let is_toml = path
            .extension()
            .map(|e| e.eq_ignore_ascii_case("toml"))
            .unwrap_or(false);
        let mut cfg = if is_toml {
            toml::load(path)?
        } else {
            ini::load(path)?
        };
        cfg.conffile = Some(path.to_path_buf());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that need more than one key, or that PgBouncer makes at startup rather than
    /// while parsing. Syntax and per-key values were already checked by the parsers.
    /// Deliberately modest: a config PgBouncer starts with must not be refused here (e.g.
    /// `auth_type = any` without forced users, or an `auth_dbname` that is only missed at
    /// login time).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.general;
        let fail = |msg: String| Err(ConfigError::Msg(msg));
        // PgBouncer refuses to start with no socket to listen on.
        if g.listen_addr.is_empty() && g.unix_socket_dir.is_empty() {
            return fail(
                "nowhere to listen: listen_addr and unix_socket_dir are both empty".into(),
            );
        }
        // The cancel-key encoding leaves 14 bits for the peer id (§1.1).
        if g.peer_id > 16383 {
            return fail(format!("peer_id {} out of range 0..16383", g.peer_id));
        }
        if g.worker_threads > 1024 {
            return fail(format!(
                "worker_threads {} is more than 1024",
                g.worker_threads
            ));
        }
        Ok(())
    }

    /// The database entry a client asking for `name` uses: the named entry, else the `*`
    /// fallback with `dbname` defaulting to `name`. `None` = "no such database".
    pub fn database(&self, name: &str) -> Option<Database> {
        if let Some(db) = self.databases.get(name) {
            return Some(db.clone());
        }
        let mut db = self.databases.get("*")?.clone();
        db.name = name.to_string();
        Some(db)
    }
}
