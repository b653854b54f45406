//! SHOW commands: one function per command, each building PgBouncer's exact columns (names,
//! order, type OIDs as in the reference §2.3) from live state. Socket listings and POOLS
//! are in `show/sockets.rs`, the statistics family in `show/stats.rs`, DATABASES, USERS,
//! LISTS and MEM in `show/objects.rs`; the small ones are here.
//!
//! Column types are written as PgBouncer writes them, one letter per column: `s` text,
//! `i` int4, `q` int8, `N` numeric, `T` timestamp sent as text, `b` bytea.
//!
//! The admin database `pgbouncer` appears as PgBouncer shows it: a DATABASES row, a POOLS
//! row `pgbouncer/pgbouncer` (its clients are the console sessions), a STATS row of zeros.

mod objects;
mod sockets;
mod stats;

use std::sync::Arc;

use super::{console_error, oid, AdminUser, Reply};
use crate::config::{keys, Config};
use crate::control::App;
use crate::proto::PgError;

/// The PgBouncer release whose console layout pgsluice reproduces. SHOW VERSION reports it
/// first because tools (pgbouncer_exporter, pgbouncer_fdw) parse `PgBouncer x.y.z` from
/// it to pick the column layout they expect.
pub const PGBOUNCER_VERSION: &str = "1.25.2";

/// Name of the admin database (and of its forced user).
pub const ADMIN_DB: &str = "pgbouncer";

/// What a SHOW function sees: the app and one consistent view of the configuration.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub cfg: Arc<Config>,
    /// "Now" for every wait/age column of one result set (µs since the epoch).
    pub now_us: u64,
}

type ShowFn = fn(&Ctx) -> Reply;

/// Every SHOW subcommand, in PgBouncer's `show_map` order.
const SHOWS: &[(&str, ShowFn)] = &[
    ("clients", sockets::clients),
    ("config", config),
    ("databases", objects::databases),
    ("fds", fds),
    ("help", help),
    ("lists", objects::lists),
    ("peers", peers),
    ("peer_pools", peer_pools),
    ("pools", sockets::pools),
    ("servers", sockets::servers),
    ("sockets", sockets::sockets),
    ("active_sockets", sockets::active_sockets),
    ("stats", stats::stats),
    ("stats_totals", stats::stats_totals),
    ("stats_averages", stats::stats_averages),
    ("users", objects::users),
    ("version", version),
    ("totals", stats::totals),
    ("mem", objects::mem),
    ("dns_hosts", dns_hosts),
    ("dns_zones", dns_zones),
    ("state", state),
];

/// Subcommands `stats_users` may not run: FDS shows cancel keys and secrets.
const ADMIN_ONLY: &[&str] = &["fds"];

/// Read-only parameters faked for drivers that SHOW or SET them on connect (PgBouncer's
/// `fake_param_list`, with 1.26's `extra_float_digits` for pgjdbc).
const FAKE_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
    ("extra_float_digits", "2"),
];

/// True if `name` is one of the faked driver parameters (case-insensitive).
pub fn is_fake_param(name: &str) -> bool {
    FAKE_PARAMS
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// `SHOW <fake param>`: one text column named as PgBouncer names it.
pub fn fake_show(name: &str) -> Option<Reply> {
    let (n, v) = FAKE_PARAMS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
    Some(rows(cols("s", &[n]), vec![vec![txt(*v)]]))
}

/// `SHOW name` / `SELECT name`. `None` = no such subcommand (the caller reports the
/// query as an invalid command).
pub fn show(app: &App, user: &AdminUser, name: &str) -> Option<Result<Reply, PgError>> {
    if let Some(r) = fake_show(name) {
        return Some(Ok(r));
    }
    let (n, f) = SHOWS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
    if !user.admin && ADMIN_ONLY.contains(n) {
        return Some(Err(console_error("admin access needed")));
    }
    let ctx = Ctx {
        app,
        cfg: app.config.load_full(),
        now_us: crate::stats::now_us(),
    };
    Some(Ok(f(&ctx)))
}

// ---------------------------------------------------------------- building blocks

/// Columns from PgBouncer-style type letters and names.
pub(crate) fn cols(types: &str, names: &[&str]) -> Vec<(String, u32)> {
    debug_assert_eq!(types.len(), names.len(), "{names:?}");
    types
        .chars()
        .zip(names)
        .map(|(t, n)| {
            let o = match t {
                'i' => oid::INT4,
                'q' => oid::INT8,
                'N' => oid::NUMERIC,
                'b' => oid::BYTEA,
                // 's', and 'T': timestamps are sent as text.
                _ => oid::TEXT,
            };
            (n.to_string(), o)
        })
        .collect()
}

/// A `SHOW` result set.
pub(crate) fn rows(columns: Vec<(String, u32)>, rows: Vec<Vec<Option<String>>>) -> Reply {
    Reply::Rows {
        columns,
        rows,
        tag: "SHOW".into(),
    }
}

pub(crate) fn txt(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub(crate) fn num(n: impl std::fmt::Display) -> Option<String> {
    Some(n.to_string())
}

pub(crate) fn opt(s: Option<impl Into<String>>) -> Option<String> {
    s.map(Into::into)
}

/// PgBouncer's `T` columns: `YYYY-MM-DD HH:MM:SS <zone>`; 0 (never) is NULL. pgsluice
/// renders UTC and names the zone, so the text is unambiguous whatever the host's TZ.
pub(crate) fn timestamp(us: u64) -> Option<String> {
    if us == 0 {
        return None;
    }
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Console sessions (clients of the admin database).
pub(crate) fn console_sessions(app: &App) -> usize {
    app.client_records
        .iter()
        .filter(|e| e.value().database == ADMIN_DB)
        .count()
}

// ---------------------------------------------------------------- the simple ones

fn version(_: &Ctx) -> Reply {
    rows(
        cols("s", &["version"]),
        vec![vec![txt(format!(
            "PgBouncer {PGBOUNCER_VERSION} (pgsluice {})",
            env!("CARGO_PKG_VERSION")
        ))]],
    )
}

const HELP_DETAIL: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW PEERS|PEER_POOLS\n\
\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n\
\tSHOW DNS_HOSTS|DNS_ZONES\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSUSPEND\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
\tWAIT_CLOSE [<db>]";

fn help(_: &Ctx) -> Reply {
    Reply::NoticeDone {
        notice: "Console usage".into(),
        detail: Some(HELP_DETAIL.into()),
        tag: "SHOW".into(),
    }
}

/// One row per `[pgbouncer]` key, alphabetical (the order of `keys::KEYS`).
fn config(c: &Ctx) -> Reply {
    let g = &c.cfg.general;
    let out = keys::KEYS
        .iter()
        .map(|k| {
            let value = match k.name {
                // Known to the process, not to `General`.
                "conffile" => c.cfg.conffile.as_ref().map(|p| p.display().to_string()),
                _ => crate::config::general::show_value(g, k.name),
            };
            vec![
                txt(k.name),
                value,
                opt(k.default),
                txt(if k.reloadable { "yes" } else { "no" }),
            ]
        })
        .collect();
    rows(
        cols("ssss", &["key", "value", "default", "changeable"]),
        out,
    )
}

fn state(c: &Ctx) -> Reply {
    // The process-wide gate is PAUSE without a database. pgsluice keeps no separate
    // SUSPEND state here, so "suspended" is "no".
    let paused = c.app.registry.global.is_paused();
    let yn = |b: bool| txt(if b { "yes" } else { "no" });
    rows(
        cols("ss", &["key", "value"]),
        vec![
            vec![txt("active"), yn(!paused)],
            vec![txt("paused"), yn(paused)],
            vec![txt("suspended"), yn(false)],
        ],
    )
}

fn peers(c: &Ctx) -> Reply {
    let g = &c.cfg.general;
    let out = c
        .cfg
        .peers
        .values()
        .map(|p| {
            vec![
                num(p.id),
                txt(&p.host),
                num(p.port),
                num(p.pool_size.unwrap_or(g.default_pool_size)),
            ]
        })
        .collect();
    rows(cols("isii", &["peer_id", "host", "port", "pool_size"]), out)
}

/// Cancel requests to peers are forwarded on the spot, not pooled: no peer pools.
fn peer_pools(_: &Ctx) -> Reply {
    rows(
        cols(
            "iiiii",
            &[
                "peer_id",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active_cancel",
                "sv_login",
            ],
        ),
        Vec::new(),
    )
}

/// PgBouncer's online-restart hand-over (`-R`) list. pgsluice does not hand sockets over,
/// so the list is empty (never a half-usable one).
fn fds(_: &Ctx) -> Reply {
    rows(
        cols(
            "issssiqisssssbb",
            &[
                "fd",
                "task",
                "user",
                "database",
                "addr",
                "port",
                "cancel",
                "link",
                "client_encoding",
                "std_strings",
                "datestyle",
                "timezone",
                "password",
                "scram_client_key",
                "scram_server_key",
            ],
        ),
        Vec::new(),
    )
}

/// Host names are resolved when a server connection is made; there is no cache to list.
fn dns_hosts(_: &Ctx) -> Reply {
    rows(cols("sqs", &["hostname", "ttl", "addrs"]), Vec::new())
}

fn dns_zones(_: &Ctx) -> Reply {
    rows(cols("sqi", &["zonename", "serial", "count"]), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), None);
        assert_eq!(
            timestamp(1_000_000).as_deref(),
            Some("1970-01-01 00:00:01 UTC")
        );
        // 2024-02-29 12:34:56 UTC = 1709210096
        assert_eq!(
            timestamp(1_709_210_096_000_000).as_deref(),
            Some("2024-02-29 12:34:56 UTC")
        );
        // 2000-03-01 00:00:00 UTC = 951868800
        assert_eq!(
            timestamp(951_868_800_999_999).as_deref(),
            Some("2000-03-01 00:00:00 UTC")
        );
    }

    #[test]
    fn fake_params() {
        assert!(is_fake_param("DateStyle"));
        assert!(!is_fake_param("pools"));
        let Some(Reply::Rows { columns, rows, .. }) = fake_show("CLIENT_ENCODING") else {
            panic!()
        };
        assert_eq!(columns, vec![("client_encoding".to_string(), oid::TEXT)]);
        assert_eq!(rows, vec![vec![Some("UTF-8".to_string())]]);
    }

    /// Every SHOW returns rows as wide as its header, on an empty app.
    #[test]
    fn shapes() {
        let app = App::new(Config::default(), Default::default());
        let admin = AdminUser {
            name: "a".into(),
            admin: true,
            id: 1,
        };
        for (name, _) in SHOWS {
            match show(&app, &admin, name) {
                Some(Ok(Reply::Rows { columns, rows, tag })) => {
                    assert_eq!(tag, "SHOW");
                    for r in rows {
                        assert_eq!(r.len(), columns.len(), "{name}");
                    }
                }
                Some(Ok(Reply::NoticeDone { .. })) => assert_eq!(*name, "help"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let stats = AdminUser {
            admin: false,
            ..admin
        };
        assert_eq!(
            show(&app, &stats, "FDS"),
            Some(Err(console_error("admin access needed")))
        );
        assert!(show(&app, &stats, "nope").is_none());
    }
}
