//! The admin console (virtual database `pgbouncer`): who may log in and what the welcome
//! says, PgBouncer's column layout (names, order, type OIDs) for every SHOW, SHOW values
//! after a known workload, the command grammar and its error texts, the stats-user
//! restrictions, and the extended query protocol (tokio-postgres, raw messages) that
//! PgBouncer itself lacks.
//!
//! The expected layouts below are written out from the PgBouncer reference (§2.3), not
//! taken from pgsluice's source, so a change on either side shows up here.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::{cluster, connect, connect_with, db_error_text, pg_config, psql_password, stdout_ok};
use common::{Msg, Pooler, PoolerBuilder, RawClient};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::SimpleQueryMessage;

const ADMIN: &str = "admin";
const ADMIN_PW: &str = "admin pw";
const STATS: &str = "stats";
const STATS_PW: &str = "stats pw";
/// In the auth file, on neither console list.
const NOBODY: &str = "nobody";
const NOBODY_PW: &str = "nobody pw";
/// The pooled database and its owner (trust on the cluster side).
const DB: &str = "admin_show";
const USER: &str = "admin_show_u";
const USER_PW: &str = "user pw";

// ------------------------------------------------------------------ helpers

/// pgsluice with md5 client auth, `admin`/`stats` on the console lists, database `DB`
/// (pool_size 1), a two-host entry `lb`, and `settings` appended to `[pgbouncer]`.
fn start(settings: &str) -> Pooler {
    let ini = format!(
        "[databases]\n\
         {DB} = host={{pg_host}} port={{pg_port}} dbname={DB} pool_size=1\n\
         lb = host=127.0.0.1,localhost port={{pg_port}} dbname={DB}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = md5\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = {ADMIN}\n\
         stats_users = {STATS}\n\
         pool_mode = transaction\n\
         default_pool_size = 7\n\
         {settings}\n"
    );
    let userlist = format!(
        "\"{ADMIN}\" \"{ADMIN_PW}\"\n\"{STATS}\" \"{STATS_PW}\"\n\
         \"{NOBODY}\" \"{NOBODY_PW}\"\n\"{USER}\" \"{USER_PW}\"\n"
    );
    PoolerBuilder::new(&ini).userlist(&userlist).start()
}

async fn prepare_db() {
    let pg = cluster();
    pg.create_role(USER, None).await;
    pg.create_database(DB, USER).await;
}

/// Runs `fut`, panicking if it takes longer than `secs` seconds (no test may hang).
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// A raw console session as `user`.
async fn console(p: &Pooler, user: &str, password: &str) -> RawClient {
    let mut c = RawClient::connect(p.port).await;
    c.login(user, "pgbouncer", Some(password))
        .await
        .unwrap_or_else(|e| panic!("console login as {user}: {e:?}\n{}", p.log()));
    c
}

async fn admin(p: &Pooler) -> RawClient {
    console(p, ADMIN, ADMIN_PW).await
}

/// A pooled client of `DB`.
async fn pooled(p: &Pooler, app_name: &str) -> tokio_postgres::Client {
    let mut cfg = pg_config(p.port, DB, USER, Some(USER_PW));
    cfg.application_name(app_name);
    within(10, "pooled connect", connect_with(&cfg))
        .await
        .unwrap_or_else(|e| panic!("connect through pgsluice: {e:?}\n{}", p.log()))
}

/// (name, type oid, format) of each column of a RowDescription.
fn row_description(m: &Msg) -> Vec<(String, u32, i16)> {
    assert_eq!(m.tag, b'T', "expected RowDescription, got {m:?}");
    let mut b: Bytes = m.body.clone();
    let n = b.get_i16();
    (0..n)
        .map(|_| {
            let end = b.iter().position(|&c| c == 0).expect("column name");
            let name = String::from_utf8_lossy(&b[..end]).into_owned();
            b.advance(end + 1);
            let _table = b.get_i32();
            let _col = b.get_i16();
            let oid = b.get_u32();
            let _len = b.get_i16();
            let _typmod = b.get_i32();
            let fmt = b.get_i16();
            (name, oid, fmt)
        })
        .collect()
}

/// A result set read with the simple protocol.
#[derive(Debug)]
struct Table {
    cols: Vec<(String, u32)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn idx(&self, name: &str) -> usize {
        self.cols
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.cols))
    }

    /// Value of column `name` in row `row` (NULL → None).
    fn get(&self, row: usize, name: &str) -> Option<String> {
        self.rows[row][self.idx(name)].clone()
    }

    /// Value of column `name` in the row where `key_col` = `key`.
    fn lookup(&self, key_col: &str, key: &str, name: &str) -> Option<String> {
        let k = self.idx(key_col);
        let r = self
            .rows
            .iter()
            .position(|r| r[k].as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no row with {key_col} = {key}: {self:?}"));
        self.get(r, name)
    }

    fn num(&self, key_col: &str, key: &str, name: &str) -> i64 {
        let v = self.lookup(key_col, key, name);
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} of {key}: {v:?}"))
    }

    /// Rows where column `name` = `value`.
    fn filter(&self, name: &str, value: &str) -> Vec<usize> {
        let i = self.idx(name);
        (0..self.rows.len())
            .filter(|r| self.rows[*r][i].as_deref() == Some(value))
            .collect()
    }
}

/// Runs a SHOW with the simple protocol: RowDescription, DataRows, `SHOW`, ReadyForQuery.
async fn show(c: &mut RawClient, sql: &str) -> Table {
    let msgs = c.query(sql).await;
    if let Some(e) = msgs.iter().find(|m| m.is_error()) {
        panic!("{sql}: {e:?}");
    }
    let desc = msgs.iter().find(|m| m.tag == b'T').unwrap_or_else(|| {
        panic!("{sql}: no RowDescription in {msgs:?}");
    });
    let cols: Vec<(String, u32)> = row_description(desc)
        .into_iter()
        .map(|(n, o, f)| {
            assert_eq!(f, 0, "{sql}: simple protocol results are text");
            (n, o)
        })
        .collect();
    let rows: Vec<_> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::text_columns)
        .collect();
    for r in &rows {
        assert_eq!(r.len(), cols.len(), "{sql}: row width");
    }
    let tags: Vec<_> = msgs.iter().filter(|m| m.tag == b'C').collect();
    assert_eq!(tags.len(), 1, "{sql}: {msgs:?}");
    assert_eq!(tags[0].command_tag(), "SHOW", "{sql}");
    assert_eq!(msgs.last().map(Msg::ready_status), Some(b'I'));
    Table { cols, rows }
}

/// The ErrorResponse a query gets; the session must stay usable (ReadyForQuery 'I').
async fn error_of(c: &mut RawClient, sql: &str) -> Msg {
    let msgs = c.query(sql).await;
    assert_eq!(msgs.last().map(Msg::ready_status), Some(b'I'), "{sql}");
    msgs.into_iter()
        .find(|m| m.is_error())
        .unwrap_or_else(|| panic!("{sql}: expected an error"))
}

fn assert_console_error(e: &Msg, text: &str) {
    assert_eq!(
        (e.severity(), e.sqlstate(), e.message()),
        ("ERROR".to_string(), "08P01".to_string(), text.to_string())
    );
}

/// Repeats `sql` every 25 ms until `done` holds for its result (at most `secs` seconds).
async fn show_until(
    c: &mut RawClient,
    sql: &str,
    secs: u64,
    done: impl Fn(&Table) -> bool,
) -> Table {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = show(c, sql).await;
        if done(&t) {
            return t;
        }
        if Instant::now() > deadline {
            panic!("{sql}: condition not reached within {secs} s; last: {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ------------------------------------------------------------------ layouts

/// PgBouncer's type letters → OIDs (§2.2): timestamps are text.
fn oid(letter: char) -> u32 {
    match letter {
        's' | 'T' => 25,
        'i' => 23,
        'q' => 20,
        'N' => 1700,
        'b' => 17,
        other => panic!("type letter {other}"),
    }
}

const SOCKET_TYPES: &str = "ssssssisiTTiiississii";
const SOCKET_COLS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];
const DEBUG_COLS: &[&str] = &[
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];
const COUNTERS: &[&str] = &[
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

/// (SHOW name, type letters, column names) per §2.3, PgBouncer 1.25.2 (the release SHOW
/// VERSION names: no `client_login_count` columns).
fn layouts() -> Vec<(&'static str, String, Vec<String>)> {
    let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        (
            "POOLS",
            "ssiiiiiiiiiiiiiss".to_string(),
            v(&[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ]),
        ),
        ("CLIENTS", SOCKET_TYPES.into(), v(SOCKET_COLS)),
        ("SERVERS", SOCKET_TYPES.into(), v(SOCKET_COLS)),
        (
            "DATABASES",
            "ssissiiiissiiiiii".into(),
            v(&[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ]),
        ),
        (
            "USERS",
            "ssssiiii".into(),
            v(&[
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ]),
        ),
        (
            "PEERS",
            "isii".into(),
            v(&["peer_id", "host", "port", "pool_size"]),
        ),
        (
            "PEER_POOLS",
            "iiiii".into(),
            v(&[
                "peer_id",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active_cancel",
                "sv_login",
            ]),
        ),
        ("LISTS", "si".into(), v(&["list", "items"])),
        (
            "CONFIG",
            "ssss".into(),
            v(&["key", "value", "default", "changeable"]),
        ),
        (
            "MEM",
            "siiii".into(),
            v(&["name", "size", "used", "free", "memtotal"]),
        ),
        (
            "FDS",
            "issssiqisssssbb".into(),
            v(&[
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
            ]),
        ),
        ("DNS_HOSTS", "sqs".into(), v(&["hostname", "ttl", "addrs"])),
        (
            "DNS_ZONES",
            "sqi".into(),
            v(&["zonename", "serial", "count"]),
        ),
        ("VERSION", "s".into(), v(&["version"])),
        ("STATE", "ss".into(), v(&["key", "value"])),
        ("TOTALS", "sN".into(), v(&["name", "value"])),
    ];
    let mut sockets = v(SOCKET_COLS);
    sockets.extend(v(DEBUG_COLS));
    let socket_types = format!("{SOCKET_TYPES}iiiiiii");
    out.push(("SOCKETS", socket_types.clone(), sockets.clone()));
    out.push(("ACTIVE_SOCKETS", socket_types, sockets));

    let mut stats = vec!["database".to_string()];
    stats.extend(
        [
            "server_assignment_count",
            "xact_count",
            "query_count",
            "received",
            "sent",
            "xact_time",
            "query_time",
            "wait_time",
            "client_parse_count",
            "server_parse_count",
            "bind_count",
        ]
        .iter()
        .map(|c| format!("total_{c}")),
    );
    stats.extend(v(&[
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
    ]));
    out.push(("STATS", format!("s{}", "N".repeat(22)), stats));

    let mut totals = vec!["database".to_string()];
    totals.extend(v(COUNTERS));
    out.push(("STATS_TOTALS", format!("s{}", "N".repeat(11)), totals));

    let mut avgs = vec!["database".to_string()];
    avgs.extend(v(&COUNTERS[..8]));
    avgs.extend(v(&[
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ]));
    out.push(("STATS_AVERAGES", format!("s{}", "N".repeat(11)), avgs));
    out
}

#[tokio::test]
async fn every_show_has_pgbouncer_columns() {
    prepare_db().await;
    let p = start("");
    // Some state, so the listings have rows to check widths on.
    let client = pooled(&p, "layout").await;
    client.simple_query("SELECT 1").await.expect("query");
    let mut c = admin(&p).await;
    let all = layouts();
    assert_eq!(all.len(), 21, "every SHOW but HELP");
    for (name, types, names) in all {
        for sql in [
            format!("SHOW {name}"),
            format!("show {}", name.to_lowercase()),
        ] {
            let t = show(&mut c, &sql).await;
            let expected: Vec<(String, u32)> =
                names.iter().cloned().zip(types.chars().map(oid)).collect();
            assert_eq!(types.len(), names.len(), "test table for {name}");
            assert_eq!(t.cols, expected, "{sql}");
        }
    }

    // Row names where PgBouncer fixes them.
    let lists = show(&mut c, "SHOW LISTS").await;
    let names: Vec<_> = lists.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "databases",
            "users",
            "peers",
            "pools",
            "peer_pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending"
        ]
    );
    let state = show(&mut c, "SHOW STATE").await;
    assert_eq!(
        state.rows,
        [
            [Some("active".into()), Some("yes".into())],
            [Some("paused".into()), Some("no".into())],
            [Some("suspended".into()), Some("no".into())]
        ]
    );
    let totals = show(&mut c, "SHOW TOTALS").await;
    let names: Vec<_> = totals.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    let base = [
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
    ];
    let expected: Vec<String> = ["total", "avg"]
        .iter()
        .flat_map(|p| base.iter().map(move |b| format!("{p}_{b}")))
        .collect();
    assert_eq!(names, expected);
    let version = show(&mut c, "SHOW VERSION").await;
    let v = version.get(0, "version").unwrap();
    assert!(v.starts_with("PgBouncer 1.25.2 "), "{v}");
    assert!(v.contains("pgsluice"), "{v}");

    // HELP: a NOTICE "Console usage" with the command list, then SHOW.
    let msgs = c.query("SHOW HELP").await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"NCZ", "{msgs:?}");
    assert_eq!(msgs[0].message(), "Console usage");
    let detail = msgs[0].field(b'D').unwrap_or_default();
    for cmd in [
        "SHOW HELP|CONFIG",
        "PAUSE [<db>]",
        "KILL_CLIENT <client_id>",
        "WAIT_CLOSE",
    ] {
        assert!(detail.contains(cmd), "{detail}");
    }
    assert_eq!(msgs[1].command_tag(), "SHOW");

    // tokio-postgres sees the same types through Describe.
    let tp = connect(p.port, "pgbouncer", ADMIN, Some(ADMIN_PW))
        .await
        .expect("tokio-postgres console login");
    for (sql, cols) in [
        (
            "SHOW POOLS",
            vec![("database", Type::TEXT), ("cl_active", Type::INT4)],
        ),
        (
            "SHOW STATS",
            vec![
                ("database", Type::TEXT),
                ("total_xact_count", Type::NUMERIC),
            ],
        ),
        ("SHOW DNS_HOSTS", vec![("ttl", Type::INT8)]),
        ("SHOW FDS", vec![("scram_client_key", Type::BYTEA)]),
    ] {
        let st = tp.prepare(sql).await.expect(sql);
        assert!(st.params().is_empty());
        for (name, ty) in cols {
            let c = st
                .columns()
                .iter()
                .find(|c| c.name() == name)
                .unwrap_or_else(|| panic!("{sql}: {name}"));
            assert_eq!(c.type_(), &ty, "{sql}.{name}");
        }
    }
}

#[tokio::test]
async fn fake_driver_parameters() {
    let p = start("");
    let mut c = console(&p, STATS, STATS_PW).await;
    for (sql, col, value) in [
        ("SHOW client_encoding", "client_encoding", "UTF-8"),
        ("SHOW DateStyle", "datestyle", "ISO"),
        ("show TIMEZONE", "timezone", "GMT"),
        (
            "SHOW default_transaction_isolation",
            "default_transaction_isolation",
            "read committed",
        ),
        (
            "SHOW standard_conforming_strings",
            "standard_conforming_strings",
            "on",
        ),
    ] {
        let t = show(&mut c, sql).await;
        assert_eq!(t.cols, [(col.to_string(), 25)], "{sql}");
        assert_eq!(t.rows, [[Some(value.to_string())]], "{sql}");
    }
    // SET on them: NOTICE "SET ignored", then SET — for a stats user too.
    for sql in [
        "SET client_encoding = 'UTF8'",
        "set DateStyle to ISO",
        "SET extra_float_digits = 3",
        "SET timezone TO 'UTC';",
    ] {
        let msgs = c.query(sql).await;
        let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
        assert_eq!(tags, b"NCZ", "{sql}: {msgs:?}");
        assert_eq!(msgs[0].severity(), "NOTICE");
        assert_eq!(msgs[0].message(), "SET ignored");
        assert_eq!(msgs[1].command_tag(), "SET");
    }
}

// ------------------------------------------------------------------ login

#[tokio::test]
async fn login_rules_and_welcome() {
    let p = start("");
    // Admin, md5 against the auth file, with PgBouncer's welcome set exactly.
    let mut c = RawClient::connect(p.port).await;
    c.login_md5(ADMIN, "pgbouncer", ADMIN_PW)
        .await
        .expect("admin login");
    let mut params: Vec<_> = c
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.sort();
    let version = format!("{}/bouncer", env!("CARGO_PKG_VERSION"));
    let mut expected: Vec<(String, String)> = [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    expected.sort();
    assert_eq!(params, expected);
    assert!(
        c.backend_pid.is_some() && c.secret_key.is_some(),
        "BackendKeyData"
    );
    show(&mut c, "SHOW FDS").await;

    // Stats user: SHOW yes, control commands and SHOW FDS no.
    let mut s = console(&p, STATS, STATS_PW).await;
    let pools = show(&mut s, "SHOW POOLS").await;
    assert_eq!(pools.num("database", "pgbouncer", "cl_active"), 2);
    for sql in [
        "PAUSE",
        "RESUME",
        "RELOAD",
        "KILL_CLIENT 1",
        "SHUTDOWN",
        "SHOW FDS",
        "SET default_pool_size = 5",
        "DISABLE admin_show",
    ] {
        let e = error_of(&mut s, sql).await;
        assert_console_error(&e, "admin access needed");
    }
    // Still a working session, and nothing was paused.
    let state = show(&mut s, "SHOW STATE").await;
    assert_eq!(
        state.lookup("key", "paused", "value").as_deref(),
        Some("no")
    );

    // In the auth file but on neither list: authenticated, then refused.
    let mut n = RawClient::connect(p.port).await;
    let e = n
        .login(NOBODY, "pgbouncer", Some(NOBODY_PW))
        .await
        .expect_err("nobody must not get in");
    assert_eq!(
        (e.severity(), e.message()),
        ("FATAL".into(), "not allowed".into())
    );
    // Wrong password / unknown user: the usual authentication failure.
    for (user, pw) in [(ADMIN, "wrong"), ("ghost", "whatever")] {
        let mut w = RawClient::connect(p.port).await;
        let e = w.login(user, "pgbouncer", Some(pw)).await.expect_err(user);
        assert_eq!(e.severity(), "FATAL", "{user}");
        assert_eq!(e.message(), "password authentication failed", "{user}");
    }
    // tokio-postgres sees the same.
    let e = connect(p.port, "pgbouncer", NOBODY, Some(NOBODY_PW))
        .await
        .expect_err("nobody");
    assert_eq!(db_error_text(&e).1, "not allowed");

    // Same-uid user `pgbouncer` over the Unix socket: admin without a password.
    let mut u = RawClient::connect_unix(&p.unix_socket_path()).await;
    u.login_trust("pgbouncer", "pgbouncer")
        .await
        .expect("pgbouncer over the Unix socket");
    show(&mut u, "SHOW FDS").await;
    let clients = show(&mut u, "SHOW CLIENTS").await;
    let r = clients.filter("user", "pgbouncer");
    assert_eq!(r.len(), 1, "{clients:?}");
    assert_eq!(clients.get(r[0], "addr").as_deref(), Some("unix"));
    // The same name over TCP is an ordinary (unknown) user.
    let mut t = RawClient::connect(p.port).await;
    let e = t
        .login("pgbouncer", "pgbouncer", Some("x"))
        .await
        .expect_err("pgbouncer over TCP");
    assert_eq!(e.message(), "password authentication failed");
}

#[tokio::test]
async fn auth_type_any_admits_everyone_as_admin() {
    let p = start("auth_type = any");
    let mut c = RawClient::connect(p.port).await;
    c.login_trust("whoever", "pgbouncer")
        .await
        .expect("any user under auth_type=any");
    show(&mut c, "SHOW FDS").await;
}

#[tokio::test]
async fn console_is_exempt_from_client_limits() {
    prepare_db().await;
    let p = start("max_client_conn = 1");
    let held = pooled(&p, "held").await;
    held.simple_query("SELECT 1").await.expect("query");
    let e = connect(p.port, DB, USER, Some(USER_PW))
        .await
        .expect_err("second client over max_client_conn");
    assert_eq!(
        db_error_text(&e).1,
        "no more connections allowed (max_client_conn)"
    );
    let mut a = admin(&p).await;
    let mut b = console(&p, STATS, STATS_PW).await;
    let lists = show(&mut a, "SHOW LISTS").await;
    assert_eq!(lists.num("list", "used_clients", "items"), 3);
    show(&mut b, "SHOW VERSION").await;
}

// ------------------------------------------------------------------ values

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_clients_servers_after_a_known_workload() {
    prepare_db().await;
    let p = start("query_wait_timeout = 30");
    // c1 holds the only server (pool_size 1) in an open transaction.
    let c1 = pooled(&p, "in_tx").await;
    c1.batch_execute("BEGIN").await.expect("BEGIN");
    let pid: i32 = c1
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    // c2 is connected and idle; c3 waits for the server.
    let c2 = pooled(&p, "idle").await;
    let c3 = pooled(&p, "waiting").await;
    let waiter = tokio::spawn(async move { c3.simple_query("SELECT 1").await.map(|_| c3) });

    let mut a = console(&p, ADMIN, ADMIN_PW).await;
    // cl_waiting 1, and long enough for maxwait to reach a second.
    let pools = show_until(&mut a, "SHOW POOLS", 5, |t| {
        t.num("database", DB, "cl_waiting") == 1 && t.num("database", DB, "maxwait") >= 1
    })
    .await;
    let row = pools.filter("database", DB);
    assert_eq!(row.len(), 1, "{pools:?}");
    let r = row[0];
    assert_eq!(pools.get(r, "user").as_deref(), Some(USER));
    let n = |name: &str| pools.get(r, name).and_then(|v| v.parse::<i64>().ok());
    assert_eq!(n("cl_active"), Some(2), "in_tx + idle: {pools:?}");
    assert_eq!(n("cl_waiting"), Some(1));
    assert_eq!(n("sv_active"), Some(1));
    assert_eq!(n("sv_idle"), Some(0));
    assert_eq!(n("sv_login"), Some(0));
    assert!(n("maxwait_us").is_some_and(|us| (0..1_000_000).contains(&us)));
    assert_eq!(pools.get(r, "pool_mode").as_deref(), Some("transaction"));
    assert_eq!(pools.get(r, "load_balance_hosts"), None);
    // The console's own pool.
    assert_eq!(pools.num("database", "pgbouncer", "cl_active"), 1);
    assert_eq!(
        pools
            .lookup("database", "pgbouncer", "pool_mode")
            .as_deref(),
        Some("statement")
    );

    // CLIENTS: one row per client, states, links to the server, the console itself.
    let clients = show(&mut a, "SHOW CLIENTS").await;
    let ours = clients.filter("database", DB);
    assert_eq!(ours.len(), 3, "{clients:?}");
    let by_app = |app: &str| {
        *ours
            .iter()
            .find(|r| clients.get(**r, "application_name").as_deref() == Some(app))
            .unwrap_or_else(|| panic!("client {app}: {clients:?}"))
    };
    let (tx, idle, waiting) = (by_app("in_tx"), by_app("idle"), by_app("waiting"));
    assert_eq!(clients.get(tx, "state").as_deref(), Some("active"));
    assert_eq!(clients.get(idle, "state").as_deref(), Some("idle"));
    assert_eq!(clients.get(waiting, "state").as_deref(), Some("waiting"));
    assert!(
        clients
            .get(waiting, "wait")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= 1
    );
    assert_eq!(clients.get(idle, "wait").as_deref(), Some("0"));
    assert_eq!(clients.get(idle, "link").as_deref(), Some(""));
    for r in [tx, idle, waiting] {
        assert_eq!(clients.get(r, "type").as_deref(), Some("C"));
        assert_eq!(clients.get(r, "user").as_deref(), Some(USER));
        assert_eq!(clients.get(r, "replication").as_deref(), Some("none"));
        assert_eq!(clients.get(r, "addr").as_deref(), Some("127.0.0.1"));
        assert_eq!(clients.get(r, "local_port"), Some(p.port.to_string()));
        let ts = clients.get(r, "connect_time").unwrap();
        assert!(is_timestamp(&ts), "{ts}");
        assert!(is_timestamp(&clients.get(r, "request_time").unwrap()));
        let id = clients.get(r, "id").unwrap();
        assert_eq!(
            clients.get(r, "ptr"),
            Some(format!("{:#x}", id.parse::<u64>().unwrap()))
        );
    }
    let console_rows = clients.filter("database", "pgbouncer");
    assert_eq!(console_rows.len(), 1);
    assert_eq!(clients.get(console_rows[0], "user").as_deref(), Some(ADMIN));
    assert_eq!(
        clients.get(console_rows[0], "state").as_deref(),
        Some("idle")
    );

    // SERVERS: the one server, active, linked both ways to the client in a transaction.
    let servers = show(&mut a, "SHOW SERVERS").await;
    let sv = servers.filter("database", DB);
    assert_eq!(sv.len(), 1, "{servers:?}");
    let s = sv[0];
    assert_eq!(servers.get(s, "type").as_deref(), Some("S"));
    assert_eq!(servers.get(s, "state").as_deref(), Some("active"));
    assert_eq!(servers.get(s, "user").as_deref(), Some(USER));
    assert_eq!(servers.get(s, "remote_pid"), Some(pid.to_string()));
    assert_eq!(servers.get(s, "port"), Some(cluster().port().to_string()));
    assert_eq!(servers.get(s, "link"), clients.get(tx, "ptr"));
    assert_eq!(clients.get(tx, "link"), servers.get(s, "ptr"));

    // SOCKETS: the same sockets with PgBouncer's list-prefixed states.
    let sockets = show(&mut a, "SHOW SOCKETS").await;
    let mut states: Vec<_> = sockets
        .filter("database", DB)
        .iter()
        .map(|r| sockets.get(*r, "state").unwrap())
        .collect();
    states.sort();
    assert_eq!(
        states,
        ["cl_active", "cl_active", "cl_waiting", "sv_active"]
    );

    // DATABASES / USERS / LISTS counts.
    let dbs = show(&mut a, "SHOW DATABASES").await;
    assert_eq!(dbs.num("name", DB, "current_client_connections"), 3);
    assert_eq!(dbs.num("name", DB, "current_connections"), 1);
    assert_eq!(dbs.num("name", DB, "pool_size"), 1);
    assert_eq!(dbs.num("name", DB, "port"), i64::from(cluster().port()));
    assert_eq!(dbs.lookup("name", DB, "host").as_deref(), Some("127.0.0.1"));
    assert_eq!(dbs.lookup("name", DB, "force_user"), None);
    assert_eq!(
        dbs.lookup("name", DB, "pool_mode"),
        None,
        "inherited → NULL"
    );
    assert_eq!(
        dbs.lookup("name", "lb", "load_balance_hosts").as_deref(),
        Some("round-robin")
    );
    assert_eq!(dbs.num("name", "lb", "pool_size"), 7);
    assert_eq!(dbs.num("name", "pgbouncer", "pool_size"), 2);
    assert_eq!(
        dbs.lookup("name", "pgbouncer", "force_user").as_deref(),
        Some("pgbouncer")
    );
    assert_eq!(
        dbs.lookup("name", "pgbouncer", "pool_mode").as_deref(),
        Some("statement")
    );
    let users = show(&mut a, "SHOW USERS").await;
    assert_eq!(users.num("name", USER, "current_client_connections"), 3);
    assert_eq!(users.num("name", USER, "current_connections"), 1);
    assert_eq!(users.lookup("name", USER, "pool_size").as_deref(), Some(""));
    let lists = show(&mut a, "SHOW LISTS").await;
    assert_eq!(lists.num("list", "used_clients", "items"), 4);
    assert_eq!(lists.num("list", "pools", "items"), 2);
    assert_eq!(lists.num("list", "used_servers", "items"), 1);

    // COMMIT: the server goes to the waiter, then back to idle.
    c1.batch_execute("COMMIT").await.expect("COMMIT");
    let c3 = within(10, "waiter gets the server", waiter)
        .await
        .expect("join")
        .expect("waiter's query");
    let pools = show_until(&mut a, "SHOW POOLS", 5, |t| {
        t.num("database", DB, "sv_idle") == 1
    })
    .await;
    assert_eq!(pools.num("database", DB, "cl_waiting"), 0);
    assert_eq!(pools.num("database", DB, "sv_active"), 0);
    assert_eq!(pools.num("database", DB, "cl_active"), 3);
    assert_eq!(pools.num("database", DB, "maxwait"), 0);
    drop((c2, c3));
}

/// `YYYY-MM-DD HH:MM:SS UTC`
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 23
        && s.ends_with(" UTC")
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            19..=22 => true,
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn stats_count_queries() {
    prepare_db().await;
    let p = start("");
    let client = pooled(&p, "stats").await;
    client.simple_query("SELECT 1").await.expect("warm-up");
    let mut a = admin(&p).await;
    let before = show(&mut a, "SHOW STATS_TOTALS").await;
    let (x0, q0, r0, s0) = (
        before.num("database", DB, "xact_count"),
        before.num("database", DB, "query_count"),
        before.num("database", DB, "bytes_received"),
        before.num("database", DB, "bytes_sent"),
    );
    const N: i64 = 5;
    for i in 0..N {
        client
            .simple_query(&format!("SELECT {i}"))
            .await
            .expect("query");
    }
    // Counters are added when a lease ends, just after the client has its answer.
    let after = show_until(&mut a, "SHOW STATS_TOTALS", 5, |t| {
        t.num("database", DB, "xact_count") >= x0 + N
    })
    .await;
    assert!(after.num("database", DB, "query_count") >= q0 + N);
    assert!(after.num("database", DB, "bytes_received") > r0);
    assert!(after.num("database", DB, "bytes_sent") > s0);
    assert!(
        after.num("database", DB, "server_assignment_count") > N,
        "warm-up + N"
    );
    assert_eq!(after.num("database", "pgbouncer", "xact_count"), 0);

    let stats = show(&mut a, "SHOW STATS").await;
    assert!(stats.num("database", DB, "total_xact_count") >= x0 + N);
    assert!(stats.num("database", DB, "total_query_count") >= q0 + N);
    let totals = show(&mut a, "SHOW TOTALS").await;
    assert!(totals.num("name", "total_xact_count", "value") >= x0 + N);
    assert!(totals.num("name", "total_client_bytes", "value") > r0);
}

#[tokio::test]
async fn show_config_lists_every_key_with_values() {
    let p = start("");
    let mut a = admin(&p).await;
    let t = show(&mut a, "SHOW CONFIG").await;
    let keys: Vec<_> = t.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    let expected: Vec<_> = pgsluice::config::keys::KEYS
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    assert_eq!(keys, expected);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "alphabetical, as PgBouncer");
    assert_eq!(
        t.lookup("key", "default_pool_size", "value").as_deref(),
        Some("7")
    );
    assert_eq!(
        t.lookup("key", "default_pool_size", "default").as_deref(),
        Some("20")
    );
    assert_eq!(
        t.lookup("key", "default_pool_size", "changeable")
            .as_deref(),
        Some("yes")
    );
    assert_eq!(
        t.lookup("key", "pool_mode", "value").as_deref(),
        Some("transaction")
    );
    assert_eq!(
        t.lookup("key", "listen_port", "value"),
        Some(p.port.to_string())
    );
    assert_eq!(
        t.lookup("key", "listen_port", "changeable").as_deref(),
        Some("no")
    );
    assert_eq!(
        t.lookup("key", "admin_users", "value").as_deref(),
        Some(ADMIN)
    );
    assert_eq!(
        t.lookup("key", "conffile", "value"),
        Some(p.ini_path().display().to_string())
    );
}

// ------------------------------------------------------------------ grammar

#[tokio::test]
async fn grammar_and_errors() {
    let p = start("");
    let mut a = admin(&p).await;
    for sql in [
        "bogus",
        "SHOW",
        "SHOW nothing",
        "SHOW POOLS; SHOW STATS",
        "SHOW POOLS extra",
        "SELECT 1",
        "SET default_pool_size",
        "SET listen_addr = 1.2.3.4",
        "",
    ] {
        let e = error_of(&mut a, sql).await;
        assert_console_error(&e, &format!("invalid command '{sql}', use SHOW HELP;"));
    }
    let e = error_of(&mut a, &format!("SHOW {}", "x".repeat(64))).await;
    assert_console_error(&e, "bad arguments");
    let e = error_of(&mut a, "RELOAD now").await;
    assert_console_error(&e, "invalid command 'RELOAD now', use SHOW HELP;");

    // Aliases and spellings of the same command.
    let reference = show(&mut a, "SHOW VERSION").await;
    for sql in [
        "SELECT VERSION",
        "select version;",
        "  show\n\"version\"  ;  ",
        "SHOW Version",
    ] {
        let t = show(&mut a, sql).await;
        assert_eq!(t.rows, reference.rows, "{sql}");
    }
    let t = show(&mut a, "SELECT pools").await;
    assert!(!t.filter("database", "pgbouncer").is_empty());

    // A control command with its tag.
    let msgs = a.query("RECONNECT").await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"CZ", "{msgs:?}");
    assert_eq!(msgs[0].command_tag(), "RECONNECT");

    // Unsupported message: the error, then the connection is closed.
    a.send_copy_data(b"x").await;
    let msgs = a.recv_until_eof().await;
    assert!(!msgs.is_empty());
    assert_console_error(&msgs[0], "unsupported packet type for admin console: 100");
}

// ------------------------------------------------------------------ extended protocol

/// Raw bytes of a binary-format column (to compare pgsluice's numeric encoding with
/// PostgreSQL's own).
struct RawNumeric(Vec<u8>);

impl<'a> FromSql<'a> for RawNumeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawNumeric(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[tokio::test]
async fn extended_protocol_with_tokio_postgres() {
    prepare_db().await;
    let p = start("");
    let pooled_client = pooled(&p, "ext").await;
    // Long queries and long rows: both byte counters get several base-10000 digits.
    let sql = format!("SELECT '{}'", "y".repeat(500));
    for _ in 0..30 {
        pooled_client.simple_query(&sql).await.expect("workload");
    }
    let c = connect(p.port, "pgbouncer", ADMIN, Some(ADMIN_PW))
        .await
        .expect("tokio-postgres console login");

    // Parse/Describe/Bind/Execute with binary results.
    let rows = c.query("SHOW POOLS", &[]).await.expect("SHOW POOLS");
    let admin_pool = rows
        .iter()
        .find(|r| r.get::<_, &str>("database") == "pgbouncer")
        .expect("admin pool row");
    assert_eq!(admin_pool.get::<_, i32>("cl_active"), 1);
    assert_eq!(admin_pool.get::<_, &str>("pool_mode"), "statement");
    assert_eq!(
        admin_pool.get::<_, Option<&str>>("load_balance_hosts"),
        None
    );
    let ours = rows
        .iter()
        .find(|r| r.get::<_, &str>("database") == DB)
        .expect("pool row");
    assert_eq!(ours.get::<_, i32>("cl_active"), 1);
    assert_eq!(ours.get::<_, i32>("sv_idle"), 1);

    let rows = c.query("SHOW CONFIG", &[]).await.expect("SHOW CONFIG");
    let dps = rows
        .iter()
        .find(|r| r.get::<_, &str>("key") == "default_pool_size")
        .expect("default_pool_size");
    assert_eq!(dps.get::<_, &str>("value"), "7");
    let rows = c.query("SHOW DNS_ZONES", &[]).await.expect("int8/empty");
    assert!(rows.is_empty());

    // Numeric counters in binary match PostgreSQL's own encoding of the same value
    // (nothing runs in between, so the text and binary reads see the same numbers).
    let text: Vec<_> = c
        .simple_query("SHOW STATS_TOTALS")
        .await
        .expect("simple SHOW STATS_TOTALS")
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("database") == Some(DB) => Some((
                r.get("bytes_received").unwrap().to_string(),
                r.get("bytes_sent").unwrap().to_string(),
            )),
            _ => None,
        })
        .collect();
    let (recv_text, sent_text) = text.first().cloned().expect("stats row");
    assert!(recv_text.parse::<u64>().unwrap() > 10_000, "{recv_text}");
    assert!(sent_text.parse::<u64>().unwrap() > 10_000, "{sent_text}");
    let rows = c.query("SHOW STATS_TOTALS", &[]).await.expect("binary");
    let row = rows
        .iter()
        .find(|r| r.get::<_, &str>("database") == DB)
        .expect("stats row");
    let pg = cluster().superuser().await;
    for (col, value) in [("bytes_received", &recv_text), ("bytes_sent", &sent_text)] {
        let ours: RawNumeric = row.get(col);
        let theirs: RawNumeric = pg
            .query_one("SELECT $1::text::numeric", &[value])
            .await
            .expect("numeric from PostgreSQL")
            .get(0);
        assert_eq!(ours.0, theirs.0, "{col} = {value}");
    }

    // Errors keep the session usable (error, then ReadyForQuery at Sync).
    let e = c.query("SHOW nope", &[]).await.expect_err("SHOW nope");
    assert_eq!(
        db_error_text(&e),
        (
            "08P01".to_string(),
            "invalid command 'SHOW nope', use SHOW HELP;".to_string()
        )
    );
    let v = c.query_one("SHOW VERSION", &[]).await.expect("after error");
    assert!(v.get::<_, &str>(0).starts_with("PgBouncer 1.25.2"));

    // Control commands and fake SETs run through Execute too.
    assert_eq!(c.execute("RECONNECT", &[]).await.expect("RECONNECT"), 0);
    c.execute("SET extra_float_digits = 3", &[])
        .await
        .expect("fake SET");
    // A prepared statement is reusable.
    let st = c.prepare("SHOW LISTS").await.expect("prepare");
    for _ in 0..3 {
        assert_eq!(c.query(&st, &[]).await.expect("LISTS").len(), 14);
    }

    // A stats user gets the same refusal through Execute.
    let s = connect(p.port, "pgbouncer", STATS, Some(STATS_PW))
        .await
        .expect("stats login");
    let e = s.execute("PAUSE", &[]).await.expect_err("PAUSE as stats");
    assert_eq!(db_error_text(&e).1, "admin access needed");
    assert!(!s.query("SHOW CLIENTS", &[]).await.expect("SHOW").is_empty());
}

#[tokio::test]
async fn extended_protocol_raw_messages() {
    let p = start("");
    let mut a = admin(&p).await;

    // Parse, Bind, Describe portal, Execute in pieces of 2 rows, Sync.
    a.cork();
    a.send_parse("cfg", "SHOW CONFIG", &[]).await;
    a.send_bind("", "cfg", &[]).await;
    a.send_describe(b'P', "").await;
    a.send_execute("", 2).await;
    a.send_execute("", 0).await;
    a.send_sync().await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(&tags[..5], b"12TDD", "{msgs:?}");
    assert_eq!(tags[5], b's', "PortalSuspended after 2 rows: {msgs:?}");
    let n_rows = tags.iter().filter(|t| **t == b'D').count();
    assert_eq!(n_rows, pgsluice::config::keys::KEYS.len());
    assert_eq!(tags[tags.len() - 2], b'C');
    assert_eq!(msgs[msgs.len() - 2].command_tag(), "SHOW");
    let desc = row_description(&msgs[2]);
    assert_eq!(desc.len(), 4);
    assert!(desc.iter().all(|(_, oid, fmt)| *oid == 25 && *fmt == 0));

    // Describe statement: ParameterDescription (no parameters) and RowDescription; a
    // control command has NoData. Close answers CloseComplete.
    a.send_parse("r", "RESUME", &[]).await;
    a.send_describe(b'S', "cfg").await;
    a.send_describe(b'S', "r").await;
    a.send_close(b'S', "cfg").await;
    a.send_close(b'S', "r").await;
    a.send_sync().await;
    let tags: Vec<u8> = a.recv_until(b'Z').await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1tTtn33Z");

    // Binary results on request: an int4 column in 4 bytes.
    a.send_parse("", "SHOW LISTS", &[]).await;
    a.send_bind_with("", "", &[], &[], &[1]).await;
    a.send_execute("", 1).await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("row");
    let cols = row.columns();
    assert_eq!(cols[0].as_deref(), Some(&b"databases"[..]));
    assert_eq!(cols[1].as_ref().map(|b| b.len()), Some(4));

    // Errors skip to Sync: parameters are refused, and nothing after the error runs.
    a.send_parse("p", "SHOW POOLS", &[23]).await;
    a.send_bind("", "p", &[]).await;
    a.send_execute("", 0).await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"EZ", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "ERROR");
    a.send_parse("", "SHOW POOLS", &[]).await;
    a.send_bind("", "", &[Some(&b"1"[..])]).await;
    a.send_execute("", 0).await;
    a.send_sync().await;
    let tags: Vec<u8> = a.recv_until(b'Z').await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1EZ");
    // Unknown statement / portal.
    a.send_bind("", "nope", &[]).await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(msgs[0].sqlstate(), "26000");
    a.send_execute("nope", 0).await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(msgs[0].sqlstate(), "34000");
    // Malformed bodies are errors, never a crash: truncated Bind, negative counts, a bad
    // Describe kind, an unknown format code.
    for (tag, body) in [
        (b'B', &b"\0"[..]),
        (b'B', &b"\0\0\xff\xff"[..]),
        (b'P', &b"x"[..]),
        (b'D', &b"Q\0"[..]),
        (b'C', &b""[..]),
        (b'E', &b"\0\0"[..]),
    ] {
        let mut raw = vec![tag];
        raw.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        raw.extend_from_slice(body);
        a.send_raw(&raw).await;
        a.send_sync().await;
        let msgs = a.recv_until(b'Z').await;
        assert_eq!(msgs.len(), 2, "{}: {msgs:?}", tag as char);
        assert_eq!(msgs[0].severity(), "ERROR", "{}", tag as char);
    }
    a.send_parse("", "SHOW STATE", &[]).await;
    a.send_bind_with("", "", &[], &[], &[2]).await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(msgs[1].message(), "unsupported format code: 2");

    // Empty query: EmptyQueryResponse, as PostgreSQL.
    a.send_parse("", "", &[]).await;
    a.send_bind("", "", &[]).await;
    a.send_execute("", 0).await;
    a.send_sync().await;
    let tags: Vec<u8> = a.recv_until(b'Z').await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"12IZ");
    // Flush sends what is pending without a Sync.
    a.send_parse("", "SHOW STATE", &[]).await;
    a.send_flush().await;
    assert_eq!(a.recv_msg().await.tag, b'1');
    a.send_sync().await;
    assert_eq!(a.recv_msg().await.tag, b'Z');

    // The simple protocol still works on the same session; Terminate ends it.
    show(&mut a, "SHOW STATE").await;
    a.send_terminate().await;
    assert!(a.recv_until_eof().await.is_empty());
}

#[tokio::test]
async fn psql_show_pools() {
    let p = start("");
    let out = tokio::task::spawn_blocking(move || {
        let out = psql_password(p.port, "pgbouncer", ADMIN, Some(ADMIN_PW), "SHOW POOLS");
        drop(p);
        out
    })
    .await
    .expect("psql task");
    let text = stdout_ok(&out);
    // -A -t: unaligned, tuples only.
    assert!(
        text.lines().any(
            |l| l.starts_with("pgbouncer|pgbouncer|1|0|0|0|0|0|0|0|0|0|0|0|")
                && l.ends_with("|statement|")
        ),
        "{text}"
    );
}
