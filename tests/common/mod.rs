//! Integration-test harness for pgsluice: a real PostgreSQL cluster, the
//! pooler binary, clients (tokio-postgres, a raw protocol client, psql and
//! pgbench).
//!
//! # The PostgreSQL cluster
//! [`cluster()`] starts one cluster per test binary on first use: `initdb`
//! into a temp dir, an explicit `pg_hba.conf` (see [`PgCluster::create_role`]
//! for how role name prefixes pick md5 / scram-sha-256 / password / trust),
//! a free port on 127.0.0.1 and a Unix socket in the temp dir.  As root, the
//! server runs as the `postgres` OS user through `runuser`.  A test binary may
//! switch its cluster to `ssl = on` with [`PgCluster::enable_ssl`] (tests/tls.rs
//! does, with rcgen certificates); plaintext connections keep working.
//!
//! # Cleanup: no process outlives the test binary
//! * The postmaster is started by a small watchdog shell script whose stdin is
//!   a pipe whose write end only the test process holds (it is close-on-exec,
//!   so no other child inherits it).  When that pipe reaches EOF, because the
//!   test process exited, panicked or was SIGKILLed, the script sends SIGQUIT
//!   to the postmaster: an immediate shutdown in which the postmaster
//!   SIGQUITs all its children, waits for them (SIGKILLing stragglers after
//!   5 s) and exits, so no backend is orphaned, unlike a SIGKILL of the
//!   postmaster alone.  Then the script removes the cluster's temp dir.
//! * An `atexit` handler closes that pipe and waits (up to 15 s, then
//!   SIGKILL) for the watchdog to finish, so on a normal exit (pass or fail)
//!   the cluster is gone and its directory removed before the process ends.
//! * Every pooler process ([`Pooler`]) gets a watchdog of its own
//!   (`sh -c 'read; kill -KILL <pid>'` on a pipe that only the test process
//!   holds); `Drop` disarms the watchdog and then kills and reaps the pooler.
//!   If the test process dies without running `Drop`, the pipe closes and the
//!   watchdog kills the pooler.
//! * psql / pgbench wrappers run with a timeout and are killed when it passes.
//!
//! # A tap in front of the cluster
//! [`Tap`] is a loopback TCP forwarder to the cluster that records how each
//! connection opened (SSLRequest, CancelRequest, StartupMessage) and can hold
//! cancels or refuse TLS on purpose: what a test needs to see how pgsluice
//! reached the server, which PostgreSQL does not show for cancel requests.
//!
//! `harness.rs` checks this by experiment: it runs itself as a child test
//! process, SIGKILLs it (or lets it exit) and verifies that the postmaster,
//! its children and a pooler stand-in are gone and the temp dir removed.

#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod pooler;
pub mod raw;
pub mod tap;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use cluster::{cluster, free_port, PgCluster, PG_HOST};
pub use pooler::{Pooler, PoolerBuilder};
pub use raw::{Msg, RawClient};
pub use tap::{Misbehave, Opening, Tap};

/// How long a tokio-postgres connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A tokio-postgres config for 127.0.0.1:`port` (no TLS, 10 s connect timeout).
pub fn pg_config(
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(PG_HOST)
        .port(port)
        .dbname(db)
        .user(user)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = password {
        config.password(password);
    }
    config
}

/// Connects with `config` and spawns the connection task on the current
/// tokio runtime.
pub async fn connect_with(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects to 127.0.0.1:`port` (PostgreSQL or the pooler).
pub async fn connect(
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_with(&pg_config(port, db, user, password)).await
}

/// Connects through the Unix socket `<socket_dir>/.s.PGSQL.<port>`.
pub async fn connect_unix(
    socket_dir: &Path,
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = pg_config(port, db, user, password);
    config.host_path(socket_dir);
    connect_with(&config).await
}

/// Connects expecting failure and returns the error; panics if it succeeds.
pub async fn connect_err(
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> tokio_postgres::Error {
    match connect(port, db, user, password).await {
        Ok(_) => panic!("connecting to 127.0.0.1:{port} as {user}@{db} unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// (SQLSTATE, message) of a server error; ("", Display text) for other errors
/// (I/O, closed connection, ...).
pub fn db_error_text(err: &tokio_postgres::Error) -> (String, String) {
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), err.to_string()),
    }
}

/// SQLSTATE of a server error, "" for other errors.
pub fn sqlstate_of(err: &tokio_postgres::Error) -> String {
    db_error_text(err).0
}

/// `name` as an SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal (standard_conforming_strings is on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr; kills it and
/// panics if it runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out_reader.join().unwrap_or_default();
                let err = err_reader.join().unwrap_or_default();
                panic!(
                    "{what} did not finish within {timeout:?}; killed.\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&err)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {what} failed: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader thread"),
        stderr: err_reader.join().expect("stderr reader thread"),
    }
}

/// A libpq tool command with the caller's PG* environment removed (so it
/// cannot redirect the tool elsewhere), no ~/.pgpass, a 10 s connect timeout,
/// and PGHOST=127.0.0.1.
pub fn libpq_command(program: &str, password: Option<&str>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGHOST", PG_HOST)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSFILE", "/nonexistent/pgsluice-harness-pgpass");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// `psql -X -w -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p port -U user -d db -c sql`:
/// tuples only, unaligned (`|`-separated), no password prompt; 60 s timeout.
pub fn psql(port: u16, db: &str, user: &str, sql: &str) -> Output {
    psql_password(port, db, user, None, sql)
}

/// [`psql`] with `PGPASSWORD` set when `password` is given.
pub fn psql_password(port: u16, db: &str, user: &str, password: Option<&str>, sql: &str) -> Output {
    let mut cmd = libpq_command("psql", password);
    cmd.args([
        "-X",
        "-w",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        PG_HOST,
    ])
    .arg("-p")
    .arg(port.to_string())
    .args(["-U", user, "-d", db, "-c", sql]);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// `pgbench <args>` with PGHOST=127.0.0.1 (pass -p/-U/database in `args`);
/// 300 s timeout.
pub fn pgbench(args: &[&str]) -> Output {
    pgbench_password(args, None)
}

/// [`pgbench`] with `PGPASSWORD` set when `password` is given.
pub fn pgbench_password(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = libpq_command("pgbench", password);
    cmd.args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(300))
}

/// Stdout of a successful tool run, trimmed; panics with both streams otherwise.
pub fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
