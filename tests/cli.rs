//! The process surface: PgBouncer's command-line flags, daemon mode with a pidfile, the
//! Unix socket listener, and the `-R` flag being explained rather than rejected.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{cluster, free_port};
use common::pooler::{expand_placeholders, PoolerBuilder};

const INI: &str = "\
[databases]
postgres = host={pg_host} port={pg_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
";

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes for the process; no memory is involved.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_mode_writes_pidfile_and_exits_on_sigterm() {
    let _ = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let ini = format!("{INI}pidfile = {{dir}}/pgsluice.pid\nlogfile = {{dir}}/pgsluice.log\n");
    std::fs::write(
        dir.path().join("pgsluice.ini"),
        expand_placeholders(&ini, port, dir.path()),
    )
    .unwrap();
    std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();

    let status = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("-d")
        .arg(dir.path().join("pgsluice.ini"))
        .status()
        .expect("run pgsluice -d");
    assert!(status.success(), "the foreground process of -d exits 0");

    let pidfile = dir.path().join("pgsluice.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pidfile written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pid_alive(pid));

    // It serves while detached.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(c) = common::connect(port, "postgres", "postgres", None).await {
            let row = c.query_one("SELECT 41 + 1", &[]).await.expect("query");
            assert_eq!(row.get::<_, i32>(0), 42);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "daemon did not accept connections");
    // The allocator's purging thread runs in the daemon too (jemalloc stops it in a
    // forked child; pgsluice starts it again), so memory left by a burst is returned.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the daemon's threads")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|c| c == "jemalloc_bg_thd"),
        "no jemalloc background thread in the daemon: {threads:?}"
    );

    // SAFETY: sending SIGTERM to the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive = pid_alive(pid);
    if alive {
        // SAFETY: cleanup of the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!alive, "daemon still running 10 s after SIGTERM");
    assert!(!pidfile.exists(), "pidfile removed on exit");
    let log = std::fs::read_to_string(dir.path().join("pgsluice.log")).unwrap_or_default();
    assert!(log.contains("got SIGTERM"), "log: {log}");
}

#[test]
fn daemon_mode_needs_a_pidfile() {
    let (status, out) = PoolerBuilder::new(INI)
        .userlist("\"postgres\" \"\"\n")
        .program(env!("CARGO_BIN_EXE_pgsluice"), &["-d"])
        .start_expect_fail();
    assert!(!status.success());
    assert!(out.contains("pidfile"), "output: {out}");
}

#[test]
fn a_live_pidfile_blocks_a_second_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = std::process::id();
    let pidfile = dir.path().join("taken.pid");
    std::fs::write(&pidfile, format!("{me}\n")).unwrap();
    let ini = format!("{INI}pidfile = {}\n", pidfile.display());
    let (status, out) = PoolerBuilder::new(&ini)
        .userlist("\"postgres\" \"\"\n")
        .start_expect_fail();
    assert!(!status.success());
    assert!(
        out.contains("pidfile") && out.contains("running"),
        "output: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reboot_flag_is_accepted_and_explained() {
    let p = PoolerBuilder::new(INI)
        .userlist("\"postgres\" \"\"\n")
        .program(env!("CARGO_BIN_EXE_pgsluice"), &["-R"])
        .start();
    let c = common::connect(p.port, "postgres", "postgres", None)
        .await
        .expect("connect");
    c.simple_query("SELECT 1").await.expect("query");
    assert!(
        p.log().contains("-R (online restart) is not supported"),
        "log: {}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listens_on_the_unix_socket_too() {
    let p = PoolerBuilder::new(INI)
        .userlist("\"postgres\" \"\"\n")
        .start();
    assert!(p.unix_socket_path().exists());
    let c = common::connect_unix(p.dir.path(), p.port, "postgres", "postgres", None)
        .await
        .expect("connect over the Unix socket");
    let row = c.query_one("SELECT 7", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[test]
fn version_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("-V")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgsluice "));
    let out = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("-h")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    for flag in ["-d", "-R", "-q", "-v", "-u", "-V", "-h"] {
        assert!(help.contains(flag), "help lacks {flag}: {help}");
    }
}
