//! Python drivers against protocol-level prepared statements in transaction mode: asyncpg
//! with its default statement cache, psycopg 3 with prepare_threshold=0, and SQLAlchemy 2
//! on psycopg 3. Each runs the workload in `tests/python/` with 50 concurrent clients
//! over a pool of 3 servers; every client asks for its own rows and checks each row it
//! gets, so a wrong-row bug fails the test.
//!
//! The drivers live in a virtualenv the harness creates once (`python3 -m venv` + pip
//! from PyPI) under the target directory and reuses while it is complete. If it cannot
//! be created (no python3-venv, no network), the tests fail and say why: they never pass
//! without having run. `.ci/run` installs python3-venv/python3-pip where they are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{cluster, connect, run_with_timeout, Pooler, PoolerBuilder};

/// Packages the workloads import.
const PACKAGES: &[&str] = &["asyncpg>=0.29", "psycopg[binary]>=3.1", "SQLAlchemy>=2.0"];
/// Written into the venv once every package is installed and imports.
const STAMP: &str = ".pgsluice-python-clients-ready";
/// Concurrent clients per workload, and the pool they share.
const CLIENTS: u32 = 50;
const POOL_SIZE: u32 = 3;
const ROUNDS: u32 = 12;

// ------------------------------------------------------------------ the venv

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-clients-venv")
}

fn run(cmd: &mut Command, timeout: Duration) -> Result<(), String> {
    let what = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn create_venv(dir: &Path) -> Result<(), String> {
    let python = dir.join("bin").join("python");
    if dir.join(STAMP).exists() && python.exists() {
        return Ok(());
    }
    // A half-made venv (an earlier run was interrupted) is made again from scratch.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(dir),
        Duration::from_secs(120),
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                // Offline, fail in about a minute rather than pip's default backoff.
                "--retries",
                "2",
                "--timeout",
                "20",
            ])
            .args(PACKAGES),
        Duration::from_secs(600),
    )?;
    run(
        Command::new(&python).args(["-c", "import asyncpg, psycopg, sqlalchemy"]),
        Duration::from_secs(60),
    )?;
    std::fs::write(dir.join(STAMP), PACKAGES.join("\n"))
        .map_err(|e| format!("writing the venv stamp: {e}"))
}

/// The venv's python, creating the venv on first use (once per test binary).
fn python() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static CREATING: Mutex<()> = Mutex::new(());
    let result = VENV.get_or_init(|| {
        let _guard = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = venv_dir();
        create_venv(&dir).map(|()| dir.join("bin").join("python"))
    });
    match result {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "cannot create the Python virtualenv for the client tests in {} \
             (needs `python3 -m venv` — Debian/Ubuntu package python3-venv, which .ci/run \
             installs — and network access to PyPI for {}):\n{e}",
            venv_dir().display(),
            PACKAGES.join(", ")
        ),
    }
}

// ------------------------------------------------------------------ fixtures

/// A role `py_<name>` owning `py_<name>_db` with the workload tables: every client has
/// its own rows. Returns (database, role).
async fn setup(name: &str) -> (String, String) {
    let pg = cluster();
    let user = format!("py_{name}");
    let db = format!("py_{name}_db");
    pg.create_role(&user, None).await;
    pg.create_database(&db, &user).await;
    let c = pg
        .connect(&db, &user, None)
        .await
        .expect("direct connection");
    c.batch_execute(&format!(
        "CREATE TABLE items (owner int, k int, val text, PRIMARY KEY (owner, k));
         INSERT INTO items SELECT o, k, 'o' || o || 'k' || k
           FROM generate_series(0, {last}) o, generate_series(0, 4) k;
         CREATE TABLE counters (owner int PRIMARY KEY, n int NOT NULL);
         INSERT INTO counters SELECT o, 0 FROM generate_series(0, {last}) o;",
        last = CLIENTS - 1
    ))
    .await
    .expect("workload tables");
    (db, user)
}

fn start_pooler(db: &str, user: &str) -> Pooler {
    let ini = format!(
        "[databases]\n\
         {db} = host={{pg_host}} port={{pg_port}}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = {user}\n\
         pool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\n\
         max_client_conn = 200\n"
    );
    PoolerBuilder::new(&ini)
        .userlist(&format!("\"{user}\" \"\"\n"))
        .start()
}

/// Runs `tests/python/<script>` against the pooler; fails with the script's output.
async fn run_workload(script: &str, p: &Pooler, db: &str, user: &str) {
    let python = tokio::task::spawn_blocking(python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python");
    let mut cmd = Command::new(python);
    cmd.current_dir(&dir)
        .arg(dir.join(script))
        .args(["--host", "127.0.0.1", "--port", &p.port.to_string()])
        .args(["--db", db, "--user", user])
        .args(["--clients", &CLIENTS.to_string()])
        .args(["--rounds", &ROUNDS.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let out =
        tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(300)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{}\nstderr:\n{}\npgsluice log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
}

/// After a workload: every counter ended where the clients expected, nothing pgsluice
/// made is left in a client-visible error, and the pool never grew past its size.
async fn after_workload(p: &Pooler, db: &str, user: &str) {
    let direct = cluster().connect(db, user, None).await.expect("direct");
    let row = direct
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE n = $1) FROM counters",
            &[&(ROUNDS as i32)],
        )
        .await
        .expect("counters");
    let (all, done): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(all, i64::from(CLIENTS));
    assert_eq!(
        done, all,
        "every client's counter was bumped once per round"
    );
    let servers = cluster().count_backends(Some(db), Some(user), None).await;
    assert!(
        servers <= i64::from(POOL_SIZE) + 1,
        "{servers} backends for a pool of {POOL_SIZE}"
    );
    // The statements were shared: SHOW STATS counted far fewer server parses than
    // client ones would need without the cache.
    let admin = connect(p.port, "pgbouncer", user, None)
        .await
        .expect("admin console");
    let rows = admin.simple_query("SHOW STATS").await.expect("SHOW STATS");
    let stats = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some(db) => Some((
                r.get("total_client_parse_count")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
                r.get("total_server_parse_count")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
                r.get("total_bind_count")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            )),
            _ => None,
        })
        .expect("SHOW STATS row for the database");
    let (client_parses, server_parses, binds) = stats;
    assert!(binds > u64::from(CLIENTS * ROUNDS), "bind count {binds}");
    assert!(client_parses > 0, "client parse count {client_parses}");
    assert!(
        server_parses < client_parses,
        "server parses {server_parses} vs client parses {client_parses}: nothing shared"
    );
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_default_statement_cache() {
    let (db, user) = setup("asyncpg").await;
    let p = start_pooler(&db, &user);
    run_workload("asyncpg_workload.py", &p, &db, &user).await;
    after_workload(&p, &db, &user).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_prepare_threshold_zero() {
    let (db, user) = setup("psycopg").await;
    let p = start_pooler(&db, &user);
    run_workload("psycopg_workload.py", &p, &db, &user).await;
    after_workload(&p, &db, &user).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlalchemy_on_psycopg() {
    let (db, user) = setup("sqla").await;
    let p = start_pooler(&db, &user);
    run_workload("sqlalchemy_workload.py", &p, &db, &user).await;
    after_workload(&p, &db, &user).await;
}

/// asyncpg keeps using its cached statements while ALTER TABLE changes their result type
/// (PgBouncer #1038): pgsluice invalidates the shared statement on the first "cached plan
/// must not change result type", asyncpg prepares again, and every call succeeds with the
/// new columns on every server, without RECONNECT.
#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_survives_ddl_without_reconnect() {
    let (db, user) = setup("asyncpg_ddl").await;
    let p = start_pooler(&db, &user);
    run_workload("asyncpg_ddl.py", &p, &db, &user).await;
}
