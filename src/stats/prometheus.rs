//! The Prometheus exposition behind `prometheus_listen` (see `docs/metrics.md`).
//!
//! Two sources make one scrape:
//!
//! - **PgBouncer-exporter families** (`pgbouncer_*`), with the names, labels, units and help
//!   texts of prometheus-community/pgbouncer_exporter, so its dashboards and alerts work
//!   unchanged. Like the exporter, they are read from SHOW VERSION / LISTS / CONFIG /
//!   DATABASES / STATS_TOTALS / POOLS — here straight from the admin console's code, on every
//!   scrape, so they are the numbers the console shows at that instant, not a periodic copy.
//!   Both stats spellings are emitted: `pgbouncer_stats_*` (exporter ≤ 0.10) and
//!   `pgbouncer_stats_totals_*` (≥ 0.11, which switched to SHOW STATS_TOTALS).
//! - **pgsluice extras** (`pgsluice_*`): gauges derived at scrape time (saturation, fast-fail,
//!   shutdown) and histograms/counters recorded by the `metrics` crate into a
//!   `metrics-exporter-prometheus` recorder whose `render()` output is appended.
//!
//! Nothing here runs unless the endpoint is configured: every hook first checks that the
//! recorder was installed, so a pooler without `prometheus_listen` pays one atomic load per
//! lease. With it, a lease costs one wait-time observation and one batched transaction-time
//! observation through per-pool handles cached here (no label allocation per lease).

mod scrape;
mod text;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::{Mutex, RwLock};

use super::TxStats;
use crate::control::App;
use crate::pool::Pool;
use crate::proto::PgError;
use crate::server::{LoginError, ServerConn};

pub const CLIENT_WAIT: &str = "pgsluice_client_wait_seconds";
pub const TRANSACTION: &str = "pgsluice_transaction_duration_seconds";
pub const CLIENT_ERRORS: &str = "pgsluice_client_errors_total";
pub const SERVER_CONNECTS: &str = "pgsluice_server_connects_total";

/// Client wait: from sub-millisecond hand-offs to query_wait_timeout's default of 120 s.
const WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
];
/// Transaction time: OLTP milliseconds up to long batch transactions.
const TRANSACTION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The installed recorder and the per-pool handles of the recorded extras.
struct Exporter {
    handle: PrometheusHandle,
    pools: RwLock<HashMap<String, HashMap<String, Arc<PoolMetrics>>>>,
    started_unix: f64,
}

/// One pool's recorded metrics, resolved once so the hot path does no label lookups.
struct PoolMetrics {
    wait: Histogram,
    transaction: Histogram,
    connect_ok: Counter,
    connect_failed: Counter,
    /// When the last server login failed (not 57P03), until one succeeds: the start of the
    /// server_login_retry fast-fail window that `pool.rs` applies.
    failed_at: Mutex<Option<Instant>>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Builds the recorder (histograms with fixed buckets) and installs it as the global
/// `metrics` recorder. Idempotent; false if it could not be installed (then only the
/// scrape-time families are served).
pub fn install() -> bool {
    if EXPORTER.get().is_some() {
        return true;
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CLIENT_WAIT.into()), WAIT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(TRANSACTION.into()), TRANSACTION_BUCKETS)
        });
    let builder = match builder {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("prometheus recorder: {e}");
            return false;
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::error!("prometheus recorder: another metrics recorder is already installed");
        return false;
    }
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let _ = EXPORTER.set(Exporter {
        handle,
        pools: RwLock::new(HashMap::new()),
        started_unix,
    });
    metrics::describe_histogram!(
        CLIENT_WAIT,
        metrics::Unit::Seconds,
        "Time a client waited for a server, one observation per server assignment"
    );
    metrics::describe_histogram!(
        TRANSACTION,
        metrics::Unit::Seconds,
        "Time from a transaction's first request to its idle ReadyForQuery"
    );
    metrics::describe_counter!(
        CLIENT_ERRORS,
        "Errors pgsluice sent to clients before closing them, by reason"
    );
    metrics::describe_counter!(
        SERVER_CONNECTS,
        "Server connection attempts (connect and login) by result"
    );
    true
}

/// True once [`install`] succeeded.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Housekeeping the recorder needs so histogram samples do not pile up between scrapes.
pub fn run_upkeep() {
    if let Some(e) = EXPORTER.get() {
        e.handle.run_upkeep();
    }
}

impl Exporter {
    fn pool(&self, db: &str, user: &str) -> Arc<PoolMetrics> {
        if let Some(m) = self.pools.read().get(db).and_then(|u| u.get(user)) {
            return m.clone();
        }
        let mut w = self.pools.write();
        w.entry(db.to_string())
            .or_default()
            .entry(user.to_string())
            .or_insert_with(|| {
                let labels = [("database", db.to_string()), ("user", user.to_string())];
                Arc::new(PoolMetrics {
                    wait: metrics::histogram!(CLIENT_WAIT, &labels),
                    transaction: metrics::histogram!(TRANSACTION, &labels),
                    connect_ok: metrics::counter!(
                        SERVER_CONNECTS,
                        "database" => db.to_string(),
                        "user" => user.to_string(),
                        "result" => "success"
                    ),
                    connect_failed: metrics::counter!(
                        SERVER_CONNECTS,
                        "database" => db.to_string(),
                        "user" => user.to_string(),
                        "result" => "failure"
                    ),
                    failed_at: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// When the pool's last server login failed, if none succeeded since (scrape/extras.rs).
fn login_failed_at(db: &str, user: &str) -> Option<Instant> {
    let e = EXPORTER.get()?;
    let m = e.pools.read().get(db).and_then(|u| u.get(user)).cloned()?;
    let at = *m.failed_at.lock();
    at
}

/// Unix time the endpoint started (moments after process start), for
/// process_start_time_seconds (scrape/extras.rs).
fn started_unix() -> Option<f64> {
    EXPORTER.get().map(|e| e.started_unix)
}

/// Most transaction-time observations one lease records. The recorder stores every
/// observation until the next scrape or upkeep, so a session-pooling lease that ran a
/// million transactions must not push a million samples when it ends.
const MAX_TRANSACTIONS_PER_LEASE: u64 = 100;

/// End of a lease (client.rs, right after the pool's counters are updated): one wait-time
/// observation, and the lease's transactions as one batch at their mean duration — exact
/// for transaction pooling, where a lease is one transaction (a few when pipelined).
#[inline]
pub fn lease_done(pool: &Pool, tx: &TxStats) {
    let Some(e) = EXPORTER.get() else { return };
    let m = e.pool(&pool.db_name, &pool.user_name);
    m.wait.record(tx.wait_time as f64 / 1e6);
    if tx.xact_count > 0 {
        let mean = tx.xact_time as f64 / 1e6 / tx.xact_count as f64;
        let n = tx.xact_count.min(MAX_TRANSACTIONS_PER_LEASE) as usize;
        m.transaction.record_many(mean, n);
    }
}

/// A server connect finished (pool.rs `connect_done`).
pub fn server_connect(pool: &Pool, res: &Result<ServerConn, LoginError>) {
    let Some(e) = EXPORTER.get() else { return };
    let m = e.pool(&pool.db_name, &pool.user_name);
    match res {
        Ok(_) => {
            m.connect_ok.increment(1);
            *m.failed_at.lock() = None;
        }
        Err(err) => {
            m.connect_failed.increment(1);
            // 57P03 keeps clients waiting; it opens no fast-fail window.
            if !err.is_starting_up() {
                *m.failed_at.lock() = Some(Instant::now());
            }
        }
    }
}

/// pgsluice sent `e` to a client and closes it (client.rs `send_error`).
pub fn client_error(e: &PgError) {
    if !enabled() {
        return;
    }
    metrics::counter!(CLIENT_ERRORS, "reason" => error_reason(&e.message)).increment(1);
}

/// A bounded label for a client-facing error message: the messages carry names and server
/// text, which must not become label values.
pub fn error_reason(msg: &str) -> &'static str {
    let has = |s: &str| msg.contains(s);
    if has("(server_login_retry)") {
        "server_login_retry"
    } else if msg == "query_wait_timeout" {
        "query_wait_timeout"
    } else if msg == "query_timeout" || msg == "query timeout" {
        "query_timeout"
    } else if msg.starts_with("client_login_timeout") {
        "client_login_timeout"
    } else if msg == "idle transaction timeout" {
        "idle_transaction_timeout"
    } else if msg == "transaction timeout" {
        "transaction_timeout"
    } else if msg == "client_idle_timeout" {
        "client_idle_timeout"
    } else if has("(max_client_conn)") {
        "max_client_conn"
    } else if has("(max_db_client_connections)") {
        "max_db_client_connections"
    } else if has("(max_user_client_connections)") {
        "max_user_client_connections"
    } else if msg.starts_with("no such database") {
        "no_such_database"
    } else if msg.starts_with("database \"") && msg.ends_with("is disabled") {
        "database_disabled"
    } else if msg == "pooler is shutting down" || msg == "server shutting down" {
        "shutdown"
    } else if msg == "server conn crashed?" {
        "server_conn_crashed"
    } else if msg == "admin forced disconnect" {
        "admin_kill"
    } else if has("authentication failed") || msg == "not allowed" || has("empty password") {
        "auth_failed"
    } else if msg.starts_with("unsupported startup parameter")
        || msg.starts_with("unsupported options startup parameter")
    {
        "startup_parameter"
    } else if msg == "transaction blocks not allowed in statement pooling mode" {
        "statement_pooling"
    } else if msg == "invalid server parameter"
        || msg.starts_with("server sent bad packet")
        || msg.starts_with("server login failed")
    {
        "server_error"
    } else {
        "other"
    }
}

/// The whole exposition: scrape-time families, then the recorder's.
pub fn render(app: &App) -> String {
    let mut x = text::Expo::default();
    scrape::write(app, &mut x);
    if let Some(e) = EXPORTER.get() {
        x.out.push_str(&e.handle.render());
    }
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded() {
        let cases = [
            (
                "server login has been failing, cached error: connect failed (server_login_retry)",
                "server_login_retry",
            ),
            ("query_wait_timeout", "query_wait_timeout"),
            ("client_login_timeout (server down)", "client_login_timeout"),
            (
                "no more connections allowed (max_client_conn)",
                "max_client_conn",
            ),
            (
                "client connections exceeded (max_db_client_connections)",
                "max_db_client_connections",
            ),
            ("no such database: nope", "no_such_database"),
            ("database \"x\" is disabled", "database_disabled"),
            ("password authentication failed", "auth_failed"),
            ("pooler is shutting down", "shutdown"),
            ("server conn crashed?", "server_conn_crashed"),
            ("something new", "other"),
        ];
        for (msg, reason) in cases {
            assert_eq!(error_reason(msg), reason, "{msg}");
        }
    }
}
