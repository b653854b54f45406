//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: the pools' counters summed per
//! database (or over everything), and the stats_period averages kept in `Pool::averages`.
//!
//! The layout is PgBouncer 1.25.2's, the release SHOW VERSION names: it has no
//! `client_login_count` columns (added after 1.25.2). Tools such as pgbouncer_fdw map
//! columns by position and break on an unexpected count, so the columns follow the
//! announced version; flip [`WITH_CLIENT_LOGIN_COUNT`] together with
//! `show::PGBOUNCER_VERSION` when moving to a layout that has them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{cols, num, rows, txt, Ctx, ADMIN_DB};
use crate::admin::Reply;
use crate::pool::Pool;
use crate::stats::Snapshot;

/// Whether the `*client_login_count` columns/rows are shown (PgBouncer after 1.25.2).
pub const WITH_CLIENT_LOGIN_COUNT: bool = false;

/// The counters in column order (every table below lists them in this order).
fn values(s: &Snapshot) -> Vec<u64> {
    let mut v = vec![
        s.server_assignment_count,
        s.xact_count,
        s.query_count,
        s.bytes_received,
        s.bytes_sent,
        s.xact_time,
        s.query_time,
        s.wait_time,
        s.client_parse_count,
        s.server_parse_count,
        s.bind_count,
    ];
    if WITH_CLIENT_LOGIN_COUNT {
        v.push(s.client_login_count);
    }
    v
}

/// Column/row names with `login` appended when the login counters are shown.
fn names(base: &[&'static str], login: &'static str) -> Vec<&'static str> {
    let mut v = base.to_vec();
    if WITH_CLIENT_LOGIN_COUNT {
        v.push(login);
    }
    v
}

/// Totals and averages of a set of pools.
#[derive(Default)]
struct Figures {
    totals: Snapshot,
    averages: Snapshot,
}

/// Combines per-pool period averages. Per-second counts add up. Per-event times
/// (xact_time per transaction, query_time per query, wait_time per assignment) are
/// weighted by each pool's event rate; a pool whose rate rounded down to 0 but that has
/// a time still counts once, so a quiet database does not show 0 µs.
fn combine(avgs: &[Snapshot]) -> Snapshot {
    let mut out = Snapshot::default();
    for a in avgs {
        out = out.plus(&Snapshot {
            xact_time: 0,
            query_time: 0,
            wait_time: 0,
            ..*a
        });
    }
    let weighted = |time: fn(&Snapshot) -> u64, count: fn(&Snapshot) -> u64| -> u64 {
        let (mut sum, mut weight) = (0u128, 0u128);
        for a in avgs {
            let t = u128::from(time(a));
            let w = match u128::from(count(a)) {
                0 if t > 0 => 1,
                w => w,
            };
            sum += t * w;
            weight += w;
        }
        sum.checked_div(weight).unwrap_or(0) as u64
    };
    out.xact_time = weighted(|a| a.xact_time, |a| a.xact_count);
    out.query_time = weighted(|a| a.query_time, |a| a.query_count);
    out.wait_time = weighted(|a| a.wait_time, |a| a.server_assignment_count);
    out
}

fn figures(pools: &[Arc<Pool>]) -> Figures {
    let mut totals = Snapshot::default();
    let mut avgs = Vec::with_capacity(pools.len());
    for p in pools {
        totals = totals.plus(&p.stats.snapshot());
        avgs.push(p.averages.lock().0);
    }
    Figures {
        totals,
        averages: combine(&avgs),
    }
}

/// Per database, sorted by name, the admin database included (its figures are 0: the
/// console never uses a server).
fn per_database(c: &Ctx) -> Vec<(String, Figures)> {
    let mut by_db: BTreeMap<String, Vec<Arc<Pool>>> = BTreeMap::new();
    for p in c.app.registry.all() {
        by_db.entry(p.db_name.clone()).or_default().push(p);
    }
    by_db.entry(ADMIN_DB.to_string()).or_default();
    by_db
        .into_iter()
        .map(|(db, pools)| (db, figures(&pools)))
        .collect()
}

/// `database` + N numeric columns.
fn table(c: &Ctx, names: &[&str], pick: fn(&Figures) -> Vec<u64>) -> Reply {
    let types = format!("s{}", "N".repeat(names.len() - 1));
    let out = per_database(c)
        .into_iter()
        .map(|(db, f)| {
            let mut r = vec![txt(db)];
            r.extend(pick(&f).into_iter().map(num));
            r
        })
        .collect();
    rows(cols(&types, names), out)
}

pub fn stats(c: &Ctx) -> Reply {
    let mut n = vec!["database"];
    n.extend(names(
        &[
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "total_client_parse_count",
            "total_server_parse_count",
            "total_bind_count",
        ],
        "total_client_login_count",
    ));
    n.extend(names(
        &[
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
        "avg_client_login_count",
    ));
    table(c, &n, |f| {
        let mut v = values(&f.totals);
        v.extend(values(&f.averages));
        v
    })
}

const TOTALS_BASE: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

pub fn stats_totals(c: &Ctx) -> Reply {
    let mut n = vec!["database"];
    n.extend(names(&TOTALS_BASE, "client_login_count"));
    table(c, &n, |f| values(&f.totals))
}

pub fn stats_averages(c: &Ctx) -> Reply {
    let mut n = vec!["database"];
    n.extend(names(
        &[
            "server_assignment_count",
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time",
            "query_time",
            "wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
        "avg_client_login_count",
    ));
    table(c, &n, |f| values(&f.averages))
}

/// One row per metric over every pool; note the names differ from SHOW STATS
/// (`client_bytes`, `ps_` prefixes).
pub fn totals(c: &Ctx) -> Reply {
    let f = figures(&c.app.registry.all());
    let base = names(
        &[
            "server_assignment_count",
            "xact_count",
            "query_count",
            "client_bytes",
            "server_bytes",
            "xact_time",
            "query_time",
            "wait_time",
            "ps_client_parse_count",
            "ps_server_parse_count",
            "ps_bind_count",
        ],
        "client_login_count",
    );
    let mut out = Vec::new();
    for (prefix, v) in [("total", values(&f.totals)), ("avg", values(&f.averages))] {
        for (name, value) in base.iter().zip(v) {
            out.push(vec![txt(format!("{prefix}_{name}")), num(value)]);
        }
    }
    rows(cols("sN", &["name", "value"]), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_combine() {
        let a = Snapshot {
            xact_count: 10,
            xact_time: 100,
            query_count: 0,
            query_time: 50,
            ..Default::default()
        };
        let b = Snapshot {
            xact_count: 30,
            xact_time: 200,
            ..Default::default()
        };
        let c = combine(&[a, b]);
        assert_eq!(c.xact_count, 40);
        assert_eq!(c.xact_time, 175);
        assert_eq!(c.query_time, 50);
        assert_eq!(c.wait_time, 0);
        assert_eq!(combine(&[]), Snapshot::default());
        assert_eq!(combine(&[a]).xact_time, 100);
    }

    #[test]
    fn layouts() {
        let n = 11 + WITH_CLIENT_LOGIN_COUNT as usize;
        assert_eq!(values(&Snapshot::default()).len(), n);
        assert_eq!(names(&TOTALS_BASE, "x").len(), n);
    }
}
