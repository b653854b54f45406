//! Edge cases of the pgbouncer.ini reader (kept apart from `ini.rs` to keep both short).

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{AuthType, PoolMode};

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, "test.ini", Path::new("/nonexistent"))
}

/// `(line, msg)` of an error that must carry a position.
fn err_at(text: &str) -> (usize, String) {
    match parse(text) {
        Err(ConfigError::At { file, line, msg }) => {
            assert_eq!(file, "test.ini");
            (line, msg)
        }
        other => panic!("expected a positioned error, got {other:?}"),
    }
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let cfg = parse(
        "; leading comment\n\
         # hash comment\n\
         \n\
         [pgbouncer]\n\
         \t listen_port\t=  7000  \r\n\
         server_reset_query = DISCARD ALL ; not a comment\n\
         auth_query =\n",
    )
    .unwrap();
    assert_eq!(cfg.general.listen_port, 7000);
    // libusual has no inline comments: the value runs to the end of the line.
    assert_eq!(
        cfg.general.server_reset_query,
        "DISCARD ALL ; not a comment"
    );
    assert_eq!(cfg.general.auth_query, "");
}

#[test]
fn value_kinds() {
    let cfg = parse(
        "[pgbouncer]\n\
         unix_socket_mode = 0700\n\
         max_packet_size = 0x10000\n\
         reserve_pool_timeout = 0.5\n\
         server_lifetime = 5.0\n\
         log_connections = 0\n\
         log_stats = off\n\
         so_reuseport = Yes\n\
         pool_mode = Transaction\n\
         auth_type = SCRAM-SHA-256\n\
         listen_addr = 127.0.0.1 , ::1\n\
         admin_users = admin,ops\n\
         ignore_startup_parameters = extra_float_digits, options\n\
         stats_period = 30\n",
    )
    .unwrap();
    let g = &cfg.general;
    assert_eq!(g.unix_socket_mode, 0o700);
    assert_eq!(g.max_packet_size, 0x10000);
    assert_eq!(g.reserve_pool_timeout, Duration::from_millis(500));
    assert_eq!(g.server_lifetime, Duration::from_secs(5));
    assert!(!g.log_connections && !g.log_stats && g.so_reuseport);
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.auth_type, AuthType::ScramSha256);
    assert_eq!(g.listen_addr, ["127.0.0.1", "::1"]);
    assert_eq!(g.admin_users, ["admin", "ops"]);
    assert_eq!(
        g.ignore_startup_parameters,
        ["extra_float_digits", "options"]
    );
    assert_eq!(g.stats_period, Duration::from_secs(30));
    assert!(cfg.warnings.is_empty());
}

#[test]
fn listen_addr_star_is_kept() {
    let cfg = parse("[pgbouncer]\nlisten_addr = *\n").unwrap();
    assert_eq!(cfg.general.listen_addr, ["*"]);
}

#[test]
fn unknown_key_names_key_and_line() {
    let (line, msg) = err_at("[pgbouncer]\nlisten_port = 1\n\nlisten_prot = 6432\n");
    assert_eq!(line, 4);
    assert_eq!(msg, "unknown parameter: pgbouncer/listen_prot");
    // Keys are case-sensitive, as in PgBouncer.
    let (_, msg) = err_at("[pgbouncer]\nListen_Port = 1\n");
    assert_eq!(msg, "unknown parameter: pgbouncer/Listen_Port");
}

#[test]
fn bad_values_name_key_and_line() {
    for (text, key) in [
        ("[pgbouncer]\n\nlisten_port = 65536\n", "listen_port"),
        (
            "[pgbouncer]\n\nunix_socket_mode = 0789\n",
            "unix_socket_mode",
        ),
        ("[pgbouncer]\n\nquery_timeout = 5s\n", "query_timeout"),
        ("[pgbouncer]\n\nstats_period = 1.5\n", "stats_period"),
        ("[pgbouncer]\n\nlog_stats = maybe\n", "log_stats"),
        ("[pgbouncer]\n\npool_mode = tx\n", "pool_mode"),
        (
            "[pgbouncer]\n\nclient_tls_sslmode = sometimes\n",
            "client_tls_sslmode",
        ),
    ] {
        let (line, msg) = err_at(text);
        assert_eq!(line, 3, "{text}");
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn syntax_errors() {
    assert_eq!(err_at("[pgbouncer\n").0, 1);
    assert_eq!(err_at("[pgbouncer] x = 1\n").0, 1);
    assert_eq!(err_at("[pgbouncer]\nlisten_port 6432\n").0, 2);
    assert_eq!(err_at("[pgbouncer]\n= 6432\n").0, 2);
    assert_eq!(err_at("[pgbouncer]\n%bogus x\n").0, 2);
    assert_eq!(err_at("[databases]\n\"open = host=x\n").0, 2);
    assert_eq!(err_at("[databases]\nmy db = host=x\n").0, 2);
    let (line, msg) = err_at("listen_port = 1\n");
    assert_eq!(
        (line, msg.as_str()),
        (1, "value without section: listen_port")
    );
}

#[test]
fn unknown_section_is_an_error() {
    let (line, msg) = err_at("[pgbouncer]\n[pgbouncr]\n");
    assert_eq!((line, msg.as_str()), (2, "unknown section: pgbouncr"));
    // Section names are case-sensitive too.
    assert_eq!(err_at("[Databases]\n").1, "unknown section: Databases");
    assert!(parse("[pgbouncer] ; trailing comment\n[peers]\n").is_ok());
}

#[test]
fn not_implemented_key_is_accepted_with_a_warning() {
    let cfg = parse("[pgbouncer]\nclient_tls_dheparams = legacy\npeer_id = 3\n").unwrap();
    assert_eq!(
        cfg.warnings,
        [
            "client_tls_dheparams: accepted but not implemented by pgsluice yet",
            "peer_id: accepted but not implemented by pgsluice yet",
        ]
    );
    assert_eq!(cfg.general.peer_id, 3);
    assert_eq!(
        cfg.general.not_implemented["client_tls_dheparams"],
        "legacy"
    );
}

#[test]
fn databases_users_and_peers() {
    let cfg = parse(
        "[databases]\n\
         app = host=127.0.0.1 dbname=real auth_query='SELECT a, b FROM t WHERE u=$1'\n\
         \"my-db\" = host=h1\n\
         \"we\"\"ird db\" = host=h2\n\
         * = host=fallback\n\
         [users]\n\
         alice = pool_mode=session pool_size=2\n\
         [peers]\n\
         1 = host=10.0.0.1 port=6433\n",
    )
    .unwrap();
    assert_eq!(cfg.databases["app"].dbname.as_deref(), Some("real"));
    assert_eq!(
        cfg.databases["app"].auth_query.as_deref(),
        Some("SELECT a, b FROM t WHERE u=$1")
    );
    assert_eq!(cfg.databases["my-db"].host.as_deref(), Some("h1"));
    assert_eq!(cfg.databases["we\"ird db"].name, "we\"ird db");
    let fallback = cfg.database("other").unwrap();
    assert_eq!((fallback.name.as_str(), fallback.dbname), ("other", None));
    assert_eq!(cfg.users["alice"].pool_size, Some(2));
    assert_eq!(cfg.peers[&1].port, 6433);
}

#[test]
fn section_errors_carry_pgbouncer_messages() {
    let (line, msg) = err_at("[databases]\nok = host=a\nbad = hots=a\n");
    assert_eq!(
        (line, msg.as_str()),
        (3, "unrecognized connection parameter: hots")
    );
    let (_, msg) = err_at("[users]\nbob = pool_size=1 nope=2\n");
    assert_eq!(msg, "unrecognized user parameter: nope");
    let (_, msg) = err_at("[databases]\npgbouncer = host=a\n");
    assert_eq!(msg, "database name \"pgbouncer\" is reserved");
}

#[test]
fn later_values_win_and_pgbouncer_section_restarts_from_defaults() {
    let cfg = parse(
        "[pgbouncer]\n\
         listen_port = 7000\n\
         listen_port = 7001\n\
         auth_user = keeper\n\
         client_tls_dheparams = legacy\n\
         [databases]\n\
         [pgbouncer]\n\
         pool_mode = transaction\n",
    )
    .unwrap();
    // libusual refills non-NULL defaults at every [pgbouncer] header.
    assert_eq!(cfg.general.listen_port, 6432);
    assert_eq!(cfg.general.auth_user, "keeper");
    assert!(cfg.general.not_implemented.is_empty());
    assert_eq!(cfg.general.pool_mode, PoolMode::Transaction);
}

#[test]
fn includes_nest_relative_to_the_including_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf.d");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        dir.path().join("main.ini"),
        "[pgbouncer]\nlisten_port = 7000\n%include conf.d/dbs.ini\npool_mode = statement\n",
    )
    .unwrap();
    // The section carries into and out of included files.
    std::fs::write(
        sub.join("dbs.ini"),
        "max_client_conn = 500\n[databases]\n%include more.ini\n",
    )
    .unwrap();
    std::fs::write(sub.join("more.ini"), "app = host=localhost\n[pgbouncer]\n").unwrap();
    let cfg = load(&dir.path().join("main.ini")).unwrap();
    assert_eq!(cfg.general.pool_mode, PoolMode::Statement);
    assert!(cfg.databases.contains_key("app"));
    // more.ini's [pgbouncer] header restored the defaults set before it.
    assert_eq!(cfg.general.listen_port, 6432);
    assert_eq!(cfg.general.max_client_conn, 100);
}

#[test]
fn include_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("loop.ini"),
        "[pgbouncer]\n%include loop.ini\n",
    )
    .unwrap();
    match load(&dir.path().join("loop.ini")) {
        Err(ConfigError::At { msg, .. }) => assert!(msg.contains("too deep"), "{msg}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(dir.path().join("a.ini"), "\n%include missing.ini\n").unwrap();
    match load(&dir.path().join("a.ini")) {
        Err(ConfigError::At { line, msg, .. }) => {
            assert_eq!(line, 2);
            assert!(msg.contains("missing.ini"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load(&dir.path().join("absent.ini")),
        Err(ConfigError::Io { .. })
    ));
    assert_eq!(err_at("%include\n").0, 1);
}

#[test]
fn no_panic_on_odd_input() {
    for text in [
        "\u{0}",
        "[",
        "]",
        "[]",
        "\"",
        "\"\"=",
        "=",
        "%include",
        "[pgbouncer]\n\u{feff}x=1",
        "[databases]\n*=",
        "[databases]\n\"é\" = host='",
        "[peers]\nx = host=a",
    ] {
        let _ = parse(text);
    }
}
