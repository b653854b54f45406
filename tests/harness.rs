//! Tests of the test harness itself (tests/common): the PostgreSQL cluster,
//! its pg_hba.conf, the clients and tool wrappers, the pooler process
//! machinery (with a stand-in for pgsluice) and cleanup of every process the
//! harness starts.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::raw::{auth, md5_password};
use common::{
    cluster, connect, connect_err, connect_unix, db_error_text, pgbench, psql, psql_password,
    stdout_ok, PoolerBuilder, RawClient,
};

/// Environment variable that turns `child_process_entry` into a helper process.
const CHILD_ENV: &str = "PGSLUICE_HARNESS_CHILD";

const STAND_IN_INI: &str = "[databases]\n\
    * = host={pg_host} port={pg_port}\n\
    [pgbouncer]\n\
    listen_addr = 127.0.0.1\n\
    listen_port = {port}\n\
    unix_socket_dir = {dir}\n\
    auth_file = {dir}/userlist.txt\n";

// ------------------------------------------------------------------ cluster

#[tokio::test]
async fn cluster_starts_with_the_requested_settings() {
    let pg = cluster();
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.major_version() >= 15, "version {}", pg.major_version());
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    let su = pg.superuser().await;
    let row = su
        .query_one("SELECT current_user::text, 1 + 1", &[])
        .await
        .expect("superuser query");
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, i32>(1), 2);
    for (name, expected) in [
        ("listen_addresses", "127.0.0.1".to_owned()),
        ("port", pg.port().to_string()),
        ("max_connections", "300".to_owned()),
        ("fsync", "off".to_owned()),
        ("synchronous_commit", "off".to_owned()),
        ("full_page_writes", "off".to_owned()),
        ("shared_buffers", "64MB".to_owned()),
        ("password_encryption", "scram-sha-256".to_owned()),
        ("server_encoding", "UTF8".to_owned()),
        ("lc_collate", "C".to_owned()),
        (
            "unix_socket_directories",
            pg.socket_dir().display().to_string(),
        ),
    ] {
        let value: String = su
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
            .get(0);
        assert_eq!(value, expected, "setting {name}");
    }
    assert_eq!(cluster().port(), pg.port(), "one cluster per test binary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_role_and_database_are_idempotent_under_concurrency() {
    let pg = cluster();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                pg.create_role("conc_owner", Some("pw one")).await;
                pg.create_role("md5_conc", Some("pw md5")).await;
                pg.create_database("conc_db", "conc_owner").await;
            })
        })
        .collect();
    for task in futures_util::future::join_all(tasks).await {
        task.expect("concurrent create_role/create_database task");
    }
    // Once more, sequentially, with a new password.
    pg.create_role("md5_conc", Some("pw md5 two")).await;
    pg.create_database("conc_db", "conc_owner").await;

    let su = pg.superuser().await;
    let roles: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('conc_owner', 'md5_conc') AND rolcanlogin",
            &[],
        )
        .await
        .expect("count roles")
        .get(0);
    assert_eq!(roles, 2);
    let owner: String = su
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'conc_db'",
            &[],
        )
        .await
        .expect("database owner")
        .get(0);
    assert_eq!(owner, "conc_owner");

    let client = connect(pg.port(), "conc_db", "md5_conc", Some("pw md5 two"))
        .await
        .expect("md5_conc logs in with the latest password");
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(db, "conc_db");
    let err = connect_err(pg.port(), "conc_db", "md5_conc", Some("pw md5")).await;
    assert_eq!(db_error_text(&err).0, "28P01");
}

#[tokio::test]
async fn hba_picks_the_auth_method_from_the_role_prefix() {
    let pg = cluster();
    let cases = [
        ("md5_hba", "md5 secret", auth::MD5_PASSWORD),
        ("scram_hba", "scram secret", auth::SASL),
        ("pw_hba", "cleartext secret", auth::CLEARTEXT_PASSWORD),
        ("plain_hba", "unused secret", auth::OK),
    ];
    for (role, password, _) in cases {
        pg.create_role(role, Some(password)).await;
    }
    for (role, password, method) in cases {
        // tokio-postgres over TCP: right password works, wrong one is refused.
        let client = connect(pg.port(), "postgres", role, Some(password))
            .await
            .unwrap_or_else(|e| panic!("{role} with the right password: {e:?}"));
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(user, role);
        if method == auth::OK {
            connect(pg.port(), "postgres", role, None)
                .await
                .unwrap_or_else(|e| panic!("{role} is trusted: {e:?}"));
        } else {
            let err = connect_err(pg.port(), "postgres", role, Some("wrong")).await;
            let (code, message) = db_error_text(&err);
            assert_eq!(code, "28P01", "{role}: {message}");
        }
        // The raw client shows which method the server asked for.
        let mut raw = RawClient::connect(pg.port()).await;
        let result = match method {
            auth::MD5_PASSWORD => raw.login_md5(role, "postgres", password).await,
            auth::SASL => raw.login_scram(role, "postgres", password).await,
            auth::CLEARTEXT_PASSWORD => raw.login_cleartext(role, "postgres", password).await,
            _ => raw.login_trust(role, "postgres").await,
        };
        result.unwrap_or_else(|e| panic!("raw login as {role}: {e:?}"));
        assert_eq!(raw.auth_requests.first(), Some(&method), "{role}");
        assert_eq!(
            raw.query_rows("SELECT 1").await,
            vec![vec![Some("1".into())]]
        );
    }
}

#[tokio::test]
async fn role_secret_is_the_server_side_secret() {
    let pg = cluster();
    pg.create_role("md5_secret", Some("s3cret")).await;
    pg.create_role("scram_secret", Some("s3cret")).await;
    pg.create_role("nopw_secret", None).await;
    // md5 secrets are "md5" || hex(md5(password || user)).
    let md5 = pg.role_secret("md5_secret").await.expect("md5 secret");
    let digest = {
        use md5::{Digest, Md5};
        Md5::digest(b"s3cretmd5_secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(md5, format!("md5{digest}"));
    // The md5 login response is that secret hashed again with the salt.
    let mut raw = RawClient::connect(pg.port()).await;
    raw.login_md5("md5_secret", "postgres", "s3cret")
        .await
        .expect("md5 login");
    assert_eq!(
        md5_password("md5_secret", "s3cret", b"salt"),
        format!("md5{}", {
            use md5::{Digest, Md5};
            let mut h = Md5::new();
            h.update(digest.as_bytes());
            h.update(b"salt");
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
    );
    let scram = pg.role_secret("scram_secret").await.expect("scram secret");
    assert!(scram.starts_with("SCRAM-SHA-256$4096:"), "{scram}");
    assert_eq!(pg.role_secret("nopw_secret").await, None);
}

#[tokio::test]
async fn backends_are_counted_waited_for_and_terminated() {
    let pg = cluster();
    pg.create_role("count_user", None).await;
    pg.create_database("count_db", "count_user").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            connect(pg.port(), "count_db", "count_user", None)
                .await
                .expect("connect count_user"),
        );
    }
    let timeout = Duration::from_secs(10);
    let idle = pg
        .wait_for_backends(
            Some("count_db"),
            Some("count_user"),
            Some("idle"),
            3,
            timeout,
        )
        .await;
    assert_eq!(idle, 3);
    assert_eq!(
        pg.count_backends(Some("count_db"), None, Some("active"))
            .await,
        0
    );
    drop(clients.pop());
    let left = pg
        .wait_for_backends(Some("count_db"), Some("count_user"), None, 2, timeout)
        .await;
    assert_eq!(left, 2);
    assert_eq!(pg.terminate_backends(Some("count_db"), None).await, 2);
    let left = pg
        .wait_for_backends(Some("count_db"), None, None, 0, timeout)
        .await;
    assert_eq!(left, 0);
    let err = clients[0]
        .simple_query("SELECT 1")
        .await
        .expect_err("terminated backend");
    assert!(err.is_closed() || err.as_db_error().is_some(), "{err:?}");
}

#[tokio::test]
async fn unix_socket_connections_work() {
    let pg = cluster();
    let client = connect_unix(pg.socket_dir(), pg.port(), "postgres", "postgres", None)
        .await
        .expect("tokio-postgres over the Unix socket");
    let row = client.query_one("SELECT 7", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 7);
    let path = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    let mut raw = RawClient::connect_unix(&path).await;
    raw.login_trust("postgres", "postgres")
        .await
        .expect("raw login over the Unix socket");
    assert_eq!(
        raw.query_rows("SELECT 8").await,
        vec![vec![Some("8".into())]]
    );
}

// --------------------------------------------------------------- raw client

#[tokio::test]
async fn raw_client_simple_and_pipelined_extended_queries() {
    let pg = cluster();
    let mut c = RawClient::connect(pg.port()).await;
    assert_eq!(c.send_ssl_request().await, b'N', "the cluster has no TLS");
    c.login_trust("postgres", "postgres")
        .await
        .expect("trust login");
    assert!(c.backend_pid.is_some() && c.secret_key.is_some());
    assert_eq!(
        c.params.get("client_encoding").map(String::as_str),
        Some("UTF8")
    );
    assert_eq!(c.query_rows("SELECT 1").await, vec![vec![Some("1".into())]]);

    // Parse / Bind / Describe / Execute twice / Close / Sync in one write.
    c.cork();
    c.send_parse("s1", "SELECT $1::int + 1, $2::text", &[])
        .await;
    c.send_bind("", "s1", &[Some(b"41"), Some(b"x")]).await;
    c.send_describe(b'P', "").await;
    c.send_execute("", 0).await;
    c.send_bind("p2", "s1", &[Some(b"1"), None]).await;
    c.send_execute("p2", 0).await;
    c.send_close(b'S', "s1").await;
    c.send_sync().await;
    c.uncork().await;
    let msgs = c.recv_until(b'Z').await;
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "12TDC2DC3Z", "{msgs:?}");
    assert_eq!(
        msgs[3].text_columns(),
        vec![Some("42".to_owned()), Some("x".to_owned())]
    );
    assert_eq!(msgs[6].text_columns(), vec![Some("2".to_owned()), None]);
    assert_eq!(msgs[4].command_tag(), "SELECT 1");
    assert_eq!(msgs[9].ready_status(), b'I');

    // Errors and transaction status.
    let msgs = c.query("SELEC 1").await;
    assert_eq!(msgs[0].sqlstate(), "42601", "{msgs:?}");
    assert_eq!(msgs[0].severity(), "ERROR");
    assert!(msgs[0].message().contains("syntax error"), "{msgs:?}");
    assert_eq!(
        c.query("BEGIN").await.last().expect("Z").ready_status(),
        b'T'
    );
    let msgs = c.query("SELECT 1/0").await;
    assert_eq!(msgs[0].sqlstate(), "22012");
    assert_eq!(msgs.last().expect("Z").ready_status(), b'E');
    assert_eq!(
        c.query("ROLLBACK").await.last().expect("Z").ready_status(),
        b'I'
    );

    // Extended-protocol error: the rest is skipped up to Sync.
    c.send_parse("", "SELECT nope", &[]).await;
    c.send_bind("", "", &[]).await;
    c.send_execute("", 0).await;
    c.send_sync().await;
    let msgs = c.recv_until(b'Z').await;
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "42703");

    // Nothing more is sent until we ask.
    assert_eq!(c.try_recv(Duration::from_millis(100)).await, Err(()));
    c.send_terminate().await;
    assert_eq!(c.recv().await, None, "EOF after Terminate");
}

#[tokio::test]
async fn raw_client_copy_and_cancel() {
    let pg = cluster();
    let mut c = RawClient::connect(pg.port()).await;
    c.login_trust("postgres", "postgres")
        .await
        .expect("trust login");
    c.query_rows("CREATE TEMP TABLE t (a int, b text)").await;
    c.send_query("COPY t FROM STDIN").await;
    assert_eq!(c.recv_msg().await.tag, b'G');
    c.send_copy_data(b"1\tone\n2\ttwo\n").await;
    c.send_copy_done().await;
    let msgs = c.recv_until(b'Z').await;
    assert_eq!(msgs[0].command_tag(), "COPY 2", "{msgs:?}");
    c.send_query("COPY t FROM STDIN").await;
    assert_eq!(c.recv_msg().await.tag, b'G');
    c.send_copy_fail("client gave up").await;
    let msgs = c.recv_until(b'Z').await;
    assert_eq!(msgs[0].sqlstate(), "57014", "{msgs:?}");
    assert_eq!(
        c.query_rows("SELECT string_agg(b, ',' ORDER BY a) FROM t")
            .await,
        vec![vec![Some("one,two".into())]]
    );

    let pid = c.backend_pid.expect("backend pid");
    let secret = c.secret_key.expect("secret key");
    c.send_query("SELECT pg_sleep(30)").await;
    let su = pg.superuser().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "pg_sleep never became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    RawClient::send_cancel(pg.port(), pid, secret).await;
    let msgs = c.recv_until(b'Z').await;
    let err = msgs
        .iter()
        .find(|m| m.is_error())
        .expect("an ErrorResponse");
    assert_eq!(err.sqlstate(), "57014", "{msgs:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// -------------------------------------------------------------------- tools

#[tokio::test]
async fn psql_and_pgbench_wrappers_work() {
    let pg = cluster();
    let out = psql(pg.port(), "postgres", "postgres", "SELECT 40 + 2, 'x'");
    assert_eq!(stdout_ok(&out), "42|x");

    pg.create_role("md5_tool", Some("tool pw")).await;
    let out = psql_password(
        pg.port(),
        "postgres",
        "md5_tool",
        Some("tool pw"),
        "SELECT current_user",
    );
    assert_eq!(stdout_ok(&out), "md5_tool");
    let out = psql(pg.port(), "postgres", "md5_tool", "SELECT 1");
    assert!(!out.status.success(), "no password must fail");
    let out = psql(pg.port(), "postgres", "postgres", "SELECT nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    pg.create_database("bench_db", "postgres").await;
    let port = pg.port().to_string();
    let out = pgbench(&[
        "-i", "-q", "-s", "1", "-p", &port, "-U", "postgres", "bench_db",
    ]);
    stdout_ok(&out);
    let out = pgbench(&[
        "-S", "-n", "-c", "2", "-t", "20", "-p", &port, "-U", "postgres", "bench_db",
    ]);
    let text = stdout_ok(&out);
    assert!(
        text.contains("number of transactions actually processed: 40/40"),
        "{text}"
    );
}

// ------------------------------------------------------- pooler (stand-in)

/// A builder that runs this test binary as a stand-in pooler (see
/// `fake_pooler`), so the process machinery can be tested before pgsluice
/// exists.
fn stand_in(ini: &str) -> PoolerBuilder {
    let exe = std::env::current_exe().expect("path of the test binary");
    PoolerBuilder::new(ini)
        .program(
            exe,
            &[
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ],
        )
        .env(CHILD_ENV, "fake_pooler")
}

#[test]
fn pooler_process_machinery_works_with_a_stand_in() {
    let pooler = stand_in(STAND_IN_INI)
        .userlist("\"alice\" \"secret\"\n")
        .start();
    let ini = std::fs::read_to_string(pooler.ini_path()).expect("read ini");
    let pg = cluster();
    assert!(
        ini.contains(&format!("listen_port = {}\n", pooler.port)),
        "{ini}"
    );
    assert!(
        ini.contains(&format!("host=127.0.0.1 port={}\n", pg.port())),
        "{ini}"
    );
    assert!(
        ini.contains(&format!(
            "auth_file = {}/userlist.txt",
            pooler.dir.path().display()
        )),
        "{ini}"
    );
    assert_eq!(
        std::fs::read_to_string(pooler.path("userlist.txt")).expect("userlist"),
        "\"alice\" \"secret\"\n"
    );
    TcpStream::connect(("127.0.0.1", pooler.port)).expect("the stand-in listens");
    assert!(
        pooler.wait_for_log("fake pooler listening", Duration::from_secs(5)),
        "log: {}",
        pooler.log()
    );
    pooler.write_file("extra.txt", "x");
    assert!(pooler.path("extra.txt").exists());
    assert!(pooler.is_running());
    pooler.signal(libc::SIGTERM);
    let status = pooler
        .wait_exit(Duration::from_secs(10))
        .expect("the stand-in exits on SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert!(!pooler.is_running());
}

#[test]
fn dropping_a_pooler_kills_it() {
    let pooler = stand_in(STAND_IN_INI).start();
    let pid = pooler.pid();
    assert!(pid_alive(pid));
    drop(pooler);
    assert!(!pid_alive(pid), "pid {pid} survived Drop");
}

#[test]
fn start_expect_fail_returns_status_and_output() {
    let (status, log) = stand_in("bad ini")
        .env(CHILD_ENV, "fake_fail")
        .start_expect_fail();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("invalid config"), "{log}");
}

#[test]
fn start_panics_with_the_log_when_the_pooler_exits_early() {
    let result = std::panic::catch_unwind(|| {
        stand_in("bad ini").env(CHILD_ENV, "fake_fail").start();
    });
    let payload = result.expect_err("start must panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("did not start listening"), "{message}");
    assert!(message.contains("invalid config"), "{message}");
}

#[test]
fn the_real_binary_exits_on_an_unusable_config() {
    // Exercises the CARGO_BIN_EXE_pgsluice path; the status is not asserted
    // while the binary is a stub (it exits 0 without reading the file).
    let (_status, _log) = common::Pooler::start_expect_fail("this is [not an ini file");
}

// ------------------------------------------------------------------ cleanup

/// Entry point of helper processes: this test binary re-run with
/// `--exact child_process_entry` and `PGSLUICE_HARNESS_CHILD` set.  Without
/// that variable (a normal test run) it does nothing.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    match mode.as_str() {
        "fake_pooler" => fake_pooler(),
        "fake_fail" => {
            eprintln!("invalid config: the stand-in always fails");
            std::process::exit(3);
        }
        "victim_exit" | "victim_sigkill" => victim(&mode),
        other => panic!("unknown {CHILD_ENV} mode {other:?}"),
    }
}

/// Listens on the ini's listen_port and accepts connections until killed.
fn fake_pooler() {
    let ini_path = std::env::args().next_back().expect("ini path argument");
    let ini = std::fs::read_to_string(&ini_path).expect("read the ini");
    let port: u16 = ini
        .lines()
        .find_map(|l| l.strip_prefix("listen_port = "))
        .and_then(|p| p.trim().parse().ok())
        .expect("listen_port in the ini");
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("fake pooler listening on {port}");
    for stream in listener.incoming() {
        drop(stream);
    }
}

/// Starts a cluster and a stand-in pooler, reports their pids, then either
/// returns (normal exit: atexit + watchdogs clean up) or waits to be killed
/// (returning when its stdin closes, so it never outlives the parent).
fn victim(mode: &str) {
    let pg = cluster();
    let pooler = stand_in(STAND_IN_INI).start();
    println!(
        "READY {} {} {}",
        pg.postmaster_pid(),
        pooler.pid(),
        pg.dir().display()
    );
    if mode == "victim_sigkill" {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
        panic!("the victim was not killed before its stdin closed");
    }
    // Leave the pooler to its watchdog instead of Drop.
    std::mem::forget(pooler);
}

struct Victim {
    child: Child,
    postmaster: u32,
    postmaster_children: Vec<u32>,
    pooler: u32,
    dir: String,
    stderr: tempfile::NamedTempFile,
}

fn spawn_victim(mode: &str) -> Victim {
    let stderr = tempfile::NamedTempFile::new().expect("temp file for the victim's stderr");
    let mut child = Command::new(std::env::current_exe().expect("path of the test binary"))
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().expect("reopen the stderr temp file"))
        .spawn()
        .expect("start the victim process");
    let stdout = child.stdout.take().expect("victim stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after READY even when nobody listens any more:
        // closing the pipe would make the victim's own libtest output fail
        // with EPIPE and the victim exit 101.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest may print "test child_process_entry ... " first.
            Ok(line) => match line.find("READY ") {
                Some(at) => break line[at..].to_owned(),
                None => continue,
            },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the victim did not report READY ({e}); stderr:\n{}",
                    std::fs::read_to_string(stderr.path()).unwrap_or_default()
                );
            }
        }
    };
    let parts: Vec<&str> = line.split_whitespace().collect();
    let postmaster: u32 = parts[1].parse().expect("postmaster pid");
    let pooler: u32 = parts[2].parse().expect("pooler pid");
    let postmaster_children = children_of(postmaster);
    Victim {
        child,
        postmaster,
        postmaster_children,
        pooler,
        dir: parts[3].to_owned(),
        stderr,
    }
}

impl Victim {
    /// Processes (pids and descriptions) of the victim that are still alive.
    fn survivors(&self) -> Vec<String> {
        let mut alive: Vec<String> = std::iter::once(self.postmaster)
            .chain(self.postmaster_children.iter().copied())
            .chain(std::iter::once(self.pooler))
            .filter(|&pid| pid_alive(pid))
            .map(|pid| format!("pid {pid}: {}", cmdline(pid)))
            .collect();
        alive.extend(processes_mentioning(&self.dir));
        alive
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

#[test]
fn sigkill_of_the_test_process_leaves_no_process_behind() {
    let mut victim = spawn_victim("victim_sigkill");
    assert!(
        !victim.postmaster_children.is_empty(),
        "the postmaster has no children to check"
    );
    assert!(victim.survivors().len() >= 3, "{:?}", victim.survivors());
    victim.child.kill().expect("SIGKILL the victim");
    victim.child.wait().expect("reap the victim");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let survivors = victim.survivors();
        let dir_left = Path::new(&victim.dir).exists();
        if survivors.is_empty() && !dir_left {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGKILL of the test process: survivors {survivors:?}, dir left: {dir_left}; victim stderr:\n{}",
            victim.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn normal_exit_of_the_test_process_leaves_no_process_behind() {
    let mut victim = spawn_victim("victim_exit");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = victim.child.try_wait().expect("poll the victim") {
            break status;
        }
        assert!(Instant::now() < deadline, "the victim did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "victim failed: {status}\n{}",
        victim.stderr()
    );
    // The atexit handler stops the cluster synchronously...
    let survivors: Vec<String> = victim
        .survivors()
        .into_iter()
        .filter(|s| !s.starts_with(&format!("pid {}:", victim.pooler)))
        .collect();
    assert!(survivors.is_empty(), "right after exit: {survivors:?}");
    assert!(!Path::new(&victim.dir).exists(), "cluster dir left behind");
    // ...and the pooler's watchdog kills the forgotten pooler soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(victim.pooler) {
        assert!(Instant::now() < deadline, "the forgotten pooler survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------ /proc helpers

/// (state, ppid) from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter(|&pid| pid_alive(pid))
        .filter_map(|pid| {
            let cmd = cmdline(pid);
            cmd.contains(needle).then(|| format!("pid {pid}: {cmd}"))
        })
        .collect()
}
