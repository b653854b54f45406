//! Protocol-level prepared statements in transaction mode (max_prepared_statements):
//! drivers that prepare once and execute many times across transactions that land on
//! different servers, pgbench -M prepared / -M extended, eviction, DDL between
//! executions, DEALLOCATE ALL, long pipelines, errors mid-pipeline, and clients that
//! vanish mid-pipeline. Results are checked row by row: a wrong-row bug fails a test.
//!
//! Every test has its own role, database and pooler (tests run in parallel against one
//! cluster).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster, connect, pgbench, stdout_ok, Msg, Pooler, PoolerBuilder, RawClient};

// ------------------------------------------------------------------ helpers

/// A role `ps_<name>` owning a database `ps_<name>_db`: (database, role).
async fn setup(name: &str) -> (String, String) {
    let pg = cluster();
    let user = format!("ps_{name}");
    let db = format!("ps_{name}_db");
    pg.create_role(&user, None).await;
    pg.create_database(&db, &user).await;
    (db, user)
}

/// A transaction-mode pooler for `db` with `user` in its auth_file (trust).
fn start_pooler(db: &str, user: &str, pool_size: u32, extra: &str) -> Pooler {
    let ini = format!(
        "[databases]\n\
         {db} = host={{pg_host}} port={{pg_port}}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 300\n\
         {extra}"
    );
    PoolerBuilder::new(&ini)
        .userlist(&format!("\"{user}\" \"\"\n"))
        .start()
}

async fn pg_client(p: &Pooler, db: &str, user: &str) -> tokio_postgres::Client {
    connect(p.port, db, user, None)
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres through pgsluice: {e:?}\n{}", p.log()))
}

async fn raw(p: &Pooler, db: &str, user: &str) -> RawClient {
    let mut c = RawClient::connect(p.port).await;
    if let Err(e) = c.login_trust(user, db).await {
        panic!("login as {user}@{db} failed: {e:?}\n{}", p.log());
    }
    c
}

/// Runs `fut`, failing if it takes longer than `secs` seconds.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn no_internal_names(msgs: &[Msg]) {
    for m in msgs {
        if m.tag == b'E' || m.tag == b'N' {
            for (_, v) in m.fields() {
                assert!(!v.contains("PGSLUICE_"), "internal name leaked: {m:?}");
            }
        }
    }
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (d.code().code().to_string(), d.message().to_string())
}

// ------------------------------------------------------------------ drivers

/// 50 tokio-postgres clients over a pool of 3: each prepares once, then runs its
/// statements in many transactions (and outside them), each asking for its own id:
/// every row must be the client's own.
#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_statements_survive_transactions_on_any_server() {
    let (db, user) = setup("tokio").await;
    let p = Arc::new(start_pooler(&db, &user, 3, ""));
    let mut tasks = Vec::new();
    for id in 0..50i32 {
        let p = p.clone();
        let (db, user) = (db.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = pg_client(&p, &db, &user).await;
            let echo = c
                .prepare("SELECT $1::int4 AS id, $2::text AS tag, pg_backend_pid()")
                .await
                .expect("prepare echo");
            let twice = c
                .prepare("SELECT $1::int4 * 2")
                .await
                .expect("prepare twice");
            let mut pids = std::collections::HashSet::new();
            for round in 0..20 {
                let tag = format!("c{id}r{round}");
                let row = c
                    .query_one(&echo, &[&id, &tag])
                    .await
                    .unwrap_or_else(|e| panic!("client {id} round {round}: {e:?}\n{}", p.log()));
                assert_eq!(row.get::<_, i32>(0), id, "wrong row for client {id}");
                assert_eq!(row.get::<_, String>(1), tag, "wrong row for client {id}");
                pids.insert(row.get::<_, i32>(2));
                let tx = c.transaction().await.expect("begin");
                let r = tx.query_one(&twice, &[&id]).await.expect("twice in tx");
                assert_eq!(r.get::<_, i32>(0), id * 2);
                let r = tx.query_one(&echo, &[&id, &tag]).await.expect("echo in tx");
                assert_eq!(r.get::<_, i32>(0), id);
                tx.commit().await.expect("commit");
            }
            pids.len()
        }));
    }
    let mut servers_seen = 0;
    for t in tasks {
        servers_seen = servers_seen.max(within(120, "client", t).await.expect("client task"));
    }
    assert!(
        servers_seen > 1,
        "statements were never used on a second server"
    );
    // SHOW CLIENTS / SERVERS `prepared_statements`: tests/metrics.rs
    // (prepared_statement_counters) checks exact numbers.
}

/// pgbench -M prepared and -M extended, 100 clients over a pool of 10: no failures.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_prepared_and_extended() {
    let (db, user) = setup("bench").await;
    let pg_port = cluster().port().to_string();
    stdout_ok(&pgbench(&[
        "-i", "-s", "1", "-q", "-p", &pg_port, "-U", &user, &db,
    ]));
    let p = start_pooler(&db, &user, 10, "");
    for mode in ["prepared", "extended"] {
        let port = p.port.to_string();
        let (db, user) = (db.clone(), user.clone());
        let out = tokio::task::spawn_blocking(move || {
            pgbench(&[
                "-n", "-M", mode, "-c", "100", "-j", "2", "-t", "20", "-p", &port, "-U", &user, &db,
            ])
        })
        .await
        .expect("pgbench thread");
        let text = stdout_ok(&out);
        assert!(
            text.contains("number of transactions actually processed: 2000/2000"),
            "-M {mode}: {text}\n{}",
            p.log()
        );
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("number of failed transactions"))
        {
            assert!(l.contains(": 0 "), "-M {mode}: {text}");
        }
    }
    let direct = cluster().connect(&db, &user, None).await.expect("direct");
    let row = direct
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_history), \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, \
                    (SELECT sum(abalance) FROM pgbench_accounts)::bigint",
            &[],
        )
        .await
        .expect("balances");
    let (n, delta, a): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(n, 4000);
    assert_eq!(a, delta);
}

/// max_prepared_statements = 2 with 10 distinct statements per client: the servers
/// evict and re-prepare, every answer is right, and no server keeps more than 2.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_with_a_small_cache() {
    let (db, user) = setup("evict").await;
    let p = Arc::new(start_pooler(
        &db,
        &user,
        2,
        &format!("max_prepared_statements = 2\nadmin_users = {user}\n"),
    ));
    let mut tasks = Vec::new();
    for id in 0..6i32 {
        let p = p.clone();
        let (db, user) = (db.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            let c = pg_client(&p, &db, &user).await;
            let mut stmts = Vec::new();
            for k in 0..10 {
                let sql = format!("SELECT $1::int4 + {k}, {k} AS k");
                stmts.push(c.prepare(&sql).await.expect("prepare"));
            }
            for round in 0..10 {
                for (k, s) in stmts.iter().enumerate() {
                    let row = c.query_one(s, &[&id]).await.unwrap_or_else(|e| {
                        panic!("client {id} stmt {k} round {round}: {e:?}\n{}", p.log())
                    });
                    assert_eq!(row.get::<_, i32>(0), id + k as i32);
                    assert_eq!(row.get::<_, i32>(1), k as i32);
                }
            }
        }));
    }
    for t in tasks {
        within(120, "client", t).await.expect("client task");
    }
    // No server holds more than two of our statements (SHOW SERVERS), and SHOW STATS
    // counted the evictions' price: more server parses than the 10 statements.
    let admin = connect(p.port, "pgbouncer", &user, None)
        .await
        .unwrap_or_else(|e| panic!("admin console: {e:?}\n{}", p.log()));
    let rows = admin
        .simple_query("SHOW SERVERS")
        .await
        .expect("SHOW SERVERS");
    let mut servers = 0;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("database") != Some(db.as_str()) {
                continue;
            }
            let n: u64 = r
                .get("prepared_statements")
                .and_then(|n| n.parse().ok())
                .expect("prepared_statements column");
            assert!(n <= 2, "a server holds {n} statements");
            servers += usize::from(n > 0);
        }
    }
    assert!(servers > 0, "no server with statements in SHOW SERVERS");
    let rows = admin.simple_query("SHOW STATS").await.expect("SHOW STATS");
    let parses: u64 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some(&db) => r
                .get("total_server_parse_count")
                .and_then(|n| n.parse().ok()),
            _ => None,
        })
        .expect("SHOW STATS row");
    assert!(parses > 10, "server parses {parses}");
}

// ------------------------------------------------------------------ semantics

/// ALTER TABLE between executions: the prepared SELECT * fails as it would on a direct
/// connection ("cached plan must not change result type"), and after the client
/// prepares it again it works (pgsluice drops the stale statement everywhere: no
/// RECONNECT needed, unlike PgBouncer #1038). One server, so the statement the client
/// uses is the one prepared before the DDL.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_between_executions() {
    let (db, user) = setup("ddl").await;
    let su = cluster().connect(&db, &user, None).await.expect("direct");
    su.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .expect("create");
    let p = start_pooler(&db, &user, 1, "");
    let c = pg_client(&p, &db, &user).await;
    let other = pg_client(&p, &db, &user).await;
    let s = c.prepare("SELECT * FROM t").await.expect("prepare");
    let s2 = other
        .prepare("SELECT * FROM t")
        .await
        .expect("prepare other");
    // Warm both servers.
    for _ in 0..5 {
        let (a, b) = tokio::join!(c.query(&s, &[]), other.query(&s2, &[]));
        assert_eq!(a.expect("query").len(), 1);
        assert_eq!(b.expect("query").len(), 1);
    }
    su.batch_execute("ALTER TABLE t ADD COLUMN b int")
        .await
        .expect("alter");
    // A direct connection does the same: the old statement's result type changed.
    let d = cluster().connect(&db, &user, None).await.expect("direct");
    let ds = d.prepare("SELECT * FROM t").await.expect("prepare direct");
    su.batch_execute("ALTER TABLE t ADD COLUMN c int")
        .await
        .expect("alter");
    let direct_err = d.query(&ds, &[]).await.err();
    let ours = c.query(&s, &[]).await;
    match (&direct_err, &ours) {
        (Some(de), Err(e)) => assert_eq!(db_error(de), db_error(e)),
        (_, Ok(rows)) => assert_eq!(rows.len(), 1),
        (None, Err(e)) => panic!("pgsluice failed where PostgreSQL did not: {e:?}"),
    }
    // The client prepares again: works, whichever server it lands on.
    let s = c.prepare("SELECT * FROM t").await.expect("re-prepare");
    let s2 = other
        .prepare("SELECT * FROM t")
        .await
        .expect("re-prepare other");
    for _ in 0..6 {
        let (a, b) = tokio::join!(c.query(&s, &[]), other.query(&s2, &[]));
        let a = a.unwrap_or_else(|e| panic!("after re-prepare: {e:?}\n{}", p.log()));
        let b = b.unwrap_or_else(|e| panic!("after re-prepare (other): {e:?}"));
        assert_eq!(a[0].len(), 3);
        assert_eq!(b[0].len(), 3);
    }
}

/// DEALLOCATE ALL from one client clears its own statements only.
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_all_is_per_client() {
    let (db, user) = setup("dealloc").await;
    let p = start_pooler(&db, &user, 1, "");
    let a = pg_client(&p, &db, &user).await;
    let b = pg_client(&p, &db, &user).await;
    let sa = a.prepare("SELECT 1::int4").await.expect("prepare a");
    let sb = b.prepare("SELECT 1::int4").await.expect("prepare b");
    assert_eq!(a.query_one(&sa, &[]).await.expect("a").get::<_, i32>(0), 1);
    a.batch_execute("DEALLOCATE ALL")
        .await
        .expect("deallocate all");
    // The other client's statement still works (the server prepares it again).
    for _ in 0..3 {
        assert_eq!(b.query_one(&sb, &[]).await.expect("b").get::<_, i32>(0), 1);
    }
    // Our own is gone, as in PostgreSQL.
    let e = a.query_one(&sa, &[]).await.expect_err("deallocated");
    assert_eq!(db_error(&e).0, "26000", "{e:?}");
    assert!(!format!("{e:?}").contains("PGSLUICE_"));
    // DISCARD ALL too.
    let sa = a.prepare("SELECT 2::int4").await.expect("prepare again");
    assert_eq!(a.query_one(&sa, &[]).await.expect("a").get::<_, i32>(0), 2);
    a.batch_execute("DISCARD ALL").await.expect("discard all");
    assert_eq!(b.query_one(&sb, &[]).await.expect("b").get::<_, i32>(0), 1);
    let sa = a
        .prepare("SELECT 2::int4")
        .await
        .expect("prepare after discard");
    assert_eq!(a.query_one(&sa, &[]).await.expect("a").get::<_, i32>(0), 2);
}

/// 1,000 Bind/Execute of one named statement before one Sync.
#[tokio::test(flavor = "multi_thread")]
async fn pipeline_of_a_thousand_binds() {
    let (db, user) = setup("pipe").await;
    let p = start_pooler(&db, &user, 2, "");
    let mut c = raw(&p, &db, &user).await;
    c.send_parse("s1", "SELECT $1::int4", &[]).await;
    c.send_sync().await;
    let m = within(10, "parse", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "1Z");
    c.cork();
    for i in 0..1000 {
        let v = i.to_string();
        c.send_bind("", "s1", &[Some(v.as_bytes())]).await;
        c.send_execute("", 0).await;
    }
    c.send_sync().await;
    c.uncork().await;
    let m = within(30, "pipeline", c.recv_until(b'Z')).await;
    let rows: Vec<String> = m
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.text_columns()[0].clone().unwrap_or_default())
        .collect();
    assert_eq!(rows.len(), 1000, "{}", tags(&m[..20.min(m.len())]));
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r, &i.to_string());
    }
    assert_eq!(m.iter().filter(|m| m.tag == b'2').count(), 1000);
}

/// Named Parse of a name in use: ERROR 42P05 in order, the batch is skipped to Sync,
/// and the session goes on. Bind/Describe of an unknown name: ERROR 26000 with the
/// client's name.
#[tokio::test(flavor = "multi_thread")]
async fn existing_and_unknown_names() {
    let (db, user) = setup("names").await;
    let p = start_pooler(&db, &user, 1, "");
    let mut c = raw(&p, &db, &user).await;
    c.send_parse("s1", "SELECT 1", &[]).await;
    c.send_sync().await;
    assert_eq!(tags(&within(10, "parse", c.recv_until(b'Z')).await), "1Z");
    // Same name again, then messages the server must skip.
    c.send_parse("s1", "SELECT 2", &[]).await;
    c.send_bind("", "s1", &[]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
    let m = within(10, "dup", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "EZ");
    assert_eq!(m[0].sqlstate(), "42P05");
    assert_eq!(m[0].message(), "prepared statement \"s1\" already exists");
    no_internal_names(&m);
    // Unknown name on Bind and on Describe.
    c.send_bind("", "nope", &[]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
    let m = within(10, "bind unknown", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "EZ");
    assert_eq!(m[0].sqlstate(), "26000");
    assert_eq!(m[0].message(), "prepared statement \"nope\" does not exist");
    c.send_describe(b'S', "nope2").await;
    c.send_sync().await;
    let m = within(10, "describe unknown", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "EZ");
    assert_eq!(
        m[0].message(),
        "prepared statement \"nope2\" does not exist"
    );
    // The original statement still works; Describe it; Close it; then it is gone.
    c.send_describe(b'S', "s1").await;
    c.send_bind("", "s1", &[]).await;
    c.send_execute("", 0).await;
    c.send_close(b'S', "s1").await;
    c.send_sync().await;
    let m = within(10, "use", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "tT2DC3Z");
    c.send_bind("", "s1", &[]).await;
    c.send_sync().await;
    let m = within(10, "closed", c.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "EZ");
    assert_eq!(m[0].sqlstate(), "26000");
    // Inside a transaction block an error aborts it, as in PostgreSQL.
    c.send_query("BEGIN").await;
    within(10, "begin", c.recv_until(b'Z')).await;
    c.send_bind("", "nope", &[]).await;
    c.send_sync().await;
    let m = within(10, "in tx", c.recv_until(b'Z')).await;
    assert_eq!(m.last().map(|m| m.ready_status()), Some(b'E'));
    c.send_query("ROLLBACK").await;
    within(10, "rollback", c.recv_until(b'Z')).await;
}

/// Errors mid-pipeline (unnamed and named statements) never show an internal name, the
/// answers stay in order, and later batches are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn errors_mid_pipeline() {
    let (db, user) = setup("errs").await;
    let p = start_pooler(&db, &user, 1, "");
    let mut c = raw(&p, &db, &user).await;
    c.cork();
    // Batch 1: a named statement that fails to parse; the rest is skipped.
    c.send_parse("bad", "SELEC 1", &[]).await;
    c.send_bind("", "bad", &[]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
    // Batch 2: a good named statement, then a runtime error, then skipped messages.
    // random() keeps the division from being folded at Bind: it fails at Execute.
    c.send_parse("good", "SELECT 10 / ($1::int4 + (random() * 0)::int4)", &[])
        .await;
    c.send_bind("", "good", &[Some(b"0")]).await;
    c.send_execute("", 0).await;
    c.send_parse("later", "SELECT 3", &[]).await;
    c.send_sync().await;
    // Batch 3: the good statement works, "later" and "bad" do not exist.
    c.send_bind("", "good", &[Some(b"5")]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
    c.send_bind("", "later", &[]).await;
    c.send_sync().await;
    c.send_bind("", "bad", &[]).await;
    c.send_sync().await;
    // Unnamed statement errors pass through.
    c.send_parse("", "SELECT nope", &[]).await;
    c.send_sync().await;
    c.uncork().await;
    let mut all = Vec::new();
    for _ in 0..6 {
        all.push(within(10, "batch", c.recv_until(b'Z')).await);
    }
    for b in &all {
        no_internal_names(b);
    }
    assert_eq!(tags(&all[0]), "EZ");
    assert_eq!(all[0][0].sqlstate(), "42601");
    assert_eq!(tags(&all[1]), "12EZ");
    assert_eq!(all[1][2].sqlstate(), "22012");
    assert_eq!(tags(&all[2]), "2DCZ");
    assert_eq!(all[2][1].text_columns()[0].as_deref(), Some("2"));
    assert_eq!(tags(&all[3]), "EZ");
    assert_eq!(
        all[3][0].message(),
        "prepared statement \"later\" does not exist"
    );
    assert_eq!(tags(&all[4]), "EZ");
    assert_eq!(
        all[4][0].message(),
        "prepared statement \"bad\" does not exist"
    );
    assert_eq!(tags(&all[5]), "EZ");
}

/// A client that disconnects mid-pipeline leaves no backend behind in ClientRead or
/// active: the server is closed or comes back idle.
#[tokio::test(flavor = "multi_thread")]
async fn client_gone_mid_pipeline() {
    let (db, user) = setup("gone").await;
    let p = start_pooler(&db, &user, 2, "");
    for _ in 0..3 {
        let mut c = raw(&p, &db, &user).await;
        c.send_parse("s", "SELECT pg_sleep(0.2), $1::int4", &[])
            .await;
        c.send_bind("", "s", &[Some(b"1")]).await;
        c.send_execute("", 0).await;
        c.send_flush().await;
        drop(c);
    }
    let pg = cluster();
    for state in ["active", "idle in transaction"] {
        let n = pg
            .wait_for_backends(
                Some(&db),
                Some(&user),
                Some(state),
                0,
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(n, 0, "backends left {state}");
    }
    // The pool still serves prepared statements.
    let c = pg_client(&p, &db, &user).await;
    let s = c.prepare("SELECT $1::int4").await.expect("prepare");
    assert_eq!(
        c.query_one(&s, &[&7i32]).await.expect("q").get::<_, i32>(0),
        7
    );
}

/// PgBouncer #1038, on two servers, through Bind and Describe('S'): DDL changes the result
/// type of a statement every server has prepared. Old handles answer as on a direct
/// connection ("cached plan must not change result type", 0A000, for good — never rows of
/// a shape the client was not described), and preparing again works at once on every
/// server, including one that still holds the stale plan: no RECONNECT.
#[tokio::test(flavor = "multi_thread")]
async fn stale_plan_after_ddl_and_preparing_again() {
    let (db, user) = setup("stale").await;
    let su = cluster().connect(&db, &user, None).await.expect("direct");
    su.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .expect("create");
    let p = start_pooler(&db, &user, 2, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;

    async fn begin(c: &mut RawClient) {
        c.send_query("BEGIN").await;
        let m = within(10, "begin", c.recv_until(b'Z')).await;
        assert_eq!(m.last().map(|m| m.ready_status()), Some(b'T'));
    }
    async fn query(c: &mut RawClient, sql: &str) {
        c.send_query(sql).await;
        let m = within(10, sql, c.recv_until(b'Z')).await;
        assert!(!m.iter().any(|m| m.is_error()), "{sql}: {m:?}");
    }
    async fn exec(c: &mut RawClient, name: &str, what: &str) -> Vec<Msg> {
        c.send_bind("", name, &[]).await;
        c.send_execute("", 0).await;
        c.send_sync().await;
        let m = within(10, what, c.recv_until(b'Z')).await;
        no_internal_names(&m);
        m
    }
    /// PostgreSQL's own stale-plan error, routine field included (asyncpg relies on it).
    fn stale(m: &[Msg]) {
        assert_eq!(tags(m), "EZ", "{m:?}");
        assert_eq!(m[0].sqlstate(), "0A000");
        assert_eq!(m[0].message(), "cached plan must not change result type");
        assert_eq!(m[0].field(b'R').as_deref(), Some("RevalidateCachedQuery"));
    }
    /// Both clients in a transaction at once: each holds its own server.
    async fn on_both_servers(a: &mut RawClient, b: &mut RawClient) {
        begin(a).await;
        begin(b).await;
        let mut pids = Vec::new();
        for c in [a, b] {
            c.send_query("SELECT pg_backend_pid()").await;
            let m = within(10, "pid", c.recv_until(b'Z')).await;
            let d = m.iter().find(|m| m.tag == b'D').expect("pid row");
            pids.push(d.text_columns()[0].clone().unwrap_or_default());
        }
        assert_ne!(pids[0], pids[1], "two transactions at once on one server?");
    }

    // Both servers prepare "s".
    on_both_servers(&mut a, &mut b).await;
    for c in [&mut a, &mut b] {
        c.send_parse("s", "SELECT * FROM t", &[]).await;
        let m = exec(c, "s", "warm").await;
        assert_eq!(tags(&m), "12DCZ", "{m:?}");
    }
    query(&mut a, "COMMIT").await;
    query(&mut b, "COMMIT").await;

    su.batch_execute("ALTER TABLE t ADD COLUMN b int")
        .await
        .expect("alter");

    // Old handles fail as on a direct connection, on both servers, every time.
    on_both_servers(&mut a, &mut b).await;
    stale(&exec(&mut a, "s", "a after DDL").await);
    stale(&exec(&mut b, "s", "b after DDL").await);
    query(&mut a, "ROLLBACK").await;
    query(&mut b, "ROLLBACK").await;
    for c in [&mut a, &mut b] {
        stale(&exec(c, "s", "old handle again").await);
        c.send_describe(b'S', "s").await;
        c.send_sync().await;
        let m = within(10, "describe old handle", c.recv_until(b'Z')).await;
        stale(&m);
    }

    // Preparing again works on both servers at once, though one of them may still hold
    // the stale plan under the statement's old server-side name.
    on_both_servers(&mut a, &mut b).await;
    a.send_close(b'S', "s").await;
    a.send_parse("s", "SELECT * FROM t", &[]).await;
    a.send_describe(b'S', "s").await;
    a.send_sync().await;
    let m = within(10, "prepare again", a.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "31tTZ", "{m:?}\n{}", p.log());
    b.send_parse("s2", "SELECT * FROM t", &[]).await;
    b.send_sync().await;
    assert_eq!(tags(&within(10, "b", b.recv_until(b'Z')).await), "1Z");
    for (c, name) in [(&mut a, "s"), (&mut b, "s2")] {
        let m = exec(c, name, "after preparing again").await;
        assert_eq!(tags(&m), "2DCZ", "{m:?}\n{}", p.log());
        assert_eq!(m[1].text_columns().len(), 2);
    }
    query(&mut a, "COMMIT").await;
    query(&mut b, "COMMIT").await;
    // New clients too (tokio-postgres), on whichever server.
    let c1 = pg_client(&p, &db, &user).await;
    let c2 = pg_client(&p, &db, &user).await;
    let s1 = c1
        .prepare("SELECT * FROM t")
        .await
        .expect("prepare after DDL");
    let s2 = c2
        .prepare("SELECT * FROM t")
        .await
        .expect("prepare after DDL");
    assert_eq!(s1.columns().len(), 2);
    for _ in 0..6 {
        let (x, y) = tokio::join!(c1.query(&s1, &[]), c2.query(&s2, &[]));
        assert_eq!(x.expect("query after DDL")[0].len(), 2);
        assert_eq!(y.expect("query after DDL")[0].len(), 2);
    }

    // Describe('S') meets a stale plan too (PostgreSQL revalidates for it): a client that
    // prepares the text after the next DDL shares the cached statement, its Describe
    // fails with the stale-plan error, and preparing again works.
    su.batch_execute("ALTER TABLE t ADD COLUMN c int")
        .await
        .expect("alter again");
    let mut d = raw(&p, &db, &user).await;
    d.send_parse("x", "SELECT * FROM t", &[]).await;
    d.send_describe(b'S', "x").await;
    d.send_sync().await;
    let m = within(10, "describe after DDL", d.recv_until(b'Z')).await;
    no_internal_names(&m);
    // ParameterDescription goes out before PostgreSQL revalidates for RowDescription.
    assert_eq!(tags(&m), "1tEZ", "{m:?}");
    assert_eq!(m[2].sqlstate(), "0A000");
    stale(&exec(&mut d, "x", "bind after the failed describe").await);
    stale(&exec(&mut a, "s", "a's statement, invalidated by d's error").await);
    d.send_close(b'S', "x").await;
    d.send_parse("x", "SELECT * FROM t", &[]).await;
    d.send_describe(b'S', "x").await;
    d.send_bind("", "x", &[]).await;
    d.send_execute("", 0).await;
    d.send_sync().await;
    let m = within(10, "prepare again", d.recv_until(b'Z')).await;
    assert_eq!(tags(&m), "31tT2DCZ", "{m:?}\n{}", p.log());
    assert_eq!(m[5].text_columns().len(), 3);
}

/// Server errors that name a statement (wrong parameter count on Bind) say the client's
/// name; a standalone Describe('S') of a statement the server evicted gets it parsed
/// again first (answer swallowed); unnamed statements pass through untouched. No
/// `PGSLUICE_` name in any answer.
#[tokio::test(flavor = "multi_thread")]
async fn internal_names_never_reach_the_client() {
    let (db, user) = setup("leak").await;
    let p = start_pooler(&db, &user, 1, "max_prepared_statements = 1");
    let mut c = raw(&p, &db, &user).await;
    async fn batch(c: &mut RawClient, what: &str) -> Vec<Msg> {
        c.send_sync().await;
        let m = within(10, what, c.recv_until(b'Z')).await;
        no_internal_names(&m);
        m
    }
    // A named statement's own error from the server.
    c.send_parse("s1", "SELECT $1::int4", &[]).await;
    assert_eq!(tags(&batch(&mut c, "parse s1").await), "1Z");
    c.send_bind("", "s1", &[]).await;
    c.send_execute("", 0).await;
    let m = batch(&mut c, "bind with too few parameters").await;
    assert_eq!(tags(&m), "EZ");
    assert_eq!(m[0].sqlstate(), "08P01");
    assert!(
        m[0].message().contains("prepared statement \"s1\""),
        "{:?}",
        m[0]
    );
    // s2 evicts s1 (capacity 1); a standalone Describe of s1 parses it again unseen.
    c.send_parse("s2", "SELECT 2::int4, $1::text", &[]).await;
    assert_eq!(tags(&batch(&mut c, "parse s2").await), "1Z");
    c.send_describe(b'S', "s1").await;
    let m = batch(&mut c, "describe evicted s1").await;
    assert_eq!(tags(&m), "tTZ", "{m:?}");
    c.send_describe(b'S', "s2").await;
    c.send_bind("", "s2", &[Some(b"x")]).await;
    c.send_execute("", 0).await;
    let m = batch(&mut c, "describe and run s2").await;
    assert_eq!(tags(&m), "tT2DCZ", "{m:?}");
    assert_eq!(
        m[3].text_columns(),
        [Some("2".to_string()), Some("x".to_string())]
    );
    // Unnamed statements: untouched, errors included.
    c.send_parse("", "SELECT $1::int4 + 1", &[]).await;
    c.send_describe(b'S', "").await;
    c.send_bind("", "", &[Some(b"41")]).await;
    c.send_execute("", 0).await;
    let m = batch(&mut c, "unnamed").await;
    assert_eq!(tags(&m), "1tT2DCZ", "{m:?}");
    assert_eq!(m[4].text_columns()[0].as_deref(), Some("42"));
    c.send_bind("", "", &[]).await;
    c.send_execute("", 0).await;
    let m = batch(&mut c, "unnamed, too few parameters").await;
    assert_eq!(tags(&m), "EZ");
    assert!(
        m[0].message().contains("prepared statement \"\""),
        "{:?}",
        m[0]
    );
    // The named ones still work after all that.
    c.send_bind("", "s1", &[Some(b"7")]).await;
    c.send_execute("", 0).await;
    let m = batch(&mut c, "s1 again").await;
    assert_eq!(tags(&m), "2DCZ", "{m:?}");
    assert_eq!(m[1].text_columns()[0].as_deref(), Some("7"));
}
