//! PgBouncer's statistics counters (SHOW STATS / STATS_TOTALS / TOTALS), kept per pool and
//! summed per database when shown. Times are microseconds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Running totals, updated once per transaction from a [`TxStats`].
        #[derive(Debug, Default)]
        pub struct Counters { $(pub $name: AtomicU64,)* }

        /// A plain copy of the counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Relaxed),)* }
            }
            pub fn add(&self, d: &Snapshot) {
                $(if d.$name != 0 { self.$name.fetch_add(d.$name, Relaxed); })*
            }
        }

        impl Snapshot {
            pub fn plus(&self, o: &Snapshot) -> Snapshot {
                Snapshot { $($name: self.$name + o.$name,)* }
            }
            pub fn minus(&self, o: &Snapshot) -> Snapshot {
                Snapshot { $($name: self.$name.saturating_sub(o.$name),)* }
            }
        }
    };
}

counters!(
    server_assignment_count,
    xact_count,
    query_count,
    bytes_received,
    bytes_sent,
    xact_time,
    query_time,
    wait_time,
    client_parse_count,
    server_parse_count,
    bind_count,
    client_login_count,
    // Not in SHOW STATS (PgBouncer has no such columns): exported on /metrics only.
    prepared_cache_hits,
    prepared_cache_misses,
    prepared_cache_evictions,
);

/// What one lease produced, accumulated locally by the relay and added to the pool's
/// counters once when the lease ends.
pub type TxStats = Snapshot;

/// Per-second averages over a stats period, as PgBouncer computes them: counts are per
/// second; `xact_time` per transaction, `query_time` per query, `wait_time` per
/// server assignment.
pub fn averages(delta: &Snapshot, period_secs: u64) -> Snapshot {
    let p = period_secs.max(1);
    let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    Snapshot {
        server_assignment_count: delta.server_assignment_count / p,
        xact_count: delta.xact_count / p,
        query_count: delta.query_count / p,
        bytes_received: delta.bytes_received / p,
        bytes_sent: delta.bytes_sent / p,
        xact_time: per(delta.xact_time, delta.xact_count),
        query_time: per(delta.query_time, delta.query_count),
        wait_time: per(delta.wait_time, delta.server_assignment_count),
        client_parse_count: delta.client_parse_count / p,
        server_parse_count: delta.server_parse_count / p,
        bind_count: delta.bind_count / p,
        client_login_count: delta.client_login_count / p,
        prepared_cache_hits: delta.prepared_cache_hits / p,
        prepared_cache_misses: delta.prepared_cache_misses / p,
        prepared_cache_evictions: delta.prepared_cache_evictions / p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_average() {
        let c = Counters::default();
        c.add(&Snapshot {
            xact_count: 10,
            xact_time: 1000,
            query_count: 20,
            query_time: 4000,
            ..Default::default()
        });
        let s = c.snapshot();
        assert_eq!(s.xact_count, 10);
        let a = averages(&s, 10);
        assert_eq!(a.xact_count, 1);
        assert_eq!(a.xact_time, 100);
        assert_eq!(a.query_time, 200);
    }
}
