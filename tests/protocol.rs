//! The PostgreSQL wire protocol through pgsluice, as a client sees it: extended-protocol
//! pipelines, errors inside them, Flush without Sync, portals, COPY both ways, large
//! values, notices and notifications, cancels, clients and servers that vanish, bad
//! frames, multi-statement and empty queries, and Terminate.
//!
//! Every test starts its own pooler in transaction mode (session mode where the test
//! needs session state) with a pool of one or two servers, so that different clients
//! really share a server, and uses a role and database of its own (tests run in
//! parallel against one cluster).  Setup and checks that must not go through the pooler
//! use direct connections as `postgres`; the backends the pooler opens are told apart
//! by their role.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use common::{
    cluster, connect, psql, sqlstate_of, stdout_ok, Msg, Pooler, PoolerBuilder, RawClient,
};

/// How long cleanup after a vanished client or server may take.
const SETTLE: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ helpers

/// A role `proto_<name>` owning a database `proto_<name>_db`: (database, role).
async fn setup(name: &str) -> (String, String) {
    let pg = cluster();
    let user = format!("proto_{name}");
    let db = format!("proto_{name}_db");
    pg.create_role(&user, None).await;
    pg.create_database(&db, &user).await;
    (db, user)
}

/// A pooler for `db` with `user` in its auth_file (trust).
fn start_pooler(db: &str, user: &str, mode: &str, pool_size: u32, extra: &str) -> Pooler {
    let ini = format!(
        "[databases]\n\
         {db} = host={{pg_host}} port={{pg_port}}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = {mode}\n\
         default_pool_size = {pool_size}\n\
         {extra}"
    );
    PoolerBuilder::new(&ini)
        .userlist(&format!("\"{user}\" \"\"\n"))
        .start()
}

/// A superuser connection straight to the cluster, into `db`.
async fn direct(db: &str) -> tokio_postgres::Client {
    cluster()
        .connect(db, "postgres", None)
        .await
        .unwrap_or_else(|e| panic!("direct connection to {db}: {e:?}"))
}

/// A raw client logged in through the pooler.
async fn raw(p: &Pooler, db: &str, user: &str) -> RawClient {
    let mut c = RawClient::connect(p.port).await;
    if let Err(e) = c.login_trust(user, db).await {
        panic!(
            "login as {user}@{db} through pgsluice failed: {e:?}\n{}",
            p.log()
        );
    }
    c
}

/// A tokio-postgres client through the pooler.
async fn pg_client(p: &Pooler, db: &str, user: &str) -> tokio_postgres::Client {
    connect(p.port, db, user, None)
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres through pgsluice: {e:?}\n{}", p.log()))
}

/// The message tags as a string, e.g. "12DCZ".
fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// Text of the first column of every DataRow.
fn first_col(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.text_columns()[0].clone().unwrap_or_default())
        .collect()
}

/// Parse / Bind / Execute / Sync of `sql` on the unnamed statement and portal.
async fn send_extended(c: &mut RawClient, sql: &str) {
    c.send_parse("", sql, &[]).await;
    c.send_bind("", "", &[]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
}

/// (process id, channel, payload) of a NotificationResponse.
fn notification(m: &Msg) -> (i32, String, String) {
    assert_eq!(m.tag, b'A', "expected a NotificationResponse, got {m:?}");
    let body = &m.body[..];
    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let mut parts = body[4..].split(|&b| b == 0);
    let channel = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let payload = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (pid, channel, payload)
}

/// Asserts that the client gets nothing for `ms` milliseconds (it is queued).
async fn assert_silent(c: &mut RawClient, ms: u64, what: &str) {
    if let Ok(msg) = c.try_recv(Duration::from_millis(ms)).await {
        panic!("{what}: expected no answer yet, got {msg:?}");
    }
}

/// Backends of `user` in `db` (optionally in `state`), straight from pg_stat_activity.
async fn backends(db: &str, user: &str, state: Option<&str>) -> i64 {
    cluster().count_backends(Some(db), Some(user), state).await
}

/// Waits until the backends of `user` in `db` in `state` number `n`; returns the count.
async fn wait_backends(db: &str, user: &str, state: Option<&str>, n: i64) -> i64 {
    cluster()
        .wait_for_backends(Some(db), Some(user), state, n, SETTLE)
        .await
}

/// Pid of the backend of `user` in `db` whose current query starts with `prefix` and is
/// active; waits up to 10 s for it.
async fn active_backend(db: &str, user: &str, prefix: &str) -> i32 {
    let su = cluster().superuser().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = su
            .query_opt(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND usename = $2 AND state = 'active' \
                   AND starts_with(query, $3) LIMIT 1",
                &[&db, &user, &prefix],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no active backend running {prefix:?} in {db}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SELECT count(*) FROM <table>` on a direct connection.
async fn direct_count(db: &str, table: &str) -> i64 {
    direct(db)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e:?}"))
        .get(0)
}

/// A fresh client through the pooler runs a query and gets its own answer.
async fn next_client_works(p: &Pooler, db: &str, user: &str) {
    let mut c = raw(p, db, user).await;
    assert_eq!(
        c.query_rows("SELECT 'next client', current_user::text")
            .await,
        vec![vec![Some("next client".into()), Some(user.into())]]
    );
    c.send_terminate().await;
}

// ------------------------------------------------------------ 1. pipelines

/// Two raw clients share one server (pool 1), each sending three-Sync pipelines in one
/// write plus simple queries; every client gets exactly its own rows, in order, with one
/// ReadyForQuery per Sync, and both ran on the same backend.  Then a 2000-Sync pipeline
/// in one write (past the relay's 64 KiB buffers both ways) with a client queued behind.
#[tokio::test(flavor = "multi_thread")]
async fn extended_pipelines_share_one_server_without_mixing_rows() {
    let (db, user) = setup("pipeline").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut tasks = Vec::new();
    for who in ["a", "b"] {
        let mut c = raw(&p, &db, &user).await;
        tasks.push(tokio::spawn(async move {
            let mut pids = std::collections::BTreeSet::new();
            for round in 0..15 {
                c.cork();
                for i in 0..3 {
                    // The first query of each pipeline takes a little while, so the
                    // other client's requests queue up behind the pipeline.
                    let sleep = if i == 0 { 0.01 } else { 0.0 };
                    send_extended(
                        &mut c,
                        &format!(
                            "SELECT '{who}-{round}-{i}'::text, pg_backend_pid()::text \
                             FROM pg_sleep({sleep})"
                        ),
                    )
                    .await;
                }
                c.uncork().await;
                for i in 0..3 {
                    let msgs = c.recv_until(b'Z').await;
                    assert_eq!(tags(&msgs), "12DCZ", "{who} round {round} #{i}: {msgs:?}");
                    let cols = msgs[2].text_columns();
                    assert_eq!(cols[0].as_deref(), Some(&*format!("{who}-{round}-{i}")));
                    pids.insert(cols[1].clone().expect("pid"));
                    assert_eq!(msgs[4].ready_status(), b'I');
                }
                let rows = c
                    .query_rows(&format!("SELECT '{who}-{round}-simple'"))
                    .await;
                assert_eq!(rows, vec![vec![Some(format!("{who}-{round}-simple"))]]);
            }
            assert_silent(&mut c, 100, "after the last pipeline").await;
            c.send_terminate().await;
            pids
        }));
    }
    let mut pids = std::collections::BTreeSet::new();
    for t in tasks {
        pids.extend(t.await.expect("client task"));
    }

    // A long pipeline (well past the relay's 64 KiB buffers each way) in one write,
    // while another client queues behind it.
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    a.cork();
    for i in 0..2000 {
        send_extended(&mut a, &format!("SELECT 'long-{i}'::text, repeat('x', 50)")).await;
    }
    a.uncork().await;
    b.send_query("SELECT 'b after the long pipeline'").await;
    for i in 0..2000 {
        let msgs = a.recv_until(b'Z').await;
        assert_eq!(tags(&msgs), "12DCZ", "#{i}: {msgs:?}");
        assert_eq!(first_col(&msgs), [format!("long-{i}")]);
    }
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["b after the long pipeline"], "{msgs:?}");
    assert_eq!(
        pids.len(),
        1,
        "pool 1: one backend served both clients: {pids:?}"
    );
    assert_eq!(backends(&db, &user, None).await, 1);
}

// --------------------------------------------------- 2. error mid-pipeline

/// A failing Execute followed by Sync and a good query in the same write: ErrorResponse
/// and ReadyForQuery, then the good result and ReadyForQuery.  Messages after an error
/// are skipped up to the next Sync.  An error in an explicit transaction keeps the server
/// (status 'E') until ROLLBACK.  Afterwards the server is reused and no backend is left
/// "idle in transaction (aborted)".
#[tokio::test(flavor = "multi_thread")]
async fn error_mid_pipeline_then_next_sync_works() {
    let (db, user) = setup("piperr").await;
    direct(&db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE zero (x int); INSERT INTO zero VALUES (0); \
             GRANT SELECT ON zero TO {user}"
        ))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;

    // Division by zero at run time (not at plan time): ParseComplete, BindComplete, Error.
    a.cork();
    send_extended(&mut a, "SELECT 1 / x FROM zero").await;
    send_extended(&mut a, "SELECT 'good'::text").await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12EZ", "{msgs:?}");
    assert_eq!(msgs[2].sqlstate(), "22012");
    assert_eq!(msgs[3].ready_status(), b'I');
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["good"]);
    assert_eq!(msgs[4].ready_status(), b'I');

    // Without a Sync between them, the second query is skipped.
    a.cork();
    a.send_parse("", "SELECT nope", &[]).await;
    a.send_bind("", "", &[]).await;
    a.send_execute("", 0).await;
    send_extended(&mut a, "SELECT 'skipped'::text").await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "42703");
    assert_silent(&mut a, 200, "after the skipped batch").await;

    // In a transaction block the error leaves it aborted: the server stays with A.
    let msgs = a.query("BEGIN").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'T');
    a.cork();
    send_extended(&mut a, "SELECT 1 / x FROM zero").await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12EZ", "{msgs:?}");
    assert_eq!(msgs[3].ready_status(), b'E');
    let mut b = raw(&p, &db, &user).await;
    b.send_query("SELECT 'b'").await;
    assert_silent(&mut b, 300, "B while A's transaction is aborted").await;
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction (aborted)"), 1).await,
        1
    );
    let msgs = a.query("ROLLBACK").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'I');
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["b"], "{msgs:?}");

    next_client_works(&p, &db, &user).await;
    assert_eq!(
        backends(&db, &user, Some("idle in transaction (aborted)")).await,
        0
    );
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ------------------------------------------------------ 3. Flush, no Sync

/// Parse/Bind/Describe/Execute/Flush: the results arrive without ReadyForQuery, and the
/// server stays with the client (a second client waits) until the Sync.
#[tokio::test(flavor = "multi_thread")]
async fn flush_without_sync_holds_the_server_until_sync() {
    let (db, user) = setup("flush").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;

    a.cork();
    a.send_parse("", "SELECT 'flushed'::text", &[]).await;
    a.send_bind("", "", &[]).await;
    a.send_describe(b'P', "").await;
    a.send_execute("", 0).await;
    a.send_flush().await;
    a.uncork().await;
    let mut msgs = Vec::new();
    for _ in 0..5 {
        msgs.push(a.recv_msg().await);
    }
    assert_eq!(tags(&msgs), "12TDC", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["flushed"]);
    assert_silent(&mut a, 200, "A before Sync").await;

    b.send_query("SELECT 'b waited'").await;
    assert_silent(&mut b, 500, "B while A has not sent Sync").await;

    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(msgs[0].ready_status(), b'I');
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["b waited"], "{msgs:?}");
    // A can go on.
    assert_eq!(
        a.query_rows("SELECT 'a again'").await,
        vec![vec![Some("a again".into())]]
    );
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ------------------------------------------------------ 4. PortalSuspended

/// Execute with max_rows inside a transaction: PortalSuspended, then the portal goes on
/// (after Sync and after Flush) until CommandComplete; a queued client is served after
/// COMMIT and sees only its own rows.
#[tokio::test(flavor = "multi_thread")]
async fn portal_suspended_inside_a_transaction() {
    let (db, user) = setup("portal").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;

    let msgs = a.query("BEGIN").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'T');
    a.cork();
    a.send_parse("s", "SELECT g::text FROM generate_series(1, 7) g", &[])
        .await;
    a.send_bind("p", "s", &[]).await;
    a.send_execute("p", 2).await;
    a.send_sync().await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12DDsZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["1", "2"]);
    assert_eq!(msgs[5].ready_status(), b'T');

    b.send_query("SELECT 'b'").await;

    a.cork();
    a.send_execute("p", 2).await;
    a.send_sync().await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "DDsZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["3", "4"]);

    // With Flush instead of Sync.
    a.cork();
    a.send_execute("p", 2).await;
    a.send_flush().await;
    a.uncork().await;
    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(a.recv_msg().await);
    }
    assert_eq!(tags(&msgs), "DDs", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["5", "6"]);
    a.cork();
    a.send_execute("p", 0).await;
    a.send_sync().await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "DCZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["7"]);

    assert_silent(&mut b, 200, "B during A's transaction").await;
    let msgs = a.query("COMMIT").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'I');
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["b"]);
    assert_eq!(msgs[3].ready_status(), b'I');
}

// ----------------------------------------------------------------- 5. COPY

/// COPY FROM STDIN with tokio-postgres (extended protocol, second Sync after CopyDone)
/// and with psql's \copy (simple protocol): exact row counts, and the single server is
/// released correctly so other clients go on.  COPY TO STDOUT of ~7 MB arrives byte for
/// byte (md5 compared with a direct connection).
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_through_transaction_mode() {
    let (db, user) = setup("copy").await;
    direct(&db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE items (id int, payload text); \
             CREATE TABLE big (id int, payload text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 100000) g; \
             GRANT ALL ON items, big TO {user}"
        ))
        .await
        .expect("create tables");
    let p = start_pooler(&db, &user, "transaction", 1, "");

    // tokio-postgres copy_in: Bind/Execute/Sync, CopyData…, CopyDone, Sync.
    let c1 = pg_client(&p, &db, &user).await;
    let sink = c1
        .copy_in::<_, Bytes>("COPY items FROM STDIN")
        .await
        .expect("copy_in");
    pin_mut!(sink);
    for chunk in 0..10 {
        let mut data = String::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            data.push_str(&format!("{i}\trow {i}\n"));
        }
        sink.send(Bytes::from(data)).await.expect("copy data");
    }
    let n = sink.as_mut().finish().await.expect("finish copy_in");
    assert_eq!(n, 10_000);

    // Another client on the same single server.
    let mut other = raw(&p, &db, &user).await;
    assert_eq!(
        other
            .query_rows("SELECT count(*), count(DISTINCT id) FROM items")
            .await,
        vec![vec![Some("10000".into()), Some("10000".into())]]
    );
    let rows = c1
        .simple_query("SELECT 'c1 again'")
        .await
        .expect("c1 again");
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("c1 again")));

    // psql \copy: COPY FROM STDIN with the simple protocol.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rows.tsv");
    let mut data = String::new();
    for i in 10_000..15_000 {
        data.push_str(&format!("{i}\tpsql {i}\n"));
    }
    std::fs::write(&file, data).expect("write rows");
    let (port, db2, user2) = (p.port, db.clone(), user.clone());
    let cmd = format!("\\copy items FROM '{}'", file.display());
    let out = tokio::task::spawn_blocking(move || psql(port, &db2, &user2, &cmd))
        .await
        .expect("psql task");
    stdout_ok(&out);
    assert_eq!(
        other
            .query_rows("SELECT count(*), count(DISTINCT id) FROM items")
            .await,
        vec![vec![Some("15000".into()), Some("15000".into())]]
    );
    assert_eq!(direct_count(&db, "items").await, 15_000);

    // COPY TO STDOUT of a large table.
    let mut expected = Md5::new();
    let mut expected_len = 0usize;
    {
        let d = direct(&db).await;
        let stream = d
            .copy_out("COPY big TO STDOUT")
            .await
            .expect("direct copy_out");
        pin_mut!(stream);
        while let Some(chunk) = stream.try_next().await.expect("direct copy data") {
            expected_len += chunk.len();
            expected.update(&chunk);
        }
    }
    assert!(expected_len > 5_000_000, "{expected_len} bytes");
    let stream = c1.copy_out("COPY big TO STDOUT").await.expect("copy_out");
    pin_mut!(stream);
    let mut got = Md5::new();
    let mut got_len = 0usize;
    let mut lines = 0usize;
    while let Some(chunk) = stream.try_next().await.expect("copy data") {
        got_len += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        got.update(&chunk);
    }
    assert_eq!(got_len, expected_len);
    assert_eq!(lines, 100_000);
    assert_eq!(got.finalize(), expected.finalize());

    assert_eq!(other.query_rows("SELECT 'after copy out'").await.len(), 1);
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ------------------------------------------------------------ 6. CopyFail

/// CopyFail, in a simple-protocol COPY and in an extended-protocol one (which needs a
/// second Sync): ErrorResponse, ReadyForQuery, nothing copied, server reused.  The same
/// when the server rejects a row mid-stream and the client's late CopyData/CopyDone
/// arrive after the release point.
#[tokio::test(flavor = "multi_thread")]
async fn copy_fail_returns_error_and_server_is_reused() {
    let (db, user) = setup("copyfail").await;
    direct(&db)
        .await
        .batch_execute(&format!("CREATE TABLE t (x int); GRANT ALL ON t TO {user}"))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;

    a.send_query("COPY t FROM STDIN").await;
    assert_eq!(a.recv_msg().await.tag, b'G');
    a.send_copy_data(b"1\n2\n3\n").await;
    a.send_copy_fail("client gave up").await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "57014");
    assert!(msgs[0].message().contains("client gave up"), "{msgs:?}");
    assert_eq!(msgs[1].ready_status(), b'I');
    next_client_works(&p, &db, &user).await;

    // Extended protocol: the first Sync is swallowed in copy-in mode.
    a.cork();
    send_extended(&mut a, "COPY t FROM STDIN").await;
    a.uncork().await;
    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(a.recv_msg().await);
    }
    assert_eq!(tags(&msgs), "12G", "{msgs:?}");
    a.send_copy_data(b"4\n5\n").await;
    a.send_copy_fail("extended gave up").await;
    let err = a.recv_msg().await;
    assert_eq!(err.sqlstate(), "57014", "{err:?}");
    assert_silent(&mut a, 200, "before the second Sync").await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(msgs[0].ready_status(), b'I');

    next_client_works(&p, &db, &user).await;

    // The server rejects a row while the client is still streaming: ErrorResponse and
    // ReadyForQuery at once; the CopyData and CopyDone the client sends afterwards are
    // dropped (by PostgreSQL) and answer nothing, here or to anyone else.
    let mut b = raw(&p, &db, &user).await;
    a.send_query("COPY t FROM STDIN").await;
    assert_eq!(a.recv_msg().await.tag, b'G');
    a.send_copy_data(b"1\nnot a number\n").await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "22P02");
    assert_eq!(msgs[1].ready_status(), b'I');
    a.send_copy_data(b"2\n3\n").await;
    a.send_copy_done().await;
    assert_silent(&mut a, 300, "after the late CopyData/CopyDone").await;
    assert_eq!(
        b.query_rows("SELECT 'b'").await,
        vec![vec![Some("b".into())]]
    );
    assert_silent(&mut a, 100, "after B's query").await;

    // The same with the extended protocol: the error, then nothing until Sync.
    a.cork();
    send_extended(&mut a, "COPY t FROM STDIN").await;
    a.uncork().await;
    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(a.recv_msg().await);
    }
    assert_eq!(tags(&msgs), "12G", "{msgs:?}");
    a.send_copy_data(b"1\nnot a number\n").await;
    let err = a.recv_msg().await;
    assert_eq!(err.sqlstate(), "22P02", "{err:?}");
    a.send_copy_data(b"2\n").await;
    a.send_copy_done().await;
    assert_silent(&mut a, 200, "before the second Sync").await;
    a.send_sync().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(b.query_rows("SELECT 'b again'").await.len(), 1);

    assert_eq!(
        a.query_rows("SELECT count(*) FROM t").await,
        vec![vec![Some("0".into())]]
    );
    assert_eq!(direct_count(&db, "t").await, 0);
    assert_eq!(backends(&db, &user, None).await, 1);
}

// -------------------------------------------------------- 7. large values

/// A 20 MiB value each way arrives intact: tokio-postgres (extended protocol, binary
/// parameter) and a raw simple query.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_megabyte_values_arrive_intact() {
    let (db, user) = setup("large").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    const LEN: usize = 20 * 1024 * 1024;
    let sql = "SELECT repeat('0123456789abcdef', 1310720) || 'end', \
               md5(repeat('0123456789abcdef', 1310720) || 'end')";

    let c = pg_client(&p, &db, &user).await;
    let row = c.query_one(sql, &[]).await.expect("select 20 MiB");
    let value: String = row.get(0);
    let server_md5: String = row.get(1);
    assert_eq!(value.len(), LEN + 3);
    assert!(value.ends_with("end"));
    assert_eq!(hex_md5(value.as_bytes()), server_md5);

    // Client to server: a 20 MiB parameter.
    let sent: String = (0..LEN)
        .map(|i| char::from(b'a' + ((i * 7 + i / 4096) % 26) as u8))
        .collect();
    let row = c
        .query_one("SELECT length($1::text), md5($1::text)", &[&sent])
        .await
        .expect("send 20 MiB");
    assert_eq!(row.get::<_, i32>(0) as usize, LEN);
    assert_eq!(row.get::<_, String>(1), hex_md5(sent.as_bytes()));

    // Simple protocol, raw.
    let mut r = raw(&p, &db, &user).await;
    r.timeout = Duration::from_secs(20);
    let msgs = r.query(sql).await;
    assert_eq!(
        tags(&msgs),
        "TDCZ",
        "{:?}",
        msgs.iter().map(|m| m.tag as char).collect::<Vec<_>>()
    );
    let cols = msgs[1].columns();
    let v = cols[0].as_ref().expect("value");
    assert_eq!(v.len(), LEN + 3);
    assert_eq!(
        hex_md5(v),
        String::from_utf8_lossy(cols[1].as_ref().expect("md5")).as_ref()
    );
    // The shared server is fine afterwards.
    next_client_works(&p, &db, &user).await;
}

fn hex_md5(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------- 8. notices and notifications

/// RAISE NOTICE arrives as a NoticeResponse (simple and extended protocol); LISTEN and
/// NOTIFY in one transaction deliver the NotificationResponse to that client; in session
/// mode a NOTIFY from another client reaches an idle listener.
#[tokio::test(flavor = "multi_thread")]
async fn notices_and_notifications_are_delivered() {
    let (db, user) = setup("notice").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let notice_sql = "DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$";
    let msgs = a.query(notice_sql).await;
    assert_eq!(tags(&msgs), "NCZ", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "NOTICE");
    assert_eq!(msgs[0].sqlstate(), "00000");
    assert_eq!(msgs[0].message(), "hello from plpgsql");
    a.cork();
    send_extended(&mut a, notice_sql).await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12NCZ", "{msgs:?}");
    assert_eq!(msgs[2].message(), "hello from plpgsql");
    // Transaction mode, one transaction in one request.
    let msgs = a
        .query("BEGIN; LISTEN tx_chan; NOTIFY tx_chan, 'in one tx'; COMMIT")
        .await;
    let n = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .unwrap_or_else(|| panic!("{msgs:?}"));
    assert_eq!(notification(n).1, "tx_chan");
    assert_eq!(notification(n).2, "in one tx");
    assert_eq!(msgs.last().expect("Z").ready_status(), b'I');
    a.send_terminate().await;
    drop(p);

    // Session mode: LISTEN is session state.
    let p = start_pooler(&db, &user, "session", 2, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    for sql in ["BEGIN", "LISTEN x", "NOTIFY x, 'hi'"] {
        let msgs = a.query(sql).await;
        assert!(!msgs.iter().any(Msg::is_error), "{sql}: {msgs:?}");
    }
    let msgs = a.query("COMMIT").await;
    assert_eq!(tags(&msgs), "CAZ", "{msgs:?}");
    let (pid, channel, payload) = notification(&msgs[1]);
    assert_eq!((channel.as_str(), payload.as_str()), ("x", "hi"));
    let own_pid = a.query_rows("SELECT pg_backend_pid()").await[0][0].clone();
    assert_eq!(
        Some(pid.to_string()),
        own_pid,
        "the server's pid is passed through"
    );

    // From another client while A is idle.
    let msgs = b.query("NOTIFY x, 'from b'").await;
    assert!(!msgs.iter().any(Msg::is_error), "{msgs:?}");
    let m = a.recv_msg().await;
    let (_, channel, payload) = notification(&m);
    assert_eq!((channel.as_str(), payload.as_str()), ("x", "from b"));
    assert_silent(&mut a, 100, "after the notification").await;
}

// ---------------------------------------------------------------- 9. cancel

/// tokio-postgres' cancel token, sent to the pooler, cancels a running query (57014)
/// within seconds and client and server stay usable; a wrong secret does nothing; a
/// cancel with the key of an idle client never hits the query another client runs on
/// the server they share.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_requests_are_routed_to_the_right_query() {
    let (db, user) = setup("cancel").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");

    let c = pg_client(&p, &db, &user).await;
    let token = c.cancel_token();
    let (result, cancelled_at) = tokio::join!(c.simple_query("SELECT pg_sleep(30)"), async {
        active_backend(&db, &user, "SELECT pg_sleep(30)").await;
        let started = Instant::now();
        token.cancel_query(NoTls).await.expect("send cancel");
        started
    });
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate_of(&err), "57014", "{err:?}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        cancelled_at.elapsed()
    );
    let rows = c
        .simple_query("SELECT 'after cancel'")
        .await
        .expect("client reusable");
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("after cancel")));
    next_client_works(&p, &db, &user).await;
    assert_eq!(backends(&db, &user, None).await, 1);

    // A wrong secret (and an unknown key) does nothing.
    let mut a = raw(&p, &db, &user).await;
    let (a_pid, a_secret) = (a.backend_pid.expect("pid"), a.secret_key.expect("secret"));
    a.send_query("SELECT 'a done' FROM pg_sleep(1.5)").await;
    active_backend(&db, &user, "SELECT 'a done'").await;
    RawClient::send_cancel(p.port, a_pid, a_secret.wrapping_add(1)).await;
    RawClient::send_cancel(p.port, a_pid.wrapping_add(1), a_secret).await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["a done"]);

    // A is idle now (it used the server before); B runs on that same server.
    let mut b = raw(&p, &db, &user).await;
    b.send_query("SELECT 'b done' FROM pg_sleep(1.5)").await;
    active_backend(&db, &user, "SELECT 'b done'").await;
    RawClient::send_cancel(p.port, a_pid, a_secret).await;
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "TDCZ", "B must not be cancelled: {msgs:?}");
    assert_eq!(first_col(&msgs), ["b done"]);
    assert_eq!(a.query_rows("SELECT 'a still fine'").await.len(), 1);
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ---------------------------------------------- 10. client killed in a tx

/// A client that vanishes inside a transaction (raw socket dropped, tokio-postgres
/// connection task aborted): no backend stays "idle in transaction", the INSERT is not
/// committed, and the client queued behind it is served.
#[tokio::test(flavor = "multi_thread")]
async fn client_killed_mid_transaction_rolls_back() {
    let (db, user) = setup("killtx").await;
    direct(&db)
        .await
        .batch_execute(&format!("CREATE TABLE t (x int); GRANT ALL ON t TO {user}"))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");

    let mut a = raw(&p, &db, &user).await;
    a.query_rows("BEGIN").await;
    a.query_rows("INSERT INTO t VALUES (1)").await;
    let mut b = raw(&p, &db, &user).await;
    b.send_query("SELECT count(*) FROM t").await;
    assert_silent(&mut b, 300, "B while A's transaction is open").await;
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 1).await,
        1
    );
    let dropped = Instant::now();
    drop(a);
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["0"], "{msgs:?}");
    assert!(dropped.elapsed() < SETTLE, "{:?}", dropped.elapsed());
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 0).await,
        0
    );
    assert_eq!(direct_count(&db, "t").await, 0);
    next_client_works(&p, &db, &user).await;

    // tokio-postgres: abort the connection task (its socket is dropped).
    let (client, connection) = common::pg_config(p.port, &db, &user, None)
        .connect(NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(connection);
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .expect("begin; insert");
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 1).await,
        1
    );
    task.abort();
    let _ = task.await;
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 0).await,
        0
    );
    assert_eq!(direct_count(&db, "t").await, 0);
    next_client_works(&p, &db, &user).await;
    assert!(wait_backends(&db, &user, None, 1).await <= 1);
}

// ---------------------------------------------- 11. client killed in COPY

/// A client that vanishes in the middle of COPY FROM STDIN (simple and extended
/// protocol): its backend does not stay in COPY, nothing is committed, and the next
/// client works.
#[tokio::test(flavor = "multi_thread")]
async fn client_killed_mid_copy_in_leaves_nothing_behind() {
    let (db, user) = setup("killcopy").await;
    direct(&db)
        .await
        .batch_execute(&format!("CREATE TABLE t (x int); GRANT ALL ON t TO {user}"))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let rows: String = (0..1000).map(|i| format!("{i}\n")).collect();

    for extended in [false, true] {
        let mut a = raw(&p, &db, &user).await;
        if extended {
            a.cork();
            send_extended(&mut a, "COPY t FROM STDIN").await;
            a.uncork().await;
            let mut msgs = Vec::new();
            for _ in 0..3 {
                msgs.push(a.recv_msg().await);
            }
            assert_eq!(tags(&msgs), "12G", "{msgs:?}");
        } else {
            a.send_query("COPY t FROM STDIN").await;
            assert_eq!(a.recv_msg().await.tag, b'G');
        }
        a.send_copy_data(rows.as_bytes()).await;
        a.send_copy_data(b"1000\n1001\n").await;
        assert_eq!(wait_backends(&db, &user, Some("active"), 1).await, 1);
        drop(a);
        assert_eq!(
            wait_backends(&db, &user, Some("active"), 0).await,
            0,
            "extended: {extended}"
        );
        assert_eq!(
            wait_backends(&db, &user, None, 0).await,
            0,
            "extended: {extended}"
        );
        assert_eq!(direct_count(&db, "t").await, 0);
        next_client_works(&p, &db, &user).await;
    }
}

// -------------------------------------------------- 12. server dies

/// The backend of a running query is terminated: the client gets a FATAL error within
/// seconds (never hangs) and is disconnected; another client of the same pool keeps
/// working throughout, and new clients work afterwards.  The server of a client idle in
/// a transaction dies: the client is told at once.  Servers killed while idle in the
/// pool are never handed out.
#[tokio::test(flavor = "multi_thread")]
async fn server_killed_mid_query_fails_only_its_client() {
    let (db, user) = setup("killsrv").await;
    let p = start_pooler(&db, &user, "transaction", 2, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    assert_eq!(b.query_rows("SELECT 'b first'").await.len(), 1);

    a.send_query("SELECT pg_sleep(10)").await;
    let victim = active_backend(&db, &user, "SELECT pg_sleep(10)").await;
    let b_task = tokio::spawn(async move {
        for i in 0..30 {
            let rows = b
                .query_rows(&format!("SELECT 'b{i}' FROM pg_sleep(0.02)"))
                .await;
            assert_eq!(rows, vec![vec![Some(format!("b{i}"))]]);
        }
        b
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    let su = cluster().superuser().await;
    let ok: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&victim])
        .await
        .expect("pg_terminate_backend")
        .get(0);
    assert!(ok);
    a.timeout = SETTLE;
    let msgs = a.recv_until_eof().await;
    assert!(killed.elapsed() < SETTLE, "{:?}", killed.elapsed());
    let fatal = msgs
        .iter()
        .find(|m| m.is_error() && m.severity() == "FATAL")
        .unwrap_or_else(|| panic!("no FATAL error: {msgs:?}"));
    assert!(
        fatal
            .message()
            .contains("terminating connection due to administrator command")
            || fatal.message() == "server conn crashed?",
        "{msgs:?}"
    );
    assert!(!msgs.iter().any(|m| m.tag == b'Z'), "{msgs:?}");

    let mut b = b_task.await.expect("client B kept working");
    assert_eq!(b.query_rows("SELECT 'b last'").await.len(), 1);
    next_client_works(&p, &db, &user).await;

    // The server of a client that is idle in a transaction dies: the client hears of it
    // at once, without sending anything.
    let mut c = raw(&p, &db, &user).await;
    let pid = c.query_rows("BEGIN; SELECT pg_backend_pid()").await[0][0].clone();
    let pid: i32 = pid.expect("pid").parse().expect("pid is a number");
    let killed = Instant::now();
    let ok: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend")
        .get(0);
    assert!(ok);
    c.timeout = SETTLE;
    let msgs = c.recv_until_eof().await;
    assert!(killed.elapsed() < SETTLE, "{:?}", killed.elapsed());
    assert!(
        msgs.iter().any(|m| m.is_error() && m.severity() == "FATAL"),
        "{msgs:?}"
    );
    assert_eq!(b.query_rows("SELECT 'b after idle kill'").await.len(), 1);
    next_client_works(&p, &db, &user).await;

    // Servers that die while idle in the pool are never handed out.
    assert!(cluster().terminate_backends(Some(&db), Some(&user)).await >= 1);
    assert_eq!(wait_backends(&db, &user, None, 0).await, 0);
    assert_eq!(b.query_rows("SELECT 'b after pool kill'").await.len(), 1);
    next_client_works(&p, &db, &user).await;
}

// ------------------------------------------------- 17. fragmented messages

/// Messages split across many small writes (headers cut in the middle, a request cut
/// at the release point of the one before) are reassembled correctly, and the client
/// sharing the server sees only its own rows.
#[tokio::test(flavor = "multi_thread")]
async fn fragmented_messages_are_reassembled() {
    let (db, user) = setup("fragments").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;

    let query = |sql: &str| {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&(4 + sql.len() as u32 + 1).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };

    // One byte at a time.
    for byte in query("SELECT 'byte by byte'") {
        a.send_raw(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["byte by byte"], "{msgs:?}");

    // A whole query plus the first 3 bytes of the next one; the rest later.
    let mut data = query("SELECT 'first'");
    let second = query("SELECT 'second'");
    data.extend_from_slice(&second[..3]);
    a.send_raw(&data).await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["first"], "{msgs:?}");
    // Meanwhile B uses the server.
    assert_eq!(
        b.query_rows("SELECT 'b between'").await,
        vec![vec![Some("b between".into())]]
    );
    a.send_raw(&second[3..]).await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["second"], "{msgs:?}");

    // An extended-protocol pipeline in 7-byte pieces.
    let mut pipeline = Vec::new();
    for sql in ["SELECT 'p1'", "SELECT 'p2'"] {
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        for (tag, body) in [
            (b'P', parse),
            (b'B', vec![0, 0, 0, 0, 0, 0, 0, 0]),
            (b'E', vec![0, 0, 0, 0, 0]),
            (b'S', vec![]),
        ] {
            pipeline.push(tag);
            pipeline.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
            pipeline.extend_from_slice(&body);
        }
    }
    for piece in pipeline.chunks(7) {
        a.send_raw(piece).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for expected in ["p1", "p2"] {
        let msgs = a.recv_until(b'Z').await;
        assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
        assert_eq!(first_col(&msgs), [expected]);
    }
    assert_eq!(
        b.query_rows("SELECT 'b last'").await,
        vec![vec![Some("b last".into())]]
    );
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ------------------------------------------------ 13. bad frames

/// A Query larger than max_packet_size, a frame whose length is below 4, and a message
/// type that does not exist: the client gets a FATAL error (for the whole 20 kB write,
/// at worst a reset) and is disconnected, never hangs; other clients are unaffected.
/// The error comes at once even while the only server is busy, and a server is not
/// closed because of it (PgBouncer checks a packet before it looks for a server); a bad
/// frame inside a transaction closes that transaction's server.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_undersized_frames_are_refused() {
    let (db, user) = setup("frames").await;
    let p = start_pooler(&db, &user, "transaction", 1, "max_packet_size = 10000\n");
    let mut b = raw(&p, &db, &user).await;
    assert_eq!(b.query_rows("SELECT 'b before'").await.len(), 1);

    let big_sql = format!("SELECT '{}'", "x".repeat(20_000));
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&(4 + big_sql.len() as u32 + 1).to_be_bytes());
    frame.extend_from_slice(big_sql.as_bytes());
    frame.push(0);

    // A 20 kB Query still being written: only its first 4 kB have arrived.
    let mut a = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    a.send_raw(&frame[..4096]).await;
    let msgs = a.recv_until_eof().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "FATAL");
    assert!(msgs[0].message().contains("max_packet_size"), "{msgs:?}");

    // The whole 20 kB Query in one write.  pgsluice closes with unread bytes in its
    // socket, which may turn into a reset; the client must not hang and must get nothing
    // but the error.
    let mut a = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    let started = Instant::now();
    let _ = a.try_send_raw(&frame).await;
    let msgs = a.recv_until_eof().await;
    assert!(started.elapsed() < SETTLE);
    assert!(
        msgs.len() <= 1 && msgs.iter().all(Msg::is_error),
        "{msgs:?}"
    );
    if let Some(e) = msgs.first() {
        assert_eq!(e.severity(), "FATAL");
        assert!(e.message().contains("max_packet_size"), "{msgs:?}");
    }

    // Length 2 (< 4).
    let mut a = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    a.send_raw(b"Q\0\0\0\x02").await;
    let msgs = a.recv_until_eof().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "FATAL");
    assert!(msgs[0].message().contains("bad packet header"), "{msgs:?}");

    // A message type that does not exist: an error, not silence.  (PostgreSQL answers
    // "invalid frontend message type" and closes; PgBouncer says "unknown pkt".)
    let mut a = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    a.send_raw(b"z\0\0\0\x04").await;
    let msgs = a.recv_until_eof().await;
    assert!(
        msgs.iter().any(|m| m.is_error() && m.severity() == "FATAL"),
        "{msgs:?}"
    );

    assert_eq!(b.query_rows("SELECT 'b after'").await.len(), 1);
    next_client_works(&p, &db, &user).await;

    // A bad frame is refused at once, even while the only server is busy with another
    // client's transaction (PgBouncer checks the header before it looks for a server),
    // and that server is not touched.
    let pid = b.query_rows("BEGIN; SELECT pg_backend_pid()").await[0][0].clone();
    // An unknown message type is refused the same way ("unknown pkt").
    for (bad, text) in [
        (&frame[..4096], "bad packet header"),
        (&b"Q\0\0\0\x02"[..], "bad packet header"),
        (&b"z\0\0\0\x04"[..], "unknown pkt"),
    ] {
        let mut a = raw(&p, &db, &user).await;
        a.timeout = Duration::from_secs(2);
        let started = Instant::now();
        a.send_raw(bad).await;
        let msgs = a.recv_until_eof().await;
        assert_eq!(tags(&msgs), "E", "{msgs:?}");
        assert_eq!(msgs[0].severity(), "FATAL");
        assert_eq!(msgs[0].sqlstate(), "08P01");
        assert!(msgs[0].message().contains(text), "{msgs:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(
        b.query_rows("COMMIT; SELECT pg_backend_pid()").await,
        vec![vec![pid]]
    );
    assert_eq!(backends(&db, &user, None).await, 1);

    // A bad frame from a client inside a transaction: the error, and that transaction's
    // server is closed (rolled back), not left idle in transaction.
    let mut a = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    a.query_rows("BEGIN").await;
    a.send_raw(&frame[..4096]).await;
    let msgs = a.recv_until_eof().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "FATAL");
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 0).await,
        0
    );
    assert_eq!(b.query_rows("SELECT 'b last'").await.len(), 1);
}

// ------------------------------------ 14. multi-statement, empty, tx blocks

/// Several statements in one Query, an error among them, the empty query, and a
/// transaction over several round trips: the server stays with the transaction until
/// COMMIT (a queued client runs after it, and sees the committed row).
#[tokio::test(flavor = "multi_thread")]
async fn multi_statement_empty_query_and_transaction_round_trips() {
    let (db, user) = setup("multi").await;
    direct(&db)
        .await
        .batch_execute(&format!("CREATE TABLE t (x int); GRANT ALL ON t TO {user}"))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;

    let msgs = a.query("SELECT 1; SELECT 2;").await;
    assert_eq!(tags(&msgs), "TDCTDCZ", "{msgs:?}");
    assert_eq!(first_col(&msgs), ["1", "2"]);
    let msgs = a.query("SELECT 1; SELECT nope; SELECT 3").await;
    assert_eq!(tags(&msgs), "TDCEZ", "{msgs:?}");
    assert_eq!(msgs[4].ready_status(), b'I');
    let msgs = a.query("").await;
    assert_eq!(tags(&msgs), "IZ", "{msgs:?}");
    assert_eq!(msgs[1].ready_status(), b'I');
    a.cork();
    send_extended(&mut a, "").await;
    a.uncork().await;
    let msgs = a.recv_until(b'Z').await;
    assert_eq!(tags(&msgs), "12IZ", "{msgs:?}");

    // A transaction over several round trips holds the single server.
    let mut b = raw(&p, &db, &user).await;
    let msgs = a.query("BEGIN").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'T');
    a.query_rows("INSERT INTO t VALUES (1)").await;
    b.send_query("SELECT count(*) FROM t").await;
    assert_silent(&mut b, 500, "B while A's transaction is open").await;
    assert_eq!(
        a.query_rows("SELECT count(*) FROM t").await,
        vec![vec![Some("1".into())]]
    );
    assert_silent(&mut b, 200, "B while A's transaction is open").await;
    let msgs = a.query("COMMIT").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'I');
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["1"], "B ran after COMMIT: {msgs:?}");

    // "BEGIN; SELECT" in one Query leaves the transaction open as well.
    let msgs = a.query("BEGIN; SELECT 'in tx'").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'T');
    b.send_query("SELECT 'b again'").await;
    assert_silent(&mut b, 300, "B while A's transaction is open").await;
    a.query_rows("ROLLBACK").await;
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["b again"]);
    assert_eq!(backends(&db, &user, None).await, 1);
}

// ------------------------------------------------------------ 15. Terminate

/// Terminate with no transaction open gives the server back: in transaction mode the
/// next client gets the same backend at once; in session mode (where the client holds
/// its server until it leaves) a queued client is handed the same backend as soon as
/// the first one sends Terminate.  There is one backend throughout.  Terminate inside a
/// transaction closes that server instead, leaving nothing "idle in transaction".
/// Terminate right behind a query (a request in flight) never hangs anyone.
#[tokio::test(flavor = "multi_thread")]
async fn terminate_returns_the_server_to_the_pool() {
    let (db, user) = setup("term").await;
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    let a_pid = a.query_rows("SELECT pg_backend_pid()").await[0][0].clone();
    a.send_terminate().await;
    assert_eq!(a.recv_until_eof().await, []);
    assert_eq!(
        b.query_rows("SELECT pg_backend_pid()").await,
        vec![vec![a_pid.clone()]],
        "same server"
    );
    assert_eq!(backends(&db, &user, None).await, 1);

    // Terminate inside a transaction: that server is closed, not reused.
    let mut c = raw(&p, &db, &user).await;
    let msgs = c.query("BEGIN").await;
    assert_eq!(msgs.last().expect("Z").ready_status(), b'T');
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 1).await,
        1
    );
    c.send_terminate().await;
    assert_eq!(c.recv_until_eof().await, []);
    assert_eq!(
        wait_backends(&db, &user, Some("idle in transaction"), 0).await,
        0
    );
    let rows = b.query_rows("SELECT pg_backend_pid()").await;
    assert_ne!(
        rows,
        vec![vec![a_pid]],
        "a fresh server after the aborted one"
    );
    assert_eq!(wait_backends(&db, &user, None, 1).await, 1);
    drop(p);

    // Session mode: the server is held for the whole session and given back on Terminate.
    let p = start_pooler(&db, &user, "session", 1, "");
    assert_eq!(wait_backends(&db, &user, None, 0).await, 0);
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    let a_pid = a.query_rows("SELECT pg_backend_pid()").await[0][0].clone();
    b.send_query("SELECT pg_backend_pid()").await;
    assert_silent(&mut b, 300, "B while A's session holds the server").await;
    let terminated = Instant::now();
    a.send_terminate().await;
    assert_eq!(a.recv_until_eof().await, []);
    let msgs = b.recv_until(b'Z').await;
    assert!(
        terminated.elapsed() < Duration::from_secs(2),
        "{:?}",
        terminated.elapsed()
    );
    assert_eq!(first_col(&msgs), [a_pid.expect("pid")], "B got A's server");
    assert_eq!(backends(&db, &user, None).await, 1);
    b.send_terminate().await;
    drop(p);

    // Terminate right behind a query in the same write (a request in flight): like
    // PgBouncer, pgsluice may drop the answer and close that server ("client
    // disconnected with query in progress"); the client must not hang, and the queued
    // client is served.
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let mut b = raw(&p, &db, &user).await;
    a.timeout = SETTLE;
    a.cork();
    a.send_query("SELECT 'a' FROM pg_sleep(0.3)").await;
    a.send_terminate().await;
    active_backend(&db, &user, "SELECT 'a'").await;
    b.send_query("SELECT 'b'").await;
    let msgs = a.recv_until_eof().await;
    assert!(!msgs.iter().any(Msg::is_error), "{msgs:?}");
    let msgs = b.recv_until(b'Z').await;
    assert_eq!(first_col(&msgs), ["b"], "{msgs:?}");
    assert_eq!(wait_backends(&db, &user, Some("active"), 0).await, 0);
    assert_eq!(wait_backends(&db, &user, None, 1).await, 1);
    assert_eq!(b.query_rows("SELECT 'b again'").await.len(), 1);
}

// ------------------------------------------- 16. client gone while queued

/// A client that disconnects while it waits for a server (its query queued behind
/// another client's transaction) is forgotten: its query never runs on a server later,
/// and the server is not closed because of it. (PgBouncer pauses a waiting client's
/// socket, `pause_client` → `sbuf_pause`, so there the INSERT runs once a server frees
/// up; pgsluice watches the queued client's socket for EOF.)
#[tokio::test(flavor = "multi_thread")]
async fn client_gone_while_queued_never_runs_its_query() {
    abandoned_while_queued("queuedrop", |b| async move { drop(b) }).await;
}

/// The same with a client that sends Terminate after its queued request and keeps the
/// socket open: it has given up, so its request does not run either.
#[tokio::test(flavor = "multi_thread")]
async fn client_terminating_while_queued_never_runs_its_query() {
    abandoned_while_queued("queuedterm", |mut b| async move {
        b.send_raw(b"X\0\0\0\x04").await;
        // Kept open past the check below.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(b);
    })
    .await;
}

/// Client B queues an INSERT behind A's open transaction on a pool of one, then
/// `abandon` gives it up; after A commits, the INSERT must not have run and A must still
/// have its server (B's request did not get it closed).
async fn abandoned_while_queued<F, Fut>(name: &str, abandon: F)
where
    F: FnOnce(RawClient) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (db, user) = setup(name).await;
    direct(&db)
        .await
        .batch_execute(&format!("CREATE TABLE t (x int); GRANT ALL ON t TO {user}"))
        .await
        .expect("create table");
    let p = start_pooler(&db, &user, "transaction", 1, "");
    let mut a = raw(&p, &db, &user).await;
    let a_pid = a.query_rows("BEGIN; SELECT pg_backend_pid()").await[0][0].clone();
    let mut b = raw(&p, &db, &user).await;
    b.send_query("INSERT INTO t VALUES (42)").await;
    assert_silent(&mut b, 300, "B while A's transaction is open").await;
    let gone = tokio::spawn(abandon(b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.query_rows("COMMIT").await;
    // Whatever pgsluice does with the departed client happens now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        direct_count(&db, "t").await,
        0,
        "the departed client's INSERT ran"
    );
    assert_eq!(
        a.query_rows("SELECT pg_backend_pid()").await,
        vec![vec![a_pid]],
        "the server was kept"
    );
    gone.await.expect("B's task");
}
