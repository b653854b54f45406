//! TLS on both sides, as clients and PostgreSQL see it.
//!
//! Client side (clients → pgsluice): every client_tls_sslmode accepted/refused as
//! PgBouncer does, with tokio-postgres + tokio-postgres-rustls and psql (`sslmode`,
//! `sslrootcert`); `SSL required` for a plaintext client under require; client
//! certificates (verify-ca/verify-full, auth_type=cert); PostgreSQL 17 direct TLS with
//! ALPN; certificate rotation by RELOAD without dropping connected clients; unsupported
//! cipher/protocol values refused at startup.
//!
//! Server side (pgsluice → PostgreSQL): this binary's cluster runs with ssl=on
//! (`PgCluster::enable_ssl`, certificates from rcgen); every server_tls_sslmode and the
//! per-database `sslmode=` override checked in pg_stat_ssl; wrong CA and wrong host name
//! refused under verify-ca/verify-full; pgsluice's client certificate seen by PostgreSQL;
//! SNI sent for host names (a local stand-in server records it); `server refused SSL`;
//! a RELOAD that changes server TLS settings reconnects servers at release; cancel
//! requests reach the server inside TLS as server_tls_sslmode says (a tap in front of
//! the cluster shows how each connection opened).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    cluster, libpq_command, run_with_timeout, sqlstate_of, Misbehave, Opening, Pooler,
    PoolerBuilder, RawClient, Tap,
};
use tokio_postgres::NoTls;

// ------------------------------------------------------------------ certificates

/// A PEM certificate (chain) and its key.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

struct Certs {
    ca: String,
    other_ca: String,
    /// PostgreSQL's server certificate: SAN `localhost` only (so host=127.0.0.1 fails
    /// verify-full), signed by `ca` via an intermediate (a full chain in the file).
    pg_server: Pem,
    /// pgsluice's certificate for clients: SAN `localhost` only, signed by `ca`.
    pooler: Pem,
    /// The same name signed by `other_ca`, for rotation.
    pooler_rotated: Pem,
    /// Client certificate with CN `tls_certuser`.
    client_user: Pem,
    /// pgsluice's client certificate towards PostgreSQL, CN `pgsluice`.
    pgsluice_client: Pem,
}

struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-signed ca");
    Ca {
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, cn: &str, names: &[&str]) -> Pem {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let ca = new_ca("pgsluice test CA");
        let other = new_ca("some other CA");
        // An intermediate CA, so the server presents a chain, not a single certificate.
        let mut ip = CertificateParams::new(Vec::<String>::new()).expect("intermediate");
        ip.distinguished_name
            .push(DnType::CommonName, "pgsluice test intermediate");
        ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ip.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ikey = KeyPair::generate().expect("intermediate key");
        let icert = ip.signed_by(&ikey, &ca.issuer).expect("sign intermediate");
        let inter = Ca {
            cert_pem: icert.pem(),
            issuer: Issuer::new(ip, ikey),
        };
        let mut pg_server = leaf(&inter, "localhost", &["localhost"]);
        pg_server.cert.push_str(&inter.cert_pem);
        let mut pooler = leaf(&inter, "localhost", &["localhost"]);
        pooler.cert.push_str(&inter.cert_pem);
        Certs {
            pg_server,
            pooler,
            pooler_rotated: leaf(&other, "localhost", &["localhost"]),
            client_user: leaf(&ca, "tls_certuser", &[]),
            pgsluice_client: leaf(&ca, "pgsluice", &[]),
            ca: ca.cert_pem,
            other_ca: other.cert_pem,
        }
    })
}

/// The cluster with ssl=on (once per binary).
async fn ssl_cluster() -> &'static common::PgCluster {
    static ON: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let pg = cluster();
    ON.get_or_init(|| async {
        let c = certs();
        pg.enable_ssl(&c.pg_server.cert, &c.pg_server.key, Some(&c.ca))
            .await;
    })
    .await;
    pg
}

// ------------------------------------------------------------------ helpers

/// An ini with the given [databases] lines and extra [pgbouncer] lines. Files written by
/// [`start`] live in `{dir}`.
fn ini(databases: &str, extra: &str) -> String {
    format!(
        "[databases]\n\
         {databases}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = trust\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = admin\n\
         pool_mode = transaction\n\
         {extra}\n"
    )
}

fn db(alias: &str, more: &str) -> String {
    format!("{alias} = host={{pg_host}} port={{pg_port}} dbname=postgres {more}")
}

/// The roles these tests log in as (trusted by the cluster's pg_hba).
async fn roles() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        for r in ["tls_user", "tls_certuser", "someone"] {
            cluster().create_role(r, None).await;
        }
    })
    .await;
}

/// Starts pgsluice with every certificate file in its dir.
fn start(ini: &str) -> Pooler {
    builder(ini).start()
}

fn builder(ini: &str) -> PoolerBuilder {
    let c = certs();
    PoolerBuilder::new(ini)
        .userlist("\"tls_user\" \"\"\n\"tls_certuser\" \"\"\n\"admin\" \"\"\n\"someone\" \"\"\n")
        .file("ca.pem", &c.ca)
        .file("other_ca.pem", &c.other_ca)
        .file("pooler.crt", &c.pooler.cert)
        .file("pooler.key", &c.pooler.key)
        .file("client.crt", &c.pgsluice_client.cert)
        .file("client.key", &c.pgsluice_client.key)
        .file("user.crt", &c.client_user.cert)
        .file("user.key", &c.client_user.key)
}

const CLIENT_TLS_FILES: &str = "client_tls_cert_file = {dir}/pooler.crt\n\
                                client_tls_key_file = {dir}/pooler.key\n";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting `ca_pem`, optionally with a client certificate.
fn client_tls(ca_pem: &str, client: Option<&Pem>, alpn: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some(p) => {
            let certs = CertificateDer::pem_slice_iter(p.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).expect("client key");
            b.with_client_auth_cert(certs, key).expect("client auth")
        }
    };
    if alpn {
        cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    cfg
}

/// tokio-postgres over TLS to pgsluice at `localhost` (127.0.0.1), certificate checked
/// against `ca_pem` including the host name.
async fn tls_connect(
    port: u16,
    db: &str,
    user: &str,
    tls: rustls::ClientConfig,
    direct: bool,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .dbname(db)
        .user(user)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    if direct {
        config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    }
    let (client, conn) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// psql with a libpq connection string to pgsluice; returns (ok, stdout, stderr).
fn psql_conninfo(conninfo: &str, sql: &str) -> (bool, String, String) {
    let mut cmd = libpq_command("psql", None);
    cmd.args(["-X", "-w", "-q", "-A", "-t", "-d", conninfo, "-c", sql]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => format!("{e:?}"),
    }
}

/// Is the server connection behind this client encrypted (PostgreSQL's own view)?
async fn server_side_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

// ------------------------------------------------------------------ client side

#[tokio::test]
async fn client_require_serves_tls_and_refuses_plaintext_with_ssl_required() {
    roles().await;
    let p = start(&ini(
        &db("app", "sslmode=disable"),
        &format!("client_tls_sslmode = require\n{CLIENT_TLS_FILES}"),
    ));
    let c = certs();
    // tokio-postgres-rustls, verifying the chain and the host name.
    let client = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.ca, None, false),
        false,
    )
    .await
    .expect("TLS client");
    let row = client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(
        p.wait_for_log("tls=TLSv1.3/", Duration::from_secs(5)),
        "{}",
        p.log()
    );

    // Plaintext over TCP: FATAL "SSL required".
    let e = common::connect(p.port, "app", "tls_user", None)
        .await
        .map(|_| ())
        .expect_err("plaintext must be refused");
    assert_eq!(err_text(&e), "SSL required");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("08P01"));
    // psql sslmode=disable sees the same.
    let (ok, _, err) = psql_conninfo(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=tls_user sslmode=disable",
            p.port
        ),
        "SELECT 1",
    );
    assert!(!ok && err.contains("SSL required"), "{err}");
    // psql sslmode=require works.
    let (ok, out, err) = psql_conninfo(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=tls_user sslmode=require",
            p.port
        ),
        "SELECT 'tls ok'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "tls ok");
    // The Unix socket is exempt, as in PgBouncer.
    let client = common::connect_unix(p.dir.path(), p.port, "app", "tls_user", None)
        .await
        .expect("unix socket client");
    client.simple_query("SELECT 1").await.expect("unix query");
    // SHOW CLIENTS has the TLS column filled for TLS clients.
    let admin = common::connect_unix(p.dir.path(), p.port, "pgbouncer", "admin", None)
        .await
        .expect("console");
    let rows = admin
        .simple_query("SHOW CLIENTS")
        .await
        .expect("show clients");
    let tls_cols: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("tls").map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(
        tls_cols.iter().any(|t| t.starts_with("TLSv1.3/TLS_")),
        "{tls_cols:?}"
    );
}

#[tokio::test]
async fn client_verify_full_with_psql_checks_ca_and_host_name() {
    roles().await;
    let p = start(&ini(
        &db("app", "sslmode=disable"),
        &format!("client_tls_sslmode = require\n{CLIENT_TLS_FILES}"),
    ));
    let dir = p.dir.path().display().to_string();
    let base = format!("port={} dbname=app user=tls_user", p.port);
    // Right CA, right name: the chain (leaf + intermediate) verifies.
    let (ok, out, err) = psql_conninfo(
        &format!(
            "host=localhost hostaddr=127.0.0.1 {base} sslmode=verify-full sslrootcert={dir}/ca.pem"
        ),
        "SELECT 'verified'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "verified");
    // Wrong CA.
    let (ok, _, err) = psql_conninfo(
        &format!("host=localhost hostaddr=127.0.0.1 {base} sslmode=verify-full sslrootcert={dir}/other_ca.pem"),
        "SELECT 1",
    );
    assert!(!ok && err.contains("certificate verify failed"), "{err}");
    // Wrong host name: the certificate names only localhost.
    let (ok, _, err) = psql_conninfo(
        &format!("host=127.0.0.1 {base} sslmode=verify-full sslrootcert={dir}/ca.pem"),
        "SELECT 1",
    );
    assert!(!ok && err.contains("does not match host name"), "{err}");
    // verify-ca does not look at the name.
    let (ok, _, err) = psql_conninfo(
        &format!("host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={dir}/ca.pem"),
        "SELECT 1",
    );
    assert!(ok, "{err}");
    // tokio-postgres-rustls with the wrong CA fails too.
    let e = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&certs().other_ca, None, false),
        false,
    )
    .await
    .map(|_| ())
    .expect_err("wrong CA must fail");
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
}

#[tokio::test]
async fn client_disable_allow_prefer_answer_ssl_requests_as_pgbouncer() {
    roles().await;
    // disable (the default): SSLRequest → 'N', plaintext works.
    let p = start(&ini(&db("app", "sslmode=disable"), ""));
    let mut raw = RawClient::connect(p.port).await;
    assert_eq!(raw.send_ssl_request().await, b'N');
    raw.login_trust("tls_user", "app")
        .await
        .expect("plaintext login");
    drop(p);
    // allow and prefer: TLS when asked, plaintext also accepted.
    for mode in ["allow", "prefer"] {
        let p = start(&ini(
            &db("app", "sslmode=disable"),
            &format!("client_tls_sslmode = {mode}\n{CLIENT_TLS_FILES}"),
        ));
        let mut raw = RawClient::connect(p.port).await;
        assert_eq!(raw.send_ssl_request().await, b'S', "{mode}");
        let client = tls_connect(
            p.port,
            "app",
            "tls_user",
            client_tls(&certs().ca, None, false),
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
        client.simple_query("SELECT 1").await.expect("tls query");
        let plain = common::connect(p.port, "app", "tls_user", None)
            .await
            .unwrap_or_else(|e| panic!("{mode} plaintext: {e:?}"));
        plain.simple_query("SELECT 1").await.expect("plain query");
    }
}

#[tokio::test]
async fn client_verify_modes_require_a_client_certificate() {
    roles().await;
    for mode in ["verify-ca", "verify-full"] {
        let p = start(&ini(
            &db("app", "sslmode=disable"),
            &format!(
                "client_tls_sslmode = {mode}\nclient_tls_ca_file = {{dir}}/ca.pem\n{CLIENT_TLS_FILES}"
            ),
        ));
        let c = certs();
        let e = tls_connect(
            p.port,
            "app",
            "tls_user",
            client_tls(&c.ca, None, false),
            false,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{mode}: no client certificate must fail"));
        let text = format!("{e:?}");
        assert!(
            text.contains("CertificateRequired") || text.contains("closed") || text.contains("Io"),
            "{mode}: {text}"
        );
        let client = tls_connect(
            p.port,
            "app",
            "tls_user",
            client_tls(&c.ca, Some(&c.client_user), false),
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("{mode} with certificate: {e:?}"));
        client.simple_query("SELECT 1").await.expect("query");
        // psql with the client certificate files (libpq wants a private key file).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p.path("user.key"), std::fs::Permissions::from_mode(0o600))
                .expect("chmod user.key");
        }
        let dir = p.dir.path().display();
        let (ok, _, err) = psql_conninfo(
            &format!(
                "host=localhost hostaddr=127.0.0.1 port={} dbname=app user=tls_user sslmode=verify-full \
                 sslrootcert={dir}/ca.pem sslcert={dir}/user.crt sslkey={dir}/user.key",
                p.port
            ),
            "SELECT 1",
        );
        assert!(ok, "{mode} psql: {err}");
    }
}

#[tokio::test]
async fn auth_type_cert_maps_the_certificate_cn_to_the_user() {
    roles().await;
    let extra = format!(
        "client_tls_sslmode = require\nclient_tls_ca_file = {{dir}}/ca.pem\n{CLIENT_TLS_FILES}"
    );
    let p = start(
        &ini(&db("app", "sslmode=disable"), &extra)
            .replace("auth_type = trust", "auth_type = cert"),
    );
    let c = certs();
    let client = tls_connect(
        p.port,
        "app",
        "tls_certuser",
        client_tls(&c.ca, Some(&c.client_user), false),
        false,
    )
    .await
    .expect("CN = user");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("q");
    assert_eq!(row.get::<_, String>(0), "tls_certuser");
    // Another user name with the same certificate.
    let e = tls_connect(
        p.port,
        "app",
        "someone",
        client_tls(&c.ca, Some(&c.client_user), false),
        false,
    )
    .await
    .map(|_| ())
    .expect_err("CN mismatch must fail");
    assert_eq!(err_text(&e), "certificate authentication failed");
    // TLS without a certificate (optional under require).
    let e = tls_connect(
        p.port,
        "app",
        "tls_certuser",
        client_tls(&c.ca, None, false),
        false,
    )
    .await
    .map(|_| ())
    .expect_err("no certificate must fail");
    assert_eq!(err_text(&e), "certificate authentication failed");
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    roles().await;
    let p = start(&ini(
        &db("app", "sslmode=disable"),
        &format!("client_tls_sslmode = require\n{CLIENT_TLS_FILES}"),
    ));
    let c = certs();
    let client = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.ca, None, true),
        true,
    )
    .await
    .expect("direct TLS with ALPN");
    client.simple_query("SELECT 1").await.expect("query");
    // Without ALPN PostgreSQL's rule applies: refused, with its message.
    let tls = Arc::new(client_tls(&c.ca, None, false));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let mut raw = RawClient::from_stream(Box::new(stream));
    let msgs = raw.recv_until_eof().await;
    assert!(
        msgs.iter().any(|m| m.is_error()
            && m.message()
                .contains("without ALPN protocol negotiation extension")),
        "{:?}",
        msgs.iter().map(|m| m.message()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn reload_rotates_the_certificate_without_dropping_clients() {
    roles().await;
    let p = start(&ini(
        &db("app", "sslmode=disable"),
        &format!("client_tls_sslmode = require\n{CLIENT_TLS_FILES}"),
    ));
    let c = certs();
    let old = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.ca, None, false),
        false,
    )
    .await
    .expect("before rotation");
    old.simple_query("SELECT 1").await.expect("q1");
    p.write_file("pooler.crt", &c.pooler_rotated.cert);
    p.write_file("pooler.key", &c.pooler_rotated.key);
    let admin = common::connect_unix(p.dir.path(), p.port, "pgbouncer", "admin", None)
        .await
        .expect("console");
    admin.simple_query("RELOAD").await.expect("RELOAD");
    // The connected client keeps its session.
    old.simple_query("SELECT 2")
        .await
        .expect("old client after RELOAD");
    // New clients get the new certificate: the old CA no longer verifies it.
    let new = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.other_ca, None, false),
        false,
    )
    .await
    .expect("new certificate after RELOAD");
    new.simple_query("SELECT 3").await.expect("q3");
    let e = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.ca, None, false),
        false,
    )
    .await
    .map(|_| ())
    .expect_err("the old CA must not verify the rotated certificate");
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    // A broken key file on RELOAD: the rest applies, the TLS configuration in use stays
    // (PgBouncer's NOTICE, also logged).
    p.write_file("pooler.key", "not a key");
    admin.simple_query("RELOAD").await.expect("RELOAD");
    assert!(
        p.wait_for_log(
            "TLS settings could not be applied, still using old configuration",
            Duration::from_secs(5)
        ),
        "{}",
        p.log()
    );
    let again = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&c.other_ca, None, false),
        false,
    )
    .await
    .expect("old TLS configuration kept");
    again.simple_query("SELECT 4").await.expect("q4");
    old.simple_query("SELECT 5")
        .await
        .expect("old client still there");
}

#[tokio::test]
async fn unsupported_tls_values_are_config_errors_naming_the_value() {
    roles().await;
    for (line, needle) in [
        ("client_tls_ciphers = HIGH:RC4-MD5", "RC4-MD5"),
        (
            "server_tls13_ciphers = TLS_AES_128_CCM_SHA256",
            "TLS_AES_128_CCM_SHA256",
        ),
        ("client_tls_protocols = tlsv1.0", "tlsv1.0"),
        ("client_tls_sslmode = require", "client_tls_key_file"),
        (
            "server_tls_ca_file = /nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
    ] {
        let (status, out) = builder(&ini(&db("app", ""), line)).start_expect_fail();
        assert!(!status.success(), "{line}");
        assert!(out.contains(needle), "{line}: {out}");
    }
}

// ------------------------------------------------------------------ server side

#[tokio::test]
async fn server_sslmodes_as_pg_stat_ssl_sees_them() {
    roles().await;
    ssl_cluster().await;
    for (mode, host, encrypted) in [
        ("disable", "127.0.0.1", false),
        ("allow", "127.0.0.1", true),
        ("prefer", "127.0.0.1", true),
        ("require", "127.0.0.1", true),
        ("verify-ca", "127.0.0.1", true),
        ("verify-full", "localhost", true),
    ] {
        let p = start(&ini(
            &format!("app = host={host} port={{pg_port}} dbname=postgres"),
            &format!("server_tls_sslmode = {mode}\nserver_tls_ca_file = {{dir}}/ca.pem"),
        ));
        let client = common::connect(p.port, "app", "tls_user", None)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:?}\n{}", p.log()));
        assert_eq!(server_side_ssl(&client).await, encrypted, "{mode}");
        if encrypted {
            let row = client
                .query_one(
                    "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .expect("version");
            assert_eq!(row.get::<_, String>(0), "TLSv1.3", "{mode}");
        }
    }
}

#[tokio::test]
async fn server_verify_rejects_wrong_ca_and_wrong_host_name() {
    roles().await;
    ssl_cluster().await;
    // Wrong CA, verify-ca.
    let p = start(&ini(
        &db("app", ""),
        "server_tls_sslmode = verify-ca\nserver_tls_ca_file = {dir}/other_ca.pem\nserver_login_retry = 1",
    ));
    let e = common::connect(p.port, "app", "tls_user", None)
        .await
        .map(|_| ())
        .expect_err("wrong CA must fail");
    assert!(
        err_text(&e).contains("TLS handshake failed"),
        "{}",
        err_text(&e)
    );
    assert!(err_text(&e).contains("UnknownIssuer"), "{}", err_text(&e));
    drop(p);
    // Right CA, but the certificate does not name 127.0.0.1: verify-full refuses.
    let p = start(&ini(
        &db("app", ""),
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = {dir}/ca.pem",
    ));
    let e = common::connect(p.port, "app", "tls_user", None)
        .await
        .map(|_| ())
        .expect_err("wrong host name must fail");
    assert!(
        err_text(&e).contains("not valid for name"),
        "{}",
        err_text(&e)
    );
}

#[tokio::test]
async fn per_database_sslmode_overrides_server_tls_sslmode() {
    roles().await;
    ssl_cluster().await;
    let p = start(&ini(
        &format!(
            "{}\n{}\n{}",
            db("plain", ""),
            db("tls", "sslmode=require"),
            "full = host=localhost port={pg_port} dbname=postgres sslmode=verify-full"
        ),
        "server_tls_sslmode = disable\nserver_tls_ca_file = {dir}/ca.pem",
    ));
    let plain = common::connect(p.port, "plain", "tls_user", None)
        .await
        .expect("plain");
    assert!(!server_side_ssl(&plain).await);
    let tls = common::connect(p.port, "tls", "tls_user", None)
        .await
        .expect("tls");
    assert!(server_side_ssl(&tls).await);
    let full = common::connect(p.port, "full", "tls_user", None)
        .await
        .expect("full");
    assert!(server_side_ssl(&full).await);
    // SHOW SERVERS shows TLS servers.
    let admin = common::connect_unix(p.dir.path(), p.port, "pgbouncer", "admin", None)
        .await
        .expect("console");
    let rows = admin
        .simple_query("SHOW SERVERS")
        .await
        .expect("show servers");
    let by_db: Vec<(String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("database").unwrap_or("").to_string(),
                r.get("tls").unwrap_or("").to_string(),
            )),
            _ => None,
        })
        .collect();
    assert!(
        by_db
            .iter()
            .any(|(d, t)| d == "tls" && t.starts_with("TLSv1.3/")),
        "{by_db:?}"
    );
    assert!(
        by_db.iter().any(|(d, t)| d == "plain" && t.is_empty()),
        "{by_db:?}"
    );
}

#[tokio::test]
async fn server_sees_pgsluice_client_certificate() {
    roles().await;
    ssl_cluster().await;
    let p = start(&ini(
        &db("app", ""),
        "server_tls_sslmode = require\n\
         server_tls_cert_file = {dir}/client.crt\n\
         server_tls_key_file = {dir}/client.key",
    ));
    let client = common::connect(p.port, "app", "tls_user", None)
        .await
        .expect("connect");
    let row = client
        .query_one(
            "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(row.get::<_, bool>(0));
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("/CN=pgsluice")
    );
}

#[tokio::test]
async fn reload_with_changed_server_tls_reconnects_at_release() {
    roles().await;
    ssl_cluster().await;
    let p = start(&ini(&db("app", ""), "server_tls_sslmode = disable"));
    let client = common::connect(p.port, "app", "tls_user", None)
        .await
        .expect("connect");
    assert!(!server_side_ssl(&client).await);
    let ini_text = ini(&db("app", ""), "server_tls_sslmode = require");
    p.write_ini(&ini_text);
    p.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The same client, next transaction: its old server was closed at release and a TLS
    // one opened.
    loop {
        if server_side_ssl(&client).await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ cancels

/// Waits (10 s) for a spawned query that must fail; its error.
async fn query_error(
    query: tokio::task::JoinHandle<
        Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    >,
) -> tokio_postgres::Error {
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query ends within 10 s")
        .expect("query task")
        .expect_err("the query must fail")
}

/// pgsluice with the database entry pointing at `tap`, with `server_tls_sslmode = mode`
/// and a pool of one; a tokio-postgres client through it, whose server uses TLS.
async fn through_tap(tap: &Tap, mode: &str) -> (Pooler, tokio_postgres::Client) {
    let p = start(&ini(
        &format!("app = host=127.0.0.1 port={} dbname=postgres", tap.port),
        &format!("server_tls_sslmode = {mode}\ndefault_pool_size = 1"),
    ));
    let client = common::connect(p.port, "app", "tls_user", None)
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e:?}\n{}", p.log()));
    assert!(
        server_side_ssl(&client).await,
        "{mode}: the server connection uses TLS"
    );
    (p, client)
}

/// A cancel through pgsluice with server_tls_sslmode = require ends the running
/// `pg_sleep(30)` with 57014 within seconds, and goes to PostgreSQL inside TLS like the
/// connection it cancels. PostgreSQL reads a CancelRequest before authentication, so
/// neither pg_hba (hostssl) nor pg_stat_ssl can tell how a cancel came; the tap in front
/// of the cluster can: every connection pgsluice opened, the cancel's included, started
/// with an SSLRequest (answered `S` by the cluster), and no plaintext CancelRequest went
/// by. The cancel's connection ends cleanly: nothing is logged about it.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_goes_to_the_server_over_tls_under_require() {
    roles().await;
    ssl_cluster().await;
    let tap = Tap::start(Misbehave::Nothing).await;
    let (p, client) = through_tap(&tap, "require").await;
    let token = client.cancel_token();
    let sql = "SELECT pg_sleep(30) -- cancel over tls";
    let query = tokio::spawn(async move { client.simple_query(sql).await });
    cluster().active_pid(None, sql).await;
    let sent = Instant::now();
    token
        .cancel_query(NoTls)
        .await
        .expect("send the cancel to pgsluice");
    let err = query_error(query).await;
    assert_eq!(sqlstate_of(&err), "57014", "{err:?}\n{}", p.log());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let conns = tap.connections();
    assert_eq!(conns.len(), 2, "the server login and the cancel: {conns:?}");
    assert!(
        conns.iter().all(|c| c == &[Opening::Ssl]),
        "every connection to the server must start with an SSLRequest: {conns:?}"
    );
    // The pool's one server is released only once the cancel has finished, so when the
    // next client is served, a failed cancel would have been logged by then.
    let next = common::connect(p.port, "app", "tls_user", None)
        .await
        .expect("next client");
    next.simple_query("SELECT 1")
        .await
        .expect("next client's query");
    assert!(!p.log().contains("cancel request to"), "{}", p.log());
}

/// When the server answers the cancel's SSLRequest with `N` (the tap does, for every
/// connection after the server login): under prefer the CancelRequest follows in
/// plaintext on that connection, as a prefer login would, and the query ends with
/// 57014; under require pgsluice sends no CancelRequest at all, logs why, and the query
/// runs on.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_whose_ssl_request_is_refused_follows_server_tls_sslmode() {
    roles().await;
    ssl_cluster().await;
    for mode in ["prefer", "require"] {
        let tap = Tap::start(Misbehave::RefuseSslAfter(1)).await;
        let (p, client) = through_tap(&tap, mode).await;
        let token = client.cancel_token();
        let sql = format!("SELECT pg_sleep(30) -- cancel refused ssl, {mode}");
        let q = sql.clone();
        let query = tokio::spawn(async move { client.simple_query(&q).await });
        let server_pid = cluster().active_pid(None, &sql).await;
        token
            .cancel_query(NoTls)
            .await
            .expect("send the cancel to pgsluice");
        if mode == "prefer" {
            let err = query_error(query).await;
            assert_eq!(sqlstate_of(&err), "57014", "{err:?}\n{}", p.log());
            let conns = tap.connections();
            assert_eq!(conns.len(), 2, "{conns:?}");
            assert!(
                matches!(conns[1].as_slice(),
                    [Opening::Ssl, Opening::Cancel { pid, .. }] if *pid == server_pid),
                "prefer: SSLRequest, `N`, then the cancel in plaintext: {conns:?}"
            );
            continue;
        }
        assert!(
            p.wait_for_log("server refused SSL", Duration::from_secs(5)),
            "require: no warning\n{}",
            p.log()
        );
        assert!(
            p.log()
                .lines()
                .any(|l| l.contains("cancel request") && l.contains("server refused SSL")),
            "{}",
            p.log()
        );
        // The cancel's socket is closed before the warning is logged: nothing more can
        // come on it.
        let conns = tap.connections();
        assert_eq!(conns.len(), 2, "{conns:?}");
        assert_eq!(
            conns[1],
            [Opening::Ssl],
            "require: no CancelRequest after `N`"
        );
        assert_eq!(
            cluster().active_pid(None, &sql).await,
            server_pid,
            "the query runs on"
        );
        cluster()
            .superuser()
            .await
            .execute("SELECT pg_cancel_backend($1)", &[&server_pid])
            .await
            .expect("pg_cancel_backend");
        let err = query_error(query).await;
        assert_eq!(sqlstate_of(&err), "57014", "{err:?}");
    }
}

/// A stand-in server on 127.0.0.1: answers the SSLRequest with `answer`; after `S` it
/// completes a TLS handshake and reports the SNI the client sent, then closes.
async fn stand_in(answer: u8) -> (u16, tokio::task::JoinHandle<Option<Option<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let c = certs();
    let chain = CertificateDer::pem_slice_iter(c.pg_server.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(c.pg_server.key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.ok()?;
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.ok()?;
        s.write_all(&[answer]).await.ok()?;
        if answer != b'S' {
            // Read whatever comes (a startup packet or nothing) and close.
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            return Some(None);
        }
        let tls = acceptor.accept(s).await.ok()?;
        Some(tls.get_ref().1.server_name().map(str::to_string))
    });
    (port, task)
}

#[tokio::test]
async fn sni_is_sent_for_host_names_in_every_mode() {
    roles().await;
    for (mode, host, want) in [
        ("prefer", "localhost", Some("localhost")),
        ("require", "localhost", Some("localhost")),
        ("require", "127.0.0.1", None),
    ] {
        let (port, task) = stand_in(b'S').await;
        let p = start(&ini(
            &format!("app = host={host} port={port} dbname=postgres"),
            &format!("server_tls_sslmode = {mode}\nserver_connect_timeout = 3"),
        ));
        // The stand-in ends the connection after the handshake: the login fails, which
        // is fine; only the SNI matters.
        let _ = common::connect(p.port, "app", "tls_user", None).await;
        let sni = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stand-in finished")
            .expect("stand-in task")
            .expect("stand-in saw a handshake");
        assert_eq!(sni.as_deref(), want, "{mode} {host}");
    }
}

#[tokio::test]
async fn server_require_fails_when_the_server_refuses_ssl() {
    roles().await;
    let (port, _task) = stand_in(b'N').await;
    let p = start(&ini(
        &format!("app = host=127.0.0.1 port={port} dbname=postgres"),
        "server_tls_sslmode = require\nserver_connect_timeout = 3",
    ));
    let e = common::connect(p.port, "app", "tls_user", None)
        .await
        .map(|_| ())
        .expect_err("must fail");
    assert!(
        err_text(&e).contains("server refused SSL"),
        "{}",
        err_text(&e)
    );
}

/// Big results and a big COPY IN through TLS on both sides, then many short
/// transactions: rustls buffers what the socket does not take at once, and nothing may
/// stay stuck in its buffers when the relay stops (a release, an idle client).
#[tokio::test]
async fn bulk_data_and_many_transactions_over_tls_on_both_sides() {
    roles().await;
    ssl_cluster().await;
    for mode in ["transaction", "session"] {
        bulk_over_tls(mode).await;
    }
}

async fn bulk_over_tls(mode: &str) {
    let p = start(
        &ini(
            &db("app", ""),
            &format!(
                "client_tls_sslmode = require\nserver_tls_sslmode = require\n{CLIENT_TLS_FILES}"
            ),
        )
        .replace("pool_mode = transaction", &format!("pool_mode = {mode}")),
    );
    let client = tls_connect(
        p.port,
        "app",
        "tls_user",
        client_tls(&certs().ca, None, false),
        false,
    )
    .await
    .expect("TLS client");
    assert!(server_side_ssl(&client).await);
    // ~24 MB of rows from the server.
    let rows = client
        .query(
            "SELECT repeat('x', 1200) FROM generate_series(1, 20000)",
            &[],
        )
        .await
        .expect("big result");
    assert_eq!(rows.len(), 20000);
    assert!(rows.iter().all(|r| r.get::<_, String>(0).len() == 1200));
    // ~16 MB to the server.
    let big = "y".repeat(16 * 1024 * 1024);
    let row = client
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .expect("big parameter");
    assert_eq!(row.get::<_, i32>(0), 16 * 1024 * 1024);
    for i in 0..300i32 {
        let row = client
            .query_one("SELECT $1::int4", &[&i])
            .await
            .expect("small");
        assert_eq!(row.get::<_, i32>(0), i);
    }
}
