//! Connecting to PostgreSQL and logging in as a client: startup packet, answering
//! AuthenticationCleartext/MD5/SASL (SCRAM-SHA-256, with pass-through keys when only a
//! SCRAM secret is stored), collecting ParameterStatus and BackendKeyData, connect_query.
//! The whole of connect + login shares one `server_connect_timeout` budget.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use super::conn::{next_id, ServerAddr, ServerConn, ServerParams};
use crate::auth::{md5, scram};
use crate::config::Secret;
use crate::net::msgio::{read_msg, ReadError};
use crate::net::Stream;
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

/// Everything needed to open one server connection for a pool.
#[derive(Debug, Clone)]
pub struct Target {
    pub hosts: Vec<Host>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// Extra startup parameters (db entry's client_encoding/datestyle/timezone/…).
    pub startup: Vec<(String, String)>,
    pub connect_query: Option<String>,
    pub connect_timeout: Duration,
    pub keepalive: bool,
    pub max_packet_size: u32,
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
    #[error("connect failed")]
    Connect(String),
    #[error("connect timeout")]
    Timeout,
    #[error("{}", .0.message)]
    Server(ErrorFields),
    #[error("{0}")]
    Auth(&'static str),
    #[error("server login failed: {0}")]
    Protocol(String),
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

    /// 57P03 "the database system is starting up": waiting clients keep waiting.
    pub fn is_starting_up(&self) -> bool {
        matches!(self, LoginError::Server(f) if f.code == crate::proto::error::CANNOT_CONNECT_NOW)
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

/// Connects and logs in, within `target.connect_timeout` in total. `start` rotates the
/// host list (round-robin across connects).
pub async fn connect(
    target: &Target,
    cred: &Credential,
    start: usize,
    generation: u64,
) -> Result<ServerConn, LoginError> {
    match tokio::time::timeout(
        target.connect_timeout,
        connect_inner(target, cred, start, generation),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(LoginError::Timeout),
    }
}

async fn open(target: &Target, start: usize) -> Result<(Stream, ServerAddr), LoginError> {
    let mut last = String::from("no host");
    let n = target.hosts.len().max(1);
    for i in 0..target.hosts.len() {
        match &target.hosts[(start + i) % n] {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", target.port));
                match UnixStream::connect(&path).await {
                    Ok(s) => return Ok((Stream::Unix(s), ServerAddr::Unix(path))),
                    Err(e) => last = format!("{}: {e}", path.display()),
                }
            }
            Host::Tcp(h) => {
                let addrs = match tokio::net::lookup_host((h.as_str(), target.port)).await {
                    Ok(a) => a,
                    Err(e) => {
                        last = format!("server DNS lookup failed: {h}: {e}");
                        continue;
                    }
                };
                for a in addrs {
                    match TcpStream::connect(a).await {
                        Ok(s) => {
                            let s = Stream::tcp(s);
                            s.set_keepalive(target.keepalive);
                            return Ok((s, ServerAddr::Tcp(a)));
                        }
                        Err(e) => last = format!("{a}: {e}"),
                    }
                }
            }
        }
    }
    Err(LoginError::Connect(last))
}

async fn connect_inner(
    target: &Target,
    cred: &Credential,
    start: usize,
    generation: u64,
) -> Result<ServerConn, LoginError> {
    let (mut stream, addr) = open(target, start).await?;
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
    let (ip, port) = match &addr {
        ServerAddr::Tcp(a) => (a.ip().to_string(), a.port()),
        ServerAddr::Unix(p) => (p.display().to_string(), target.port),
    };
    let (lip, lport) = match &stream {
        Stream::Tcp(t) => t
            .local_addr()
            .map(|a| (a.ip().to_string(), a.port()))
            .unwrap_or_default(),
        Stream::Unix(_) => ("unix".to_string(), 0),
    };
    let info = std::sync::Arc::new(crate::stats::ServerInfo::new(
        id, ip, port, lip, lport, key.0,
    ));
    let mut conn = ServerConn {
        stream,
        rbuf,
        params: sp,
        backend_pid: key.0,
        backend_secret: key.1,
        addr,
        id,
        created: now,
        last_used: now,
        generation,
        info,
    };
    if let Some(q) = &target.connect_query {
        // PgBouncer logs connect_query errors and keeps the connection.
        if let Err(e) = simple_query(&mut conn, q, max).await {
            tracing::warn!("connect_query failed: {e}");
        }
    }
    Ok(conn)
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
