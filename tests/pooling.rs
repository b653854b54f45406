//! Pooling behaviour seen from clients: pool_size, the reserve pool, max_db_connections and
//! max_user_connections across pools, query_wait_timeout, FIFO hand-off, the three pool
//! modes, tracked parameters, pgbench consistency, fast failure of server logins,
//! min_pool_size, server_idle_timeout and dead idle servers.
//!
//! Every test starts its own pgsluice and uses its own database and role(s) on the shared
//! test cluster, so the `pg_stat_activity` counts it asserts on are its own.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster, connect, connect_with, db_error_text, pg_config, pgbench, stdout_ok};
use common::{Pooler, PoolerBuilder};
use tokio_postgres::Client;

// ------------------------------------------------------------------ helpers

/// A `[databases]` line for `name`, pointing at the test cluster's database of the same
/// name, plus `extra` connection-string keys.
fn entry(name: &str, extra: &str) -> String {
    format!("{name} = host={{pg_host}} port={{pg_port}} dbname={name} {extra}")
}

/// Starts pgsluice with the given `[databases]` lines and `[pgbouncer]` settings (on top
/// of the common listen/auth ones); `users` go into the auth_file with empty passwords.
fn start(databases: &[String], settings: &str, users: &[&str]) -> Pooler {
    let ini = format!(
        "[databases]\n{}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         {settings}\n",
        databases.join("\n")
    );
    let userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
    PoolerBuilder::new(&ini).userlist(&userlist).start()
}

/// Creates the roles, then each database owned by the first role.
async fn prepare(dbs: &[&str], users: &[&str]) {
    let pg = cluster();
    for u in users {
        pg.create_role(u, None).await;
    }
    for d in dbs {
        pg.create_database(d, users[0]).await;
    }
}

/// A client of the pooler (trust auth).
async fn pooled(p: &Pooler, db: &str, user: &str) -> Client {
    within(
        10,
        &format!("connect {user}@{db} through pgsluice"),
        async {
            connect(p.port, db, user, None).await.unwrap_or_else(|e| {
                panic!("connect {user}@{db} through pgsluice: {e:?}\n{}", p.log())
            })
        },
    )
    .await
}

/// Runs `fut`, panicking if it takes longer than `secs` seconds (no test may hang).
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// The first column of the first row of `sql`, sent with the simple query protocol.
///
/// Outside an explicit transaction, transaction-mode tests use only this: it is one
/// request, so it runs on one server. tokio-postgres' `query*` methods prepare a named
/// statement in one request and execute it in the next, and those two may land on
/// different servers of the pool (pgsluice does not track protocol-level prepared
/// statements yet, whatever max_prepared_statements says).
async fn simple_value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let rows = c.simple_query(sql).await?;
    Ok(rows
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

async fn backend_pid(c: &Client) -> i32 {
    simple_value(c, "SELECT pg_backend_pid()")
        .await
        .expect("SELECT pg_backend_pid()")
        .parse()
        .expect("a pid")
}

async fn show(c: &Client, name: &str) -> String {
    simple_value(c, &format!("SHOW {name}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e:?}"))
}

const PIDS_SQL: &str = "SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
       AND ($1::text IS NULL OR datname = $1) AND ($2::text IS NULL OR usename = $2)";

/// Pids of the client backends of `db` / `user` (`None` = any), on a held connection.
async fn backend_pids(su: &Client, db: Option<&str>, user: Option<&str>) -> Vec<i32> {
    su.query_one(PIDS_SQL, &[&db, &user])
        .await
        .expect("reading pg_stat_activity")
        .get(0)
}

async fn count(su: &Client, db: Option<&str>, user: Option<&str>) -> usize {
    backend_pids(su, db, user).await.len()
}

/// Polls until the number of backends of `db` / `user` is `n`; returns the last count.
async fn wait_count(
    su: &Client,
    db: Option<&str>,
    user: Option<&str>,
    n: usize,
    secs: u64,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = count(su, db, user).await;
        if c == n || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a [`Watch`] saw.
#[derive(Debug)]
struct Watched {
    /// Highest number of backends in any sample.
    max: usize,
    samples: u64,
    /// Samples above the limit whose backends were still all there 200 ms later, i.e. not
    /// a closed server's backend that had not finished exiting yet.
    confirmed: Vec<Vec<i32>>,
}

/// Samples `pg_stat_activity` for a database and/or user in the background.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Watched>,
}

impl Watch {
    async fn start(db: Option<&str>, user: Option<&str>, limit: usize) -> Watch {
        let su = cluster().superuser().await;
        let (db, user) = (db.map(str::to_owned), user.map(str::to_owned));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut w = Watched {
                max: 0,
                samples: 0,
                confirmed: Vec::new(),
            };
            while !flag.load(Ordering::Acquire) {
                let pids = backend_pids(&su, db.as_deref(), user.as_deref()).await;
                w.samples += 1;
                w.max = w.max.max(pids.len());
                if pids.len() > limit {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let alive: i64 = su
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                            &[&pids],
                        )
                        .await
                        .expect("recheck pids")
                        .get(0);
                    if alive as usize > limit {
                        w.confirmed.push(pids);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            w
        });
        Watch { stop, task }
    }

    async fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("watch task")
    }
}

// ------------------------------------------------------------------ 1. pool_size

/// 200 clients running short transactions through a pool of 5: PostgreSQL never sees more
/// than 5 backends for the pool, every client succeeds, and all 600 transactions ran on
/// exactly 5 distinct backends (the pool grew to its size and its servers were reused,
/// not churned).
#[tokio::test(flavor = "multi_thread")]
async fn pool_size_is_never_exceeded_with_200_clients() {
    let (db, user) = ("pl_size_db", "pl_size_user");
    prepare(&[db], &[user]).await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 250",
        &[user],
    );
    let watch = Watch::start(Some(db), Some(user), 5).await;
    let port = p.port;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let c = connect(port, db, user, None)
                    .await
                    .map_err(|e| format!("connect: {e:?}"))?;
                let mut pids = Vec::new();
                for _ in 0..3 {
                    c.batch_execute("BEGIN")
                        .await
                        .map_err(|e| format!("BEGIN: {e:?}"))?;
                    let pid: i32 = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .map_err(|e| format!("SELECT: {e:?}"))?
                        .get(0);
                    c.batch_execute("SELECT pg_sleep(0.01)")
                        .await
                        .map_err(|e| format!("pg_sleep: {e:?}"))?;
                    c.batch_execute("COMMIT")
                        .await
                        .map_err(|e| format!("COMMIT: {e:?}"))?;
                    pids.push(pid);
                }
                Ok::<_, String>(pids)
            })
        })
        .collect();
    let results = within(60, "200 clients", futures_util::future::join_all(tasks)).await;
    let watched = watch.finish().await;
    let mut pids = BTreeSet::new();
    let mut errors = Vec::new();
    for r in results {
        match r.expect("client task") {
            Ok(v) => pids.extend(v),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "{} clients failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(watched.samples >= 10, "too few samples: {watched:?}");
    assert!(
        watched.max <= 5,
        "more than 5 backends at once: {watched:?}"
    );
    assert!(
        watched.max >= 1,
        "the sampler never saw a backend: {watched:?}"
    );
    assert_eq!(
        pids.len(),
        5,
        "under this load the pool grows to exactly pool_size servers and reuses them: {pids:?}"
    );
}

// ------------------------------------------------------------------ 2. multiplexing

/// 50 clients share 3 servers in transaction mode. Each transaction stays on one backend
/// from BEGIN to COMMIT, and exactly the committed rows are in the table: none lost, none
/// doubled, each with the backend pid its client saw.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_multiplexes_without_losing_commits() {
    let (db, user) = ("pl_mux_db", "pl_mux_user");
    prepare(&[db], &[user]).await;
    let direct = cluster()
        .connect(db, user, None)
        .await
        .expect("direct connect");
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS mux; \
             CREATE TABLE mux (client int, n int, pid int, PRIMARY KEY (client, n))",
        )
        .await
        .expect("create table");
    drop(direct);
    let su = cluster().superuser().await;
    assert_eq!(wait_count(&su, Some(db), Some(user), 0, 5).await, 0);
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 3",
        &[user],
    );
    let watch = Watch::start(Some(db), Some(user), 3).await;
    let port = p.port;
    let tasks: Vec<_> = (0..50i32)
        .map(|client| {
            tokio::spawn(async move {
                let c = connect(port, db, user, None)
                    .await
                    .map_err(|e| format!("connect: {e:?}"))?;
                let mut done = Vec::new();
                for n in 0..4i32 {
                    let step = |what: &'static str| {
                        move |e| format!("client {client} tx {n} {what}: {e:?}")
                    };
                    c.batch_execute("BEGIN").await.map_err(step("BEGIN"))?;
                    let first: i32 = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .map_err(step("pid"))?
                        .get(0);
                    c.execute(
                        "INSERT INTO mux VALUES ($1, $2, pg_backend_pid())",
                        &[&client, &n],
                    )
                    .await
                    .map_err(step("INSERT"))?;
                    let last: i32 = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .map_err(step("pid"))?
                        .get(0);
                    c.batch_execute("COMMIT").await.map_err(step("COMMIT"))?;
                    if first != last {
                        return Err(format!(
                            "client {client} tx {n} moved from backend {first} to {last}"
                        ));
                    }
                    done.push((client, n, first));
                }
                Ok::<_, String>(done)
            })
        })
        .collect();
    let results = within(60, "50 clients", futures_util::future::join_all(tasks)).await;
    let watched = watch.finish().await;
    let mut expected = Vec::new();
    for r in results {
        expected.extend(r.expect("client task").unwrap_or_else(|e| panic!("{e}")));
    }
    expected.sort();
    let direct = cluster()
        .connect(db, user, None)
        .await
        .expect("direct connect");
    let rows: Vec<(i32, i32, i32)> = direct
        .query("SELECT client, n, pid FROM mux ORDER BY client, n", &[])
        .await
        .expect("read rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 200, "50 clients x 4 commits");
    assert_eq!(rows, expected);
    let pids: BTreeSet<i32> = rows.iter().map(|r| r.2).collect();
    assert!(pids.len() <= 3, "rows written by {} backends", pids.len());
    assert!(
        watched.max <= 3,
        "more than 3 backends at once: {watched:?}"
    );
}

// ------------------------------------------------------------------ 3. reserve pool

/// Two clients hold both servers of a pool of 2 in open transactions. With
/// reserve_pool_size = 2 and reserve_pool_timeout = 1, a third client's query waits about
/// a second and then runs on a reserve server (3 backends). With reserve_pool_size = 0 it
/// waits until one of the two servers is released and never gets a third backend.
#[tokio::test(flavor = "multi_thread")]
async fn reserve_pool_is_used_only_after_reserve_pool_timeout() {
    let (db, user, user0) = ("pl_rsv_db", "pl_rsv_user", "pl_rsv0_user");
    prepare(&[db], &[user, user0]).await;
    let su = cluster().superuser().await;

    // --- with a reserve pool
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 2\n\
         reserve_pool_size = 2\nreserve_pool_timeout = 1.0",
        &[user],
    );
    let a = pooled(&p, db, user).await;
    let b = pooled(&p, db, user).await;
    let c = Arc::new(pooled(&p, db, user).await);
    a.batch_execute("BEGIN; SELECT 1").await.expect("A BEGIN");
    b.batch_execute("BEGIN; SELECT 1").await.expect("B BEGIN");
    assert_eq!(wait_count(&su, Some(db), Some(user), 2, 5).await, 2);

    let started = Instant::now();
    let cc = c.clone();
    let third = tokio::spawn(async move {
        let pid = backend_pid(&cc).await;
        (pid, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third client got a server before reserve_pool_timeout"
    );
    assert_eq!(
        count(&su, Some(db), Some(user)).await,
        2,
        "a reserve server was opened early"
    );
    let (pid, waited) = within(10, "third client's query", third)
        .await
        .expect("third task");
    assert!(
        waited >= Duration::from_millis(900),
        "reserve server used after {waited:?}, before reserve_pool_timeout = 1 s"
    );
    assert!(
        waited < Duration::from_secs(6),
        "reserve server only after {waited:?}"
    );
    let pids = backend_pids(&su, Some(db), Some(user)).await;
    assert_eq!(pids.len(), 3, "pool of 2 plus one reserve server: {pids:?}");
    assert!(pids.contains(&pid));
    a.batch_execute("COMMIT").await.expect("A COMMIT");
    b.batch_execute("COMMIT").await.expect("B COMMIT");
    drop(p);

    // --- without a reserve pool
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 2\n\
         reserve_pool_size = 0\nreserve_pool_timeout = 1.0",
        &[user0],
    );
    let a = pooled(&p, db, user0).await;
    let b = pooled(&p, db, user0).await;
    let c = Arc::new(pooled(&p, db, user0).await);
    a.batch_execute("BEGIN; SELECT 1").await.expect("A BEGIN");
    b.batch_execute("BEGIN; SELECT 1").await.expect("B BEGIN");
    assert_eq!(wait_count(&su, Some(db), Some(user0), 2, 5).await, 2);
    let cc = c.clone();
    let third = tokio::spawn(async move { backend_pid(&cc).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !third.is_finished(),
        "the third client got a server though the pool is full"
    );
    assert_eq!(count(&su, Some(db), Some(user0)).await, 2);
    let a_pid = backend_pid(&a).await;
    a.batch_execute("COMMIT").await.expect("A COMMIT");
    let pid = within(5, "third client after A's COMMIT", third)
        .await
        .expect("third task");
    assert_eq!(pid, a_pid, "the third client gets A's released server");
    assert_eq!(count(&su, Some(db), Some(user0)).await, 2);
    b.batch_execute("COMMIT").await.expect("B COMMIT");
}

// ------------------------------------------------------------------ 4./5. shared limits

/// Two pools (`a` and `b`, each a (db, user) pair) that share a limit of 3 servers
/// (max_db_connections or max_user_connections), with pool_size 5 each:
/// 1. pool a opens 3 transactions while pool b holds an idle server from its login: b's
///    idle server is evicted so that a gets all 3;
/// 2. a's servers go idle; pool b opens 3 transactions and gets them by evicting a's idle
///    servers;
/// 3. pool a opens 3 transactions while b holds all 3: they queue, and are served one by
///    one as b's transactions end.
///
/// Throughout, the database/user never has more than 3 backends.
async fn shared_limit(
    p: &Pooler,
    a: (&'static str, &'static str),
    b: (&'static str, &'static str),
    watch_db: Option<&str>,
    watch_user: Option<&str>,
) {
    let su = cluster().superuser().await;
    let mut ca = Vec::new();
    let mut cb = Vec::new();
    for _ in 0..3 {
        ca.push(Arc::new(pooled(p, a.0, a.1).await));
    }
    for _ in 0..3 {
        cb.push(Arc::new(pooled(p, b.0, b.1).await));
    }
    let watch = Watch::start(watch_db, watch_user, 3).await;

    async fn begin_all(clients: &[Arc<Client>]) -> Vec<i32> {
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.batch_execute("BEGIN").await.expect("BEGIN");
                    backend_pid(&c).await
                })
            })
            .collect();
        futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("BEGIN task"))
            .collect()
    }
    async fn commit_all(clients: &[Arc<Client>]) {
        for c in clients {
            c.batch_execute("COMMIT").await.expect("COMMIT");
        }
    }

    // 1. a takes all 3 (b's idle login server is evicted).
    let pids = within(10, "phase 1: pool a opens 3 transactions", begin_all(&ca)).await;
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 3, "{pids:?}");
    commit_all(&ca).await;

    // 2. b takes all 3 from a's idle servers.
    let pids = within(
        10,
        "phase 2: pool b opens 3 transactions (a's servers idle)",
        begin_all(&cb),
    )
    .await;
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 3, "{pids:?}");

    // 3. a queues behind b's open transactions.
    let ca2 = ca.clone();
    let queued = tokio::spawn(async move { begin_all(&ca2).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !queued.is_finished(),
        "pool a got a server beyond the shared limit"
    );
    assert!(count(&su, watch_db, watch_user).await <= 3);
    for c in &cb {
        c.batch_execute("COMMIT").await.expect("b COMMIT");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pids = within(10, "phase 3: pool a's queued transactions", queued)
        .await
        .expect("queued task");
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 3, "{pids:?}");
    commit_all(&ca).await;

    // Both pools still work.
    for c in ca.iter().chain(&cb) {
        within(10, "a query after the run", backend_pid(c)).await;
    }
    let watched = watch.finish().await;
    assert!(watched.samples >= 10, "{watched:?}");
    assert!(
        watched.confirmed.is_empty(),
        "more than 3 backends at once: {watched:?}"
    );
}

/// max_db_connections = 3 across two users of one database (pool_size 5 each).
#[tokio::test(flavor = "multi_thread")]
async fn max_db_connections_is_shared_by_the_users_of_a_database() {
    let (db, u1, u2) = ("pl_maxdb_db", "pl_maxdb_u1", "pl_maxdb_u2");
    prepare(&[db], &[u1, u2]).await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_db_connections = 3",
        &[u1, u2],
    );
    shared_limit(&p, (db, u1), (db, u2), Some(db), None).await;
}

/// max_user_connections = 3 across two databases of one user (pool_size 5 each).
#[tokio::test(flavor = "multi_thread")]
async fn max_user_connections_is_shared_by_the_databases_of_a_user() {
    let (d1, d2, user) = ("pl_maxuser_d1", "pl_maxuser_d2", "pl_maxuser_user");
    prepare(&[d1, d2], &[user]).await;
    let p = start(
        &[entry(d1, ""), entry(d2, "")],
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_user_connections = 3",
        &[user],
    );
    shared_limit(&p, (d1, user), (d2, user), None, Some(user)).await;
}

// ------------------------------------------------------------------ 6. query_wait_timeout

/// Pool of 1 held by an open transaction: a second client's query fails after about
/// query_wait_timeout = 1 s with FATAL 08P01 `query_wait_timeout`, and its connection is
/// closed; the holder is unaffected and the pool serves new clients afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn query_wait_timeout_fails_a_queued_client() {
    let (db, user) = ("pl_qwt_db", "pl_qwt_user");
    prepare(&[db], &[user]).await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 1\nquery_wait_timeout = 1",
        &[user],
    );
    let a = pooled(&p, db, user).await;
    let b = pooled(&p, db, user).await;
    a.batch_execute("BEGIN; SELECT 1").await.expect("A BEGIN");
    let started = Instant::now();
    let err = within(10, "queued query", simple_value(&b, "SELECT 1"))
        .await
        .expect_err("the queued query must fail");
    let waited = started.elapsed();
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got {err:?}"));
    assert_eq!(db_err.severity(), "FATAL");
    assert_eq!(db_err.code().code(), "08P01");
    assert_eq!(db_err.message(), "query_wait_timeout");
    assert!(
        waited >= Duration::from_millis(800),
        "failed after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "failed only after {waited:?}"
    );
    within(5, "B's connection closes", async {
        while !b.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    a.batch_execute("SELECT 2; COMMIT")
        .await
        .expect("A still works");
    let c = pooled(&p, db, user).await;
    backend_pid(&c).await;
}

/// query_wait_timeout counts from each request's own start: B queues, C queues 700 ms
/// later, and each fails about 1 s after it queued (the pool keeps one timer for its
/// whole queue, so this checks that a later waiter is not failed with an earlier one).
#[tokio::test(flavor = "multi_thread")]
async fn query_wait_timeout_counts_from_each_request() {
    let (db, user) = ("pl_qwt2_db", "pl_qwt2_user");
    prepare(&[db], &[user]).await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 1\nquery_wait_timeout = 1",
        &[user],
    );
    let a = pooled(&p, db, user).await;
    let b = pooled(&p, db, user).await;
    let c = pooled(&p, db, user).await;
    a.batch_execute("BEGIN; SELECT 1").await.expect("A BEGIN");
    let waited = |client: Client| async move {
        let t = Instant::now();
        let err = simple_value(&client, "SELECT 1")
            .await
            .expect_err("the queued query must fail");
        let (code, msg) = db_error_text(&err);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("08P01", "query_wait_timeout")
        );
        t.elapsed()
    };
    let b_wait = tokio::spawn(waited(b));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c_wait = tokio::spawn(waited(c));
    let b_wait = within(10, "B fails", b_wait).await.expect("B's task");
    let c_wait = within(10, "C fails", c_wait).await.expect("C's task");
    for (who, w) in [("B", b_wait), ("C", c_wait)] {
        assert!(w >= Duration::from_millis(800), "{who} failed after {w:?}");
        assert!(w < Duration::from_secs(5), "{who} failed only after {w:?}");
    }
    a.batch_execute("COMMIT").await.expect("A still works");
}

// ------------------------------------------------------------------ 7. FIFO

/// Pool of 1 held by A; five clients queue 100 ms apart. When A commits, they are served
/// in arrival order (recorded by a serial column inside each one's transaction).
#[tokio::test(flavor = "multi_thread")]
async fn queued_clients_are_served_in_fifo_order() {
    let (db, user) = ("pl_fifo_db", "pl_fifo_user");
    prepare(&[db], &[user]).await;
    let direct = cluster()
        .connect(db, user, None)
        .await
        .expect("direct connect");
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS fifo_log; \
             CREATE TABLE fifo_log (id serial PRIMARY KEY, name text, at timestamptz)",
        )
        .await
        .expect("create table");
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 1",
        &[user],
    );
    let names = ["B", "C", "D", "E", "F"];
    let a = pooled(&p, db, user).await;
    let mut queued = Vec::new();
    for _ in names {
        queued.push(pooled(&p, db, user).await);
    }
    a.batch_execute("BEGIN; INSERT INTO fifo_log (name, at) VALUES ('A', clock_timestamp())")
        .await
        .expect("A BEGIN");
    let mut tasks = Vec::new();
    for (name, c) in names.iter().zip(queued) {
        let sql = format!(
            "BEGIN; INSERT INTO fifo_log (name, at) VALUES ('{name}', clock_timestamp()); COMMIT"
        );
        tasks.push(tokio::spawn(async move { c.batch_execute(&sql).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "a client got past A's open transaction"
    );
    a.batch_execute("COMMIT").await.expect("A COMMIT");
    for r in within(10, "queued clients", futures_util::future::join_all(tasks)).await {
        r.expect("task").expect("queued client's transaction");
    }
    let order: Vec<String> = direct
        .query("SELECT name FROM fifo_log ORDER BY id", &[])
        .await
        .expect("read log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["A", "B", "C", "D", "E", "F"]);
    let by_time: Vec<String> = direct
        .query("SELECT name FROM fifo_log ORDER BY at", &[])
        .await
        .expect("read log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(by_time, order);
}

// ------------------------------------------------------------------ 8. pool modes

/// Session mode: each client keeps its backend across transactions and its session state
/// (`SET work_mem`). When it leaves, server_reset_query (DISCARD ALL) runs, so the next
/// client gets the same backend without the old work_mem.
#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_the_backend_and_resets_it_on_disconnect() {
    let (db, user) = ("pl_session_db", "pl_session_user");
    prepare(&[db], &[user]).await;
    let default_work_mem = show(
        &cluster()
            .connect(db, user, None)
            .await
            .expect("direct connect"),
        "work_mem",
    )
    .await;
    assert_ne!(default_work_mem, "7MB");
    let p = start(
        &[entry(db, "")],
        "pool_mode = session\ndefault_pool_size = 2",
        &[user],
    );
    let x = pooled(&p, db, user).await;
    let y = pooled(&p, db, user).await;
    let x_pid = backend_pid(&x).await;
    x.batch_execute("SET work_mem = '7MB'").await.expect("SET");
    let y_pid = backend_pid(&y).await;
    assert_ne!(x_pid, y_pid);
    for _ in 0..3 {
        x.batch_execute("BEGIN").await.expect("BEGIN");
        assert_eq!(backend_pid(&x).await, x_pid);
        x.batch_execute("COMMIT").await.expect("COMMIT");
        y.batch_execute("BEGIN").await.expect("BEGIN");
        assert_eq!(backend_pid(&y).await, y_pid);
        y.batch_execute("COMMIT").await.expect("COMMIT");
        assert_eq!(backend_pid(&x).await, x_pid);
        assert_eq!(show(&x, "work_mem").await, "7MB");
        assert_eq!(show(&y, "work_mem").await, default_work_mem);
    }
    drop(x);
    // Y still holds the other server, so Z can only get X's (after its reset).
    let z = pooled(&p, db, user).await;
    let z_pid = within(10, "Z's first query", backend_pid(&z)).await;
    assert_eq!(z_pid, x_pid, "Z reuses the server X released");
    assert_eq!(
        show(&z, "work_mem").await,
        default_work_mem,
        "DISCARD ALL ran"
    );
    assert_eq!(backend_pid(&y).await, y_pid);
}

/// Transaction mode: with a pool of 2, a client's next transaction runs on whichever server
/// is free (LIFO: the one released last), not on "its" backend; and 10 clients with a pool
/// of 1 all run on the same single backend.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_moves_clients_between_backends() {
    let (db1, db2, user) = ("pl_txmode_db", "pl_txmode1_db", "pl_txmode_user");
    prepare(&[db1, db2], &[user]).await;
    let su = cluster().superuser().await;
    let p = start(
        &[entry(db1, "pool_size=2"), entry(db2, "pool_size=1")],
        "pool_mode = transaction",
        &[user],
    );
    let a = pooled(&p, db1, user).await;
    let b = pooled(&p, db1, user).await;
    a.batch_execute("BEGIN").await.expect("A BEGIN");
    let a1 = backend_pid(&a).await;
    b.batch_execute("BEGIN").await.expect("B BEGIN");
    let b1 = backend_pid(&b).await;
    assert_ne!(a1, b1);
    a.batch_execute("COMMIT").await.expect("A COMMIT");
    b.batch_execute("COMMIT").await.expect("B COMMIT");
    let a2 = backend_pid(&a).await;
    assert_eq!(
        a2, b1,
        "A's next transaction runs on the server B released last"
    );
    assert_ne!(a2, a1);

    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Arc::new(pooled(&p, db2, user).await));
    }
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut v = Vec::new();
                for _ in 0..3 {
                    v.push(backend_pid(&c).await);
                }
                v
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for r in within(20, "10 clients", futures_util::future::join_all(tasks)).await {
        pids.extend(r.expect("task"));
    }
    assert_eq!(pids.len(), 1, "10 clients on a pool of 1: {pids:?}");
    assert_eq!(
        backend_pids(&su, Some(db2), Some(user)).await,
        pids.into_iter().collect::<Vec<_>>()
    );
}

/// Statement mode: single statements (and implicit multi-statement transactions) work;
/// `BEGIN` gets FATAL `transaction blocks not allowed in statement pooling mode` and the
/// server is not handed on in a transaction.
#[tokio::test(flavor = "multi_thread")]
async fn statement_mode_refuses_transaction_blocks() {
    let (db, user) = ("pl_stmt_db", "pl_stmt_user");
    prepare(&[db], &[user]).await;
    let su = cluster().superuser().await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = statement\ndefault_pool_size = 1",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    let row = c
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("single statement");
    assert_eq!(row.get::<_, i32>(0), 42);
    c.batch_execute("SELECT 1; SELECT 2")
        .await
        .expect("implicit transaction");
    let err = c.batch_execute("BEGIN").await.expect_err("BEGIN must fail");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got {err:?}"));
    assert_eq!(
        (db_err.severity(), db_err.code().code(), db_err.message()),
        (
            "FATAL",
            "08P01",
            "transaction blocks not allowed in statement pooling mode"
        )
    );
    let d = pooled(&p, db, user).await;
    let row = within(10, "next client", d.query_one("SELECT 7", &[]))
        .await
        .expect("next client's statement");
    assert_eq!(row.get::<_, i32>(0), 7);
    // The server that saw BEGIN was closed, not handed on inside a transaction.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let in_tx: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state <> 'idle'",
                &[&db],
            )
            .await
            .expect("states")
            .get(0);
        if in_tx == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a backend stayed in a transaction"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ------------------------------------------------------------------ 9. tracked parameters

/// Transaction mode, pool of 1: A's session-level `SET TimeZone` and each client's startup
/// application_name stay with that client although every transaction runs on the one
/// shared server.
#[tokio::test(flavor = "multi_thread")]
async fn tracked_parameters_do_not_leak_between_clients() {
    let (db, user) = ("pl_params_db", "pl_params_user");
    prepare(&[db], &[user]).await;
    let default_tz = show(
        &cluster()
            .connect(db, user, None)
            .await
            .expect("direct connect"),
        "TimeZone",
    )
    .await;
    assert_ne!(default_tz, "Asia/Tokyo");
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 1",
        &[user],
    );
    let with_app = |name: &str| {
        let mut cfg = pg_config(p.port, db, user, None);
        cfg.application_name(name);
        cfg
    };
    let a = connect_with(&with_app("app_a")).await.expect("connect A");
    let b = connect_with(&with_app("app_b")).await.expect("connect B");
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .expect("SET");
    let pid = backend_pid(&a).await;
    for round in 0..3 {
        assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo", "A, round {round}");
        assert_eq!(show(&b, "TimeZone").await, default_tz, "B, round {round}");
        assert_eq!(
            show(&a, "application_name").await,
            "app_a",
            "A, round {round}"
        );
        assert_eq!(
            show(&b, "application_name").await,
            "app_b",
            "B, round {round}"
        );
    }
    assert_eq!(backend_pid(&b).await, pid, "one shared server");
    assert_eq!(backend_pid(&a).await, pid, "one shared server");
    // A third client without an application_name sees neither.
    let c = pooled(&p, db, user).await;
    assert_eq!(show(&c, "application_name").await, "");
    assert_eq!(show(&c, "TimeZone").await, default_tz);
}

// ------------------------------------------------------------------ 10. pgbench

fn pgbench_value<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in pgbench output:\n{out}"))
        .trim()
}

/// pgbench (TPC-B-like, 100 clients) through a transaction pool of 10: every transaction
/// succeeds, never more than 10 backends, and the books balance afterwards: account,
/// teller and branch balances all sum to the history's deltas, one history row per
/// transaction.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_through_the_pooler_keeps_the_books_balanced() {
    let (db, user) = ("pl_bench_db", "pl_bench_user");
    prepare(&[db], &[user]).await;
    let pg = cluster();
    let pg_port = pg.port().to_string();
    stdout_ok(&pgbench(&[
        "-i", "-s", "1", "-q", "-p", &pg_port, "-U", user, db,
    ]));
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 200",
        &[user],
    );
    let watch = Watch::start(Some(db), Some(user), 10).await;
    let port = p.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        pgbench(&[
            "-n", "-c", "100", "-j", "2", "-t", "10", "-p", &port, "-U", user, db,
        ])
    })
    .await
    .expect("pgbench thread");
    let watched = watch.finish().await;
    let text = stdout_ok(&out);
    assert_eq!(
        pgbench_value(&text, "number of transactions actually processed:"),
        "1000/1000",
        "{text}"
    );
    if text.contains("number of failed transactions:") {
        assert!(
            pgbench_value(&text, "number of failed transactions:").starts_with("0 "),
            "{text}"
        );
    }
    assert!(watched.max <= 10, "more than 10 backends: {watched:?}");
    let direct = pg.connect(db, user, None).await.expect("direct connect");
    let row = direct
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_history), \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, \
                    (SELECT sum(abalance) FROM pgbench_accounts)::bigint, \
                    (SELECT sum(tbalance) FROM pgbench_tellers)::bigint, \
                    (SELECT sum(bbalance) FROM pgbench_branches)::bigint",
            &[],
        )
        .await
        .expect("balances");
    let (n, delta, a, t, b): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(n, 1000, "one history row per transaction");
    assert_eq!((a, t, b), (delta, delta, delta), "balances vs sum(delta)");
}

// ------------------------------------------------------------------ 11. login failures

/// A database whose server does not listen: the first client gets
/// `server login has been failing, cached error: connect failed (server_login_retry)`
/// at once (well under query_wait_timeout = 30), and so does the next one (fast-fail
/// window) — nobody hangs.
#[tokio::test(flavor = "multi_thread")]
async fn failing_server_login_fails_clients_fast() {
    let user = "pl_dead_user";
    prepare(&[], &[user]).await;
    let dead_port = common::free_port();
    let p = start(
        &[format!(
            "deaddb = host=127.0.0.1 port={dead_port} dbname=postgres"
        )],
        "pool_mode = transaction\nquery_wait_timeout = 30\nserver_login_retry = 15",
        &[user],
    );
    for attempt in ["first", "second"] {
        let started = Instant::now();
        let err = match within(
            20,
            "connect to the dead database",
            connect(p.port, "deaddb", user, None),
        )
        .await
        {
            Ok(_) => panic!("{attempt} client: connecting to a dead server succeeded"),
            Err(e) => e,
        };
        let took = started.elapsed();
        let (code, message) = db_error_text(&err);
        assert_eq!(code, "08P01", "{attempt}: {message}");
        assert!(
            message.contains("server login has been failing") && message.contains("connect failed"),
            "{attempt} client: {message}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{attempt} client failed only after {took:?}"
        );
    }
}

// ------------------------------------------------------------------ 12. min_pool_size

/// A database entry with a forced user and min_pool_size = 3 gets 3 servers without any
/// client ever connecting, keeps exactly 3, and a client then runs on one of them.
#[tokio::test(flavor = "multi_thread")]
async fn min_pool_size_opens_servers_for_a_forced_user_without_clients() {
    let (db, user) = ("pl_minpool_db", "pl_minpool_user");
    prepare(&[db], &[user]).await;
    let su = cluster().superuser().await;
    let p = start(
        &[entry(db, &format!("user={user} min_pool_size=3"))],
        "pool_mode = transaction",
        &[user, "pl_minpool_client"],
    );
    let n = wait_count(&su, Some(db), Some(user), 3, 6).await;
    assert_eq!(n, 3, "backends for the forced user with min_pool_size = 3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pids = backend_pids(&su, Some(db), Some(user)).await;
    assert_eq!(pids.len(), 3, "no more than min_pool_size: {pids:?}");
    // A client (any name: the entry forces the server user) uses those servers.
    let c = pooled(&p, db, "pl_minpool_client").await;
    let pid = backend_pid(&c).await;
    assert!(
        pids.contains(&pid),
        "{pid} is not one of the min_pool_size servers {pids:?}"
    );
    assert_eq!(backend_pids(&su, Some(db), Some(user)).await, pids);
}

// ------------------------------------------------------------------ 13. server_idle_timeout

/// server_idle_timeout = 1: servers opened for a burst are closed a few seconds after they
/// went idle (the client stays connected), and the next query opens a fresh one.
#[tokio::test(flavor = "multi_thread")]
async fn server_idle_timeout_closes_idle_servers() {
    let (db, user) = ("pl_idle_db", "pl_idle_user");
    prepare(&[db], &[user]).await;
    let su = cluster().superuser().await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 3\nserver_idle_timeout = 1",
        &[user],
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(pooled(&p, db, user).await);
    }
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    }
    assert_eq!(count(&su, Some(db), Some(user)).await, 3);
    let mut old = BTreeSet::new();
    for c in &clients {
        old.insert(backend_pid(c).await);
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    let n = wait_count(&su, Some(db), Some(user), 0, 6).await;
    assert_eq!(n, 0, "idle servers still open");
    let pid = within(10, "query after idle close", backend_pid(&clients[0])).await;
    assert!(!old.contains(&pid), "a closed backend was reused");
}

// ------------------------------------------------------------------ 14. dead idle servers

/// Backends terminated while idle in the pool (`pg_terminate_backend`) are never handed to
/// a client: the next queries succeed on fresh servers, for an existing and a new client.
#[tokio::test(flavor = "multi_thread")]
async fn terminated_idle_backends_are_not_handed_out() {
    let (db, user) = ("pl_term_db", "pl_term_user");
    prepare(&[db], &[user]).await;
    let su = cluster().superuser().await;
    let p = start(
        &[entry(db, "")],
        "pool_mode = transaction\ndefault_pool_size = 3",
        &[user],
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(pooled(&p, db, user).await);
    }
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    let old = backend_pids(&su, Some(db), Some(user)).await;
    assert_eq!(old.len(), 3);
    assert_eq!(cluster().terminate_backends(Some(db), Some(user)).await, 3);
    assert_eq!(wait_count(&su, Some(db), Some(user), 0, 5).await, 0);

    let pid = within(
        10,
        "query after terminate",
        simple_value(&clients[0], "SELECT pg_backend_pid()"),
    )
    .await
    .unwrap_or_else(|e| panic!("query after the idle servers were terminated: {e:?}"))
    .parse::<i32>()
    .expect("a pid");
    assert!(!old.contains(&pid), "got a terminated backend {pid}");
    // Once more, with a single idle server terminated and a brand-new client.
    assert_eq!(cluster().terminate_backends(Some(db), Some(user)).await, 1);
    assert_eq!(wait_count(&su, Some(db), Some(user), 0, 5).await, 0);
    let fresh = pooled(&p, db, user).await;
    let pid2 = within(10, "new client's query", backend_pid(&fresh)).await;
    assert_ne!(pid2, pid);
    for c in &clients {
        within(10, "existing clients still work", backend_pid(c)).await;
    }
}
