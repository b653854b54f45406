//! Connecting to PostgreSQL and logging in as a client: startup packet, answering
//! AuthenticationCleartext/MD5/SASL (SCRAM-SHA-256, with pass-through keys when only a
//! SCRAM secret is stored), collecting ParameterStatus and BackendKeyData, connect_query.
//! The socket itself, TLS included, is opened by `dial.rs`.
//!
//! The whole of it — DNS, connect, login, connect_query — shares one
//! `server_connect_timeout` budget, raced over every address of every host
//! (`net/connect.rs`), so a host list full of black holes costs one budget, not one each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::conn::{next_id, ServerAddr, ServerConn, ServerParams};
use super::dial::ServerRoute;
use crate::auth::{md5, scram};
use crate::config::{LoadBalanceHosts, Secret};
use crate::net::connect::{race, stagger_for, FailedAddrs, Outcome};
use crate::net::msgio::{read_msg, ReadError};
use crate::net::tcp::TcpOptions;
use crate::net::tls::{ServerSide, SideSettings, SslMode};
use crate::net::{dns, Stream};
use crate::proto::{ErrorFields, PgError};

/// One entry of a `host=` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A socket directory; the socket is `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl Host {
    /// Parses a PgBouncer `host=` value: a comma list of names, IPs or socket dirs.
    /// `None` (unset) = the Unix socket directory.
    pub fn parse_list(host: Option<&str>, unix_socket_dir: &str) -> Vec<Host> {
        let Some(h) = host.filter(|h| !h.trim().is_empty()) else {
            return vec![Host::Unix(PathBuf::from(unix_socket_dir))];
        };
        h.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with('/') {
                    Host::Unix(PathBuf::from(s))
                } else {
                    Host::Tcp(s.to_string())
                }
            })
            .collect()
    }
}

/// Everything needed to open one server connection for a pool, and the server-health
/// settings that go with them (they change together on RELOAD, see `Pool::reconfigure`).
#[derive(Debug, Clone)]
pub struct Target {
    pub hosts: Vec<Host>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// Extra startup parameters (db entry's client_encoding/datestyle/timezone/…).
    pub startup: Vec<(String, String)>,
    pub connect_query: Option<String>,
    /// server_connect_timeout: ONE budget for resolving, connecting and logging in,
    /// across every address of every host. Zero = no limit.
    pub connect_timeout: Duration,
    pub tcp: TcpOptions,
    pub max_packet_size: u32,
    pub load_balance: LoadBalanceHosts,
    pub dns_max_ttl: Duration,
    pub dns_nxdomain_ttl: Duration,
    /// server_login_retry: how long a failed address is tried last.
    pub login_retry: Duration,
    /// server_check_query: `None` = no check; `Some("")` = an empty Query (`<empty>`).
    pub check_query: Option<String>,
    /// server_check_delay: a server idle longer than this is checked before reuse.
    pub check_delay: Duration,
    /// server_fast_close (session mode).
    pub fast_close: bool,
    /// server_tls_sslmode (or the database's `sslmode=`) and what it needs.
    pub tls: ServerTls,
}

/// How this pool's servers speak TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    /// The rustls configuration for `mode` (`None` for disable); `Err` when the mode
    /// cannot be used (verify-* without any CA), said at connect time.
    pub config: Result<Option<Arc<rustls::ClientConfig>>, String>,
    /// The server_tls_* settings it was built from: a change reconnects servers.
    pub settings: SideSettings,
}

impl ServerTls {
    pub fn new(mode: SslMode, side: &ServerSide) -> ServerTls {
        ServerTls {
            mode,
            config: side.config_for(mode),
            settings: side.settings.clone(),
        }
    }

    /// Same mode and settings (file contents may differ: rotated certificates do not
    /// close servers, new connections simply use them).
    pub fn same_settings(&self, other: &ServerTls) -> bool {
        self.mode == other.mode && self.settings == other.settings
    }
}

impl Target {
    /// The `server_check_query` setting as the check to run: empty = disabled,
    /// `<empty>` = an empty Query message.
    pub fn check_query_from(setting: &str) -> Option<String> {
        match setting.trim() {
            "" => None,
            q if q.eq_ignore_ascii_case("<empty>") => Some(String::new()),
            q => Some(q.to_string()),
        }
    }
}

/// What pgsluice answers the server's authentication request with.
#[derive(Clone, Default)]
pub enum Credential {
    #[default]
    None,
    Secret(Secret),
    /// ClientKey/ServerKey captured from a client's SCRAM login (pass-through).
    ScramKeys(scram::ScramKeys),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No address accepted a connection; the text says which and why (for the log).
    #[error("connect failed")]
    Connect(String),
    #[error("connect timeout")]
    Timeout,
    /// No host name resolved; the text says which and why (for the log).
    #[error("server DNS lookup failed")]
    Dns(String),
    #[error("{}", .0.message)]
    Server(ErrorFields),
    #[error("{0}")]
    Auth(&'static str),
    #[error("server login failed: {0}")]
    Protocol(String),
    /// TLS refused by the server, or the handshake or certificate check failed.
    #[error("{0}")]
    Tls(String),
}

impl LoginError {
    /// The error sent to clients waiting for this login. Server-side login errors keep the
    /// server's SQLSTATE (PgBouncer forwards them); local failures are 08P01.
    pub fn to_client(&self) -> PgError {
        match self {
            LoginError::Server(f) => {
                let code = if f.code.is_empty() {
                    "08P01"
                } else {
                    f.code.as_str()
                };
                PgError::fatal(f.message.clone()).with_code(code)
            }
            other => PgError::fatal(other.to_string()),
        }
    }

    /// The error with its details, for the log (clients get the short PgBouncer text).
    pub fn log_text(&self) -> String {
        match self {
            LoginError::Connect(d) => format!("connect failed: {d}"),
            LoginError::Dns(d) => format!("server DNS lookup failed: {d}"),
            LoginError::Server(f) if !f.code.is_empty() => format!("{} ({})", f.message, f.code),
            other => other.to_string(),
        }
    }

    /// 57P03 "the database system is starting up": waiting clients keep waiting.
    pub fn is_starting_up(&self) -> bool {
        matches!(self, LoginError::Server(f) if f.code == crate::proto::error::CANNOT_CONNECT_NOW)
    }

    /// An answer about the credentials or the database rather than about one address
    /// (bad password, no such database or role, no permission): every address of the
    /// list would say the same, so the race stops and clients get it at once. Classes 08
    /// (connection), 53 (resources: too many connections), 57 (operator intervention:
    /// starting up, shutting down) and 58 (system error) are about that server: the next
    /// address may do better.
    pub fn is_definitive(&self) -> bool {
        match self {
            LoginError::Auth(_) => true,
            LoginError::Server(f) => {
                !f.code.is_empty()
                    && !["08", "53", "57", "58"]
                        .iter()
                        .any(|c| f.code.starts_with(c))
            }
            _ => false,
        }
    }

    /// Preference when every attempt failed: the most telling error is reported.
    fn rank(&self) -> u8 {
        match self {
            LoginError::Server(_) => 6,
            LoginError::Auth(_) => 5,
            LoginError::Protocol(_) | LoginError::Tls(_) => 4,
            LoginError::Timeout => 3,
            LoginError::Connect(_) => 2,
            LoginError::Dns(_) => 1,
        }
    }
}

impl From<ReadError> for LoginError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Eof => LoginError::Protocol("server closed the connection".into()),
            other => LoginError::Protocol(other.to_string()),
        }
    }
}

/// Addresses that failed lately (or lost a race they started first), process-wide: every
/// pool using an address benefits from what one learnt about it.
static FAILED: LazyLock<FailedAddrs<ServerAddr>> = LazyLock::new(FailedAddrs::default);

/// One address to try, and which `host=` entry it came from.
#[derive(Debug, Clone)]
struct Candidate {
    addr: ServerAddr,
    host: usize,
}

/// Connects and logs in. `target.connect_timeout` is one budget for all of it: resolving
/// the host names, and connect + login raced over every address of every host (see
/// `net/connect.rs`). `start` is the host to begin with: a round-robin counter, or with
/// `load_balance_hosts=disable` the host that worked last. The winning host's index is
/// in [`ServerConn::host_index`].
pub async fn connect(
    target: &Arc<Target>,
    cred: &Credential,
    start: usize,
    generation: u64,
) -> Result<ServerConn, LoginError> {
    let budget = (!target.connect_timeout.is_zero()).then_some(target.connect_timeout);
    let deadline = budget.map(|b| Instant::now() + b);
    let cands = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), candidates(target, start))
            .await
            .map_err(|_| LoginError::Timeout)??,
        None => candidates(target, start).await?,
    };
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let stagger = stagger_for(cands.len(), left);
    let t = target.clone();
    let cred = Arc::new(cred.clone());
    let outcome = race(
        cands,
        deadline,
        stagger,
        move |c: Candidate| {
            let (t, cred) = (t.clone(), cred.clone());
            async move { attempt(&t, &cred, c, generation).await }
        },
        LoginError::is_definitive,
    )
    .await;
    match outcome {
        Outcome::Won {
            value: mut conn,
            winner,
            slower,
        } => {
            FAILED.succeeded(&winner.addr);
            for c in slower {
                tracing::info!(
                    "{}: slower than {}, tried last for now",
                    c.addr,
                    winner.addr
                );
                FAILED.failed(&c.addr);
            }
            if let Some(q) = &target.connect_query {
                // PgBouncer logs connect_query errors and keeps the connection; the query
                // still counts against the budget, as part of logging in.
                let max = target.max_packet_size;
                let run = simple_query(&mut conn, q, max);
                let res = match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), run)
                        .await
                        .map_err(|_| LoginError::Timeout)?,
                    None => run.await,
                };
                if let Err(e) = res {
                    if !matches!(e, LoginError::Server(_)) {
                        return Err(e);
                    }
                    tracing::warn!("connect_query failed: {e}");
                }
            }
            Ok(conn)
        }
        Outcome::Lost {
            failures,
            pending,
            timed_out,
        } => {
            let mut detail = Vec::new();
            for (c, e) in &failures {
                if !e.is_definitive() {
                    FAILED.failed(&c.addr);
                }
                detail.push(format!("{}: {}", c.addr, e.log_text()));
            }
            if timed_out {
                for c in &pending {
                    FAILED.failed(&c.addr);
                    detail.push(format!("{}: no answer", c.addr));
                }
            }
            if !detail.is_empty() {
                // Which address said what: the pool's warning has only the short reason.
                tracing::info!(
                    "connect {}@{}: {}",
                    target.user,
                    target.dbname,
                    detail.join("; ")
                );
            }
            let stopped = failures.last().filter(|(_, e)| e.is_definitive());
            let best = match stopped {
                Some(_) => failures.into_iter().last().map(|(_, e)| e),
                None => failures
                    .into_iter()
                    .map(|(_, e)| e)
                    .max_by_key(|e| e.rank()),
            };
            Err(match best {
                // An address still pending at the deadline outranks refused ones: the
                // budget is what ran out.
                Some(e) if e.rank() >= LoginError::Timeout.rank() || !timed_out => e,
                _ if timed_out => LoginError::Timeout,
                Some(e) => e,
                None => LoginError::Connect("no address".into()),
            })
        }
    }
}

/// Every address of every host, in the order to try: hosts from `start` on (wrapping),
/// a name's addresses rotated for round-robin, then recently failed addresses moved last.
/// Host names are resolved concurrently, through the DNS cache.
async fn candidates(target: &Target, start: usize) -> Result<Vec<Candidate>, LoginError> {
    let n = target.hosts.len();
    if n == 0 {
        return Err(LoginError::Connect("no host".into()));
    }
    let round_robin = target.load_balance == LoadBalanceHosts::RoundRobin;
    let mut lookups = JoinSet::new();
    for (i, h) in target.hosts.iter().enumerate() {
        if let Host::Tcp(name) = h {
            let (name, ttl, nx) = (name.clone(), target.dns_max_ttl, target.dns_nxdomain_ttl);
            lookups.spawn(async move { (i, dns::cache().resolve(&name, ttl, nx).await) });
        }
    }
    let mut answers: Vec<Option<dns::Answer>> = vec![None; n];
    while let Some(r) = lookups.join_next().await {
        if let Ok((i, a)) = r {
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(a);
            }
        }
    }
    let mut out = Vec::new();
    let mut dns_errors = Vec::new();
    for k in 0..n {
        let i = (start + k) % n;
        match (&target.hosts[i], answers[i].take()) {
            (Host::Unix(dir), _) => out.push(Candidate {
                addr: ServerAddr::Unix(dir.join(format!(".s.PGSQL.{}", target.port))),
                host: i,
            }),
            (Host::Tcp(name), Some(Ok(ips))) if ips.is_empty() => {
                dns_errors.push(format!("{name}: no addresses"));
            }
            (Host::Tcp(_), Some(Ok(ips))) => {
                let rot = if round_robin { start % ips.len() } else { 0 };
                for j in 0..ips.len() {
                    let ip = ips[(rot + j) % ips.len()];
                    out.push(Candidate {
                        addr: ServerAddr::Tcp(SocketAddr::new(ip, target.port)),
                        host: i,
                    });
                }
            }
            (Host::Tcp(name), Some(Err(e))) => dns_errors.push(format!("{name}: {e}")),
            (Host::Tcp(name), None) => dns_errors.push(format!("{name}: lookup failed")),
        }
    }
    if out.is_empty() {
        return Err(LoginError::Dns(dns_errors.join("; ")));
    }
    for e in &dns_errors {
        tracing::warn!("server DNS lookup failed: {e}");
    }
    Ok(FAILED.order(out, |c| &c.addr, target.login_retry))
}

/// One racer: open the socket to `c` (TLS as the pool's server_tls_sslmode says), then
/// log in. The server keeps the route, so its cancels are sent the same way.
async fn attempt(
    target: &Target,
    cred: &Credential,
    c: Candidate,
    generation: u64,
) -> Result<ServerConn, LoginError> {
    let route = Arc::new(ServerRoute::new(
        c.addr,
        &target.tls,
        target.hosts.get(c.host),
    ));
    let stream = route.open(Some(&target.tcp)).await?;
    login(target, cred, stream, route, c.host, generation).await
}

/// The startup packet, authentication and the welcome on an open socket.
async fn login(
    target: &Target,
    cred: &Credential,
    mut stream: Stream,
    route: Arc<ServerRoute>,
    host_index: usize,
    generation: u64,
) -> Result<ServerConn, LoginError> {
    let mut out = BytesMut::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", &target.user), ("database", &target.dbname)];
    for (k, v) in &target.startup {
        params.push((k, v));
    }
    frontend::startup_message(params.iter().copied(), &mut out)
        .map_err(|e| LoginError::Protocol(e.to_string()))?;
    write(&mut stream, &mut out).await?;

    let mut rbuf = BytesMut::with_capacity(4096);
    let max = target.max_packet_size;
    let mut scram_client: Option<scram::ScramClient> = None;
    let mut sp = ServerParams::default();
    let mut key = (0, 0);
    loop {
        let m = read_msg(&mut stream, &mut rbuf, max).await?;
        match m.tag {
            b'R' => {
                let mut body = m.body;
                if body.len() < 4 {
                    return Err(LoginError::Protocol("short authentication request".into()));
                }
                let code = body.get_i32();
                match code {
                    0 => {}
                    3 => {
                        let pw = plain_password(cred)
                            .ok_or(LoginError::Auth("server login failed: wrong password type"))?;
                        frontend::password_message(pw.as_bytes(), &mut out)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        write(&mut stream, &mut out).await?;
                    }
                    5 => {
                        if body.len() < 4 {
                            return Err(LoginError::Protocol("short md5 salt".into()));
                        }
                        let salt = [body[0], body[1], body[2], body[3]];
                        let resp = match cred {
                            Credential::Secret(s) => {
                                md5::client_response_for(s, &target.user, salt)
                            }
                            _ => None,
                        }
                        .ok_or(LoginError::Auth("server login failed: wrong password type"))?;
                        frontend::password_message(resp.as_bytes(), &mut out)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        write(&mut stream, &mut out).await?;
                    }
                    10 => {
                        let mechs: Vec<&[u8]> = body[..]
                            .split(|&b| b == 0)
                            .filter(|m| !m.is_empty())
                            .collect();
                        if !mechs.iter().any(|m| *m == scram::SCRAM_SHA_256.as_bytes()) {
                            return Err(LoginError::Protocol(
                                "server offers no supported SASL mechanism".into(),
                            ));
                        }
                        let c = match cred {
                            Credential::Secret(Secret::Plain(p)) => {
                                scram::ClientCredential::Password(p.clone())
                            }
                            Credential::ScramKeys(k) => scram::ClientCredential::Keys(k.clone()),
                            _ => {
                                return Err(LoginError::Auth(
                                    "server login failed: wrong password type",
                                ))
                            }
                        };
                        let mut client = scram::ScramClient::new(c);
                        let first = client.client_first();
                        frontend::sasl_initial_response(scram::SCRAM_SHA_256, &first, &mut out)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        write(&mut stream, &mut out).await?;
                        scram_client = Some(client);
                    }
                    11 => {
                        let c = scram_client
                            .as_mut()
                            .ok_or(LoginError::Protocol("unexpected SASLContinue".into()))?;
                        let fin = c
                            .handle_server_first(&body)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        frontend::sasl_response(&fin, &mut out)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        write(&mut stream, &mut out).await?;
                    }
                    12 => {
                        let c = scram_client
                            .as_mut()
                            .ok_or(LoginError::Protocol("unexpected SASLFinal".into()))?;
                        c.handle_server_final(&body)
                            .map_err(|e| LoginError::Auth(e.client_text()))?;
                    }
                    other => {
                        return Err(LoginError::Protocol(format!(
                            "unsupported authentication method {other}"
                        )));
                    }
                }
            }
            b'S' => {
                let mut pos = 0;
                if let (Some(k), Some(v)) = (
                    crate::proto::frame::read_cstr(&m.body, &mut pos),
                    crate::proto::frame::read_cstr(&m.body, &mut pos),
                ) {
                    sp.set(k, v);
                }
            }
            b'K' => {
                let mut b = m.body;
                if b.len() >= 8 {
                    key = (b.get_i32(), b.get_i32());
                }
            }
            b'E' => return Err(LoginError::Server(ErrorFields::parse(&m.body))),
            b'N' | b'v' => {}
            b'Z' => break,
            t => {
                return Err(LoginError::Protocol(format!(
                    "unexpected message '{}' during login",
                    t as char
                )))
            }
        }
    }
    let now = Instant::now();
    let id = next_id();
    let (ip, port) = match &route.addr {
        ServerAddr::Tcp(a) => (a.ip().to_string(), a.port()),
        ServerAddr::Unix(p) => (p.display().to_string(), target.port),
    };
    let (lip, lport) = stream.local_addr();
    let info = std::sync::Arc::new(crate::stats::ServerInfo::new(
        id,
        ip,
        port,
        lip,
        lport,
        key.0,
        stream.tls_description(),
    ));
    Ok(Box::new(super::conn::Backend {
        stream,
        rbuf,
        params: sp,
        backend_pid: key.0,
        backend_secret: key.1,
        route,
        id,
        created: now,
        last_used: now,
        generation,
        info,
        host_index,
        lifetime_factor: super::conn::lifetime_jitter(),
        lifetime_end: std::cell::Cell::new(None),
        fast_close: false,
        prepared: Default::default(),
        params_synced: None,
    }))
}

fn plain_password(cred: &Credential) -> Option<&str> {
    match cred {
        Credential::Secret(Secret::Plain(p)) => Some(p),
        _ => None,
    }
}

async fn write(s: &mut Stream, out: &mut BytesMut) -> Result<(), LoginError> {
    s.write_all(out)
        .await
        .map_err(|e| LoginError::Protocol(e.to_string()))?;
    out.clear();
    Ok(())
}

/// Runs a simple query and swallows its results up to ReadyForQuery, recording any
/// ParameterStatus. Returns the first ErrorResponse as `Err`.
pub async fn simple_query(conn: &mut ServerConn, sql: &str, max: u32) -> Result<(), LoginError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(|e| LoginError::Protocol(e.to_string()))?;
    write(&mut conn.stream, &mut out).await?;
    let mut err = None;
    loop {
        let m = read_msg(&mut conn.stream, &mut conn.rbuf, max).await?;
        match m.tag {
            b'E' => err = Some(ErrorFields::parse(&m.body)),
            b'S' => {
                let mut pos = 0;
                if let (Some(k), Some(v)) = (
                    crate::proto::frame::read_cstr(&m.body, &mut pos),
                    crate::proto::frame::read_cstr(&m.body, &mut pos),
                ) {
                    conn.params.set(k, v);
                }
            }
            b'Z' => break,
            _ => {}
        }
    }
    match err {
        Some(e) => Err(LoginError::Server(e)),
        None => Ok(()),
    }
}
