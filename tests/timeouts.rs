//! Client-side timeouts seen from clients: query_timeout (running, and still queued),
//! idle_transaction_timeout, transaction_timeout, client_idle_timeout, the
//! query_wait_notify NOTICE, client_login_timeout while the server is down,
//! cancel_wait_timeout for a cancel the server does not finish, `[users]` overrides, and
//! that nothing fires when every timeout is 0.
//!
//! Each timeout must end the client with PgBouncer's exact text as FATAL 08P01 within its
//! bound (cancel_wait_timeout, as in PgBouncer, closes the cancel connection without
//! one). Timing is asserted with slack (a 1 s setting fires within about 1–5 s), never
//! exactly. Every test starts its own pgsluice and uses its own database and role.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{cluster, connect, Misbehave, Msg, Pooler, PoolerBuilder, RawClient, Tap};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------------ helpers

/// Starts pgsluice in transaction mode in front of database `db`, with `settings` added to
/// `[pgbouncer]` and `users` lines as the `[users]` section; `roles` go into the auth_file
/// with empty passwords (trust).
fn start(db: &str, settings: &str, users: &str, roles: &[&str]) -> Pooler {
    start_via(db, "{pg_port}", settings, users, roles)
}

/// [`start`] with the database entry's port set to `server_port` (a placeholder or a
/// number, e.g. a [`Tap`]'s port).
fn start_via(db: &str, server_port: &str, settings: &str, users: &str, roles: &[&str]) -> Pooler {
    let ini = format!(
        "[databases]\n\
         {db} = host={{pg_host}} port={server_port} dbname={db}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = transaction\n\
         {settings}\n\
         [users]\n\
         {users}\n"
    );
    let userlist: String = roles.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
    PoolerBuilder::new(&ini).userlist(&userlist).start()
}

/// Creates the roles, then the database owned by the first one.
async fn prepare(db: &str, roles: &[&str]) {
    let pg = cluster();
    for r in roles {
        pg.create_role(r, None).await;
    }
    pg.create_database(db, roles[0]).await;
}

/// Runs `fut`, panicking if it takes longer than `secs` seconds (no test may hang).
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// A raw client logged in to the pooler.
async fn raw(p: &Pooler, db: &str, user: &str) -> RawClient {
    let mut c = RawClient::connect(p.port).await;
    if let Err(e) = c.login(user, db, None).await {
        panic!("login {user}@{db}: {e:?}\n{}", p.log());
    }
    c
}

/// Simple query that must succeed; returns the first column of the first row, if any.
async fn ok(c: &mut RawClient, sql: &str) -> Option<String> {
    let msgs = c.query(sql).await;
    if let Some(e) = msgs.iter().find(|m| m.is_error()) {
        panic!("{sql}: {e:?}");
    }
    msgs.iter()
        .find(|m| m.tag == b'D')
        .and_then(|m| m.text_columns().into_iter().next().flatten())
}

/// Reads until the connection closes and returns the ErrorResponse that came before it;
/// panics if there was none or it is not FATAL 08P01 `text`. Notices are skipped.
async fn expect_fatal(c: &mut RawClient, text: &str, log: impl Fn() -> String) {
    let msgs = c.recv_until_eof().await;
    let errors: Vec<&Msg> = msgs.iter().filter(|m| m.is_error()).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error before the close, got {msgs:?}\n{}",
        log()
    );
    let e = errors[0];
    assert_eq!(e.severity(), "FATAL", "{e:?}");
    assert_eq!(e.sqlstate(), "08P01", "{e:?}");
    assert_eq!(e.message(), text, "{e:?}");
}

/// Asserts that `elapsed` is within [lo, hi] seconds.
fn assert_between(elapsed: Duration, lo: f64, hi: f64, what: &str) {
    let s = elapsed.as_secs_f64();
    assert!(
        s >= lo && s <= hi,
        "{what} after {s:.2} s, expected {lo}–{hi} s"
    );
}

// ------------------------------------------------------------------ query_timeout

/// `SELECT pg_sleep(30)` with query_timeout = 1: the client (tokio-postgres, simple
/// query) gets FATAL 08P01 `query timeout` after about a second, the backend stops
/// sleeping at once (it is cancelled, not left to finish), and the pool of one serves the
/// next client.
#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_ends_a_long_query_and_its_backend() {
    let (db, user) = ("to_qt_db", "to_qt_user");
    prepare(db, &[user]).await;
    let p = start(db, "default_pool_size = 1\nquery_timeout = 1", "", &[user]);
    let c = within(10, "connect", connect(p.port, db, user, None))
        .await
        .expect("connect through pgsluice");
    let started = Instant::now();
    let err = within(10, "pg_sleep(30)", c.simple_query("SELECT pg_sleep(30)"))
        .await
        .expect_err("the query must be cut off");
    assert_between(started.elapsed(), 0.8, 5.0, "query timeout");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got {err:?}\n{}", p.log()));
    assert_eq!(db_err.severity(), "FATAL");
    assert_eq!(db_err.code().code(), "08P01");
    assert_eq!(db_err.message(), "query timeout");
    within(5, "the client connection closes", async {
        while !c.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let left = cluster()
        .wait_for_backends(Some(db), None, Some("active"), 0, Duration::from_secs(5))
        .await;
    assert_eq!(left, 0, "the timed-out query still runs on the server");
    let mut next = raw(&p, db, user).await;
    assert_eq!(ok(&mut next, "SELECT 7").await.as_deref(), Some("7"));
}

/// Pool of one held by a transaction: a second client whose request is still queued when
/// query_timeout = 1 passes gets FATAL 08P01 `query_timeout` (query_wait_timeout is the
/// default 120 s); the holder is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_fails_a_client_still_queued() {
    let (db, user) = ("to_qtq_db", "to_qtq_user");
    prepare(db, &[user]).await;
    let p = start(db, "default_pool_size = 1\nquery_timeout = 1", "", &[user]);
    let mut holder = raw(&p, db, user).await;
    ok(&mut holder, "BEGIN").await;
    let mut queued = raw(&p, db, user).await;
    let started = Instant::now();
    queued.send_query("SELECT 1").await;
    expect_fatal(&mut queued, "query_timeout", || p.log()).await;
    assert_between(started.elapsed(), 0.8, 5.0, "query_timeout while queued");
    assert_eq!(ok(&mut holder, "SELECT 2").await.as_deref(), Some("2"));
    ok(&mut holder, "COMMIT").await;
}

// ------------------------------------------------------------------ idle_transaction_timeout

/// A client left idle in a transaction is cut after idle_transaction_timeout = 1 with
/// FATAL 08P01 `idle transaction timeout`; its server is closed, so no backend stays idle
/// in transaction, its uncommitted insert is gone, and the next client on the same pool of
/// one is served.
#[tokio::test(flavor = "multi_thread")]
async fn idle_transaction_timeout_frees_the_server() {
    let (db, user) = ("to_itt_db", "to_itt_user");
    prepare(db, &[user]).await;
    let p = start(
        db,
        "default_pool_size = 1\nidle_transaction_timeout = 1",
        "",
        &[user],
    );
    let mut setup = raw(&p, db, user).await;
    ok(&mut setup, "DROP TABLE IF EXISTS t; CREATE TABLE t (x int)").await;
    drop(setup);

    let mut leaked = raw(&p, db, user).await;
    ok(&mut leaked, "BEGIN").await;
    ok(&mut leaked, "INSERT INTO t VALUES (1)").await;
    let idle_from = Instant::now();
    expect_fatal(&mut leaked, "idle transaction timeout", || p.log()).await;
    assert_between(idle_from.elapsed(), 0.8, 5.0, "idle transaction timeout");

    let left = cluster()
        .wait_for_backends(
            Some(db),
            None,
            Some("idle in transaction"),
            0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(left, 0, "a backend is still idle in transaction");
    let mut next = raw(&p, db, user).await;
    let n = within(10, "next client", ok(&mut next, "SELECT count(*) FROM t")).await;
    assert_eq!(n.as_deref(), Some("0"), "the cut transaction was committed");
}

/// Queries in a transaction keep it from being idle: a client that runs a statement every
/// 300 ms inside one transaction for 2.5 s is not cut by idle_transaction_timeout = 1.
#[tokio::test(flavor = "multi_thread")]
async fn idle_transaction_timeout_spares_a_working_transaction() {
    let (db, user) = ("to_ittw_db", "to_ittw_user");
    prepare(db, &[user]).await;
    let p = start(
        db,
        "default_pool_size = 1\nidle_transaction_timeout = 1",
        "",
        &[user],
    );
    let mut c = raw(&p, db, user).await;
    ok(&mut c, "BEGIN").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(&mut c, "SELECT 1").await;
    }
    ok(&mut c, "COMMIT").await;
}

// ------------------------------------------------------------------ transaction_timeout

/// transaction_timeout = 2 ends a transaction that keeps issuing short queries (so it is
/// never idle long) with FATAL 08P01 `transaction timeout`, counted from BEGIN; no backend
/// is left in the transaction.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_timeout_ends_a_busy_transaction() {
    let (db, user) = ("to_tt_db", "to_tt_user");
    prepare(db, &[user]).await;
    let p = start(
        db,
        "default_pool_size = 1\ntransaction_timeout = 2",
        "",
        &[user],
    );
    let mut c = raw(&p, db, user).await;
    let begun = Instant::now();
    ok(&mut c, "BEGIN").await;
    // A short query every 100 ms until the pooler answers one with an error or closes.
    let mut queries = 0;
    let mut seen = Vec::new();
    'outer: while begun.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.try_send_raw(b"Q\0\0\0\x0dSELECT 1\0").await.is_err() {
            break;
        }
        loop {
            match c.recv().await {
                None => break 'outer,
                Some(m) if m.is_error() => {
                    seen.push(m);
                    break 'outer;
                }
                Some(m) if m.tag == b'Z' => {
                    queries += 1;
                    break;
                }
                Some(_) => {}
            }
        }
    }
    // The FATAL may also have come between two queries, just ahead of the close.
    seen.extend(c.recv_until_eof().await);
    let e = seen
        .iter()
        .find(|m| m.is_error())
        .unwrap_or_else(|| panic!("no error after {queries} queries\n{}", p.log()));
    assert_between(begun.elapsed(), 1.8, 6.0, "transaction timeout");
    assert!(
        queries >= 5,
        "only {queries} queries ran before the timeout"
    );
    assert_eq!(e.severity(), "FATAL", "{e:?}");
    assert_eq!(e.sqlstate(), "08P01", "{e:?}");
    assert_eq!(e.message(), "transaction timeout", "{e:?}");
    let left = cluster()
        .wait_for_backends(
            Some(db),
            None,
            Some("idle in transaction"),
            0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(left, 0, "a backend is still in the transaction");
    let mut next = raw(&p, db, user).await;
    assert_eq!(ok(&mut next, "SELECT 3").await.as_deref(), Some("3"));
}

// ------------------------------------------------------------------ client_idle_timeout

/// client_idle_timeout = 1: a client that queries every 300 ms for 2 s is kept; once it
/// stops, it is dropped with FATAL 08P01 `client_idle_timeout` about a second later.
#[tokio::test(flavor = "multi_thread")]
async fn client_idle_timeout_drops_an_idle_client() {
    let (db, user) = ("to_cit_db", "to_cit_user");
    prepare(db, &[user]).await;
    let p = start(db, "client_idle_timeout = 1", "", &[user]);
    let mut c = raw(&p, db, user).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        ok(&mut c, "SELECT 1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ok(&mut c, "SELECT 1").await;
    let idle_from = Instant::now();
    expect_fatal(&mut c, "client_idle_timeout", || p.log()).await;
    assert_between(idle_from.elapsed(), 0.8, 5.0, "client_idle_timeout");
}

// ------------------------------------------------------------------ query_wait_notify

/// query_wait_notify = 1 with a pool of one held by a transaction: the queued client gets
/// NOTICE 00000 `No server connection available in postgres backend, client being queued`
/// once, keeps waiting, and its query succeeds when the holder commits.
#[tokio::test(flavor = "multi_thread")]
async fn query_wait_notify_sends_one_notice_and_the_query_succeeds() {
    let (db, user) = ("to_qwn_db", "to_qwn_user");
    prepare(db, &[user]).await;
    let p = start(
        db,
        "default_pool_size = 1\nquery_wait_notify = 1",
        "",
        &[user],
    );
    let mut holder = raw(&p, db, user).await;
    ok(&mut holder, "BEGIN").await;
    let mut queued = raw(&p, db, user).await;
    let started = Instant::now();
    queued.send_query("SELECT 42").await;
    let notice = queued.recv_msg().await;
    assert_between(started.elapsed(), 0.8, 5.0, "query_wait_notify notice");
    assert_eq!(notice.tag, b'N', "{notice:?}");
    assert_eq!(notice.severity(), "NOTICE", "{notice:?}");
    assert_eq!(notice.sqlstate(), "00000", "{notice:?}");
    assert_eq!(
        notice.message(),
        "No server connection available in postgres backend, client being queued"
    );
    // Once per wait: nothing more while it goes on waiting.
    assert!(
        queued.try_recv(Duration::from_millis(2500)).await.is_err(),
        "a second message arrived while still queued"
    );
    ok(&mut holder, "COMMIT").await;
    let msgs = within(10, "queued query", queued.recv_until(b'Z')).await;
    assert!(!msgs.iter().any(|m| m.is_error()), "{msgs:?}");
    let row = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .map(|m| m.text_columns());
    assert_eq!(row, Some(vec![Some("42".to_owned())]));
}

// ------------------------------------------------------------------ client_login_timeout

/// A database whose server accepts TCP connections but never answers: a client that has
/// authenticated and waits for the first server login gets FATAL 08P01
/// `client_login_timeout (server down)` after client_login_timeout = 1.
#[tokio::test(flavor = "multi_thread")]
async fn client_login_timeout_while_the_server_is_down() {
    let user = "to_clt_user";
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a black hole");
    let hole_port = hole.local_addr().expect("black hole address").port();
    // Accepts and holds every connection without a byte in reply.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let ini = format!(
        "[databases]\n\
         to_clt_db = host=127.0.0.1 port={hole_port} dbname=nothing\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = transaction\n\
         client_login_timeout = 1\n\
         server_connect_timeout = 10\n"
    );
    let p = PoolerBuilder::new(&ini)
        .userlist(&format!("\"{user}\" \"\"\n"))
        .start();
    let mut c = RawClient::connect(p.port).await;
    let started = Instant::now();
    let e = match within(10, "login", c.login(user, "to_clt_db", None)).await {
        Ok(()) => panic!("login succeeded without a server\n{}", p.log()),
        Err(e) => e,
    };
    assert_between(
        started.elapsed(),
        0.8,
        5.0,
        "client_login_timeout (server down)",
    );
    assert_eq!(e.severity(), "FATAL", "{e:?}");
    assert_eq!(e.sqlstate(), "08P01", "{e:?}");
    assert_eq!(e.message(), "client_login_timeout (server down)", "{e:?}");
    holder.abort();
}

// ------------------------------------------------------------------ [users] overrides

/// `[users]` idle_transaction_timeout=1 for one role beats the global 60: that role is cut
/// after about a second, while another role on the global value keeps its transaction
/// through a 3 s hold.
#[tokio::test(flavor = "multi_thread")]
async fn users_override_takes_precedence_over_the_global_timeout() {
    let (db, fast, slow) = ("to_ovr_db", "to_ovr_fast", "to_ovr_slow");
    prepare(db, &[fast, slow]).await;
    let p = start(
        db,
        "idle_transaction_timeout = 60",
        &format!("{fast} = idle_transaction_timeout=1"),
        &[fast, slow],
    );
    let mut f = raw(&p, db, fast).await;
    let mut s = raw(&p, db, slow).await;
    ok(&mut f, "BEGIN").await;
    ok(&mut s, "BEGIN").await;
    let idle_from = Instant::now();
    expect_fatal(&mut f, "idle transaction timeout", || p.log()).await;
    assert_between(
        idle_from.elapsed(),
        0.8,
        5.0,
        "per-user idle transaction timeout",
    );
    let rest = Duration::from_secs(3).saturating_sub(idle_from.elapsed());
    assert!(
        s.try_recv(rest).await.is_err(),
        "the role on the global timeout heard from the pooler"
    );
    assert_eq!(ok(&mut s, "SELECT 5").await.as_deref(), Some("5"));
    ok(&mut s, "COMMIT").await;
}

// ------------------------------------------------------------------ cancel_wait_timeout

/// A cancel the server never finishes. pgsluice forwards a CancelRequest on a connection
/// of its own, outside the pool's limits, so what cancel_wait_timeout bounds is that
/// forwarding: here the database entry points at a tap in front of the cluster that
/// holds connections opening with a CancelRequest (accepted, never answered nor closed).
/// With cancel_wait_timeout = 1: the tap receives the server's real key (the backend's
/// pid, not the client's pgsluice-issued one); the client's cancel connection is closed
/// without a byte after about a second, not after the 10 s default or never; the log
/// says cancel_wait_timeout; other clients are served while the cancel waits; the query
/// was not cancelled; and the client's next transaction is not held up by the cancel
/// that gave up.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_wait_timeout_closes_a_cancel_the_server_does_not_finish() {
    let (db, user) = ("to_cwt_db", "to_cwt_user");
    prepare(db, &[user]).await;
    let tap = Tap::start(Misbehave::HoldCancels).await;
    // Plaintext to the tap, so the forwarded cancel is the first packet it reads.
    let p = start_via(
        db,
        &tap.port.to_string(),
        "default_pool_size = 2\ncancel_wait_timeout = 1\nserver_tls_sslmode = disable",
        "",
        &[user],
    );
    let mut a = raw(&p, db, user).await;
    let (a_pid, a_secret) = (a.backend_pid.expect("pid"), a.secret_key.expect("secret"));
    a.send_query("SELECT 'a woke' FROM pg_sleep(30)").await;
    let server_pid = cluster().active_pid(Some(user), "'a woke'").await;
    assert_ne!(server_pid, a_pid, "pgsluice must issue its own keys");

    let mut cancel = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .expect("cancel connection");
    let mut pkt = Vec::with_capacity(16);
    for word in [16, 80_877_102, a_pid, a_secret] {
        pkt.extend_from_slice(&word.to_be_bytes());
    }
    cancel.write_all(&pkt).await.expect("send CancelRequest");
    let sent = Instant::now();
    tap.wait_for("the forwarded cancel", Duration::from_secs(5), |c| {
        c.iter()
            .flatten()
            .any(|o| matches!(o, common::Opening::Cancel { .. }))
    })
    .await;
    let cancels = tap.cancels();
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(
        cancels[0].0, server_pid,
        "the server's own key is forwarded"
    );

    // While the cancel waits, the pooler serves other clients.
    let mut b = within(5, "another client", raw(&p, db, user)).await;
    assert_eq!(
        within(5, "another client's query", ok(&mut b, "SELECT 'b served'"))
            .await
            .as_deref(),
        Some("b served")
    );

    let mut buf = [0u8; 64];
    let read = within(8, "the cancel connection closes", cancel.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the cancel connection got an answer: {read:?}"
    );
    assert_between(sent.elapsed(), 0.8, 5.0, "cancel connection closed");
    assert!(
        p.wait_for_log("cancel_wait_timeout", Duration::from_secs(5)),
        "no cancel_wait_timeout warning:\n{}",
        p.log()
    );

    // The cancel never reached PostgreSQL: the query still runs. End it directly.
    assert_eq!(
        cluster().active_pid(Some(user), "'a woke'").await,
        server_pid
    );
    let su = cluster().superuser().await;
    su.execute("SELECT pg_cancel_backend($1)", &[&server_pid])
        .await
        .expect("pg_cancel_backend");
    let msgs = within(5, "the cancelled query", a.recv_until(b'Z')).await;
    assert!(
        msgs.iter().any(|m| m.is_error() && m.sqlstate() == "57014"),
        "{msgs:?}"
    );
    // No cancel is left in flight: the release did not wait on it, and the next
    // transaction runs at once.
    let next = Instant::now();
    assert_eq!(
        ok(&mut a, "SELECT 'a again'").await.as_deref(),
        Some("a again")
    );
    assert!(
        next.elapsed() < Duration::from_secs(3),
        "{:?}",
        next.elapsed()
    );
}

// ------------------------------------------------------------------ all off

/// With every timeout 0, a client idle for 3 s and then idle in a transaction for 3 s
/// hears nothing from the pooler and its transaction still works; so does a client queued
/// for 3 s behind it (no notice, no error).
#[tokio::test(flavor = "multi_thread")]
async fn nothing_fires_when_every_timeout_is_zero() {
    let (db, user) = ("to_off_db", "to_off_user");
    prepare(db, &[user]).await;
    let p = start(
        db,
        "default_pool_size = 1\n\
         query_timeout = 0\n\
         query_wait_timeout = 0\n\
         query_wait_notify = 0\n\
         idle_transaction_timeout = 0\n\
         transaction_timeout = 0\n\
         client_idle_timeout = 0",
        "",
        &[user],
    );
    let mut c = raw(&p, db, user).await;
    assert!(
        c.try_recv(Duration::from_secs(3)).await.is_err(),
        "an idle client heard from the pooler"
    );
    ok(&mut c, "BEGIN").await;
    let mut queued = raw(&p, db, user).await;
    queued.send_query("SELECT 9").await;
    assert!(
        c.try_recv(Duration::from_secs(3)).await.is_err(),
        "a client idle in transaction heard from the pooler"
    );
    assert!(
        queued.try_recv(Duration::from_millis(100)).await.is_err(),
        "a queued client heard from the pooler"
    );
    assert_eq!(ok(&mut c, "SELECT 1").await.as_deref(), Some("1"));
    ok(&mut c, "COMMIT").await;
    let msgs = within(10, "queued query", queued.recv_until(b'Z')).await;
    assert!(
        !msgs.iter().any(|m| m.is_error() || m.tag == b'N'),
        "{msgs:?}"
    );
}
