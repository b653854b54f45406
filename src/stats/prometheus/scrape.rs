//! The families rendered fresh on every scrape.
//!
//! The `pgbouncer_*` families are read from the admin console's own SHOW replies (VERSION,
//! LISTS, CONFIG, DATABASES, STATS_TOTALS, POOLS), column by column, as pgbouncer_exporter
//! reads them from PgBouncer: the numbers are the console's by construction, and a column
//! the console lacks is a family left out, exactly as the exporter behaves. Microsecond
//! columns become seconds with the exporter's 1e-6 factor.
//!
//! The exporter's column and row mappings are in `columns.rs`; the `pgsluice_*` families,
//! which SHOW cannot give, in `extras.rs`.

use std::collections::HashMap;

use super::text::Expo;
use crate::admin::{AdminUser, Reply};
use crate::control::App;

mod columns;
mod extras;

use columns::{CONFIG, DATABASES, LISTS, POOLS, STATS};
use extras::extras;

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
