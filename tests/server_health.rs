//! Server-connection robustness seen from clients: one server_connect_timeout budget over
//! a whole host list (black holes raced, the healthy entry serves), fast failure while a
//! server is down and automatic recovery when it is back, load_balance_hosts, dead idle
//! servers dropped by the janitor, server_check_query / server_check_delay (including a
//! half-open server), server_lifetime with jitter, and TCP keepalive settings.
//!
//! Loopback only. Outages are simulated with an in-test TCP proxy in front of the shared
//! cluster (cut = listener closed and every proxied connection dropped, as a restart looks
//! to pgsluice; freeze = existing connections stop forwarding, a half-open network), and
//! black holes with listeners on other 127.0.0.0/8 addresses that accept and never answer.
//! The shared cluster itself is never stopped. Every test uses its own database, roles and
//! proxy ports.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, connect, db_error_text, Pooler, PoolerBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

// ------------------------------------------------------------------ helpers

const ADMIN: &str = "sh_admin";

/// Starts pgsluice with the given `[databases]` lines and extra `[pgbouncer]` settings;
/// trust auth, `users` (and the console admin) in the auth_file.
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

/// Creates the role and a database it owns.
async fn prepare(db: &str, user: &str) {
    let pg = cluster();
    pg.create_role(user, None).await;
    pg.create_database(db, user).await;
}

async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// A client of the pooler; panics with the pooler log on failure.
async fn pooled(p: &Pooler, db: &str, user: &str) -> Client {
    within(20, &format!("connect {user}@{db}"), async {
        connect(p.port, db, user, None)
            .await
            .unwrap_or_else(|e| panic!("connect {user}@{db}: {e:?}\n{}", p.log()))
    })
    .await
}

/// First column of the first row of `sql` (simple protocol).
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

async fn backend_pid(c: &Client) -> i32 {
    value(c, "SELECT pg_backend_pid()")
        .await
        .expect("SELECT pg_backend_pid()")
        .parse()
        .expect("a pid")
}

/// A console SHOW as rows of column → value.
async fn show(p: &Pooler, what: &str) -> Vec<HashMap<String, String>> {
    let admin = pooled(p, "pgbouncer", ADMIN).await;
    let msgs = admin
        .simple_query(&format!("SHOW {what}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {e:?}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// SHOW SERVERS rows of database `db`.
async fn servers_of(p: &Pooler, db: &str) -> Vec<HashMap<String, String>> {
    show(p, "SERVERS")
        .await
        .into_iter()
        .filter(|r| r.get("database").map(String::as_str) == Some(db))
        .collect()
}

/// Client backends of `db` on the cluster.
async fn backends(db: &str) -> i64 {
    cluster().count_backends(Some(db), None, None).await
}

/// A port that is free on every loopback address we use (checked on 127.0.0.1; the
/// others are bound explicitly and fail loudly if taken).
fn free_port() -> u16 {
    common::free_port()
}

/// A listener that accepts connections and never answers: a black-holed address as
/// pgsluice sees it (the connect succeeds, the login never completes).
struct BlackHole {
    task: JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
}

impl BlackHole {
    async fn start(ip: &str, port: u16) -> BlackHole {
        let l = TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("bind black hole {ip}:{port}: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        BlackHole { task, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One proxied connection: its task and its freeze switch.
type ProxyConn = (JoinHandle<()>, watch::Sender<bool>);

/// A TCP proxy on `addr` to the cluster, that the test can cut (a restart or outage:
/// new connections refused, existing ones dropped), restore, or freeze (existing
/// connections stop forwarding but stay open: a half-open network).
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    listener: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<ProxyConn>>>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(ip: &str, port: u16) -> Arc<Proxy> {
        let target = SocketAddr::from(([127, 0, 0, 1], cluster().port()));
        let p = Arc::new(Proxy {
            addr: format!("{ip}:{port}").parse().expect("proxy address"),
            target,
            listener: Mutex::new(None),
            conns: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicUsize::new(0)),
        });
        p.up().await;
        p
    }

    /// (Re)opens the listening socket.
    async fn up(&self) {
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
        let (conns, target, accepted) = (self.conns.clone(), self.target, self.accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = watch::channel(false);
                let h = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let a = pump(cr, sw, rx.clone());
                    let b = pump(sr, cw, rx);
                    tokio::join!(a, b);
                });
                conns.lock().unwrap().push((h, tx));
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }

    /// The server "goes down": connects are refused, every proxied connection is
    /// dropped (both ends see EOF, as when PostgreSQL restarts).
    fn cut(&self) {
        if let Some(t) = self.listener.lock().unwrap().take() {
            t.abort();
        }
        for (h, _) in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Waits until connects to the proxy are refused (the aborted listener is closed).
    async fn wait_refused(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the proxy still accepts after cut()"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Existing connections stop forwarding in both directions but stay open.
    fn freeze_existing(&self) {
        for (_, tx) in self.conns.lock().unwrap().iter() {
            let _ = tx.send(true);
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `r` to `w` until EOF, or until `frozen` turns true (then holds both open and
/// forwards nothing more).
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = frozen.wait_for(|f| *f) => Ok(usize::MAX),
        };
        match n {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            // Frozen (half-open): keep both sockets, never forward another byte.
            Ok(usize::MAX) => std::future::pending::<()>().await,
            Ok(_) if *frozen.borrow() => std::future::pending::<()>().await,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The error text (and SQLSTATE) of a failed connect or query.
fn error_of(e: &tokio_postgres::Error) -> (String, String) {
    db_error_text(e)
}

// ------------------------------------------------------------------ 1. connect budget

/// A host list whose first two entries black-hole (accept, never answer): the client is
/// served by the healthy third entry well within the one server_connect_timeout budget
/// (the attempts race, 250 ms apart, instead of each waiting its own timeout); the black
/// holes are then tried last, so later connects do not wait on them at all.
#[tokio::test(flavor = "multi_thread")]
async fn healthy_entry_behind_black_holes_serves_within_the_budget() {
    let (db, user) = ("sh_budget_db", "sh_budget_user");
    prepare(db, user).await;
    let port = free_port();
    let proxy = Proxy::start("127.0.0.1", port).await;
    let hole1 = BlackHole::start("127.0.0.2", port).await;
    let hole2 = BlackHole::start("127.0.0.3", port).await;
    let p = start(
        &[format!(
            "{db} = host=127.0.0.2,127.0.0.3,127.0.0.1 port={port} dbname={db}"
        )],
        "pool_mode = session\nserver_connect_timeout = 4\nserver_login_retry = 30\n\
         default_pool_size = 10\nquery_wait_timeout = 30",
        &[user],
    );

    // First client: its login needs the pool's first server (the welcome).
    let t = Instant::now();
    let first = pooled(&p, db, user).await;
    value(&first, "SELECT 1").await.expect("first query");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "first client took {took:?}; budget is 4 s\n{}",
        p.log()
    );
    assert_eq!(hole1.accepted(), 1, "the first black hole was tried first");

    // Session mode: every further client needs a new server. Round-robin starts them at
    // the black holes, but those are now tried last.
    let mut clients = vec![first];
    for i in 0..4 {
        let t = Instant::now();
        let c = pooled(&p, db, user).await;
        value(&c, "SELECT 1").await.expect("query");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "client {i} took {took:?}\n{}",
            p.log()
        );
        clients.push(c);
    }
    let servers = servers_of(&p, db).await;
    assert_eq!(servers.len(), 5, "{servers:?}");
    for s in &servers {
        assert_eq!(s["addr"], "127.0.0.1", "{servers:?}");
    }
    assert!(
        hole1.accepted() + hole2.accepted() <= 4,
        "black holes kept being tried first: {} + {} attempts",
        hole1.accepted(),
        hole2.accepted()
    );
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 5);
}

/// Every entry black-holes: the client's error arrives after one server_connect_timeout
/// (not one per address), with PgBouncer's fast-fail text, and the next client is told
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn all_black_holes_fail_after_one_budget() {
    let user = "sh_holes_user";
    cluster().create_role(user, None).await;
    let port = free_port();
    let _h1 = BlackHole::start("127.0.0.4", port).await;
    let _h2 = BlackHole::start("127.0.0.5", port).await;
    let _h3 = BlackHole::start("127.0.0.6", port).await;
    let p = start(
        &[format!(
            "holes = host=127.0.0.4,127.0.0.5,127.0.0.6 port={port} dbname=postgres"
        )],
        "pool_mode = transaction\nserver_connect_timeout = 2\nserver_login_retry = 30\n\
         query_wait_timeout = 60",
        &[user],
    );
    let t = Instant::now();
    let err = within(
        20,
        "connect to black holes",
        common::connect_err(p.port, "holes", user, None),
    )
    .await;
    let took = t.elapsed();
    let (code, msg) = error_of(&err);
    assert_eq!(code, "08P01", "{msg}");
    assert_eq!(
        msg,
        "server login has been failing, cached error: connect timeout (server_login_retry)"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "error after {took:?}, budget 2 s"
    );
    let t = Instant::now();
    let err = common::connect_err(p.port, "holes", user, None).await;
    assert!(error_of(&err).1.contains("cached error: connect timeout"));
    // Not another 2 s budget: the cached error answers at once (bound generous for CI).
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

/// A port with nothing listening fails fast with the cached error, for the first client
/// and for the next ones, well under a second each.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_fails_fast() {
    let user = "sh_dead_user";
    cluster().create_role(user, None).await;
    let dead = free_port();
    let p = start(
        &[format!("dead = host=127.0.0.1 port={dead} dbname=postgres")],
        "pool_mode = transaction\nserver_login_retry = 30\nquery_wait_timeout = 60",
        &[user],
    );
    for i in 0..3 {
        let t = Instant::now();
        let err = common::connect_err(p.port, "dead", user, None).await;
        let took = t.elapsed();
        let (code, msg) = error_of(&err);
        assert_eq!(code, "08P01");
        assert_eq!(
            msg,
            "server login has been failing, cached error: connect failed (server_login_retry)"
        );
        assert!(took < Duration::from_secs(2), "client {i}: {took:?}");
    }
}

// ------------------------------------------------------------------ 2. outage and recovery

/// The server goes away (proxy cut: connections dropped, connects refused). A request
/// that was already queued keeps waiting; new requests are refused at once with the
/// fast-fail text while it is down; when the server is back, the queued request is
/// served and new ones succeed within server_login_retry, with no operator action.
#[tokio::test(flavor = "multi_thread")]
async fn fast_fail_while_down_and_recovery_when_back() {
    let (db, user) = ("sh_outage_db", "sh_outage_user");
    prepare(db, user).await;
    let proxy = Proxy::start("127.0.0.1", free_port()).await;
    let p = start(
        &[format!(
            "{db} = host=127.0.0.1 port={} dbname={db}",
            proxy.port()
        )],
        "pool_mode = transaction\nserver_login_retry = 2\nquery_wait_timeout = 30\n\
         server_connect_timeout = 5",
        &[user],
    );
    let early = Arc::new(pooled(&p, db, user).await);
    value(&early, "SELECT 1").await.expect("before the outage");

    proxy.cut();
    // The cut is complete (connects refused) and the pooler has dropped its idle server:
    // a request racing the cut could otherwise be sent on the dying connection ("server
    // conn crashed?") or reach the closing listener (a reset instead of a refusal).
    proxy.wait_refused().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers_of(&p, db).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead idle server was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The already-logged-in client asks while the server is down: it queues.
    let e2 = early.clone();
    let queued = tokio::spawn(async move {
        let t = Instant::now();
        (value(&e2, "SELECT 'served'").await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New requests fail fast while the server is down.
    let down_since = Instant::now();
    let mut fast = 0;
    while down_since.elapsed() < Duration::from_secs(3) {
        let c = match connect(p.port, db, user, None).await {
            Ok(c) => c,
            Err(e) => panic!("login (no server needed) failed: {e:?}"),
        };
        let t = Instant::now();
        match value(&c, "SELECT 1").await {
            Ok(_) => panic!("a query succeeded while the server was down"),
            Err(e) => {
                let took = t.elapsed();
                let (code, msg) = error_of(&e);
                assert_eq!(code, "08P01", "{msg}\n{}", p.log());
                assert!(
                    msg.starts_with("server login has been failing, cached error: connect failed"),
                    "{msg} after {:?}\n{}",
                    t.elapsed(),
                    p.log()
                );
                // Far below server_connect_timeout (5 s): the answer did not wait for a
                // connect attempt. Generous so a loaded CI machine does not flake.
                assert!(took < Duration::from_secs(2), "fast-fail took {took:?}");
                fast += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fast >= 5, "only {fast} fast-fail answers");
    assert!(!queued.is_finished(), "the queued request gave up early");

    proxy.up().await;
    let back = Instant::now();
    let (res, waited) = within(15, "queued request", queued).await.expect("join");
    assert_eq!(res.expect("queued request after recovery"), "served");
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "queued request served {:?} after recovery (server_login_retry 2)",
        back.elapsed()
    );
    assert!(waited > Duration::from_secs(3));
    // New requests are served again (the queued one's connect refilled the pool).
    let t = Instant::now();
    let c = pooled(&p, db, user).await;
    value(&c, "SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("new request after recovery: {e:?}\n{}", p.log()));
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// 57P03 from the server ("the database system is starting up") keeps clients waiting
/// instead of failing them; once the server accepts logins they are served.
#[tokio::test(flavor = "multi_thread")]
async fn starting_up_server_keeps_clients_waiting() {
    let (db, user) = ("sh_startup_db", "sh_startup_user");
    prepare(db, user).await;
    let port = free_port();
    // A server that answers every startup packet with FATAL 57P03 while `starting`, and
    // forwards to the real cluster once it is "up".
    let fake = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let starting = Arc::new(AtomicBool::new(true));
    let up = starting.clone();
    let pg = SocketAddr::from(([127, 0, 0, 1], cluster().port()));
    let fake_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            let starting = up.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if !starting {
                    if let Ok(mut server) = TcpStream::connect(pg).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut server).await;
                    }
                    return;
                }
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let mut body = Vec::new();
                for (t, v) in [
                    (b'S', "FATAL"),
                    (b'C', "57P03"),
                    (b'M', "the database system is starting up"),
                ] {
                    body.push(t);
                    body.extend_from_slice(v.as_bytes());
                    body.push(0);
                }
                body.push(0);
                let mut msg = vec![b'E'];
                msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                msg.extend_from_slice(&body);
                let _ = s.write_all(&msg).await;
            });
        }
    });
    let p = start(
        &[format!("{db} = host=127.0.0.1 port={port} dbname={db}")],
        "pool_mode = transaction\nserver_login_retry = 1\nquery_wait_timeout = 30",
        &[user],
    );
    let pport = p.port;
    let client = tokio::spawn(async move {
        let t = Instant::now();
        let c = connect(pport, db, user, None).await;
        (c.map(|_| ()), t.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!client.is_finished(), "a client was failed on 57P03");
    assert!(p.log().contains("57P03"));
    // Recovery finished: logins now reach the real server.
    starting.store(false, Ordering::SeqCst);
    let (res, took) = within(15, "client waiting through 57P03", client)
        .await
        .expect("join");
    res.unwrap_or_else(|e| panic!("client after startup: {e:?}\n{}", p.log()));
    assert!(took > Duration::from_secs(2));
    fake_task.abort();
}

// ------------------------------------------------------------------ 3. load_balance_hosts

/// Two entries for the same server (two proxies): round-robin (the default) spreads new
/// servers over both; `load_balance_hosts=disable` keeps to the first until it fails,
/// then stays on the second even after the first is back.
#[tokio::test(flavor = "multi_thread")]
async fn load_balance_hosts_round_robin_and_disable() {
    let (db, user) = ("sh_lb_db", "sh_lb_user");
    prepare(db, user).await;
    let port = free_port();
    let a = Proxy::start("127.0.0.7", port).await;
    let b = Proxy::start("127.0.0.8", port).await;
    let p = start(
        &[
            format!("{db} = host=127.0.0.7,127.0.0.8 port={port} dbname={db}"),
            format!(
                "sh_lb_sticky = host=127.0.0.7,127.0.0.8 port={port} dbname={db} \
                 load_balance_hosts=disable"
            ),
        ],
        "pool_mode = session\ndefault_pool_size = 10\nserver_login_retry = 1",
        &[user],
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = pooled(&p, db, user).await;
        value(&c, "SELECT 1").await.expect("query");
        held.push(c);
    }
    let addrs: Vec<String> = servers_of(&p, db)
        .await
        .into_iter()
        .map(|r| r["addr"].clone())
        .collect();
    assert_eq!(
        addrs.iter().filter(|a| *a == "127.0.0.7").count(),
        2,
        "{addrs:?}"
    );
    assert_eq!(
        addrs.iter().filter(|a| *a == "127.0.0.8").count(),
        2,
        "{addrs:?}"
    );

    let sticky = "sh_lb_sticky";
    for _ in 0..3 {
        let c = pooled(&p, sticky, user).await;
        value(&c, "SELECT 1").await.expect("query");
        held.push(c);
    }
    let addrs: Vec<String> = servers_of(&p, sticky)
        .await
        .into_iter()
        .map(|r| r["addr"].clone())
        .collect();
    assert_eq!(addrs, ["127.0.0.7"; 3], "disable stays on the first host");
    // The first host fails: new servers go to the second and stay there.
    a.cut();
    held.truncate(4);
    for _ in 0..2 {
        let c = pooled(&p, sticky, user).await;
        value(&c, "SELECT 1")
            .await
            .expect("query while the first host is down");
        held.push(c);
    }
    a.up().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..2 {
        let c = pooled(&p, sticky, user).await;
        value(&c, "SELECT 1").await.expect("query");
        held.push(c);
    }
    let addrs: Vec<String> = servers_of(&p, sticky)
        .await
        .into_iter()
        .map(|r| r["addr"].clone())
        .collect();
    assert_eq!(
        addrs, ["127.0.0.8"; 4],
        "stays on the second host: {addrs:?}"
    );
    drop(b);
}

// ------------------------------------------------------------------ 4. dead idle servers

/// Backends terminated while idle in the pool are noticed and dropped by the janitor
/// without any client asking (SHOW SERVERS empties), and the next client is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn idle_backend_killed_is_dropped_and_next_client_unaffected() {
    let (db, user) = ("sh_kill_db", "sh_kill_user");
    prepare(db, user).await;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db}"
        )],
        "pool_mode = transaction\ndefault_pool_size = 3",
        &[user],
    );
    let clients = [
        pooled(&p, db, user).await,
        pooled(&p, db, user).await,
        pooled(&p, db, user).await,
    ];
    for c in &clients {
        c.batch_execute("BEGIN").await.expect("BEGIN");
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    assert_eq!(servers_of(&p, db).await.len(), 3);
    assert_eq!(cluster().terminate_backends(Some(db), Some(user)).await, 3);
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let n = servers_of(&p, db).await.len();
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} dead servers still in the pool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in &clients {
        within(10, "query after the kill", value(c, "SELECT 1"))
            .await
            .expect("query after the idle backends were killed");
    }
}

// ------------------------------------------------------------------ 5. health checks

/// server_check_query runs before reusing a server idle longer than server_check_delay,
/// and not before reusing one used just now. Observed through a sequence the check
/// query advances.
#[tokio::test(flavor = "multi_thread")]
async fn server_check_query_runs_after_the_delay() {
    let (db, user) = ("sh_check_db", "sh_check_user");
    prepare(db, user).await;
    let su = cluster()
        .connect(db, "postgres", None)
        .await
        .expect("superuser");
    su.batch_execute(&format!(
        "DROP SEQUENCE IF EXISTS sh_check_seq; CREATE SEQUENCE sh_check_seq; \
         GRANT USAGE, SELECT ON SEQUENCE sh_check_seq TO {user}"
    ))
    .await
    .expect("sequence");
    let checks = || async {
        value(
            &su,
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM sh_check_seq",
        )
        .await
        .expect("read sequence")
        .parse::<i64>()
        .expect("a number")
    };
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db} pool_size=1"
        )],
        "pool_mode = transaction\nserver_check_delay = 1\n\
         server_check_query = SELECT nextval('sh_check_seq')",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    let pid = backend_pid(&c).await;
    backend_pid(&c).await;
    assert_eq!(checks().await, 0, "no check for a server used just now");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend_pid(&c).await, pid, "same server after a good check");
    assert_eq!(checks().await, 1, "one check after server_check_delay");
    backend_pid(&c).await;
    assert_eq!(checks().await, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    backend_pid(&c).await;
    assert_eq!(checks().await, 2);
}

/// A failing check closes that server and the client gets a new one: with a check
/// query that always fails, a server idle past the delay is never reused.
#[tokio::test(flavor = "multi_thread")]
async fn failed_check_closes_the_server_and_the_client_gets_another() {
    let (db, user) = ("sh_badcheck_db", "sh_badcheck_user");
    prepare(db, user).await;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db} pool_size=1"
        )],
        "pool_mode = transaction\nserver_check_delay = 1\nserver_check_query = SELECT 1/0",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    let first = backend_pid(&c).await;
    assert_eq!(backend_pid(&c).await, first);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = within(10, "query after a failed check", backend_pid(&c)).await;
    assert_ne!(first, second, "a server that failed its check was reused");
    assert!(p.wait_for_log("server check failed", Duration::from_secs(2)));
    assert_eq!(backends(db).await, 1, "the failed server is closed");
}

/// A half-open server (the network stopped forwarding; the socket looks fine) fails
/// its check by timing out after server_connect_timeout, and the client is served by a
/// new server instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn half_open_server_fails_its_check_and_is_replaced() {
    let (db, user) = ("sh_halfopen_db", "sh_halfopen_user");
    prepare(db, user).await;
    let proxy = Proxy::start("127.0.0.1", free_port()).await;
    let p = start(
        &[format!(
            "{db} = host=127.0.0.1 port={} dbname={db} pool_size=2",
            proxy.port()
        )],
        "pool_mode = transaction\nserver_check_delay = 1\nserver_connect_timeout = 2",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    let first = backend_pid(&c).await;
    proxy.freeze_existing();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Instant::now();
    let second = within(10, "query with a half-open idle server", backend_pid(&c)).await;
    let took = t.elapsed();
    assert_ne!(first, second);
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "served after {took:?} (check bound 2 s)"
    );
}

// ------------------------------------------------------------------ 6. server_lifetime

/// Servers opened together expire over a spread of time (jitter), all within
/// server_lifetime (+ a janitor tick), none much before 80% of it.
#[tokio::test(flavor = "multi_thread")]
async fn server_lifetime_expires_servers_with_jitter() {
    let (db, user) = ("sh_life_db", "sh_life_user");
    prepare(db, user).await;
    let n = 12;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db}"
        )],
        &format!("pool_mode = transaction\ndefault_pool_size = {n}\nserver_lifetime = 8"),
        &[user],
    );
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(pooled(&p, db, user).await);
    }
    for c in &clients {
        c.batch_execute("BEGIN").await.expect("BEGIN");
    }
    let opened = Instant::now();
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    assert_eq!(backends(db).await, n);
    let mut seen = Vec::new();
    loop {
        let left = backends(db).await;
        seen.push((opened.elapsed(), left));
        if left == 0 || opened.elapsed() > Duration::from_secs(12) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_at = seen.iter().find(|(_, l)| *l == 0).map(|(t, _)| *t);
    let gone_at = gone_at.unwrap_or_else(|| panic!("servers outlived server_lifetime: {seen:?}"));
    assert!(gone_at < Duration::from_millis(10500), "{seen:?}");
    let first_close = seen.iter().find(|(_, l)| *l < n).map(|(t, _)| *t).unwrap();
    assert!(first_close > Duration::from_millis(6000), "{seen:?}");
    let partial = seen.iter().filter(|(_, l)| *l > 0 && *l < n).count();
    assert!(
        partial > 0,
        "all {n} servers closed at the same moment (no jitter): {seen:?}"
    );
}

// ------------------------------------------------------------------ 7. keepalive

/// Socket inodes of process `pid`.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                let l = l.to_string_lossy().to_string();
                if let Some(n) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.push(n);
                    }
                }
            }
        }
    }
    out
}

/// (local port, remote port, timer kind, timer ticks) of established TCP sockets whose
/// inode is in `inodes` (from /proc/net/tcp).
fn tcp_timers(inodes: &[u64]) -> Vec<(u16, u16, u32, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "01" {
            continue;
        }
        let Ok(inode) = f[9].parse::<u64>() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        let port =
            |s: &str| u16::from_str_radix(s.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
        let (tr, when) = f[5].split_once(':').unwrap_or(("0", "0"));
        out.push((
            port(f[1]),
            port(f[2]),
            u32::from_str_radix(tr, 16).unwrap_or(0),
            u64::from_str_radix(when, 16).unwrap_or(0),
        ));
    }
    out
}

/// tcp_keepalive / keepidle / keepintvl / keepcnt / tcp_user_timeout are accepted and
/// applied without errors, on server and client sockets: the kernel shows a keepalive
/// timer due within tcp_keepidle (7 s) rather than the 2-hour default.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_settings_are_applied_to_both_sides() {
    let (db, user) = ("sh_ka_db", "sh_ka_user");
    prepare(db, user).await;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db}"
        )],
        "pool_mode = session\ntcp_keepalive = 1\ntcp_keepidle = 7\ntcp_keepintvl = 3\n\
         tcp_keepcnt = 4\ntcp_user_timeout = 5000",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    value(&c, "SELECT 1").await.expect("query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let timers = tcp_timers(&socket_inodes(p.pid()));
    let pg_port = cluster().port();
    let server: Vec<_> = timers.iter().filter(|t| t.1 == pg_port).collect();
    let client: Vec<_> = timers.iter().filter(|t| t.0 == p.port).collect();
    assert!(!server.is_empty() && !client.is_empty(), "{timers:?}");
    for t in server.iter().chain(client.iter()) {
        // Timer 2 = keepalive; ticks are USER_HZ (100/s): due within 7 s.
        assert_eq!(t.2, 2, "no keepalive timer: {timers:?}");
        assert!(
            t.3 <= 700,
            "keepalive not due within tcp_keepidle: {timers:?}"
        );
    }
    assert!(!p.log().contains("keepalive"), "{}", p.log());
}

// ------------------------------------------------------------------ 8. server_fast_close

/// Session mode with server_fast_close: after RECONNECT marks the servers, a client in a
/// transaction finishes it, and is then disconnected with "database configuration
/// changed" (its server closed) instead of keeping the old server for the whole session;
/// an idle session ends the next time it speaks.
#[tokio::test(flavor = "multi_thread")]
async fn server_fast_close_ends_sessions_at_the_transaction_boundary() {
    let (db, user) = ("sh_fastclose_db", "sh_fastclose_user");
    prepare(db, user).await;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db}"
        )],
        "pool_mode = session\nserver_fast_close = 1",
        &[user],
    );
    let busy = pooled(&p, db, user).await;
    let idle = pooled(&p, db, user).await;
    let idle_pid = backend_pid(&idle).await;
    busy.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    let admin = pooled(&p, "pgbouncer", ADMIN).await;
    admin
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .expect("RECONNECT");
    // The open transaction is not cut...
    value(&busy, "SELECT 2")
        .await
        .expect("inside the transaction");
    busy.batch_execute("COMMIT").await.expect("COMMIT");
    // ...but the session ends at its boundary.
    let err = within(
        5,
        "query after the fast close",
        busy.simple_query("SELECT 3"),
    )
    .await
    .expect_err("the session outlived server_fast_close");
    let text = format!("{err} {:?}", error_of(&err));
    assert!(
        text.contains("database configuration changed") || err.is_closed(),
        "{text}"
    );
    // The idle session ends when it next speaks, and its old server is closed.
    let err = within(5, "idle session", idle.simple_query("SELECT 1"))
        .await
        .expect_err("idle session kept its marked server");
    assert!(
        format!("{err} {:?}", error_of(&err)).contains("database configuration changed"),
        "{err:?}"
    );
    assert!(p.wait_for_log("database configuration changed", Duration::from_secs(2)));
    let su = cluster().superuser().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: bool = su
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1",
                &[&idle_pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the marked server was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new session works on a new server.
    let fresh = pooled(&p, db, user).await;
    assert_ne!(backend_pid(&fresh).await, idle_pid);
}

// ------------------------------------------------------------------ 6. unused pools

/// Server connections of `db` in pg_stat_activity.
async fn backends_of(db: &str) -> i64 {
    cluster()
        .superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Waits until `cond` holds for SHOW `what` (checked every 250 ms, up to `secs`).
async fn until_show(
    p: &Pooler,
    what: &str,
    secs: u64,
    cond: impl Fn(&[HashMap<String, String>]) -> bool,
) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond(&show(p, what).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn has_db(rows: &[HashMap<String, String>], db: &str) -> bool {
    rows.iter().any(|r| {
        r.get("database").map(String::as_str) == Some(db)
            || r.get("name").map(String::as_str) == Some(db)
    })
}

/// A database served through the `*` entry is freed after autodb_idle_timeout without
/// clients: its idle servers are closed and it leaves SHOW POOLS and SHOW DATABASES. The
/// next client recreates it.
#[tokio::test(flavor = "multi_thread")]
async fn autodb_is_freed_after_autodb_idle_timeout() {
    let (db, user) = ("sh_autodb_db", "sh_autodb_user");
    prepare(db, user).await;
    let p = start(
        &["* = host={pg_host} port={pg_port}".to_string()],
        "pool_mode = transaction\nautodb_idle_timeout = 2",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    assert_eq!(value(&c, "SELECT 7").await.expect("SELECT"), "7");
    assert!(has_db(&show(&p, "POOLS").await, db));
    assert!(has_db(&show(&p, "DATABASES").await, db));
    assert_eq!(backends_of(db).await, 1);

    // Not freed while a client is connected, even past the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(has_db(&show(&p, "POOLS").await, db), "{}", p.log());
    drop(c);

    assert!(
        until_show(&p, "POOLS", 15, |r| !has_db(r, db)).await,
        "pool not freed\n{}",
        p.log()
    );
    assert!(!has_db(&show(&p, "DATABASES").await, db), "{}", p.log());
    let end = Instant::now() + Duration::from_secs(10);
    while backends_of(db).await != 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backends_of(db).await, 0, "server left open");

    let c = pooled(&p, db, user).await;
    assert_eq!(value(&c, "SELECT 8").await.expect("SELECT again"), "8");
}

/// pool_idle_timeout frees a configured database's pool once it has had no client and no
/// server for that long; the database entry stays (it is in the config).
#[tokio::test(flavor = "multi_thread")]
async fn empty_pool_is_freed_after_pool_idle_timeout() {
    let (db, user) = ("sh_poolidle_db", "sh_poolidle_user");
    prepare(db, user).await;
    let p = start(
        &[format!(
            "{db} = host={{pg_host}} port={{pg_port}} dbname={db}"
        )],
        "pool_mode = transaction\nserver_idle_timeout = 1\npool_idle_timeout = 1",
        &[user],
    );
    let c = pooled(&p, db, user).await;
    assert_eq!(value(&c, "SELECT 1").await.expect("SELECT"), "1");
    drop(c);
    assert!(
        until_show(&p, "POOLS", 15, |r| !has_db(r, db)).await,
        "pool not freed\n{}",
        p.log()
    );
    assert!(has_db(&show(&p, "DATABASES").await, db));
    let c = pooled(&p, db, user).await;
    assert_eq!(value(&c, "SELECT 2").await.expect("SELECT again"), "2");
}
