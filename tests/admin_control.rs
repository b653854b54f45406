//! The operator controls, as an operator uses them: the console's process-control
//! commands (PAUSE, RESUME, KILL_CLIENT, KILL, DISABLE/ENABLE, RECONNECT, WAIT_CLOSE,
//! SHUTDOWN, RELOAD, SET), the signals (SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2), the
//! auth_file watcher and the log_stats line.
//!
//! Every test starts its own pooler (transaction mode, auth_type trust) with `admin` as
//! admin user and `watcher` as stats user, and uses a role and database of its own.
//! Anything that may block (PAUSE, WAIT_CLOSE, waiting clients) runs in a task and is
//! bounded by a timeout, so a hang fails the test instead of stalling the run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use common::{cluster, connect, db_error_text, Pooler, PoolerBuilder};

/// How long a command or query that should finish may take.
const LIMIT: Duration = Duration::from_secs(10);
/// How long we watch something that should keep waiting.
const STILL: Duration = Duration::from_millis(500);

// ------------------------------------------------------------------ helpers

/// A role `ac_<name>` owning a database `ac_<name>_db`: (database, role).
async fn setup(name: &str) -> (String, String) {
    let pg = cluster();
    let user = format!("ac_{name}");
    let db = format!("ac_{name}_db");
    pg.create_role(&user, None).await;
    pg.create_database(&db, &user).await;
    (db, user)
}

fn ini(db: &str, pool_size: u32, extra: &str) -> String {
    format!(
        "[databases]\n\
         {db} = host={{pg_host}} port={{pg_port}}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = admin\n\
         stats_users = watcher\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         {extra}"
    )
}

fn userlist(user: &str) -> String {
    format!("\"{user}\" \"\"\n\"admin\" \"\"\n\"watcher\" \"\"\n")
}

fn start(db: &str, user: &str, pool_size: u32, extra: &str) -> Pooler {
    PoolerBuilder::new(&ini(db, pool_size, extra))
        .userlist(&userlist(user))
        .start()
}

async fn client(p: &Pooler, db: &str, user: &str) -> Client {
    connect(p.port, db, user, None)
        .await
        .unwrap_or_else(|e| panic!("login as {user}@{db}: {e:?}\n{}", p.log()))
}

/// A console session as `admin` (or `watcher`).
async fn console_as(p: &Pooler, user: &str) -> Arc<Client> {
    Arc::new(
        connect(p.port, "pgbouncer", user, None)
            .await
            .unwrap_or_else(|e| panic!("console login as {user}: {e:?}\n{}", p.log())),
    )
}

async fn console(p: &Pooler) -> Arc<Client> {
    console_as(p, "admin").await
}

/// Runs a console command that must succeed within LIMIT.
async fn ok(p: &Pooler, c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    match tokio::time::timeout(LIMIT, c.simple_query(sql)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => panic!("{sql}: {e:?}\n{}", p.log()),
        Err(_) => panic!("{sql}: no answer within {LIMIT:?}\n{}", p.log()),
    }
}

/// Runs a console command that must fail; (SQLSTATE, message).
async fn err(p: &Pooler, c: &Client, sql: &str) -> (String, String) {
    match tokio::time::timeout(LIMIT, c.simple_query(sql)).await {
        Ok(Ok(_)) => panic!("{sql}: unexpectedly succeeded\n{}", p.log()),
        Ok(Err(e)) => db_error_text(&e),
        Err(_) => panic!("{sql}: no answer within {LIMIT:?}\n{}", p.log()),
    }
}

async fn expect_err(p: &Pooler, c: &Client, sql: &str, message: &str) {
    let (code, msg) = err(p, c, sql).await;
    assert_eq!((code.as_str(), msg.as_str()), ("08P01", message), "{sql}");
}

/// A simple query run in the background (it may have to wait).
fn spawn_query(c: Arc<Client>, sql: &'static str) -> JoinHandle<Result<(), tokio_postgres::Error>> {
    tokio::spawn(async move { c.simple_query(sql).await.map(|_| ()) })
}

/// Waits for a background query; panics if it takes longer than LIMIT.
async fn finish<T>(p: &Pooler, h: JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(LIMIT, h).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: task failed: {e}"),
        Err(_) => panic!("{what}: not finished within {LIMIT:?}\n{}", p.log()),
    }
}

/// The first column named `col` of every row of a SHOW.
fn column(msgs: &[SimpleQueryMessage], col: &str) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(col).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// `(col_a, col_b)` of every row of a SHOW.
fn pairs(msgs: &[SimpleQueryMessage], a: &str, b: &str) -> Vec<(String, String)> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(a).unwrap_or_default().to_string(),
                r.get(b).unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect()
}

/// Replaces the auth file in one step (write + rename), as careful operators and config
/// management do, so the watcher never sees a half-written file.
fn replace_userlist(p: &Pooler, text: &str) {
    p.write_file("userlist.txt.new", text);
    std::fs::rename(p.path("userlist.txt.new"), p.path("userlist.txt")).unwrap();
}

/// Whether a second transaction can run while `holder` keeps one open: true when the
/// pool has room for two servers.
async fn second_server_available(p: &Pooler, db: &str, user: &str, holder: &Client) -> bool {
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("BEGIN");
    let other = Arc::new(client(p, db, user).await);
    let q = spawn_query(other, "SELECT 2");
    let done = tokio::time::timeout(Duration::from_secs(2), async {
        while !q.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    // A query that was waiting gets the server now; let it finish before returning.
    finish(p, q, "SELECT 2").await.expect("query after COMMIT");
    done
}

// ------------------------------------------------------------------ PAUSE / RESUME

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_open_transaction_and_resume_releases_waiters() {
    let (db, user) = setup("pause").await;
    let p = start(&db, &user, 2, "");
    let a = Arc::new(client(&p, &db, &user).await);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;

    let pause = spawn_query(admin.clone(), "PAUSE");
    tokio::time::sleep(STILL).await;
    assert!(
        !pause.is_finished(),
        "PAUSE must wait for the open transaction"
    );

    // A new client logs in (the welcome is cached) but its query waits.
    let b = Arc::new(client(&p, &db, &user).await);
    let bq = spawn_query(b.clone(), "SELECT 2");
    tokio::time::sleep(STILL).await;
    assert!(
        !bq.is_finished(),
        "a query must wait while PAUSE is in force"
    );

    // The open transaction is unaffected and may finish.
    a.batch_execute("SELECT 3; COMMIT").await.unwrap();
    finish(&p, pause, "PAUSE").await.expect("PAUSE succeeds");
    assert_eq!(
        cluster()
            .wait_for_backends(None, Some(&user), None, 0, LIMIT)
            .await,
        0,
        "PAUSE answers once every server is closed"
    );
    tokio::time::sleep(STILL).await;
    assert!(!bq.is_finished(), "still paused");

    // Errors while paused.
    expect_err(&p, &admin, "PAUSE", "already suspended/paused").await;
    expect_err(&p, &admin, "SUSPEND", "already suspended/paused").await;
    expect_err(&p, &admin, "KILL", "already suspended/paused").await;

    ok(&p, &admin, "RESUME").await;
    finish(&p, bq, "query after RESUME")
        .await
        .expect("query after RESUME succeeds");
    a.simple_query("SELECT 4").await.expect("old client works");
    expect_err(&p, &admin, "RESUME", "pooler is not paused/suspended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_a_pending_pause_ends_the_pause() {
    let (db, user) = setup("race").await;
    let p = start(&db, &user, 2, "");
    let a = Arc::new(client(&p, &db, &user).await);
    let admin1 = console(&p).await;
    let admin2 = console(&p).await;

    for round in 0..3 {
        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let pause = spawn_query(admin1.clone(), "PAUSE");
        // Let the PAUSE start waiting (in round 0 and 1); round 2 races it.
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Err(e) = admin2.simple_query("RESUME").await {
            // Only in the race: RESUME came first, found nothing to resume, and the PAUSE
            // is now waiting for the transaction as usual.
            assert_eq!(round, 2, "{e:?}");
            assert_eq!(db_error_text(&e).1, "pooler is not paused/suspended");
            a.batch_execute("COMMIT").await.unwrap();
            finish(&p, pause, "PAUSE").await.expect("PAUSE");
            ok(&p, &admin2, "RESUME").await;
            continue;
        }
        // RESUME overtook the waiting PAUSE: the PAUSE ends and says so.
        let e = finish(&p, pause, "PAUSE after RESUME")
            .await
            .expect_err("a cancelled PAUSE is an error");
        assert_eq!(
            db_error_text(&e),
            ("08P01".into(), "pause was cancelled by RESUME".into())
        );
        // Not paused: the transaction goes on and new queries run at once.
        a.batch_execute("SELECT 2; COMMIT").await.unwrap();
        let b = client(&p, &db, &user).await;
        tokio::time::timeout(LIMIT, b.simple_query("SELECT 3"))
            .await
            .expect("not paused")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_one_database_and_their_errors() {
    let (db, user) = setup("pausedb").await;
    let p = start(&db, &user, 2, "");
    let admin = console(&p).await;
    expect_err(&p, &admin, "PAUSE nosuch", "no such database: nosuch").await;
    expect_err(
        &p,
        &admin,
        "PAUSE pgbouncer",
        "cannot pause admin db: pgbouncer",
    )
    .await;
    expect_err(
        &p,
        &admin,
        &format!("RESUME {db}"),
        &format!("database {db} is not paused"),
    )
    .await;
    expect_err(&p, &admin, "RESUME nosuch", "no such database: nosuch").await;

    let a = Arc::new(client(&p, &db, &user).await);
    a.simple_query("SELECT 1").await.unwrap();
    ok(&p, &admin, &format!("PAUSE {db}")).await;
    let q = spawn_query(a.clone(), "SELECT 2");
    tokio::time::sleep(STILL).await;
    assert!(!q.is_finished(), "the paused database's queries wait");
    let show = ok(&p, &admin, "SHOW DATABASES").await;
    assert!(
        pairs(&show, "name", "paused").contains(&(db.clone(), "1".into())),
        "{show:?}"
    );
    // Another PAUSE of the same database is allowed (PgBouncer).
    ok(&p, &admin, &format!("PAUSE {db}")).await;
    expect_err(
        &p,
        &admin,
        "SUSPEND",
        "cannot suspend with paused databases",
    )
    .await;
    expect_err(&p, &admin, "RESUME", "pooler is not paused/suspended").await;
    ok(&p, &admin, &format!("RESUME {db}")).await;
    finish(&p, q, "query after RESUME db").await.unwrap();

    // SUSPEND (pgsluice: a PAUSE with SUSPEND's checks) and RESUME.
    ok(&p, &admin, "SUSPEND").await;
    expect_err(&p, &admin, "PAUSE", "already suspended/paused").await;
    let q = spawn_query(a.clone(), "SELECT 3");
    tokio::time::sleep(STILL).await;
    assert!(!q.is_finished(), "queries wait while suspended");
    ok(&p, &admin, "RESUME").await;
    finish(&p, q, "query after RESUME").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let (db, user) = setup("usr").await;
    let p = start(&db, &user, 2, "");
    let a = Arc::new(client(&p, &db, &user).await);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();

    p.signal(libc::SIGUSR1);
    assert!(
        p.wait_for_log("got SIGUSR1, pausing all activity", LIMIT),
        "{}",
        p.log()
    );
    let b = Arc::new(client(&p, &db, &user).await);
    let bq = spawn_query(b, "SELECT 2");
    tokio::time::sleep(STILL).await;
    assert!(!bq.is_finished(), "paused by SIGUSR1");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        cluster()
            .wait_for_backends(None, Some(&user), None, 0, LIMIT)
            .await,
        0,
        "released servers close while paused"
    );
    let admin = console(&p).await;
    expect_err(&p, &admin, "PAUSE", "already suspended/paused").await;

    p.signal(libc::SIGUSR2);
    finish(&p, bq, "query after SIGUSR2").await.unwrap();
    assert!(p.wait_for_log("got SIGUSR2, continuing from PAUSE", LIMIT));
}

// ------------------------------------------------------------------ rights

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_may_not_control() {
    let (db, user) = setup("rights").await;
    let p = start(&db, &user, 2, "");
    let watcher = console_as(&p, "watcher").await;
    for sql in [
        "PAUSE",
        "RESUME",
        "KILL_CLIENT 1",
        "RELOAD",
        "SHUTDOWN",
        "SET default_pool_size = 3",
        &format!("DISABLE {db}"),
    ] {
        expect_err(&p, &watcher, sql, "admin access needed").await;
    }
    // Fake parameters are fine for everyone.
    ok(&p, &watcher, "SET client_encoding = 'UTF8'").await;
    assert!(p.is_running());
    client(&p, &db, &user)
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

// ------------------------------------------------------------------ RELOAD / SET

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_pool_size_without_dropping_clients() {
    let (db, user) = setup("reload").await;
    let p = start(&db, &user, 1, "");
    let a = client(&p, &db, &user).await;
    assert!(
        !second_server_available(&p, &db, &user, &a).await,
        "pool size 1"
    );
    let admin = console(&p).await;

    p.write_ini(&ini(&db, 2, ""));
    ok(&p, &admin, "RELOAD").await;
    assert!(
        second_server_available(&p, &db, &user, &a).await,
        "pool size 2 after RELOAD"
    );
    a.simple_query("SELECT 1")
        .await
        .expect("client survives RELOAD");

    // A broken ini: F0000, the old configuration stays, everyone keeps working.
    p.write_ini("[pgbouncer]\nthis_is_not_a_key = 1\n");
    let (code, msg) = err(&p, &admin, "RELOAD").await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("F0000", "RELOAD failed, see logs for additional details")
    );
    a.simple_query("SELECT 2")
        .await
        .expect("client survives a failed RELOAD");
    client(&p, &db, &user)
        .await
        .simple_query("SELECT 3")
        .await
        .unwrap();
    assert!(
        second_server_available(&p, &db, &user, &a).await,
        "still pool size 2"
    );
    expect_err(
        &p,
        &admin,
        "RELOAD now",
        "invalid command 'RELOAD now', use SHOW HELP;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let (db, user) = setup("hup").await;
    let p = start(&db, &user, 1, "");
    let a = client(&p, &db, &user).await;
    assert!(
        !second_server_available(&p, &db, &user, &a).await,
        "pool size 1"
    );
    p.write_ini(&ini(&db, 2, ""));
    p.signal(libc::SIGHUP);
    assert!(p.wait_for_log("got SIGHUP", LIMIT));
    // The reload runs right after the log line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        second_server_available(&p, &db, &user, &a).await,
        "pool size 2 after SIGHUP"
    );

    p.write_ini("[pgbouncer]\nthis_is_not_a_key = 1\n");
    p.signal(libc::SIGHUP);
    assert!(p.wait_for_log("RELOAD failed", LIMIT), "{}", p.log());
    assert!(p.is_running());
    a.simple_query("SELECT 1").await.unwrap();
    client(&p, &db, &user)
        .await
        .simple_query("SELECT 2")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_settings_at_runtime() {
    let (db, user) = setup("set").await;
    let p = start(&db, &user, 1, "");
    let a = client(&p, &db, &user).await;
    let admin = console(&p).await;
    assert!(
        !second_server_available(&p, &db, &user, &a).await,
        "pool size 1"
    );

    ok(&p, &admin, "SET default_pool_size = 2").await;
    assert!(
        second_server_available(&p, &db, &user, &a).await,
        "pool size 2 after SET"
    );
    let show = ok(&p, &admin, "SHOW CONFIG").await;
    assert!(
        pairs(&show, "key", "value").contains(&("default_pool_size".into(), "2".into())),
        "SHOW CONFIG after SET"
    );

    // Not changeable while running: accepted and ignored, as PgBouncer.
    ok(&p, &admin, "SET listen_port = 1").await;
    let show = ok(&p, &admin, "SHOW CONFIG").await;
    assert!(pairs(&show, "key", "value").contains(&("listen_port".into(), p.port.to_string())));

    expect_err(&p, &admin, "SET no_such_key = 1", "SET failed").await;
    expect_err(&p, &admin, "SET default_pool_size = many", "SET failed").await;
    ok(&p, &admin, "SET server_reset_query = 'DISCARD ALL'").await;
    a.simple_query("SELECT 1").await.unwrap();
}

// ------------------------------------------------------------------ KILL_CLIENT / KILL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_disconnects_exactly_that_client() {
    let (db, user) = setup("killc").await;
    let p = start(&db, &user, 2, "");
    let mut cfg = common::pg_config(p.port, &db, &user, None);
    let victim = common::connect_with(cfg.application_name("victim"))
        .await
        .unwrap();
    let survivor = common::connect_with(cfg.application_name("survivor"))
        .await
        .unwrap();
    victim.simple_query("SELECT 1").await.unwrap();
    survivor.simple_query("SELECT 1").await.unwrap();
    let admin = console(&p).await;

    let clients = ok(&p, &admin, "SHOW CLIENTS").await;
    let ids = pairs(&clients, "application_name", "id");
    let id = ids
        .iter()
        .find(|(app, _)| app == "victim")
        .map(|(_, id)| id.clone())
        .unwrap_or_else(|| panic!("victim not in SHOW CLIENTS: {ids:?}"));

    expect_err(
        &p,
        &admin,
        "KILL_CLIENT abc",
        "invalid client pointer supplied",
    )
    .await;
    expect_err(&p, &admin, "KILL_CLIENT 999999999", "client not found").await;
    ok(&p, &admin, &format!("KILL_CLIENT {id}")).await;

    let e = tokio::time::timeout(LIMIT, victim.simple_query("SELECT 2"))
        .await
        .expect("killed client answers")
        .expect_err("killed client is gone");
    let (_, msg) = db_error_text(&e);
    assert!(
        msg.contains("admin forced disconnect") || victim.is_closed(),
        "{e:?}"
    );
    survivor
        .simple_query("SELECT 2")
        .await
        .expect("others are untouched");
    let clients = ok(&p, &admin, "SHOW CLIENTS").await;
    assert!(
        !column(&clients, "id").contains(&id),
        "the killed client is gone"
    );
    expect_err(&p, &admin, &format!("KILL_CLIENT {id}"), "client not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_of_a_waiting_client_keeps_the_pool_whole() {
    let (db, user) = setup("killw").await;
    let p = start(&db, &user, 1, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut cfg = common::pg_config(p.port, &db, &user, None);
    let waiter = Arc::new(
        common::connect_with(cfg.application_name("waiter"))
            .await
            .unwrap(),
    );
    let q = spawn_query(waiter.clone(), "SELECT 2");
    let admin = console(&p).await;
    // Find the waiting client (it shows as `waiting` once it queued).
    let id = tokio::time::timeout(LIMIT, async {
        loop {
            let rows = ok(&p, &admin, "SHOW CLIENTS").await;
            let found = rows.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r)
                    if r.get("application_name") == Some("waiter")
                        && r.get("state") == Some("waiting") =>
                {
                    r.get("id").map(str::to_string)
                }
                _ => None,
            });
            if let Some(id) = found {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second client waits for the only server");
    ok(&p, &admin, &format!("KILL_CLIENT {id}")).await;
    assert!(finish(&p, q, "killed waiter").await.is_err());

    // The pool's one server is intact: it serves others, and PAUSE can complete.
    a.batch_execute("COMMIT").await.unwrap();
    client(&p, &db, &user)
        .await
        .simple_query("SELECT 3")
        .await
        .expect("the server goes to the next client");
    ok(&p, &admin, "PAUSE").await;
    ok(&p, &admin, "RESUME").await;
    a.simple_query("SELECT 4").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_the_database_and_leaves_it_paused() {
    let (db, user) = setup("kill").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;
    expect_err(&p, &admin, "KILL nosuch", "no such database: nosuch").await;
    expect_err(
        &p,
        &admin,
        "KILL pgbouncer",
        "cannot kill admin db: pgbouncer",
    )
    .await;

    ok(&p, &admin, &format!("KILL {db}")).await;
    let e = tokio::time::timeout(LIMIT, a.simple_query("SELECT 2"))
        .await
        .expect("killed client answers")
        .expect_err("killed client is gone");
    assert!(
        db_error_text(&e).1.contains("database removed") || a.is_closed(),
        "{e:?}"
    );
    assert_eq!(
        cluster()
            .wait_for_backends(None, Some(&user), None, 0, LIMIT)
            .await,
        0,
        "its servers are closed"
    );
    // New clients wait for RESUME.
    let b = Arc::new(client(&p, &db, &user).await);
    let q = spawn_query(b, "SELECT 3");
    tokio::time::sleep(STILL).await;
    assert!(!q.is_finished(), "KILL leaves the database paused");
    ok(&p, &admin, &format!("RESUME {db}")).await;
    finish(&p, q, "query after RESUME").await.unwrap();
}

// ------------------------------------------------------------------ DISABLE / ENABLE

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_clients_until_enable() {
    let (db, user) = setup("disable").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    let admin = console(&p).await;
    expect_err(&p, &admin, "DISABLE", "a database is required").await;
    expect_err(&p, &admin, "ENABLE", "a database is required").await;
    expect_err(
        &p,
        &admin,
        "DISABLE pgbouncer",
        "cannot disable admin db: pgbouncer",
    )
    .await;
    expect_err(&p, &admin, "DISABLE nosuch", "no such database: nosuch").await;

    ok(&p, &admin, &format!("DISABLE {db}")).await;
    let e = common::connect_err(p.port, &db, &user, None).await;
    assert_eq!(
        db_error_text(&e),
        ("08P01".into(), format!("database \"{db}\" is disabled"))
    );
    a.simple_query("SELECT 1")
        .await
        .expect("connected clients stay");

    ok(&p, &admin, &format!("ENABLE {db}")).await;
    client(&p, &db, &user)
        .await
        .simple_query("SELECT 2")
        .await
        .unwrap();
}

// ------------------------------------------------------------------ RECONNECT / WAIT_CLOSE

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_servers_and_wait_close_waits_for_them() {
    let (db, user) = setup("reconn").await;
    let p = start(&db, &user, 1, "");
    let a = client(&p, &db, &user).await;
    let pid = |m: Vec<SimpleQueryMessage>| column(&m, "pg_backend_pid").remove(0);
    let before = pid(a.simple_query("SELECT pg_backend_pid()").await.unwrap());
    let admin = console(&p).await;
    expect_err(
        &p,
        &admin,
        "WAIT_CLOSE pgbouncer",
        "cannot wait in admin db: pgbouncer",
    )
    .await;
    expect_err(
        &p,
        &admin,
        "RECONNECT pgbouncer",
        "cannot reconnect admin db: pgbouncer",
    )
    .await;

    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    ok(&p, &admin, &format!("RECONNECT {db}")).await;
    let wait = spawn_query(admin.clone(), "WAIT_CLOSE");
    tokio::time::sleep(STILL).await;
    assert!(
        !wait.is_finished(),
        "WAIT_CLOSE waits for the server in a transaction"
    );
    let in_tx = pid(a.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_eq!(in_tx, before, "the transaction keeps its server");
    a.batch_execute("COMMIT").await.unwrap();
    finish(&p, wait, "WAIT_CLOSE").await.unwrap();
    let after = pid(a.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_ne!(after, before, "a new server after RECONNECT");
}

// ------------------------------------------------------------------ SHUTDOWN and signals

/// A client in a transaction finishes it, new clients are refused, and the process exits
/// once the last client has gone. `trigger` starts the shutdown.
async fn wait_for_clients_shutdown(name: &str, by_signal: bool) {
    let (db, user) = setup(name).await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;
    if by_signal {
        p.signal(libc::SIGTERM);
        assert!(p.wait_for_log("got SIGTERM", LIMIT));
    } else {
        ok(&p, &admin, "SHUTDOWN WAIT_FOR_CLIENTS").await;
    }
    // New clients are refused (the listener is closed).
    let refused = async {
        loop {
            if connect(p.port, &db, &user, None).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(LIMIT, refused)
        .await
        .expect("new clients are refused during shutdown");
    a.batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the transaction finishes");
    a.simple_query("SELECT 3")
        .await
        .expect("the client may go on");
    assert!(p.is_running(), "clients are still connected");
    drop(a);
    drop(admin);
    assert!(
        p.wait_exit(LIMIT).is_some(),
        "exits when the last client has gone\n{}",
        p.log()
    );
    assert!(
        p.log().contains("client connections dropped, exiting"),
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_clients_lets_transactions_finish() {
    wait_for_clients_shutdown("shutcl", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_clients() {
    wait_for_clients_shutdown("term", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_waits_for_servers_and_drops_idle_clients() {
    let (db, user) = setup("int").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    let idle = client(&p, &db, &user).await;
    idle.simple_query("SELECT 1").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    p.signal(libc::SIGINT);
    assert!(p.wait_for_log("got SIGINT", LIMIT));
    // The idle client is told and dropped; the transaction goes on.
    let dropped = async {
        while !idle.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIMIT, dropped)
        .await
        .expect("idle client dropped");
    assert!(p.log().contains("server shutting down"), "{}", p.log());
    a.batch_execute("SELECT 2")
        .await
        .expect("the transaction goes on");
    assert!(p.is_running());
    a.batch_execute("COMMIT").await.expect("COMMIT");
    assert!(
        p.wait_exit(LIMIT).is_some(),
        "exits once every server is released\n{}",
        p.log()
    );
    assert!(
        p.log().contains("server connections dropped, exiting"),
        "{}",
        p.log()
    );
    assert_eq!(
        cluster()
            .wait_for_backends(None, Some(&user), None, 0, LIMIT)
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_servers_from_the_console() {
    let (db, user) = setup("shutsv").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;
    ok(&p, &admin, "SHUTDOWN WAIT_FOR_SERVERS").await;
    expect_err(&p, &admin, "RESUME", "pooler is shutting down").await;
    tokio::time::sleep(STILL).await;
    assert!(p.is_running(), "a server is still in use");
    a.batch_execute("COMMIT").await.expect("COMMIT");
    assert!(p.wait_exit(LIMIT).is_some(), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_exits_at_once_without_a_reply() {
    let (db, user) = setup("shutnow").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;
    expect_err(
        &p,
        &admin,
        "SHUTDOWN NOW",
        "invalid command 'SHUTDOWN NOW', use SHOW HELP;",
    )
    .await;
    let r = tokio::time::timeout(LIMIT, admin.simple_query("SHUTDOWN")).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "no reply; the session ends with the process: {r:?}"
    );
    assert!(p.wait_exit(LIMIT).is_some(), "{}", p.log());
}

// ------------------------------------------------------------------ auth_file, log_stats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_is_reread_when_it_changes() {
    let (db, user) = setup("authf").await;
    let late = "ac_authf_late";
    cluster().create_role(late, None).await;
    let p = start(&db, &user, 2, "");
    let e = common::connect_err(p.port, &db, late, None).await;
    assert_eq!(db_error_text(&e).1, "\"trust\" authentication failed");

    replace_userlist(&p, &format!("{}\"{late}\" \"\"\n", userlist(&user)));
    let admitted = async {
        loop {
            if let Ok(c) = connect(p.port, &db, late, None).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let c = tokio::time::timeout(LIMIT, admitted)
        .await
        .unwrap_or_else(|_| panic!("auth_file change not picked up\n{}", p.log()));
    c.simple_query("SELECT 1").await.unwrap();

    // A broken file keeps the list in force.
    replace_userlist(&p, "this is not an auth file\n");
    assert!(p.wait_for_log("not reloaded", LIMIT), "{}", p.log());
    connect(p.port, &db, late, None)
        .await
        .expect("old list still in force")
        .simple_query("SELECT 2")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stats_writes_the_pgbouncer_line() {
    let (db, user) = setup("logstats").await;
    let p = start(&db, &user, 2, "stats_period = 1\nlog_stats = 1\n");
    let a = client(&p, &db, &user).await;
    let busy = async {
        loop {
            a.simple_query("SELECT 1").await.unwrap();
            if p.log().lines().any(|l| {
                l.contains("LOG stats: ") && !l.contains("LOG stats: 0 xacts/s, 0 queries/s")
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(LIMIT, busy)
        .await
        .unwrap_or_else(|_| panic!("no busy stats line\n{}", p.log()));
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("LOG stats: ") && !l.contains("LOG stats: 0 xacts/s, 0 queries/s"))
        .unwrap();
    let text = &line[line.find("stats: ").unwrap()..];
    let words: Vec<&str> = text
        .split(|c: char| c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        words,
        [
            "stats: ",
            " xacts/s, ",
            " queries/s, ",
            " client parses/s, ",
            " server parses/s, ",
            " binds/s, ",
            " client logins/s, in ",
            " B/s, out ",
            " B/s, xact ",
            " us, query ",
            " us, wait ",
            " us"
        ],
        "{line}"
    );
    // The same averages, per database, in SHOW STATS_AVERAGES.
    let admin = console(&p).await;
    let shown = async {
        loop {
            a.simple_query("SELECT 1").await.unwrap();
            let avg = ok(&p, &admin, "SHOW STATS_AVERAGES").await;
            let q = pairs(&avg, "database", "query_count");
            if q.iter().any(|(d, n)| d == &db && n != "0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(LIMIT, shown)
        .await
        .expect("SHOW STATS_AVERAGES shows the period's averages");
}

// ------------------------------------------------- console cancel, shutdown access, logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_on_the_console_turns_a_pending_pause_into_resume() {
    let (db, user) = setup("cancelpause").await;
    let p = start(&db, &user, 2, "");
    let a = Arc::new(client(&p, &db, &user).await);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = console(&p).await;
    let token = admin.cancel_token();

    let pause = spawn_query(admin.clone(), "PAUSE");
    tokio::time::sleep(STILL).await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");

    // Ctrl-C in psql: a CancelRequest with the console session's key.
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let res = finish(&p, pause, "cancelled PAUSE").await;
    let e = res.expect_err("a cancelled PAUSE does not report success");
    assert!(db_error_text(&e).1.contains("cancelled by RESUME"), "{e:?}");

    // Not paused any more: a new client's query runs at once.
    let b = client(&p, &db, &user).await;
    tokio::time::timeout(LIMIT, b.simple_query("SELECT 2"))
        .await
        .expect("not paused")
        .expect("query");
    a.batch_execute("COMMIT").await.unwrap();
    expect_err(&p, &admin, "RESUME", "pooler is not paused/suspended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_reachable_on_the_unix_socket_during_shutdown() {
    let (db, user) = setup("shutconsole").await;
    let p = start(&db, &user, 2, "");
    let a = client(&p, &db, &user).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();

    p.signal(libc::SIGTERM);
    assert!(p.wait_for_log("got SIGTERM", LIMIT));
    // TCP stops accepting.
    let deadline = std::time::Instant::now() + LIMIT;
    while std::net::TcpStream::connect(("127.0.0.1", p.port)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "TCP still accepting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The console over the Unix socket still works; ordinary logins there are refused.
    let admin = common::connect_unix(p.dir.path(), p.port, "pgbouncer", "admin", None)
        .await
        .unwrap_or_else(|e| panic!("console over the Unix socket: {e:?}\n{}", p.log()));
    let rows = ok(&p, &admin, "SHOW STATE").await;
    assert!(!rows.is_empty());
    let e = common::connect_unix(p.dir.path(), p.port, &db, &user, None)
        .await
        .expect_err("ordinary login during shutdown");
    assert_eq!(db_error_text(&e).1, "pooler is shutting down");

    // The running client finishes; the open console does not hold the process.
    a.batch_execute("SELECT 2; COMMIT").await.unwrap();
    drop(a);
    assert!(
        p.wait_exit(LIMIT).is_some(),
        "process exits once the last client leaves, console still connected\n{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reopens_the_logfile() {
    let (db, user) = setup("logrotate").await;
    let p = start(&db, &user, 2, "logfile = {dir}/rotate.log\n");
    let log = p.path("rotate.log");
    assert!(p.wait_for_log("process up", LIMIT));
    let deadline = std::time::Instant::now() + LIMIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("process up")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in the logfile"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // logrotate: move the file away, then SIGHUP.
    std::fs::rename(&log, p.path("rotate.log.1")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_for_log("got SIGHUP", LIMIT));
    // The reload finishes (and reopens the file) after "got SIGHUP" is logged: log in
    // again until a login line lands in the new file.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let c = client(&p, &db, &user).await;
        c.simple_query("SELECT 1").await.unwrap();
        drop(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("login attempt") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new log lines do not reach the reopened file: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
