//! Replays of the two incidents pgsluice exists for, end to end:
//!
//! 1. Gunicorn + Celery workers (300 clients: many short web transactions, some long
//!    worker transactions) against a database limited by max_db_connections: the server
//!    count never exceeds the limit, waiting is visible in SHOW POOLS, everyone is
//!    served, and a worker that leaked an idle-in-transaction connection is cut by
//!    idle_transaction_timeout instead of holding a server forever.
//! 2. A database entry whose first addresses black-hole (the 24-minute hang): no request
//!    waits longer than its budget; then the backend goes away under load (an outage / a
//!    restart: every connection dropped, connects refused): in-flight transactions get
//!    an error, new requests fail fast, nobody hangs, and when the backend is back the
//!    pool recovers without any operator action and leaves nothing behind on the server.
//!
//! Loopback only: the outage is a TCP proxy in front of the shared cluster that the test
//! cuts and restores; black holes are listeners on other 127.0.0.0/8 addresses.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, connect, db_error_text, Pooler, PoolerBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN: &str = "inc_admin";

fn start(databases: &[String], settings: &str, users: &[&str]) -> Pooler {
    let ini = format!(
        "[databases]\n{}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = {ADMIN}\n\
         {settings}\n",
        databases.join("\n")
    );
    let mut userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
    userlist.push_str(&format!("\"{ADMIN}\" \"\"\n"));
    PoolerBuilder::new(&ini).userlist(&userlist).start()
}

async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

async fn value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let rows = c.simple_query(sql).await?;
    Ok(rows
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// SHOW POOLS rows of database `db` as column → value.
async fn pools(
    admin: &Client,
    db: &str,
) -> Result<Vec<BTreeMap<String, String>>, tokio_postgres::Error> {
    let msgs = admin.simple_query("SHOW POOLS").await?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        })
        .filter(|r| r.get("database").map(String::as_str) == Some(db))
        .collect())
}

/// Samples the number of client backends of `db` and `users` on the cluster until
/// stopped; returns the maximum seen and the number of samples.
/// The most client backends of `users` on `db` seen at once in pg_stat_activity, and the
/// number of samples. The backend with pid `exclude` (0 = none) is not counted: a server
/// pgsluice has cut is still listed while it rolls back and exits, and pgsluice may
/// already have opened its replacement.
fn sample_backends(
    db: &'static str,
    users: Vec<String>,
    exclude: Arc<AtomicI32>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(i64, usize)> {
    tokio::spawn(async move {
        let su = cluster().superuser().await;
        let (mut max, mut samples) = (0i64, 0usize);
        while !stop.load(Ordering::SeqCst) {
            let n: i64 = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND datname = $1 \
                       AND usename = ANY($2) AND pid <> $3",
                    &[&db, &users, &exclude.load(Ordering::SeqCst)],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            max = max.max(n);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (max, samples)
    })
}

// ------------------------------------------------------------------ incident 1

/// 250 "Gunicorn" web clients (short transactions of several round trips) and 50
/// "Celery" workers (long transactions) share one database capped at 12 server
/// connections across both users' pools; one worker leaks a transaction.
#[tokio::test(flavor = "multi_thread")]
async fn gunicorn_and_celery_against_max_db_connections() {
    const DB: &str = "inc_app";
    const WEB: &str = "inc_web";
    const WORKER: &str = "inc_worker";
    const MAX_DB: i64 = 12;
    const WEB_CLIENTS: usize = 250;
    const WORKERS: usize = 50;
    const WEB_REQUESTS: usize = 8;
    const WORKER_JOBS: usize = 3;
    let pg = cluster();
    pg.create_role(WEB, None).await;
    pg.create_role(WORKER, None).await;
    pg.create_database(DB, WEB).await;
    let su = pg.connect(DB, "postgres", None).await.expect("superuser");
    su.batch_execute(&format!(
        "DROP TABLE IF EXISTS hits, jobs; \
         CREATE TABLE hits (client int, n int); CREATE TABLE jobs (worker int, n int); \
         GRANT ALL ON hits, jobs TO {WEB}, {WORKER}"
    ))
    .await
    .expect("tables");
    let p = start(
        &[format!(
            "{DB} = host={{pg_host}} port={{pg_port}} dbname={DB} max_db_connections={MAX_DB}"
        )],
        "pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 500\n\
         query_wait_timeout = 120\nidle_transaction_timeout = 2",
        &[WEB, WORKER],
    );
    let port = p.port;

    let stop = Arc::new(AtomicBool::new(false));
    let leaked_pid = Arc::new(AtomicI32::new(0));
    let sampler = sample_backends(
        DB,
        vec![WEB.into(), WORKER.into()],
        leaked_pid.clone(),
        stop.clone(),
    );
    // Waiting is visible to the operator: SHOW POOLS cl_waiting. What pgsluice holds
    // itself (every server state of SHOW POOLS) never exceeds max_db_connections.
    let waiting_seen = Arc::new(AtomicU64::new(0));
    let servers_seen = Arc::new(AtomicU64::new(0));
    let (stop2, seen, held) = (stop.clone(), waiting_seen.clone(), servers_seen.clone());
    let watcher = tokio::spawn(async move {
        let mut admin = connect(port, "pgbouncer", ADMIN, None)
            .await
            .expect("console");
        while !stop2.load(Ordering::SeqCst) {
            match pools(&admin, DB).await {
                Ok(rows) => {
                    let w: u64 = rows
                        .iter()
                        .map(|r| r["cl_waiting"].parse::<u64>().unwrap_or(0))
                        .sum();
                    seen.fetch_max(w, Ordering::SeqCst);
                    let servers: u64 = rows
                        .iter()
                        .flat_map(|r| {
                            ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
                                .map(|c| r.get(c).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                        })
                        .sum();
                    held.fetch_max(servers, Ordering::SeqCst);
                }
                // Not what this test is about; say so and look again.
                Err(e) => {
                    eprintln!("SHOW POOLS failed: {e:?}; reconnecting the console");
                    admin = connect(port, "pgbouncer", ADMIN, None)
                        .await
                        .expect("console");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // The leak: a worker opens a transaction and forgets it.
    let leaked = connect(port, DB, WORKER, None).await.expect("leaky worker");
    leaked
        .batch_execute("BEGIN; INSERT INTO jobs VALUES (-1, -1)")
        .await
        .expect("leaky BEGIN");
    let leaked_at = Instant::now();
    let pid = value(&leaked, "SELECT pg_backend_pid()")
        .await
        .expect("leaked backend pid");
    leaked_pid.store(pid.parse().expect("pid"), Ordering::SeqCst);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..WEB_CLIENTS {
        tasks.push(tokio::spawn(async move {
            let c = within(60, "web login", connect(port, DB, WEB, None))
                .await
                .unwrap_or_else(|e| panic!("web {i} login: {e:?}"));
            for n in 0..WEB_REQUESTS {
                // A request: BEGIN, a read, a write, COMMIT, each its own round trip.
                c.simple_query("BEGIN").await.expect("BEGIN");
                value(&c, "SELECT count(*) FROM hits").await.expect("read");
                c.simple_query(&format!("INSERT INTO hits VALUES ({i}, {n})"))
                    .await
                    .expect("write");
                c.simple_query("COMMIT").await.expect("COMMIT");
            }
        }));
    }
    for i in 0..WORKERS {
        tasks.push(tokio::spawn(async move {
            let c = within(60, "worker login", connect(port, DB, WORKER, None))
                .await
                .unwrap_or_else(|e| panic!("worker {i} login: {e:?}"));
            for n in 0..WORKER_JOBS {
                c.batch_execute(&format!(
                    "BEGIN; SELECT pg_sleep(0.2); INSERT INTO jobs VALUES ({i}, {n}); COMMIT"
                ))
                .await
                .expect("job");
            }
        }));
    }
    for t in tasks {
        within(180, "all clients served", t)
            .await
            .expect("client task");
    }
    let took = started.elapsed();

    // The leaked transaction was cut: its server is gone (rolled back), its client told.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = pg
            .count_backends(Some(DB), None, Some("idle in transaction"))
            .await;
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} backends idle in transaction {:?} after the leak",
            leaked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = leaked
        .simple_query("COMMIT")
        .await
        .expect_err("the leaked transaction survived idle_transaction_timeout");
    let text = format!("{err} {:?}", db_error_text(&err));
    assert!(
        text.contains("idle transaction timeout") || err.is_closed(),
        "{text}"
    );
    assert!(
        p.wait_for_log("idle transaction timeout", Duration::from_secs(2)),
        "{}",
        p.log()
    );

    stop.store(true, Ordering::SeqCst);
    let (max, samples) = sampler.await.expect("sampler");
    watcher.await.expect("watcher");
    assert!(samples > 10, "only {samples} samples in {took:?}");
    assert!(
        max <= MAX_DB,
        "{max} server connections besides the leaked one, max_db_connections = {MAX_DB}"
    );
    let held = servers_seen.load(Ordering::SeqCst);
    assert!(
        held > 0 && held as i64 <= MAX_DB,
        "SHOW POOLS: {held} server connections, max_db_connections = {MAX_DB}"
    );
    assert!(
        waiting_seen.load(Ordering::SeqCst) > 0,
        "SHOW POOLS never showed a waiting client"
    );
    let hits = value(&su, "SELECT count(*) FROM hits").await.unwrap();
    let jobs = value(&su, "SELECT count(*) FROM jobs").await.unwrap();
    assert_eq!(hits, (WEB_CLIENTS * WEB_REQUESTS).to_string());
    assert_eq!(
        jobs,
        (WORKERS * WORKER_JOBS).to_string(),
        "the leak rolled back"
    );
}

// ------------------------------------------------------------------ incident 2

/// Accepts and never answers.
struct BlackHole(JoinHandle<()>);

impl BlackHole {
    async fn start(ip: &str, port: u16) -> BlackHole {
        let l = TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("bind black hole {ip}:{port}: {e}"));
        BlackHole(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }))
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A proxy to the cluster that can be cut (connects refused, every proxied connection
/// dropped: what a restart looks like to pgsluice) and restored.
struct Proxy {
    addr: SocketAddr,
    listener: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(ip: &str, port: u16) -> Proxy {
        let p = Proxy {
            addr: format!("{ip}:{port}").parse().expect("address"),
            listener: Mutex::new(None),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        p.up().await;
        p
    }

    async fn up(&self) {
        let target = SocketAddr::from(([127, 0, 0, 1], cluster().port()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("proxy bind {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("proxy bind {}: {e}", self.addr),
            }
        };
        let conns = self.conns.clone();
        *self.listener.lock().unwrap() = Some(tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                conns.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut s) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                    }
                }));
            }
        }));
    }

    fn cut(&self) {
        if let Some(t) = self.listener.lock().unwrap().take() {
            t.abort();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// What happened to one request during the run.
#[derive(Debug, Clone)]
struct Outcome {
    at: Duration,
    took: Duration,
    error: Option<String>,
}

/// The first two addresses of the entry black-hole; the third leads (through a proxy)
/// to the server. 50 clients run transactions throughout: no request waits longer than
/// its budget while connecting through the black holes; then the server goes away for
/// 4 s under that load and comes back.
#[tokio::test(flavor = "multi_thread")]
async fn black_holed_addresses_and_a_backend_outage_under_load() {
    const DB: &str = "inc_bh";
    const USER: &str = "inc_bh_user";
    const CLIENTS: usize = 50;
    const BUDGET: Duration = Duration::from_secs(3); // server_connect_timeout
    const QUERY_WAIT: Duration = Duration::from_secs(10); // query_wait_timeout
    let pg = cluster();
    pg.create_role(USER, None).await;
    pg.create_database(DB, USER).await;
    let su = pg.connect(DB, "postgres", None).await.expect("superuser");
    su.batch_execute(&format!(
        "DROP TABLE IF EXISTS orders; CREATE TABLE orders (client int, n int); \
         GRANT ALL ON orders TO {USER}"
    ))
    .await
    .expect("table");
    let port = common::free_port();
    let proxy = Proxy::start("127.0.0.1", port).await;
    let _h1 = BlackHole::start("127.0.0.9", port).await;
    let _h2 = BlackHole::start("127.0.0.10", port).await;
    let p = start(
        &[format!(
            "{DB} = host=127.0.0.9,127.0.0.10,127.0.0.1 port={port} dbname={DB}"
        )],
        &format!(
            "pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 200\n\
             server_connect_timeout = {}\nserver_login_retry = 1\nquery_wait_timeout = {}",
            BUDGET.as_secs(),
            QUERY_WAIT.as_secs()
        ),
        &[USER],
    );
    let pport = p.port;
    let t0 = Instant::now();
    let run_for = Duration::from_secs(14);
    let outage = (Duration::from_secs(4), Duration::from_secs(8));
    let ok_after_outage = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (outcomes, ok_after) = (outcomes.clone(), ok_after_outage.clone());
        tasks.push(tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut n = 0;
            while t0.elapsed() < run_for {
                let at = t0.elapsed();
                let t = Instant::now();
                let res = async {
                    if client.is_none() {
                        client = Some(connect(pport, DB, USER, None).await?);
                    }
                    let c = client.as_ref().expect("connected");
                    c.batch_execute(&format!(
                        "BEGIN; INSERT INTO orders VALUES ({i}, {n}); \
                         SELECT pg_sleep(0.02); COMMIT"
                    ))
                    .await
                };
                // Nobody hangs: every request ends within its longest budget.
                let res = match tokio::time::timeout(QUERY_WAIT + BUDGET + BUDGET, res).await {
                    Ok(r) => r,
                    Err(_) => panic!("client {i}: a request hung (started at {at:?})"),
                };
                let took = t.elapsed();
                let error = match res {
                    Ok(()) => {
                        if at > outage.1 + Duration::from_secs(1) {
                            ok_after.fetch_add(1, Ordering::SeqCst);
                        }
                        None
                    }
                    Err(e) => {
                        client = None;
                        Some(db_error_text(&e).1)
                    }
                };
                let failed = error.is_some();
                outcomes.lock().unwrap().push(Outcome { at, took, error });
                n += 1;
                if failed {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    tokio::time::sleep(outage.0).await;
    proxy.cut();
    let cut_at = t0.elapsed();
    // The load clients' requests queued before anyone knew keep waiting for the server.
    // Requests that arrive once a connect has failed are refused fast: a probe client
    // tries every 200 ms from the first failure (one budget after the cut) on.
    let probe_from = outage.0 + BUDGET + Duration::from_millis(300);
    let probe_outcomes = outcomes.clone();
    let probe = tokio::spawn(async move {
        tokio::time::sleep(probe_from.saturating_sub(t0.elapsed())).await;
        while t0.elapsed() < outage.1 - Duration::from_millis(300) {
            let at = t0.elapsed();
            let t = Instant::now();
            let res = async {
                let c = connect(pport, DB, USER, None).await?;
                c.batch_execute("SELECT 1").await
            };
            let res = tokio::time::timeout(QUERY_WAIT + BUDGET, res)
                .await
                .unwrap_or_else(|_| panic!("probe at {at:?} hung"));
            probe_outcomes.lock().unwrap().push(Outcome {
                at,
                took: t.elapsed(),
                error: res.err().map(|e| db_error_text(&e).1),
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(outage.1 - outage.0).await;
    proxy.up().await;
    let back_at = t0.elapsed();
    within(30, "probe", probe).await.expect("probe");
    for t in tasks {
        within(60, "load clients", t).await.expect("client task");
    }
    let outcomes = outcomes.lock().unwrap().clone();

    // Before the outage: served through the black holes, within the connect budget.
    let before: Vec<_> = outcomes.iter().filter(|o| o.at + o.took < cut_at).collect();
    assert!(
        before.len() > CLIENTS,
        "{} requests before the outage",
        before.len()
    );
    for o in &before {
        assert!(o.error.is_none(), "before the outage: {o:?}\n{}", p.log());
        assert!(
            o.took < BUDGET,
            "a request waited {:?} before the outage",
            o.took
        );
    }
    // During the outage: only the expected errors; fast-fail answers are fast.
    let mut fast_fails = 0;
    for o in &outcomes {
        let Some(e) = &o.error else { continue };
        assert!(
            e == "server conn crashed?"
                || e.starts_with("server login has been failing, cached error: ")
                || e == "query_wait_timeout",
            "unexpected error {o:?}"
        );
        if e.starts_with("server login has been failing") {
            fast_fails += 1;
            assert!(
                o.took < BUDGET + Duration::from_millis(500),
                "fast-fail took {:?}",
                o.took
            );
        }
        assert!(o.at + o.took < back_at + QUERY_WAIT + BUDGET, "{o:?}");
    }
    assert!(
        fast_fails > 0,
        "no fast-fail during the outage (cut {cut_at:?}, back {back_at:?}): {:?}\n{}",
        outcomes
            .iter()
            .filter(|o| o.error.is_some() || o.took > Duration::from_secs(1))
            .collect::<Vec<_>>(),
        p.log()
    );
    // After: served again without operator action.
    assert!(
        ok_after_outage.load(Ordering::SeqCst) > CLIENTS,
        "only {} requests served after recovery\n{}",
        ok_after_outage.load(Ordering::SeqCst),
        p.log()
    );
    let late_errors: Vec<_> = outcomes
        .iter()
        .filter(|o| o.error.is_some() && o.at > back_at + BUDGET + Duration::from_secs(2))
        .collect();
    assert!(
        late_errors.is_empty(),
        "errors long after recovery: {late_errors:?}"
    );
    // Nothing left behind on the server: no transaction open, no more servers than the
    // pool may have.
    let idle_tx = pg
        .wait_for_backends(
            Some(DB),
            None,
            Some("idle in transaction"),
            0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(idle_tx, 0, "backends left idle in transaction");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = pg.count_backends(Some(DB), Some(USER), None).await;
        if n <= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} backends for a pool of 10");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
