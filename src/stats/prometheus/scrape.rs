//! The families rendered fresh on every scrape.
//!
//! The `pgbouncer_*` families are read from the admin console's own SHOW replies (VERSION,
//! LISTS, CONFIG, DATABASES, STATS_TOTALS, POOLS), column by column, as pgbouncer_exporter
//! reads them from PgBouncer: the numbers are the console's by construction, and a column
//! the console lacks is a family left out, exactly as the exporter behaves. Microsecond
//! columns become seconds with the exporter's 1e-6 factor.
//!
//! The `pgsluice_*` gauges here need what SHOW does not carry (effective limits, the
//! fast-fail window, shutdown) and read the registry directly.

use std::collections::{BTreeMap, HashMap};

use super::text::Expo;
use crate::admin::{AdminUser, Reply};
use crate::control::App;
use crate::stats::Snapshot;

/// One SHOW result set.
#[derive(Default)]
struct Table {
    cols: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// `SHOW name` as a stats user; an empty table if the console cannot answer it.
    fn fetch(app: &App, name: &str) -> Table {
        let user = AdminUser {
            name: "pgsluice_metrics".into(),
            admin: false,
            id: 0,
        };
        match crate::admin::show::show(app, &user, name) {
            Some(Ok(Reply::Rows { columns, rows, .. })) => Table {
                cols: columns.into_iter().map(|(n, _)| n).collect(),
                rows,
            },
            _ => Table::default(),
        }
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c == name)
    }

    /// The first of `names` the table has.
    fn col_any(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.col(n))
    }

    /// A label value: NULL and missing columns are "" (the exporter does the same).
    fn text<'a>(&self, row: &'a [Option<String>], col: Option<usize>) -> &'a str {
        col.and_then(|i| row.get(i))
            .and_then(|v| v.as_deref())
            .unwrap_or("")
    }

    fn number(row: &[Option<String>], col: usize) -> Option<f64> {
        row.get(col)?.as_deref()?.trim().parse().ok()
    }
}

/// A numeric column exported as one family.
struct Column {
    /// Column names to try, newest first (PgBouncer renames columns now and then).
    columns: &'static [&'static str],
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    factor: f64,
}

const fn gauge(columns: &'static [&'static str], name: &'static str, help: &'static str) -> Column {
    Column {
        columns,
        name,
        kind: "gauge",
        help,
        factor: 1.0,
    }
}

const fn counter(
    columns: &'static [&'static str],
    name: &'static str,
    help: &'static str,
    factor: f64,
) -> Column {
    Column {
        columns,
        name,
        kind: "counter",
        help,
        factor,
    }
}

/// Writes one family per column of `t` (prefixed by `prefix`), one sample per row, labelled
/// with the `labels` columns.
fn families(x: &mut Expo, t: &Table, prefix: &str, labels: &[&str], columns: &[Column]) {
    let label_cols: Vec<(&str, Option<usize>)> = labels.iter().map(|l| (*l, t.col(l))).collect();
    for c in columns {
        let Some(i) = t.col_any(c.columns) else {
            continue;
        };
        let name = format!("{prefix}{}", c.name);
        x.family(&name, c.kind, c.help);
        for row in &t.rows {
            let Some(v) = Table::number(row, i) else {
                continue;
            };
            let l: Vec<(&str, &str)> = label_cols
                .iter()
                .map(|(n, col)| (*n, t.text(row, *col)))
                .collect();
            x.float(&name, &l, v * c.factor);
        }
    }
}

const DATABASES: &[Column] = &[
    gauge(
        &["pool_size"],
        "pool_size",
        "Maximum number of server connections",
    ),
    // `reserve_pool` until PgBouncer 1.24, `reserve_pool_size` since.
    gauge(
        &["reserve_pool_size", "reserve_pool"],
        "reserve_pool",
        "Maximum number of additional connections for this database",
    ),
    gauge(
        &["max_connections"],
        "max_connections",
        "Maximum number of allowed connections for this database",
    ),
    gauge(
        &["current_connections"],
        "current_connections",
        "Current number of connections for this database",
    ),
    gauge(
        &["paused"],
        "paused",
        "1 if this database is currently paused, else 0",
    ),
    gauge(
        &["disabled"],
        "disabled",
        "1 if this database is currently disabled, else 0",
    ),
];

/// STATS_TOTALS columns; the bool marks the families exporter ≤ 0.10 also had (as
/// `pgbouncer_stats_*`, read from SHOW STATS' `total_*` columns, the same numbers).
const STATS: &[(Column, bool)] = &[
    (
        counter(
            &["query_count"],
            "queries_pooled_total",
            "Total number of SQL queries pooled",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["query_time"],
            "queries_duration_seconds_total",
            "Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["bytes_received"],
            "received_bytes_total",
            "Total volume in bytes of network traffic received by pgbouncer, shown as bytes",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["bytes_sent"],
            "sent_bytes_total",
            "Total volume in bytes of network traffic sent by pgbouncer, shown as bytes",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["wait_time"],
            "client_wait_seconds_total",
            "Time spent by clients waiting for a server in seconds",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["xact_count"],
            "sql_transactions_pooled_total",
            "Total number of SQL transactions pooled",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["xact_time"],
            "server_in_transaction_seconds_total",
            "Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction, either idle in transaction or executing queries",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["server_assignment_count"],
            "server_assignments_total",
            "Total number of times a server was assigned to a client",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["client_parse_count"],
            "client_parses_total",
            "Total number of prepared statement Parse messages received from clients",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["server_parse_count"],
            "server_parses_total",
            "Total number of prepared statement Parse messages sent by pgbouncer to PostgreSQL",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["bind_count"],
            "binds_total",
            "Total number of prepared statements readied for execution with a Bind message",
            1.0,
        ),
        false,
    ),
];

const POOLS: &[Column] = &[
    gauge(
        &["cl_active"],
        "client_active_connections",
        "Client connections linked to server connection and able to process queries, shown as connection",
    ),
    gauge(
        &["cl_active_cancel_req"],
        "client_active_cancel_connections",
        "Client connections that have forwarded query cancellations to the server and are waiting for the server response",
    ),
    gauge(
        &["cl_waiting"],
        "client_waiting_connections",
        "Client connections waiting on a server connection, shown as connection",
    ),
    gauge(
        &["cl_waiting_cancel_req"],
        "client_waiting_cancel_connections",
        "Client connections that have not forwarded query cancellations to the server yet",
    ),
    gauge(
        &["sv_active"],
        "server_active_connections",
        "Server connections linked to a client connection, shown as connection",
    ),
    gauge(
        &["sv_active_cancel"],
        "server_active_cancel_connections",
        "Server connections that are currently forwarding a cancel request.",
    ),
    gauge(
        &["sv_being_canceled"],
        "server_being_canceled_connections",
        "Servers that normally could become idle but are waiting to do so until all in-flight cancel requests have completed that were sent to cancel a query on this server.",
    ),
    gauge(
        &["sv_idle"],
        "server_idle_connections",
        "Server connections idle and ready for a client query, shown as connection",
    ),
    gauge(
        &["sv_used"],
        "server_used_connections",
        "Server connections idle more than server_check_delay, needing server_check_query, shown as connection",
    ),
    gauge(
        &["sv_tested"],
        "server_testing_connections",
        "Server connections currently running either server_reset_query or server_check_query, shown as connection",
    ),
    gauge(
        &["sv_login"],
        "server_login_connections",
        "Server connections currently in the process of logging in, shown as connection",
    ),
    // Whole seconds, as the exporter passes SHOW POOLS' `maxwait` on; the fraction is in
    // pgsluice_pool_client_maxwait_seconds.
    gauge(
        &["maxwait"],
        "client_maxwait_seconds",
        "Age of oldest unserved client connection, shown as second",
    ),
];

/// SHOW LISTS rows the exporter maps, to its metric names and help texts.
const LISTS: &[(&str, &str, &str)] = &[
    ("databases", "pgbouncer_databases", "Count of databases"),
    ("users", "pgbouncer_users", "Count of users"),
    ("pools", "pgbouncer_pools", "Count of pools"),
    (
        "free_clients",
        "pgbouncer_free_clients",
        "Count of free clients",
    ),
    (
        "used_clients",
        "pgbouncer_used_clients",
        "Count of used clients",
    ),
    (
        "login_clients",
        "pgbouncer_login_clients",
        "Count of clients in login state",
    ),
    (
        "free_servers",
        "pgbouncer_free_servers",
        "Count of free servers",
    ),
    (
        "used_servers",
        "pgbouncer_used_servers",
        "Count of used servers",
    ),
    (
        "dns_names",
        "pgbouncer_cached_dns_names",
        "Count of DNS names in the cache",
    ),
    (
        "dns_zones",
        "pgbouncer_cached_dns_zones",
        "Count of DNS zones in the cache",
    ),
    (
        "dns_queries",
        "pgbouncer_in_flight_dns_queries",
        "Count of in-flight DNS queries",
    ),
];

/// SHOW CONFIG keys the exporter maps.
const CONFIG: &[(&str, &str, &str)] = &[
    (
        "max_client_conn",
        "pgbouncer_config_max_client_connections",
        "Config maximum number of client connections",
    ),
    (
        "max_user_connections",
        "pgbouncer_config_max_user_connections",
        "Config maximum number of server connections per user",
    ),
];

/// Everything scrape-time, in the order a reader of the exposition expects it.
pub(super) fn write(app: &App, x: &mut Expo) {
    x.family("pgbouncer_up", "gauge", "The pgbouncer scrape succeeded");
    x.int("pgbouncer_up", &[], 1);

    let version = Table::fetch(app, "version");
    x.family(
        "pgbouncer_version_info",
        "gauge",
        "The pgbouncer version info",
    );
    for row in &version.rows {
        let v = version.text(row, version.col("version"));
        x.int("pgbouncer_version_info", &[("version", v)], 1);
    }

    let lists = Table::fetch(app, "lists");
    let items: HashMap<&str, f64> = lists
        .rows
        .iter()
        .filter_map(|r| {
            let name = lists.text(r, lists.col("list"));
            Some((name, Table::number(r, lists.col("items")?)?))
        })
        .collect();
    for (list, name, help) in LISTS {
        if let Some(v) = items.get(list) {
            x.family(name, "gauge", help);
            x.float(name, &[], *v);
        }
    }

    let config = Table::fetch(app, "config");
    let values: HashMap<&str, f64> = config
        .rows
        .iter()
        .filter_map(|r| {
            let key = config.text(r, config.col("key"));
            Some((key, Table::number(r, config.col("value")?)?))
        })
        .collect();
    for (key, name, help) in CONFIG {
        if let Some(v) = values.get(key) {
            x.family(name, "gauge", help);
            x.float(name, &[], *v);
        }
    }

    let dbs = Table::fetch(app, "databases");
    families(
        x,
        &dbs,
        "pgbouncer_databases_",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_mode",
        ],
        DATABASES,
    );

    let stats = Table::fetch(app, "stats_totals");
    let legacy: Vec<Column> = STATS
        .iter()
        .filter(|(_, old)| *old)
        .map(|(c, _)| counter(c.columns, c.name, c.help, c.factor))
        .collect();
    families(x, &stats, "pgbouncer_stats_", &["database"], &legacy);
    let current: Vec<Column> = STATS
        .iter()
        .map(|(c, _)| counter(c.columns, c.name, c.help, c.factor))
        .collect();
    families(
        x,
        &stats,
        "pgbouncer_stats_totals_",
        &["database"],
        &current,
    );

    let pools = Table::fetch(app, "pools");
    families(x, &pools, "pgbouncer_pools_", &["database", "user"], POOLS);

    extras(app, &pools, x);
}

/// Per-pool figures from the registry that SHOW POOLS has no column for.
struct PoolExtra {
    /// Lowest of pool_size, max_db_connections, max_user_connections that is set; 0 = none.
    limit: u32,
    fast_fail: bool,
}

fn extras(app: &App, pools: &Table, x: &mut Expo) {
    let mut by_pool: HashMap<(String, String), PoolExtra> = HashMap::new();
    let mut totals: BTreeMap<String, Snapshot> = BTreeMap::new();
    for p in app.registry.all() {
        let s = p.settings();
        let limit = [s.pool_size, s.max_db_connections, s.max_user_connections]
            .into_iter()
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(0);
        // pool.rs fast-fails while the window is open and the pool has no server at all.
        let fast_fail = p.counts().total == 0
            && super::login_failed_at(&p.db_name, &p.user_name)
                .is_some_and(|t| t.elapsed() < s.server_login_retry);
        by_pool.insert(
            (p.db_name.clone(), p.user_name.clone()),
            PoolExtra { limit, fast_fail },
        );
        let st = totals.entry(p.db_name.clone()).or_default();
        *st = st.plus(&p.stats.snapshot());
    }

    // (database, user, sv_active, maxwait seconds with the fraction, registry figures)
    let (db_col, user_col) = (pools.col("database"), pools.col("user"));
    let rows: Vec<(&str, &str, f64, f64, Option<&PoolExtra>)> = pools
        .rows
        .iter()
        .map(|r| {
            let db = pools.text(r, db_col);
            let user = pools.text(r, user_col);
            let num = |c: &str| {
                pools
                    .col(c)
                    .and_then(|i| Table::number(r, i))
                    .unwrap_or(0.0)
            };
            let maxwait = num("maxwait") + num("maxwait_us") / 1e6;
            let extra = by_pool.get(&(db.to_string(), user.to_string()));
            (db, user, num("sv_active"), maxwait, extra)
        })
        .collect();

    x.family(
        "pgsluice_pool_client_maxwait_seconds",
        "gauge",
        "Age of the oldest client waiting for a server, with microsecond precision",
    );
    for (db, user, _, maxwait, _) in &rows {
        let l = [("database", *db), ("user", *user)];
        x.float("pgsluice_pool_client_maxwait_seconds", &l, *maxwait);
    }
    x.family(
        "pgsluice_pool_server_limit",
        "gauge",
        "Effective server connection limit of the pool: the lowest of pool_size, max_db_connections and max_user_connections that is set (pools without any are omitted)",
    );
    for (db, user, _, _, e) in &rows {
        if let Some(e) = e.filter(|e| e.limit > 0) {
            let l = [("database", *db), ("user", *user)];
            x.int("pgsluice_pool_server_limit", &l, e.limit.into());
        }
    }
    x.family(
        "pgsluice_pool_saturation_ratio",
        "gauge",
        "Active server connections divided by pgsluice_pool_server_limit (above 1 while reserve_pool is in use)",
    );
    for (db, user, active, _, e) in &rows {
        if let Some(e) = e.filter(|e| e.limit > 0) {
            let l = [("database", *db), ("user", *user)];
            x.float(
                "pgsluice_pool_saturation_ratio",
                &l,
                active / f64::from(e.limit),
            );
        }
    }
    x.family(
        "pgsluice_pool_fast_fail_active",
        "gauge",
        "1 while new clients of the pool get the cached server login error at once (server_login_retry window), else 0",
    );
    for (db, user, _, _, e) in &rows {
        if let Some(e) = e {
            let l = [("database", *db), ("user", *user)];
            x.int("pgsluice_pool_fast_fail_active", &l, e.fast_fail.into());
        }
    }

    // SHOW STATS shows 1.25.2's columns, which have no client_login_count yet.
    x.family(
        "pgsluice_stats_client_logins_total",
        "counter",
        "Total number of client logins (total_client_login_count of PgBouncer after 1.25.2)",
    );
    for (db, s) in &totals {
        x.int(
            "pgsluice_stats_client_logins_total",
            &[("database", db.as_str())],
            s.client_login_count,
        );
    }
    // Protocol-level prepared statements (max_prepared_statements): how often the leased
    // server already had what a client's Parse/Bind/Describe needed.
    for (name, help, value) in [
        (
            "pgsluice_prepared_cache_hits_total",
            "Named Parse, Bind and Describe messages whose statement the server already had prepared (no Parse sent)",
            (|s: &Snapshot| s.prepared_cache_hits) as fn(&Snapshot) -> u64,
        ),
        (
            "pgsluice_prepared_cache_misses_total",
            "Named Parse, Bind and Describe messages for which pgsluice sent the server a Parse (forwarded or injected)",
            |s: &Snapshot| s.prepared_cache_misses,
        ),
        (
            "pgsluice_prepared_cache_evictions_total",
            "Prepared statements closed on a server to stay within max_prepared_statements",
            |s: &Snapshot| s.prepared_cache_evictions,
        ),
    ] {
        x.family(name, "counter", help);
        for (db, s) in &totals {
            x.int(name, &[("database", db.as_str())], value(s));
        }
    }
    x.family(
        "pgsluice_prepared_statements_cached",
        "gauge",
        "Distinct prepared statements (query text and parameter types) held by clients or servers, process-wide",
    );
    x.int(
        "pgsluice_prepared_statements_cached",
        &[],
        crate::session::prepared::cached() as u64,
    );
    x.family(
        "pgsluice_client_connections",
        "gauge",
        "Client connections counted against max_client_conn (logged in or logging in; the admin console is exempt)",
    );
    x.int("pgsluice_client_connections", &[], app.clients.get().into());
    x.family(
        "pgsluice_shutting_down",
        "gauge",
        "1 once shutdown has begun (no new clients accepted), else 0",
    );
    x.int("pgsluice_shutting_down", &[], app.is_shutting_down().into());
    if let Some(started) = super::started_unix() {
        x.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
        );
        x.float("process_start_time_seconds", &[], started.floor());
    }
}
