//! The scrape-time `pgsluice_*` families. They need what SHOW does not carry (effective
//! limits, the fast-fail window, shutdown) and read the registry directly.

use std::collections::{BTreeMap, HashMap};

use super::super::text::Expo;
use super::Table;
use crate::control::App;
use crate::stats::Snapshot;

/// Per-pool figures from the registry that SHOW POOLS has no column for.
struct PoolExtra {
    /// Lowest of pool_size, max_db_connections, max_user_connections that is set; 0 = none.
    limit: u32,
    fast_fail: bool,
}

pub(super) fn extras(app: &App, pools: &Table, x: &mut Expo) {
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
            && super::super::login_failed_at(&p.db_name, &p.user_name)
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
    if let Some(started) = super::super::started_unix() {
        x.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
        );
        x.float("process_start_time_seconds", &[], started.floor());
    }
}
