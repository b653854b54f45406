//! The Prometheus endpoint (`prometheus_listen`): the body is valid text exposition, the
//! pgbouncer_exporter-compatible families equal the pool state at scrape time, the extras
//! count what happened, the HTTP side answers only `/metrics` and keeps answering while the
//! pooler drains on SIGTERM, and nothing listens when the key is unset.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::cluster::{cluster, free_port};
use common::{connect, db_error_text, Pooler, PoolerBuilder};

/// `{metrics}` is replaced by the endpoint's port.
const INI: &str = "\
[databases]
postgres = host={pg_host} port={pg_port}
dead = host=127.0.0.1 port={dead_port} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
default_pool_size = 1
prometheus_listen = 127.0.0.1:{metrics}
";

const USERS: &str = "\"postgres\" \"\"\n";

/// A pooler with the endpoint on a free port; returns it and the endpoint's port.
fn start(extra: &str) -> (Pooler, u16) {
    let _ = cluster();
    let metrics = free_port();
    let ini = INI
        .replace("{metrics}", &metrics.to_string())
        .replace("{dead_port}", &free_port().to_string());
    let p = PoolerBuilder::new(&format!("{ini}{extra}"))
        .userlist(USERS)
        .start();
    assert!(
        p.wait_for_log("metrics on http://", Duration::from_secs(10)),
        "endpoint not started; log:\n{}",
        p.log()
    );
    (p, metrics)
}

// ------------------------------------------------------------------ HTTP

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` as is and reads the answer to EOF (the endpoint closes every connection).
async fn http(port: u16, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    s.write_all(request).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read response");
    let text = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let len: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    if !request.starts_with(b"HEAD ") {
        assert_eq!(len, body.len(), "Content-Length matches the body");
    }
    Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn get(port: u16, path: &str) -> Response {
    http(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n").as_bytes(),
    )
    .await
}

// ------------------------------------------------------------------ exposition format

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

fn is_metric_name(n: &str) -> bool {
    let mut cs = n.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(n: &str) -> bool {
    let mut cs = n.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// `{a="x",b="y\"z"}` → pairs, and the rest of the line after `}`.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut out = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        out.push((name.to_string(), value));
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks the text exposition format 0.0.4 line by line and returns the samples: HELP and
/// TYPE at most once per family and before its samples, every sample belonging to a typed
/// family (histogram `_bucket`/`_sum`/`_count` to their base), families contiguous, no
/// duplicate series, `le` on every bucket.
fn parse_exposition(body: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n---\n{body}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) => {
                    if !is_metric_name(name) {
                        fail("bad metric name in HELP");
                    }
                    if !helps.insert(name.to_string()) {
                        fail("second HELP for a family");
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_metric_name(name) {
                        fail("bad metric name in TYPE");
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        fail("unknown TYPE");
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        fail("second TYPE for a family");
                    }
                    if finished.contains(name) || current.as_deref() == Some(name) {
                        fail("TYPE after the family's samples");
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| fail("no value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            fail("bad metric name");
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| fail(&e))
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| fail("bad value"));
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                fail("bad timestamp");
            }
        }
        if fields.next().is_some() {
            fail("trailing fields");
        }
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    let kind = types.get(base)?;
                    let ok = kind == "histogram" || (kind == "summary" && *suffix != "_bucket");
                    ok.then(|| base.to_string())
                })
                .unwrap_or_else(|| fail("sample without a TYPE"))
        };
        if name.ends_with("_bucket") && !labels.iter().any(|(k, _)| k == "le") {
            fail("histogram bucket without le");
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                fail("family samples are not contiguous");
            }
            if let Some(prev) = current.replace(family.clone()) {
                finished.insert(prev);
            }
        }
        let mut key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        key.sort();
        if !series.insert(format!("{name}{{{}}}", key.join(","))) {
            fail("duplicate series");
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The value of the one series `name{labels…}` (other labels may exist).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} matches several series: {found:?}"
    );
    found.first().map(|s| s.value)
}

fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let same: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        panic!("no series {name}{labels:?}; series of that name: {same:?}")
    })
}

async fn scrape(port: u16) -> Vec<Sample> {
    let r = get(port, "/metrics").await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert_eq!(
        header(&r.head, "content-type").map(|v| v.split(';').next().unwrap_or("")),
        Some("text/plain")
    );
    assert!(
        header(&r.head, "content-type").is_some_and(|v| v.contains("version=0.0.4")),
        "{}",
        r.head
    );
    parse_exposition(&r.body)
}

/// Scrapes until `ok` holds (the counters are added when a lease ends, just after the
/// client has its answer); panics with the last scrape after 10 s.
async fn scrape_until(port: u16, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(port).await;
        if ok(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let text: Vec<String> = s
                .iter()
                .filter(|x| x.name.starts_with("pgbouncer_pools") || x.name.contains("stats"))
                .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
                .collect();
            panic!(
                "timed out waiting for {what}; last scrape:\n{}",
                text.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PG: [(&str, &str); 2] = [("database", "postgres"), ("user", "postgres")];

// ------------------------------------------------------------------ tests

#[test]
fn the_checker_rejects_what_prometheus_rejects() {
    let ok = "# HELP a x\n# TYPE a counter\na{l=\"v\\\"\"} 1\n\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n";
    let s = parse_exposition(ok);
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].label("l"), Some("v\""));
    for bad in [
        "a 1\n",                                                    // no TYPE
        "# TYPE a gauge\na{l=v} 1\n",                               // unquoted label value
        "# TYPE a gauge\na 1\na 2\n",                               // duplicate series
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 1\n", // not contiguous
        "# TYPE a gauge\na one\n",                                  // bad value
        "# TYPE h histogram\nh_bucket 1\n",                         // bucket without le
    ] {
        let r = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_is_valid_and_reports_up_version_and_config() {
    let (_p, port) = start("max_client_conn = 77\nmax_user_connections = 9\n");
    let s = scrape(port).await;
    assert_eq!(must(&s, "pgbouncer_up", &[]), 1.0);
    let version: Vec<&Sample> = s
        .iter()
        .filter(|x| x.name == "pgbouncer_version_info")
        .collect();
    assert_eq!(version.len(), 1);
    // SHOW VERSION's text: tools parse the PgBouncer release from its start.
    let v = version[0].label("version").unwrap_or("");
    assert!(
        v.starts_with("PgBouncer 1.") && v.contains("pgsluice"),
        "{v}"
    );
    assert_eq!(
        must(&s, "pgbouncer_config_max_client_connections", &[]),
        77.0
    );
    assert_eq!(must(&s, "pgbouncer_config_max_user_connections", &[]), 9.0);
    // SHOW DATABASES: both configured entries and the admin database, with the exporter's
    // label set.
    let pool_size: Vec<&Sample> = s
        .iter()
        .filter(|x| x.name == "pgbouncer_databases_pool_size")
        .collect();
    assert_eq!(pool_size.len(), 3, "{pool_size:?}");
    for x in &pool_size {
        let mut names: Vec<&str> = x.labels.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "database",
                "force_user",
                "host",
                "name",
                "pool_mode",
                "port"
            ]
        );
        // PgBouncer shows its admin database with pool_size 2.
        let want = if x.label("name") == Some("pgbouncer") {
            2.0
        } else {
            1.0
        };
        assert_eq!(x.value, want, "default_pool_size = 1: {x:?}");
    }
    assert_eq!(
        must(
            &s,
            "pgbouncer_databases_current_connections",
            &[("name", "dead"), ("database", "postgres")]
        ),
        0.0
    );
    assert_eq!(must(&s, "pgbouncer_databases", &[]), 3.0);
    assert_eq!(must(&s, "pgsluice_shutting_down", &[]), 0.0);

    // HEAD: the same headers, no body.
    let r = http(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_a_known_workload() {
    let (p, port) = start("");
    const N: usize = 25;
    let c = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("client");
    for i in 0..N {
        let rows = c.simple_query(&format!("SELECT {i}")).await.expect("query");
        assert!(!rows.is_empty());
    }
    let n = N as f64;
    let s = scrape_until(port, "N queries counted", |s| {
        value(
            s,
            "pgbouncer_stats_queries_pooled_total",
            &[("database", "postgres")],
        )
        .is_some_and(|v| v >= n)
            && value(s, "pgsluice_transaction_duration_seconds_count", &PG).is_some_and(|v| v >= n)
    })
    .await;
    let db = [("database", "postgres")];
    // Both exporter spellings carry the same numbers.
    for suffix in [
        "queries_pooled_total",
        "sql_transactions_pooled_total",
        "received_bytes_total",
        "sent_bytes_total",
        "queries_duration_seconds_total",
        "server_in_transaction_seconds_total",
        "client_wait_seconds_total",
    ] {
        let old = must(&s, &format!("pgbouncer_stats_{suffix}"), &db);
        let new = must(&s, &format!("pgbouncer_stats_totals_{suffix}"), &db);
        assert_eq!(old, new, "{suffix}");
    }
    assert!(must(&s, "pgbouncer_stats_sql_transactions_pooled_total", &db) >= n);
    assert!(must(&s, "pgbouncer_stats_totals_server_assignments_total", &db) >= n);
    assert!(must(&s, "pgbouncer_stats_received_bytes_total", &db) > 0.0);
    assert!(must(&s, "pgbouncer_stats_sent_bytes_total", &db) > 0.0);
    // Seconds, not microseconds: 25 trivial queries take far less than 25 s.
    let qt = must(&s, "pgbouncer_stats_queries_duration_seconds_total", &db);
    assert!(qt > 0.0 && qt < n, "query time {qt}");
    assert_eq!(must(&s, "pgsluice_stats_client_logins_total", &db), 1.0);
    // One wait observation per lease; the connect succeeded once (pool_size 1).
    assert!(must(&s, "pgsluice_client_wait_seconds_count", &PG) >= n);
    let inf = must(
        &s,
        "pgsluice_client_wait_seconds_bucket",
        &[
            ("database", "postgres"),
            ("user", "postgres"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(inf, must(&s, "pgsluice_client_wait_seconds_count", &PG));
    assert_eq!(
        must(
            &s,
            "pgsluice_server_connects_total",
            &[
                ("database", "postgres"),
                ("user", "postgres"),
                ("result", "success")
            ]
        ),
        1.0
    );
    // The postgres pool and the admin console's.
    assert_eq!(must(&s, "pgbouncer_pools", &[]), 2.0);
    assert_eq!(must(&s, "pgsluice_client_connections", &[]), 1.0);
    assert_eq!(must(&s, "pgbouncer_used_servers", &[]), 1.0);
}

/// `SHOW name` on the admin console: rows as column → text.
async fn console_show(port: u16, name: &str) -> Vec<HashMap<String, String>> {
    let admin = connect(port, "pgbouncer", "postgres", None)
        .await
        .expect("console login");
    let msgs = admin
        .simple_query(&format!("SHOW {name}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"));
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_what_the_console_shows() {
    let (p, port) = start("admin_users = postgres\n");
    let c = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("client");
    for i in 0..10 {
        c.simple_query(&format!("SELECT {i}")).await.expect("query");
    }
    scrape_until(port, "the workload counted", |s| {
        value(
            s,
            "pgbouncer_stats_totals_queries_pooled_total",
            &[("database", "postgres")],
        ) == Some(10.0)
    })
    .await;
    // Nothing runs now: the console and the endpoint must tell the same story.
    let totals = console_show(p.port, "STATS_TOTALS").await;
    let pools = console_show(p.port, "POOLS").await;
    let s = scrape(port).await;
    let row = totals
        .iter()
        .find(|r| r["database"] == "postgres")
        .expect("STATS_TOTALS row");
    let db = [("database", "postgres")];
    for (col, metric, factor) in [
        ("query_count", "queries_pooled_total", 1.0),
        ("xact_count", "sql_transactions_pooled_total", 1.0),
        ("bytes_received", "received_bytes_total", 1.0),
        ("bytes_sent", "sent_bytes_total", 1.0),
        ("server_assignment_count", "server_assignments_total", 1.0),
        ("query_time", "queries_duration_seconds_total", 1e-6),
        ("xact_time", "server_in_transaction_seconds_total", 1e-6),
        ("wait_time", "client_wait_seconds_total", 1e-6),
    ] {
        let want: f64 = row[col].parse::<f64>().expect("number") * factor;
        let got = must(&s, &format!("pgbouncer_stats_totals_{metric}"), &db);
        assert!(
            (got - want).abs() < 1e-9,
            "{col}: console {want}, metric {got}"
        );
    }
    let row = pools
        .iter()
        .find(|r| r["database"] == "postgres" && r["user"] == "postgres")
        .expect("POOLS row");
    for (col, metric) in [
        ("cl_active", "client_active_connections"),
        ("cl_waiting", "client_waiting_connections"),
        ("sv_active", "server_active_connections"),
        ("sv_idle", "server_idle_connections"),
        ("sv_used", "server_used_connections"),
        ("sv_login", "server_login_connections"),
        ("maxwait", "client_maxwait_seconds"),
    ] {
        let want: f64 = row[col].parse().expect("number");
        let got = must(&s, &format!("pgbouncer_pools_{metric}"), &PG);
        assert_eq!(got, want, "{col}");
    }
    assert_eq!(
        must(&s, "pgbouncer_pools_server_idle_connections", &PG),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_gauges_equal_the_pool_state() {
    let (p, port) = start("");
    let holder = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("holder");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let waiter = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("waiter");
    let waiting = tokio::spawn(async move {
        let r = waiter.simple_query("SELECT 42").await;
        (waiter, r)
    });

    let s = scrape_until(port, "one client waiting", |s| {
        value(s, "pgbouncer_pools_client_waiting_connections", &PG) == Some(1.0)
    })
    .await;
    assert_eq!(
        must(&s, "pgbouncer_pools_client_active_connections", &PG),
        1.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_server_active_connections", &PG),
        1.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_server_idle_connections", &PG),
        0.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_server_login_connections", &PG),
        0.0
    );
    assert_eq!(must(&s, "pgsluice_pool_server_limit", &PG), 1.0);
    assert_eq!(must(&s, "pgsluice_pool_saturation_ratio", &PG), 1.0);
    assert_eq!(
        must(
            &s,
            "pgbouncer_databases_current_connections",
            &[("name", "postgres")]
        ),
        1.0
    );
    // maxwait is SHOW POOLS' whole seconds; the extra has the fraction.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = scrape(port).await;
    assert_eq!(
        must(&s, "pgbouncer_pools_client_waiting_connections", &PG),
        1.0
    );
    assert!(must(&s, "pgbouncer_pools_client_maxwait_seconds", &PG) >= 1.0);
    let precise = must(&s, "pgsluice_pool_client_maxwait_seconds", &PG);
    assert!((1.1..60.0).contains(&precise), "maxwait {precise}");

    holder.batch_execute("COMMIT").await.expect("COMMIT");
    let (_waiter, r) = waiting.await.expect("waiter task");
    r.expect("the waiting query runs once the server is free");
    let s = scrape_until(port, "the server idle again", |s| {
        value(s, "pgbouncer_pools_server_idle_connections", &PG) == Some(1.0)
    })
    .await;
    assert_eq!(
        must(&s, "pgbouncer_pools_client_waiting_connections", &PG),
        0.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_client_active_connections", &PG),
        2.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_server_active_connections", &PG),
        0.0
    );
    assert_eq!(must(&s, "pgbouncer_pools_client_maxwait_seconds", &PG), 0.0);
    assert_eq!(must(&s, "pgsluice_pool_saturation_ratio", &PG), 0.0);
    // The waiter's lease waited over a second: the histogram saw it.
    let over_1s = must(&s, "pgsluice_client_wait_seconds_count", &PG)
        - must(
            &s,
            "pgsluice_client_wait_seconds_bucket",
            &[("database", "postgres"), ("user", "postgres"), ("le", "1")],
        );
    assert!(over_1s >= 1.0, "waits over 1 s: {over_1s}");
    assert!(
        must(
            &s,
            "pgbouncer_stats_client_wait_seconds_total",
            &[("database", "postgres")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_failed_connects_are_counted() {
    let (p, port) = start("");
    let e = common::connect_err(p.port, "nope", "postgres", None).await;
    assert!(db_error_text(&e).1.starts_with("no such database"), "{e}");
    let e = common::connect_err(p.port, "dead", "postgres", None).await;
    assert!(
        db_error_text(&e).1.contains("(server_login_retry)"),
        "{}",
        db_error_text(&e).1
    );
    let dead = [("database", "dead"), ("user", "postgres")];
    let s = scrape_until(port, "both errors counted", |s| {
        value(
            s,
            "pgsluice_client_errors_total",
            &[("reason", "server_login_retry")],
        )
        .is_some()
            && value(
                s,
                "pgsluice_client_errors_total",
                &[("reason", "no_such_database")],
            )
            .is_some()
    })
    .await;
    assert_eq!(
        must(
            &s,
            "pgsluice_client_errors_total",
            &[("reason", "no_such_database")]
        ),
        1.0
    );
    assert_eq!(
        must(
            &s,
            "pgsluice_server_connects_total",
            &[
                ("database", "dead"),
                ("user", "postgres"),
                ("result", "failure")
            ]
        ),
        1.0
    );
    assert_eq!(must(&s, "pgsluice_pool_fast_fail_active", &dead), 1.0);
    assert_eq!(
        must(&s, "pgbouncer_pools_server_login_connections", &dead),
        0.0
    );
    // Labels stay bounded: reason values never carry the message text.
    for x in s
        .iter()
        .filter(|x| x.name == "pgsluice_client_errors_total")
    {
        let r = x.label("reason").unwrap_or("");
        assert!(
            r.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{r:?}"
        );
    }
}

/// Metric names (`pgbouncer_…`, `pgsluice_…`) a PromQL-bearing file mentions outside
/// comments; `pgbouncer_exporter` is prose, not a metric.
fn metric_names_in(path: &str) -> HashSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut out = HashSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let b = line.as_bytes();
        for prefix in ["pgbouncer_", "pgsluice_"] {
            for (at, _) in line.match_indices(prefix) {
                if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
                    continue;
                }
                let end = line[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(line.len(), |n| at + n);
                // `pgsluice_*` in prose names a family of names, not a metric.
                if !line[at..end].ends_with('_') {
                    out.insert(line[at..end].to_string());
                }
            }
        }
    }
    out.remove("pgbouncer_exporter");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_served_metrics() {
    let (p, port) = start("");
    let c = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("client");
    c.simple_query("SELECT 1").await.expect("query");
    let _ = common::connect_err(p.port, "nope", "postgres", None).await;
    let s = scrape_until(port, "a lease and an error recorded", |s| {
        value(s, "pgsluice_transaction_duration_seconds_count", &PG).is_some_and(|v| v >= 1.0)
            && s.iter().any(|x| x.name == "pgsluice_client_errors_total")
    })
    .await;
    let served: HashSet<&str> = s.iter().map(|x| x.name.as_str()).collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["conf/grafana-dashboard.json", "conf/prometheus-alerts.yml"] {
        let names = metric_names_in(&format!("{root}/{file}"));
        assert!(names.len() > 5, "{file}: {names:?}");
        for n in &names {
            assert!(
                served.contains(n.as_str()),
                "{file} uses {n}, which is not served"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_metrics_is_served_and_bad_requests_are_bounded() {
    let (_p, port) = start("");
    assert_eq!(get(port, "/").await.status, 404);
    assert_eq!(get(port, "/metricsx").await.status, 404);
    let r = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(r.status, 405);
    assert_eq!(http(port, b"NONSENSE\r\n\r\n").await.status, 400);
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(http(port, &big).await.status, 431);
    // A client that connects and says nothing holds no one up.
    let _silent = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _half = {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("send");
        s
    };
    let s = scrape(port).await;
    assert_eq!(must(&s, "pgbouncer_up", &[]), 1.0);
    // Query strings are ignored, as Prometheus' params would be.
    assert_eq!(get(port, "/metrics?collect=all").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_answering_while_shutting_down() {
    let (p, port) = start("");
    let c = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("client");
    c.batch_execute("BEGIN").await.expect("BEGIN");
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_for_log("SIGTERM", Duration::from_secs(10)),
        "{}",
        p.log()
    );
    let s = scrape_until(port, "shutdown reported", |s| {
        value(s, "pgsluice_shutting_down", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(must(&s, "pgbouncer_up", &[]), 1.0);
    assert_eq!(
        must(&s, "pgbouncer_pools_client_active_connections", &PG),
        1.0
    );
    assert_eq!(
        must(&s, "pgbouncer_pools_server_active_connections", &PG),
        1.0
    );
    assert!(p.is_running(), "still draining");
    c.batch_execute("COMMIT").await.expect("COMMIT");
    drop(c);
    assert!(
        p.wait_exit(Duration::from_secs(15)).is_some(),
        "exits once the last client left; log:\n{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_without_prometheus_listen() {
    let _ = cluster();
    let unused = free_port();
    let ini = INI
        .replace("prometheus_listen = 127.0.0.1:{metrics}\n", "")
        .replace("{dead_port}", &free_port().to_string());
    let p = PoolerBuilder::new(&ini).userlist(USERS).start();
    let c = connect(p.port, "postgres", "postgres", None)
        .await
        .expect("client");
    c.simple_query("SELECT 1").await.expect("query");
    assert!(!p.log().contains("metrics on"), "{}", p.log());
    assert!(
        TcpStream::connect(("127.0.0.1", unused)).await.is_err(),
        "nothing listens on a port no one configured"
    );
}

#[test]
fn a_bad_address_stops_startup_with_the_key_named() {
    let (status, log) = PoolerBuilder::new(
        &INI.replace("127.0.0.1:{metrics}", "localhost")
            .replace("{dead_port}", "1"),
    )
    .userlist(USERS)
    .start_expect_fail();
    assert!(!status.success());
    assert!(log.contains("prometheus_listen"), "{log}");
}

#[test]
fn toml_takes_the_key_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[pgbouncer]\nlisten_addr = \"127.0.0.1\"\nprometheus_listen = \"[::1]:9127\"\n",
    )
    .expect("write toml");
    let cfg = pgsluice::config::Config::load(&path).expect("load toml");
    assert_eq!(cfg.general.prometheus_listen, "[::1]:9127");
    assert_eq!(
        pgsluice::config::general::show_value(&cfg.general, "prometheus_listen").as_deref(),
        Some("[::1]:9127")
    );
}

/// Protocol-level prepared statements with max_prepared_statements = 2, one server: the
/// server statement cache's hits, misses and evictions on /metrics, the parse and bind
/// counts in SHOW STATS (and their exporter families), and `prepared_statements` in SHOW
/// CLIENTS / SERVERS, all for a sequence whose exact numbers are known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_counters() {
    let (p, port) = start("admin_users = postgres\nmax_prepared_statements = 2\n");
    let mut c = common::RawClient::connect(p.port).await;
    c.login_trust("postgres", "postgres").await.expect("login");
    async fn batch(c: &mut common::RawClient) -> String {
        c.send_sync().await;
        let m = tokio::time::timeout(Duration::from_secs(10), c.recv_until(b'Z'))
            .await
            .expect("answer within 10 s");
        assert!(!m.iter().any(|m| m.is_error()), "{m:?}");
        m.iter().map(|m| m.tag as char).collect()
    }
    async fn exec(c: &mut common::RawClient, name: &str) -> String {
        c.send_bind("", name, &[]).await;
        c.send_execute("", 0).await;
        batch(c).await
    }
    // Three statements on a server that keeps two: Parse s0, s1 (misses), s2 (a miss
    // that evicts s0).
    for k in 0..3 {
        c.send_parse(&format!("s{k}"), &format!("SELECT {k}"), &[])
            .await;
        assert_eq!(batch(&mut c).await, "1Z");
    }
    // s0 again: injected Parse (miss, evicts s1); then a hit; Describe s2 is a hit; s1:
    // a miss that evicts s2.
    assert_eq!(exec(&mut c, "s0").await, "2DCZ");
    assert_eq!(exec(&mut c, "s0").await, "2DCZ");
    c.send_describe(b'S', "s2").await;
    assert_eq!(batch(&mut c).await, "tTZ");
    assert_eq!(exec(&mut c, "s1").await, "2DCZ");
    // Another client prepares a statement the pool knows, holding no server: answered
    // without one, a hit.
    let mut other = common::RawClient::connect(p.port).await;
    other
        .login_trust("postgres", "postgres")
        .await
        .expect("login");
    // Parse and Sync in one write: only a whole Parse + Sync is answered without a server.
    other.cork();
    other.send_parse("mine", "SELECT 0", &[]).await;
    other.send_sync().await;
    other.uncork().await;
    let m = tokio::time::timeout(Duration::from_secs(10), other.recv_until(b'Z'))
        .await
        .expect("answer within 10 s");
    assert_eq!(m.iter().map(|m| m.tag as char).collect::<String>(), "1Z");

    let db = [("database", "postgres")];
    let s = scrape_until(port, "the prepared statement counters", |s| {
        value(s, "pgsluice_prepared_cache_hits_total", &db) == Some(3.0)
            && value(s, "pgbouncer_stats_totals_binds_total", &db) == Some(3.0)
    })
    .await;
    assert_eq!(must(&s, "pgsluice_prepared_cache_hits_total", &db), 3.0);
    assert_eq!(must(&s, "pgsluice_prepared_cache_misses_total", &db), 5.0);
    assert_eq!(
        must(&s, "pgsluice_prepared_cache_evictions_total", &db),
        3.0
    );
    assert_eq!(must(&s, "pgsluice_prepared_statements_cached", &[]), 3.0);
    assert_eq!(
        must(&s, "pgbouncer_stats_totals_client_parses_total", &db),
        4.0
    );
    // Every Parse the server answered: 3 forwarded, 2 injected.
    assert_eq!(
        must(&s, "pgbouncer_stats_totals_server_parses_total", &db),
        5.0
    );

    let stats = console_show(p.port, "STATS").await;
    let row = stats
        .iter()
        .find(|r| r.get("database").map(String::as_str) == Some("postgres"))
        .expect("SHOW STATS row");
    assert_eq!(row["total_client_parse_count"], "4");
    assert_eq!(row["total_server_parse_count"], "5");
    assert_eq!(row["total_bind_count"], "3");
    let mut counts: Vec<String> = console_show(p.port, "CLIENTS")
        .await
        .into_iter()
        .filter(|r| r.get("database").map(String::as_str) == Some("postgres"))
        .map(|r| r["prepared_statements"].clone())
        .collect();
    counts.sort();
    assert_eq!(counts, ["1", "3"], "SHOW CLIENTS prepared_statements");
    let servers: Vec<String> = console_show(p.port, "SERVERS")
        .await
        .into_iter()
        .filter(|r| r.get("database").map(String::as_str) == Some("postgres"))
        .map(|r| r["prepared_statements"].clone())
        .collect();
    assert_eq!(servers, ["2"], "SHOW SERVERS prepared_statements");
}
