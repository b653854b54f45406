//! The `stats_period` tick: each pool's averages over the last period (SHOW STATS'
//! `avg_*` columns, SHOW STATS_AVERAGES) and, with `log_stats`, PgBouncer's one-line
//! summary of all pools:
//!
//! `stats: N xacts/s, N queries/s, N client parses/s, N server parses/s, N binds/s,
//! N client logins/s, in N B/s, out N B/s, xact N us, query N us, wait N us`
//!
//! PgBouncer logs one line for the sum over every pool (not one per database), and
//! pgbadger's PgBouncer mode reads it that way, so pgsluice does the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::{averages, Snapshot};
use crate::control::App;

/// Runs until the process exits. `stats_period` is re-read at least once a second, so a
/// RELOAD or `SET stats_period` applies to the period in progress.
pub async fn run(app: Arc<App>) {
    let mut last = Instant::now();
    loop {
        let period = app
            .config
            .load()
            .general
            .stats_period
            .max(Duration::from_secs(1));
        let due = last + period;
        let now = Instant::now();
        if now < due {
            tokio::time::sleep((due - now).min(Duration::from_secs(1))).await;
            continue;
        }
        let elapsed = now.duration_since(last);
        last = now;
        let line = tick(&app, elapsed);
        if app.config.load().general.log_stats {
            tracing::info!("{line}");
        }
    }
}

/// Updates every pool's averages over `elapsed` and returns the log line for the total.
pub fn tick(app: &App, elapsed: Duration) -> String {
    // Whole seconds, as PgBouncer's stats_period; a late tick still divides by its
    // real length.
    let secs = (elapsed.as_millis() as u64 + 500) / 1000;
    let mut delta_sum = Snapshot::default();
    for pool in app.registry.all() {
        let totals = pool.stats.snapshot();
        let mut avg = pool.averages.lock();
        let delta = totals.minus(&avg.1);
        *avg = (averages(&delta, secs), totals);
        delta_sum = delta_sum.plus(&delta);
    }
    log_line(&averages(&delta_sum, secs))
}

/// PgBouncer's `stats:` line (master: with client logins) from per-second averages.
pub fn log_line(a: &Snapshot) -> String {
    format!(
        "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, \
         {} binds/s, {} client logins/s, in {} B/s, out {} B/s, xact {} us, query {} us, \
         wait {} us",
        a.xact_count,
        a.query_count,
        a.client_parse_count,
        a.server_parse_count,
        a.bind_count,
        a.client_login_count,
        a.bytes_received,
        a.bytes_sent,
        a.xact_time,
        a.query_time,
        a.wait_time,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_pgbouncer_order() {
        let a = Snapshot {
            xact_count: 1,
            query_count: 2,
            client_parse_count: 3,
            server_parse_count: 4,
            bind_count: 5,
            client_login_count: 6,
            bytes_received: 7,
            bytes_sent: 8,
            xact_time: 9,
            query_time: 10,
            wait_time: 11,
            ..Default::default()
        };
        assert_eq!(
            log_line(&a),
            "stats: 1 xacts/s, 2 queries/s, 3 client parses/s, 4 server parses/s, 5 binds/s, \
             6 client logins/s, in 7 B/s, out 8 B/s, xact 9 us, query 10 us, wait 11 us"
        );
    }
}
