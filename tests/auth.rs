//! Client login and authentication through pgsluice, as a client sees it: auth types
//! (trust, any, plain, md5, scram-sha-256) against plain / md5 / SCRAM secrets in
//! auth_file, no user enumeration, pgsluice's own logins into PostgreSQL (cleartext, md5,
//! SCRAM, SCRAM pass-through, forced users), forwarded server-login failures, the `*`
//! fallback database, startup parameters, the startup-phase protocol (negotiation,
//! SSLRequest/GSSENCRequest, garbage), client caps, configuration errors and TOML, and
//! the welcome (ParameterStatus set, pgsluice-issued BackendKeyData).
//!
//! Role name prefixes pick PostgreSQL's own auth method for pgsluice's server login (see
//! `PgCluster::create_role`): `md5_*`, `scram_*`, `pw_*`; every other role (here `au_*`)
//! is trusted by the server, so those tests exercise only the client side.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Buf;
use md5::{Digest, Md5};

use common::raw::auth;
use common::{
    cluster, connect, connect_with, pg_config, psql_password, run_with_timeout, Msg, Pooler,
    PoolerBuilder, RawClient,
};

/// The SQLSTATE pgsluice sends when a client's password (md5, cleartext or SCRAM proof)
/// does not match, and for unknown users.
///
/// NOTE: PgBouncer sends these through `disconnect_client()`, i.e. with 08P01
/// (reference §3); pgsluice deliberately uses PostgreSQL's own invalid_password code
/// (src/session/login.rs `auth_failed`). The tests pin today's behaviour; what matters
/// most is that unknown users and wrong passwords are indistinguishable.
const CLIENT_AUTH_FAILED: &str = "28P01";

/// A pgsluice ini with the given auth_type, `[databases]` lines and extra
/// `[pgbouncer]` lines (placeholders are expanded by the harness).
fn ini(auth_type: &str, databases: &str, extra: &str) -> String {
    format!(
        "[databases]\n\
         {databases}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = {auth_type}\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = transaction\n\
         {extra}"
    )
}

/// `alias = host=… port=… dbname=postgres <more>`: a database entry on the test cluster.
fn db_entry(alias: &str, more: &str) -> String {
    format!("{alias} = host={{pg_host}} port={{pg_port}} dbname=postgres {more}")
}

/// auth_file text for (user, secret) pairs.
fn userlist(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(u, s)| {
            format!(
                "\"{}\" \"{}\"\n",
                u.replace('"', "\"\""),
                s.replace('"', "\"\"")
            )
        })
        .collect()
}

/// Starts pgsluice with `ini` and the given auth_file.
fn start(ini: &str, users: &[(&str, &str)]) -> Pooler {
    PoolerBuilder::new(ini).userlist(&userlist(users)).start()
}

/// The auth_file md5 secret: "md5" + md5hex(password + user).
fn md5_secret(user: &str, password: &str) -> String {
    let digest = Md5::digest(format!("{password}{user}").as_bytes());
    format!(
        "md5{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// (severity, SQLSTATE, message) of a tokio-postgres error; panics if it is not a
/// server error.
fn error_fields(err: &tokio_postgres::Error) -> (String, String, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    (
        db.severity().to_owned(),
        db.code().code().to_owned(),
        db.message().to_owned(),
    )
}

/// (severity, SQLSTATE, message) of a raw ErrorResponse.
fn msg_fields(msg: &Msg) -> (String, String, String) {
    assert!(msg.is_error(), "expected an ErrorResponse, got {msg:?}");
    (msg.severity(), msg.sqlstate(), msg.message())
}

fn fatal(code: &str, message: &str) -> (String, String, String) {
    ("FATAL".to_owned(), code.to_owned(), message.to_owned())
}

/// Connects through the pooler expecting a login failure; its (severity, code, message).
async fn login_error(
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> (String, String, String) {
    match connect(port, db, user, password).await {
        Ok(_) => panic!("login as {user}@{db} through 127.0.0.1:{port} unexpectedly succeeded"),
        Err(e) => error_fields(&e),
    }
}

/// Connects through the pooler, panicking with the pooler log on failure.
async fn login_ok(
    pooler: &Pooler,
    db: &str,
    user: &str,
    password: Option<&str>,
) -> tokio_postgres::Client {
    connect(pooler.port, db, user, password)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "login as {user}@{db} failed: {e:?}\n--- pooler log ---\n{}",
                pooler.log()
            )
        })
}

/// One text value from a query.
async fn one_text(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    one_text(client, "SELECT current_user").await
}

/// psql through the pooler (run off the async worker); its trimmed stdout on success,
/// or its stderr on failure.
async fn psql_run(
    port: u16,
    db: &str,
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> Result<String, String> {
    let (db, user, password, sql) = (
        db.to_owned(),
        user.to_owned(),
        password.map(str::to_owned),
        sql.to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        psql_password(port, &db, &user, password.as_deref(), &sql)
    })
    .await
    .expect("psql task");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Logs in with the raw client; panics with the pooler log on failure.
async fn raw_login(pooler: &Pooler, user: &str, db: &str, password: Option<&str>) -> RawClient {
    let mut raw = RawClient::connect(pooler.port).await;
    if let Err(e) = raw.login(user, db, password).await {
        panic!(
            "raw login as {user}@{db} failed: {e:?}\n--- pooler log ---\n{}",
            pooler.log()
        );
    }
    raw
}

/// Raw login expected to fail: the auth requests seen and the error's fields; also
/// checks that the pooler closes the connection after the FATAL.
async fn raw_login_error(
    port: u16,
    user: &str,
    db: &str,
    password: Option<&str>,
) -> (Vec<i32>, (String, String, String)) {
    let mut raw = RawClient::connect(port).await;
    let err = raw
        .login(user, db, password)
        .await
        .expect_err("the login must fail");
    let fields = msg_fields(&err);
    assert_eq!(
        raw.try_recv(Duration::from_secs(5)).await,
        Ok(None),
        "the connection must be closed after {fields:?}"
    );
    (raw.auth_requests.clone(), fields)
}

/// Retries a login for up to 5 s (a slot freed by a disconnect is released
/// asynchronously).
async fn login_eventually(pooler: &Pooler, db: &str, user: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(pooler.port, db, user, None).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "{user}@{db} still cannot log in after 5 s: {e:?}\n--- pooler log ---\n{}",
                pooler.log()
            ),
        }
    }
}

/// A startup packet with an arbitrary protocol code.
fn startup_packet(code: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = u32::try_from(body.len() + 4)
        .expect("short packet")
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&body);
    packet
}

// ------------------------------------------------------------------ 1. trust, any

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_accepts_listed_users_and_rejects_others() {
    let pg = cluster();
    pg.create_role("au_trust_ok", None).await;
    let p = start(
        &ini("trust", &db_entry("trustdb", ""), ""),
        &[("au_trust_ok", "")],
    );
    let c = login_ok(&p, "trustdb", "au_trust_ok", None).await;
    assert_eq!(current_user(&c).await, "au_trust_ok");
    // The raw client sees AuthenticationOk at once: no password is asked for.
    let mut raw = RawClient::connect(p.port).await;
    raw.login_trust("au_trust_ok", "trustdb")
        .await
        .expect("trust login");

    // A user missing from auth_file is refused, even though PostgreSQL would trust it.
    pg.create_role("au_trust_unlisted", None).await;
    assert_eq!(
        login_error(p.port, "trustdb", "au_trust_unlisted", None).await,
        fatal("08P01", "\"trust\" authentication failed")
    );
    let (requests, fields) = raw_login_error(p.port, "au_trust_unlisted", "trustdb", None).await;
    assert_eq!(
        requests,
        Vec::<i32>::new(),
        "no auth request before the refusal"
    );
    assert_eq!(fields, fatal("08P01", "\"trust\" authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_with_a_forced_user_still_needs_the_client_user_in_auth_file() {
    // Reference §4.5: with trust, the *client's* user must exist in auth_file; a forced
    // user on the database does not change that (PgBouncer checks the login user).
    let pg = cluster();
    pg.create_role("au_trustf_forced", None).await;
    let p = start(
        &ini("trust", &db_entry("trustfdb", "user=au_trustf_forced"), ""),
        &[("au_trustf_listed", "")],
    );
    let c = login_ok(&p, "trustfdb", "au_trustf_listed", None).await;
    assert_eq!(current_user(&c).await, "au_trustf_forced");
    assert_eq!(
        login_error(p.port, "trustfdb", "au_trustf_stranger", None).await,
        fatal("08P01", "\"trust\" authentication failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_with_a_forced_user_accepts_any_name_and_runs_as_the_forced_user() {
    let pg = cluster();
    pg.create_role("au_any_forced", None).await;
    let p = start(
        &ini("any", &db_entry("anydb", "user=au_any_forced"), ""),
        &[],
    );
    let a = login_ok(&p, "anydb", "au_whoever_one", None).await;
    let b = login_ok(&p, "anydb", "someone else entirely", Some("ignored")).await;
    for c in [&a, &b] {
        assert_eq!(current_user(c).await, "au_any_forced");
        assert_eq!(one_text(c, "SELECT session_user").await, "au_any_forced");
    }
    // No password exchange at all.
    let mut raw = RawClient::connect(p.port).await;
    raw.login_trust("au_any_raw", "anydb")
        .await
        .expect("any login");
    // PostgreSQL only ever sees the forced user.
    let forced = pg
        .count_backends(Some("postgres"), Some("au_any_forced"), None)
        .await;
    assert!(forced >= 1, "no backend for the forced user");
    for ghost in ["au_whoever_one", "someone else entirely", "au_any_raw"] {
        assert_eq!(
            pg.count_backends(None, Some(ghost), None).await,
            0,
            "{ghost}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_without_a_forced_user_is_a_config_error() {
    // Reference §4.5: `any` needs forced users; PgBouncer disconnects with
    // "bouncer config error" rather than logging in as whatever user the client names.
    let pg = cluster();
    pg.create_role("au_any_noforce", None).await;
    let p = start(&ini("any", &db_entry("noforcedb", ""), ""), &[]);
    assert_eq!(
        login_error(p.port, "noforcedb", "au_any_noforce", None).await,
        fatal("08P01", "bouncer config error")
    );
    assert_eq!(
        pg.count_backends(None, Some("au_any_noforce"), None).await,
        0,
        "no server login may happen"
    );
}

// ------------------------------------------------------------------------ 3. plain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_checks_the_cleartext_password() {
    let pg = cluster();
    pg.create_role("au_plain", None).await;
    pg.create_role("au_plain_md5", None).await;
    let p = start(
        &ini("plain", &db_entry("plaindb", ""), ""),
        &[
            ("au_plain", "plain secret"),
            ("au_plain_md5", &md5_secret("au_plain_md5", "hashed secret")),
        ],
    );
    let c = login_ok(&p, "plaindb", "au_plain", Some("plain secret")).await;
    assert_eq!(current_user(&c).await, "au_plain");
    let mut raw = RawClient::connect(p.port).await;
    raw.login_cleartext("au_plain", "plaindb", "plain secret")
        .await
        .expect("cleartext login");
    // A cleartext password also verifies against an md5 secret.
    let c = login_ok(&p, "plaindb", "au_plain_md5", Some("hashed secret")).await;
    assert_eq!(current_user(&c).await, "au_plain_md5");

    for (user, wrong) in [
        ("au_plain", "plain secreT"),
        ("au_plain_md5", "plain secret"),
    ] {
        assert_eq!(
            login_error(p.port, "plaindb", user, Some(wrong)).await,
            fatal(CLIENT_AUTH_FAILED, "password authentication failed"),
            "{user}"
        );
    }
}

// -------------------------------------------------------------------------- 4. md5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_accepts_plain_and_md5_secrets_and_rejects_wrong_passwords() {
    let pg = cluster();
    pg.create_role("au_md5_plain", None).await;
    pg.create_role("au_md5_hash", None).await;
    let p = start(
        &ini("md5", &db_entry("md5db", ""), ""),
        &[
            ("au_md5_plain", "pw one"),
            ("au_md5_hash", &md5_secret("au_md5_hash", "pw two")),
        ],
    );
    for (user, password) in [("au_md5_plain", "pw one"), ("au_md5_hash", "pw two")] {
        let c = login_ok(&p, "md5db", user, Some(password)).await;
        assert_eq!(current_user(&c).await, user);
        let mut raw = RawClient::connect(p.port).await;
        raw.login_md5(user, "md5db", password)
            .await
            .unwrap_or_else(|e| panic!("raw md5 login as {user}: {e:?}"));
        assert_eq!(raw.auth_requests, vec![auth::MD5_PASSWORD, auth::OK]);
        assert_eq!(
            login_error(p.port, "md5db", user, Some("not it")).await,
            fatal(CLIENT_AUTH_FAILED, "password authentication failed"),
            "{user}"
        );
    }
    let out = psql_run(
        p.port,
        "md5db",
        "au_md5_hash",
        Some("pw two"),
        "SELECT current_user",
    )
    .await
    .expect("psql with md5");
    assert_eq!(out, "au_md5_hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_with_a_scram_secret_switches_the_client_to_scram() {
    let pg = cluster();
    // A trusted role with a password: its stored secret is SCRAM (password_encryption).
    pg.create_role("au_md5_scram", Some("scram pw")).await;
    let secret = pg
        .role_secret("au_md5_scram")
        .await
        .expect("the role has a secret");
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let p = start(
        &ini("md5", &db_entry("md5scramdb", ""), ""),
        &[("au_md5_scram", &secret)],
    );
    let c = login_ok(&p, "md5scramdb", "au_md5_scram", Some("scram pw")).await;
    assert_eq!(current_user(&c).await, "au_md5_scram");
    let mut raw = RawClient::connect(p.port).await;
    raw.login_scram("au_md5_scram", "md5scramdb", "scram pw")
        .await
        .expect("raw SCRAM login");
    assert_eq!(raw.auth_requests, vec![auth::SASL, auth::OK]);
    let out = psql_run(
        p.port,
        "md5scramdb",
        "au_md5_scram",
        Some("scram pw"),
        "SELECT current_user",
    )
    .await
    .expect("psql with SCRAM");
    assert_eq!(out, "au_md5_scram");

    let (requests, fields) =
        raw_login_error(p.port, "au_md5_scram", "md5scramdb", Some("scram pW")).await;
    assert_eq!(requests, vec![auth::SASL]);
    assert_eq!(
        fields,
        fatal(CLIENT_AUTH_FAILED, "SASL authentication failed")
    );
    let err = psql_run(
        p.port,
        "md5scramdb",
        "au_md5_scram",
        Some("nope"),
        "SELECT 1",
    )
    .await
    .expect_err("psql with a wrong password");
    assert!(err.contains("SASL authentication failed"), "{err}");
}

// ------------------------------------------------------------------ 5. scram-sha-256

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_accepts_plain_and_scram_secrets_with_tokio_postgres_and_psql() {
    let pg = cluster();
    pg.create_role("au_scram_plain", None).await;
    pg.create_role("au_scram_secret", Some("secret pw")).await;
    let secret = pg
        .role_secret("au_scram_secret")
        .await
        .expect("SCRAM secret");
    let p = start(
        &ini("scram-sha-256", &db_entry("scramdb", ""), ""),
        &[("au_scram_plain", "plain pw"), ("au_scram_secret", &secret)],
    );
    for (user, password) in [
        ("au_scram_plain", "plain pw"),
        ("au_scram_secret", "secret pw"),
    ] {
        let c = login_ok(&p, "scramdb", user, Some(password)).await;
        assert_eq!(current_user(&c).await, user);
        let mut raw = RawClient::connect(p.port).await;
        raw.login_scram(user, "scramdb", password)
            .await
            .unwrap_or_else(|e| panic!("raw SCRAM login as {user}: {e:?}"));
        assert_eq!(raw.auth_requests, vec![auth::SASL, auth::OK]);
        let out = psql_run(
            p.port,
            "scramdb",
            user,
            Some(password),
            "SELECT current_user",
        )
        .await
        .unwrap_or_else(|e| panic!("psql as {user}: {e}"));
        assert_eq!(out, user);

        assert_eq!(
            login_error(p.port, "scramdb", user, Some("wrong pw")).await,
            fatal(CLIENT_AUTH_FAILED, "SASL authentication failed"),
            "{user}"
        );
        let err = psql_run(p.port, "scramdb", user, Some("wrong pw"), "SELECT 1")
            .await
            .expect_err("psql with a wrong password");
        assert!(err.contains("SASL authentication failed"), "{user}: {err}");
    }
}

// ------------------------------------------------------------- 6. no enumeration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_unknown_user_fails_exactly_like_a_wrong_password() {
    let pg = cluster();
    pg.create_role("au_enum_md5", None).await;
    let p = start(
        &ini("md5", &db_entry("enumdb", ""), ""),
        &[("au_enum_md5", "right pw")],
    );
    let wrong = raw_login_error(p.port, "au_enum_md5", "enumdb", Some("wrong pw")).await;
    let unknown = raw_login_error(p.port, "au_enum_nobody", "enumdb", Some("wrong pw")).await;
    assert_eq!(
        wrong.0,
        vec![auth::MD5_PASSWORD],
        "wrong password: md5 challenge"
    );
    assert_eq!(unknown, wrong, "unknown user vs wrong password");
    assert_eq!(
        wrong.1,
        fatal(CLIENT_AUTH_FAILED, "password authentication failed")
    );
    assert_eq!(
        login_error(p.port, "enumdb", "au_enum_nobody", Some("x")).await,
        login_error(p.port, "enumdb", "au_enum_md5", Some("x")).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_unknown_user_fails_exactly_like_a_wrong_password() {
    let pg = cluster();
    pg.create_role("au_enum_scram", Some("right pw")).await;
    let secret = pg.role_secret("au_enum_scram").await.expect("secret");
    let p = start(
        &ini("scram-sha-256", &db_entry("enumsdb", ""), ""),
        &[
            ("au_enum_scram", &secret),
            ("au_enum_scramplain", "right pw"),
        ],
    );
    let wrong = raw_login_error(p.port, "au_enum_scram", "enumsdb", Some("wrong pw")).await;
    let wrong_plain =
        raw_login_error(p.port, "au_enum_scramplain", "enumsdb", Some("wrong pw")).await;
    let unknown = raw_login_error(p.port, "au_enum_ghost", "enumsdb", Some("wrong pw")).await;
    assert_eq!(
        wrong.0,
        vec![auth::SASL],
        "a full SCRAM exchange, then the failure"
    );
    assert_eq!(wrong_plain, wrong);
    assert_eq!(unknown, wrong, "unknown user vs wrong password");
    assert_eq!(
        wrong.1,
        fatal(CLIENT_AUTH_FAILED, "SASL authentication failed")
    );
    assert_eq!(
        login_error(p.port, "enumsdb", "au_enum_ghost", Some("x")).await,
        login_error(p.port, "enumsdb", "au_enum_scram", Some("x")).await
    );
}

// ------------------------------------------------------------ 7. server-side login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_with_plain_and_md5_secrets_from_auth_file() {
    let pg = cluster();
    // (role, password, auth_file secret): the server asks for md5, SCRAM and cleartext.
    let md5_hashed = md5_secret("md5_au_srvh", "srv pw h");
    let cases = [
        ("md5_au_srv", "srv pw 1", "srv pw 1".to_owned()),
        ("md5_au_srvh", "srv pw h", md5_hashed),
        ("scram_au_srv", "srv pw 2", "srv pw 2".to_owned()),
        ("pw_au_srv", "srv pw 3", "srv pw 3".to_owned()),
    ];
    for (role, password, _) in &cases {
        pg.create_role(role, Some(password)).await;
    }
    let entries: Vec<(&str, &str)> = cases.iter().map(|(r, _, s)| (*r, s.as_str())).collect();
    let p = start(&ini("md5", &db_entry("srvdb", ""), ""), &entries);
    for (role, password, _) in &cases {
        let c = login_ok(&p, "srvdb", role, Some(password)).await;
        assert_eq!(current_user(&c).await, *role);
        assert!(
            pg.count_backends(Some("postgres"), Some(role), None).await >= 1,
            "{role}: no server connection in pg_stat_activity"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_logs_in_with_the_clients_keys() {
    let pg = cluster();
    pg.create_role("scram_au_pt", Some("pass through")).await;
    let secret = pg.role_secret("scram_au_pt").await.expect("secret");
    let p = start(
        &ini("scram-sha-256", &db_entry("ptdb", ""), ""),
        &[("scram_au_pt", &secret)],
    );
    let c = login_ok(&p, "ptdb", "scram_au_pt", Some("pass through")).await;
    assert_eq!(current_user(&c).await, "scram_au_pt");
    assert!(
        pg.count_backends(Some("postgres"), Some("scram_au_pt"), None)
            .await
            >= 1
    );

    // The keys stay with the pool: after the server connection is killed, the next
    // query logs in again with them.
    pg.terminate_backends(None, Some("scram_au_pt")).await;
    let left = pg
        .wait_for_backends(None, Some("scram_au_pt"), None, 0, Duration::from_secs(5))
        .await;
    assert_eq!(left, 0);
    assert_eq!(current_user(&c).await, "scram_au_pt");
    assert!(
        pg.count_backends(Some("postgres"), Some("scram_au_pt"), None)
            .await
            >= 1
    );

    // Other clients, psql included, work too; a wrong password still does not.
    let out = psql_run(
        p.port,
        "ptdb",
        "scram_au_pt",
        Some("pass through"),
        "SELECT current_user",
    )
    .await
    .expect("psql through the pass-through pool");
    assert_eq!(out, "scram_au_pt");
    assert_eq!(
        login_error(p.port, "ptdb", "scram_au_pt", Some("pass thru")).await,
        fatal(CLIENT_AUTH_FAILED, "SASL authentication failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_user_logs_in_with_the_password_from_the_connection_string() {
    let pg = cluster();
    pg.create_role("md5_au_forced", Some("forced pw")).await;
    let p = start(
        &ini(
            "md5",
            &db_entry("forceddb", "user=md5_au_forced password='forced pw'"),
            "",
        ),
        &[("au_fclient", "client pw")],
    );
    let c = login_ok(&p, "forceddb", "au_fclient", Some("client pw")).await;
    assert_eq!(current_user(&c).await, "md5_au_forced");
    assert!(
        pg.count_backends(Some("postgres"), Some("md5_au_forced"), None)
            .await
            >= 1
    );
    assert_eq!(pg.count_backends(None, Some("au_fclient"), None).await, 0);
}

// ----------------------------------------------------- 8. forwarded login failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_failures_are_forwarded_with_the_servers_sqlstate() {
    let pg = cluster();
    pg.create_role("md5_au_badpw", Some("the real one")).await;
    pg.create_role("au_gone_user", None).await;
    let databases = format!(
        "{}\n{}",
        db_entry("badpwdb", ""),
        "gonedb = host={pg_host} port={pg_port} dbname=au_no_such_database"
    );
    let p = start(
        &ini("md5", &databases, ""),
        &[
            ("md5_au_badpw", "not the real one"),
            ("au_gone_user", "gone pw"),
        ],
    );
    // The client proves the auth_file password; PostgreSQL refuses it.
    assert_eq!(
        login_error(p.port, "badpwdb", "md5_au_badpw", Some("not the real one")).await,
        fatal(
            "28P01",
            "password authentication failed for user \"md5_au_badpw\""
        )
    );
    assert_eq!(
        login_error(p.port, "gonedb", "au_gone_user", Some("gone pw")).await,
        fatal("3D000", "database \"au_no_such_database\" does not exist")
    );
}

// ------------------------------------------------------------ 9. `*` fallback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_fallback_reaches_the_same_named_database() {
    let pg = cluster();
    pg.create_role("au_star_user", None).await;
    pg.create_database("au_star_db", "au_star_user").await;
    let databases = format!(
        "{}\n* = host={{pg_host}} port={{pg_port}}",
        db_entry("listeddb", "")
    );
    let p = start(&ini("trust", &databases, ""), &[("au_star_user", "")]);
    let c = login_ok(&p, "au_star_db", "au_star_user", None).await;
    assert_eq!(
        one_text(&c, "SELECT current_database()").await,
        "au_star_db"
    );
    let c = login_ok(&p, "listeddb", "au_star_user", None).await;
    assert_eq!(one_text(&c, "SELECT current_database()").await, "postgres");
    assert!(
        pg.count_backends(Some("au_star_db"), Some("au_star_user"), None)
            .await
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_an_unknown_database_is_refused() {
    let pg = cluster();
    pg.create_role("au_nostar_user", None).await;
    let p = start(
        &ini("trust", &db_entry("onlydb", ""), ""),
        &[("au_nostar_user", "")],
    );
    assert_eq!(
        login_error(p.port, "au_unlisted_db", "au_nostar_user", None).await,
        fatal("08P01", "no such database: au_unlisted_db")
    );
    // The database defaults to the user name.
    let mut raw = RawClient::connect(p.port).await;
    let err = raw
        .login_with(&[("user", "au_nostar_user")], None)
        .await
        .expect_err("no database named after the user");
    assert_eq!(
        msg_fields(&err),
        fatal("08P01", "no such database: au_nostar_user")
    );
    login_ok(&p, "onlydb", "au_nostar_user", None).await;
}

// ------------------------------------------------------- 10. startup parameters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_are_tracked_ignored_or_refused() {
    let pg = cluster();
    pg.create_role("au_params", None).await;
    let users = [("au_params", "")];
    let strict = start(&ini("trust", &db_entry("paramdb", ""), ""), &users);
    let base = [("user", "au_params"), ("database", "paramdb")];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = base.to_vec();
        v.push(extra);
        v
    };

    let mut raw = RawClient::connect(strict.port).await;
    let err = raw
        .login_with(&with(("extra_float_digits", "2")), None)
        .await
        .expect_err("unknown startup parameter");
    assert_eq!(
        msg_fields(&err),
        fatal("08P01", "unsupported startup parameter: extra_float_digits")
    );
    assert_eq!(raw.recv().await, None, "closed after the FATAL");

    let mut raw = RawClient::connect(strict.port).await;
    let err = raw
        .login_with(&with(("options", "-c work_mem=1MB")), None)
        .await
        .expect_err("untracked parameter in options");
    assert_eq!(
        msg_fields(&err),
        fatal(
            "08P01",
            "unsupported startup parameter in options: work_mem"
        )
    );

    let mut raw = RawClient::connect(strict.port).await;
    let err = raw
        .login_with(&with(("options", "-X foo")), None)
        .await
        .expect_err("options that are not -c");
    assert_eq!(
        msg_fields(&err),
        fatal(
            "08P01",
            "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"
        )
    );

    // A tracked parameter in options is accepted and applied on the server.
    let mut raw = RawClient::connect(strict.port).await;
    raw.login_with(&with(("options", "-c DateStyle=German")), None)
        .await
        .unwrap_or_else(|e| panic!("options with DateStyle: {e:?}\n{}", strict.log()));
    let rows = raw.query_rows("SHOW DateStyle").await;
    let style = rows[0][0].clone().unwrap_or_default();
    assert!(style.starts_with("German"), "DateStyle {style:?}");
    // The same for a tracked parameter sent directly.
    let mut raw = RawClient::connect(strict.port).await;
    raw.login_with(&with(("TimeZone", "Asia/Tokyo")), None)
        .await
        .expect("TimeZone startup parameter");
    assert_eq!(
        raw.query_rows("SHOW TimeZone").await,
        vec![vec![Some("Asia/Tokyo".to_owned())]]
    );

    // No user name at all.
    let mut raw = RawClient::connect(strict.port).await;
    raw.send_startup(&[("database", "paramdb")]).await;
    let msg = raw.recv_msg().await;
    assert_eq!(msg_fields(&msg), fatal("08P01", "no username supplied"));
    assert_eq!(raw.recv().await, None);
    let mut raw = RawClient::connect(strict.port).await;
    raw.send_startup(&[("user", ""), ("database", "paramdb")])
        .await;
    let msg = raw.recv_msg().await;
    assert_eq!(msg_fields(&msg), fatal("08P01", "no username supplied"));

    // ignore_startup_parameters: accepted and dropped (not applied on the server).
    let lenient = start(
        &ini(
            "trust",
            &db_entry("paramdb", ""),
            "ignore_startup_parameters = extra_float_digits\n",
        ),
        &users,
    );
    let mut raw = RawClient::connect(lenient.port).await;
    raw.login_with(&with(("extra_float_digits", "2")), None)
        .await
        .unwrap_or_else(|e| panic!("ignored parameter: {e:?}\n{}", lenient.log()));
    assert_eq!(
        raw.query_rows("SHOW extra_float_digits").await,
        vec![vec![Some("1".to_owned())]],
        "the ignored value never reaches the server"
    );
    let mut raw = RawClient::connect(lenient.port).await;
    raw.login_with(&with(("options", "-c extra_float_digits=3")), None)
        .await
        .expect("ignored parameter inside options");
}

// --------------------------------------------------- 11. startup-phase protocol

/// Reads one startup exchange after a raw startup packet (trust auth): the messages up
/// to ReadyForQuery.
async fn recv_login(raw: &mut RawClient, pooler: &Pooler) -> Vec<Msg> {
    let mut msgs = Vec::new();
    loop {
        let msg = raw.recv().await.unwrap_or_else(|| {
            panic!(
                "closed during login after {msgs:?}\n--- pooler log ---\n{}",
                pooler.log()
            )
        });
        assert!(!msg.is_error(), "login failed: {msg:?}");
        let done = msg.tag == b'Z';
        msgs.push(msg);
        if done {
            return msgs;
        }
    }
}

/// (newest minor, unrecognised options) of a NegotiateProtocolVersion.
fn negotiate_fields(msg: &Msg) -> (i32, Vec<String>) {
    assert_eq!(
        msg.tag, b'v',
        "expected NegotiateProtocolVersion, got {msg:?}"
    );
    let mut body = msg.body.clone();
    let minor = body.get_i32();
    let n = body.get_i32();
    let names = body
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>();
    assert_eq!(names.len(), usize::try_from(n).expect("count"), "{msg:?}");
    (minor, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_minors_and_pq_options_are_negotiated_down() {
    let pg = cluster();
    pg.create_role("au_proto", None).await;
    let p = start(
        &ini("trust", &db_entry("protodb", ""), ""),
        &[("au_proto", "")],
    );
    /// (protocol code, extra startup parameters, options the pooler must name).
    type Case = (u32, &'static [(&'static str, &'static str)], Vec<String>);
    let cases: [Case; 3] = [
        // 3.1, no options.
        (0x0003_0001, &[], vec![]),
        // 3.0 with a protocol option.
        (
            0x0003_0000,
            &[("_pq_.foo", "bar")],
            vec!["_pq_.foo".to_owned()],
        ),
        // 3.2 (PostgreSQL 18) with two options.
        (
            0x0003_0002,
            &[("_pq_.foo", "1"), ("_pq_.bar", "2")],
            vec!["_pq_.foo".to_owned(), "_pq_.bar".to_owned()],
        ),
    ];
    for (code, extra, expected) in cases {
        let mut params = vec![("user", "au_proto"), ("database", "protodb")];
        params.extend_from_slice(extra);
        let mut raw = RawClient::connect(p.port).await;
        raw.send_raw(&startup_packet(code, &params)).await;
        let msgs = recv_login(&mut raw, &p).await;
        assert_eq!(
            negotiate_fields(&msgs[0]),
            (0, expected),
            "protocol {code:#x}: {msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.tag == b'R' && m.auth_code() == auth::OK),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.tag == b'K'), "{msgs:?}");
        assert_eq!(
            raw.query_rows("SELECT 6 * 7").await,
            vec![vec![Some("42".to_owned())]]
        );
    }
    // A plain 3.0 startup gets no NegotiateProtocolVersion.
    let mut raw = RawClient::connect(p.port).await;
    raw.send_startup(&[("user", "au_proto"), ("database", "protodb")])
        .await;
    let msgs = recv_login(&mut raw, &p).await;
    assert!(msgs.iter().all(|m| m.tag != b'v'), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_then_plaintext_works() {
    let pg = cluster();
    pg.create_role("au_ssl", None).await;
    let p = start(&ini("trust", &db_entry("ssldb", ""), ""), &[("au_ssl", "")]);
    let mut raw = RawClient::connect(p.port).await;
    assert_eq!(raw.send_ssl_request().await, b'N');
    raw.login_trust("au_ssl", "ssldb")
        .await
        .expect("plaintext login after SSLRequest");
    assert_eq!(
        raw.query_rows("SELECT 1").await,
        vec![vec![Some("1".into())]]
    );

    let mut raw = RawClient::connect(p.port).await;
    assert_eq!(raw.send_gssenc_request().await, b'N');
    raw.login_trust("au_ssl", "ssldb")
        .await
        .expect("plaintext login after GSSENCRequest");
    assert_eq!(
        raw.query_rows("SELECT 2").await,
        vec![vec![Some("2".into())]]
    );

    // libpq's default order: GSSENCRequest, then SSLRequest, then the startup packet.
    let mut raw = RawClient::connect(p.port).await;
    assert_eq!(raw.send_gssenc_request().await, b'N');
    assert_eq!(raw.send_ssl_request().await, b'N');
    raw.login_trust("au_ssl", "ssldb")
        .await
        .expect("plaintext login after both requests");

    // psql with sslmode=prefer (the default) falls back to plaintext.
    let out = psql_run(p.port, "ssldb", "au_ssl", None, "SELECT 'plain'")
        .await
        .expect("psql");
    assert_eq!(out, "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_startup_is_refused_without_a_hang() {
    let pg = cluster();
    pg.create_role("au_garbage", None).await;
    let p = start(
        &ini("trust", &db_entry("garbagedb", ""), ""),
        &[("au_garbage", "")],
    );
    let bystander = login_ok(&p, "garbagedb", "au_garbage", None).await;

    let mut bad_protocol = 16u32.to_be_bytes().to_vec();
    bad_protocol.extend_from_slice(b"\x12\x34\x00\x00user\0x\0\0");
    let garbage: [(&str, Vec<u8>); 4] = [
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
        ("protocol 4660.0", bad_protocol),
        (
            "V2 startup",
            startup_packet(0x0002_0000, &[("user", "au_garbage")]),
        ),
    ];
    for (what, bytes) in garbage {
        let started = Instant::now();
        let mut raw = RawClient::connect(p.port).await;
        raw.timeout = Duration::from_secs(5);
        // The pooler may close before reading everything (then the write can fail).
        let _ = raw.try_send_raw(&bytes).await;
        let msgs = raw.recv_until_eof().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(msgs.len() <= 1, "{what}: {msgs:?}");
        if let Some(msg) = msgs.first() {
            assert!(msg.is_error(), "{what}: {msg:?}");
            assert_eq!(msg.severity(), "FATAL", "{what}: {msg:?}");
            assert_eq!(msg.sqlstate(), "08P01", "{what}: {msg:?}");
        }
    }
    // The V2 startup gets PgBouncer's text.
    let mut raw = RawClient::connect(p.port).await;
    raw.send_raw(&startup_packet(0x0002_0000, &[("user", "au_garbage")]))
        .await;
    let msg = raw.recv_msg().await;
    assert_eq!(
        msg_fields(&msg),
        fatal("08P01", "old V2 protocol not supported")
    );

    // Nobody else noticed.
    assert_eq!(
        one_text(&bystander, "SELECT 'still here'").await,
        "still here"
    );
    let fresh = login_ok(&p, "garbagedb", "au_garbage", None).await;
    assert_eq!(current_user(&fresh).await, "au_garbage");
    assert!(p.is_running());
}

// --------------------------------------------------------------- 12. client caps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_extra_client_until_a_slot_frees() {
    let pg = cluster();
    pg.create_role("au_maxconn", None).await;
    let p = start(
        &ini("trust", &db_entry("maxconndb", ""), "max_client_conn = 2\n"),
        &[("au_maxconn", "")],
    );
    let first = login_ok(&p, "maxconndb", "au_maxconn", None).await;
    let second = login_ok(&p, "maxconndb", "au_maxconn", None).await;
    let refused = fatal("08P01", "no more connections allowed (max_client_conn)");
    assert_eq!(
        login_error(p.port, "maxconndb", "au_maxconn", None).await,
        refused
    );
    let (_, fields) = raw_login_error(p.port, "au_maxconn", "maxconndb", None).await;
    assert_eq!(fields, refused);
    // Refused clients took no slot; the two logged-in ones still work.
    assert_eq!(current_user(&first).await, "au_maxconn");
    assert_eq!(current_user(&second).await, "au_maxconn");

    drop(first);
    let third = login_eventually(&p, "maxconndb", "au_maxconn").await;
    assert_eq!(current_user(&third).await, "au_maxconn");
    assert_eq!(
        login_error(p.port, "maxconndb", "au_maxconn", None).await,
        refused,
        "the cap holds again with two clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_database_and_per_user_client_caps() {
    let pg = cluster();
    let roles = ["au_cap_a", "au_cap_b", "au_cap_c", "au_cap_d", "au_cap_e"];
    for r in roles {
        pg.create_role(r, None).await;
    }
    // Globally: 2 clients per database, 1 per user. capdb3 allows only 1 client;
    // au_cap_d may have 2.
    let databases = [
        db_entry("capdb1", ""),
        db_entry("capdb2", ""),
        db_entry("capdb3", "max_db_client_connections=1"),
    ]
    .join("\n");
    let extra = "max_db_client_connections = 2\n\
                 max_user_client_connections = 1\n\
                 \n\
                 [users]\n\
                 au_cap_d = max_user_client_connections=2\n";
    let users: Vec<(&str, &str)> = roles.iter().map(|r| (*r, "")).collect();
    let p = start(&ini("trust", &databases, extra), &users);
    let db_full = fatal(
        "08P01",
        "client connections exceeded (max_db_client_connections)",
    );
    let user_full = fatal(
        "08P01",
        "client connections exceeded (max_user_client_connections)",
    );

    let a1 = login_ok(&p, "capdb1", "au_cap_a", None).await;
    assert_eq!(
        login_error(p.port, "capdb2", "au_cap_a", None).await,
        user_full
    );
    let b1 = login_ok(&p, "capdb1", "au_cap_b", None).await;
    assert_eq!(
        login_error(p.port, "capdb1", "au_cap_c", None).await,
        db_full
    );

    // Per-user override: au_cap_d may have two clients.
    let d1 = login_ok(&p, "capdb2", "au_cap_d", None).await;
    let d2 = login_ok(&p, "capdb2", "au_cap_d", None).await;
    assert_eq!(
        login_error(p.port, "capdb3", "au_cap_d", None).await,
        user_full
    );
    // Per-database override: capdb3 takes one client.
    let e1 = login_ok(&p, "capdb3", "au_cap_e", None).await;
    assert_eq!(
        login_error(p.port, "capdb3", "au_cap_c", None).await,
        db_full
    );
    for (c, user) in [
        (&a1, "au_cap_a"),
        (&b1, "au_cap_b"),
        (&d1, "au_cap_d"),
        (&d2, "au_cap_d"),
        (&e1, "au_cap_e"),
    ] {
        assert_eq!(current_user(c).await, user);
    }

    // Freed slots are reusable: a1's db1 slot goes to c, then a's user slot and e1's
    // capdb3 slot go to a.
    drop(a1);
    let c1 = login_eventually(&p, "capdb1", "au_cap_c").await;
    assert_eq!(current_user(&c1).await, "au_cap_c");
    drop(e1);
    let a2 = login_eventually(&p, "capdb3", "au_cap_a").await;
    assert_eq!(current_user(&a2).await, "au_cap_a");
}

// -------------------------------------------------- 13. config errors, TOML, -V

#[test]
fn an_unknown_pgbouncer_key_stops_startup_naming_key_and_line() {
    let ini = "[databases]\n\
               x = host=127.0.0.1 port=5432\n\
               \n\
               [pgbouncer]\n\
               listen_addr = 127.0.0.1\n\
               listen_port = {port}\n\
               unix_socket_dir = {dir}\n\
               auth_file = {dir}/userlist.txt\n\
               listen_prot = 6433\n";
    let (status, log) = PoolerBuilder::new(ini).userlist("").start_expect_fail();
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("unknown parameter: pgbouncer/listen_prot"),
        "log:\n{log}"
    );
    assert!(log.contains("pgsluice.ini:9:"), "the line number: {log}");
}

/// Runs `pgsluice <dir>/pgsluice.toml`: the harness writes the config to
/// `<dir>/pgsluice.ini`, so a shell copies it to a `.toml` name and execs pgsluice on
/// that (same pid, so the harness still owns and kills the process).
fn toml_builder(toml: &str) -> PoolerBuilder {
    PoolerBuilder::new(toml).program(
        "sh",
        &[
            "-c",
            "cp \"$1\" \"${1%.ini}.toml\" && exec \"$0\" \"${1%.ini}.toml\"",
            env!("CARGO_BIN_EXE_pgsluice"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_config_works_end_to_end() {
    let pg = cluster();
    pg.create_role("md5_au_toml", Some("toml pw")).await;
    let toml = "# pgsluice in TOML\n\
                [pgbouncer]\n\
                listen_addr = \"127.0.0.1\"\n\
                listen_port = {port}\n\
                unix_socket_dir = \"{dir}\"\n\
                auth_type = \"md5\"\n\
                auth_file = \"{dir}/userlist.txt\"\n\
                pool_mode = \"transaction\"\n\
                max_client_conn = 10\n\
                \n\
                [databases]\n\
                tomldb = \"host={pg_host} port={pg_port} dbname=postgres\"\n\
                \n\
                [databases.tabledb]\n\
                host = \"{pg_host}\"\n\
                port = {pg_port}\n\
                dbname = \"postgres\"\n";
    let p = toml_builder(toml)
        .userlist(&userlist(&[("md5_au_toml", "toml pw")]))
        .start();
    assert!(p.path("pgsluice.toml").exists());
    for db in ["tomldb", "tabledb"] {
        let c = login_ok(&p, db, "md5_au_toml", Some("toml pw")).await;
        assert_eq!(current_user(&c).await, "md5_au_toml");
    }
    assert_eq!(
        login_error(p.port, "tomldb", "md5_au_toml", Some("wrong")).await,
        fatal(CLIENT_AUTH_FAILED, "password authentication failed")
    );

    // An unknown key in TOML is an error naming key and line, as in ini.
    let (status, log) = toml_builder(
        "[pgbouncer]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\n\nlisten_prot = 1\n",
    )
    .start_expect_fail();
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("pgsluice.toml:5:") && log.contains("listen_prot"),
        "log:\n{log}"
    );
}

#[test]
fn version_flag_prints_a_version_and_exits_zero() {
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_pgsluice")).arg("-V"),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pgsluice "), "{text}");
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "the version number: {text}"
    );
}

// ------------------------------------------------------------------- 14. welcome

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_has_the_server_parameters_and_a_pgsluice_cancel_key() {
    let pg = cluster();
    pg.create_role("au_welcome", None).await;
    let p = start(
        &ini("trust", &db_entry("welcomedb", ""), ""),
        &[("au_welcome", "")],
    );
    let su = pg.superuser().await;
    let server_version = one_text(&su, "SHOW server_version").await;

    // Twice: the first login logs a server in; the second is answered from the cache.
    for round in 0..2 {
        let mut raw = raw_login(&p, "au_welcome", "welcomedb", None).await;
        for key in [
            "server_version",
            "server_encoding",
            "client_encoding",
            "DateStyle",
            "TimeZone",
            "integer_datetimes",
            "standard_conforming_strings",
        ] {
            assert!(
                raw.params.contains_key(key),
                "round {round}: {key} missing from {:?}",
                raw.params
            );
        }
        assert_eq!(raw.params["server_version"], server_version);
        assert_eq!(raw.params["server_encoding"], "UTF8");
        assert_eq!(raw.params["integer_datetimes"], "on");
        assert_eq!(raw.params["standard_conforming_strings"], "on");

        let pid = raw.backend_pid.expect("BackendKeyData");
        assert!(raw.secret_key.is_some());
        let rows = raw.query_rows("SELECT pg_backend_pid()").await;
        let real: i32 = rows[0][0]
            .as_deref()
            .expect("pid")
            .parse()
            .expect("numeric pid");
        assert_ne!(
            pid, real,
            "round {round}: the client must not see the real backend pid"
        );
        let in_use: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        assert_eq!(in_use, 0, "round {round}: the key's pid is a real backend");
    }

    // tokio-postgres is happy with the welcome too, and so are the client's own values.
    let mut config = pg_config(p.port, "welcomedb", "au_welcome", None);
    config.application_name("au welcome test");
    let c = connect_with(&config).await.expect("tokio-postgres login");
    assert_eq!(
        one_text(&c, "SHOW application_name").await,
        "au welcome test"
    );
}
