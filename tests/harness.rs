//! Tests of the test harness itself (tests/common): the PostgreSQL cluster,
//! its pg_hba.conf, the clients and tool wrappers.

mod common;

use std::time::{Duration, Instant};

use common::raw::{auth, md5_password};
use common::{
    cluster, connect, connect_err, connect_unix, db_error_text, pgbench, psql, psql_password,
    stdout_ok, RawClient,
};

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
