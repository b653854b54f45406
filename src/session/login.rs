//! Client login: the startup packet (SSLRequest answered `S` and TLS negotiated when
//! client_tls_sslmode allows, else `N`; direct TLS; GSSENCRequest answered `N`;
//! CancelRequest routed; protocol negotiation), startup parameters (tracked, ignored, or
//! refused with PgBouncer's text), client limits, authentication (trust, any, plain, md5,
//! scram-sha-256, cert),
//! and the welcome: the pool's cached ParameterStatus set merged with the client's values,
//! a pgsluice-issued BackendKeyData, ReadyForQuery.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::CancelGuard;
use super::params::{canonical, parse_options, tracked_names, ClientParams};
use crate::auth::{md5, scram};
use crate::config::{AuthType, Config, Secret};
use crate::control::App;
use crate::net::msgio::read_msg;
use crate::net::tls::{ClientSide, SslMode, ALPN_POSTGRESQL};
use crate::net::{PeerAddr, Stream};
use crate::pool::{Counter, Pool, Shared};
use crate::proto::backend;
use crate::proto::startup::{self, StartupPacket};
use crate::proto::PgError;

/// The first byte of a TLS handshake record: a direct-TLS client's first byte, never the
/// first byte of a startup packet's length (that would be a length above 350 MB).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Largest auth message a client may send (passwords, SASL messages).
const MAX_AUTH_MSG: u32 = 65_536;

/// Client-count slots taken at login and given back when the client goes.
pub struct ClientSlots {
    app: Arc<App>,
    db: Arc<Shared>,
    user: Arc<Shared>,
    pool: Arc<Pool>,
}

impl Drop for ClientSlots {
    fn drop(&mut self) {
        self.app.clients.release();
        self.db.clients.release();
        self.user.clients.release();
        self.pool.clients.release();
    }
}

/// Keeps a client listed in SHOW CLIENTS while it lives.
pub struct ClientRecord {
    app: Arc<App>,
    pub info: Arc<crate::stats::ClientInfo>,
}

impl ClientRecord {
    /// Lists `info` in `app.client_records` until the returned guard is dropped.
    pub(crate) fn new(app: &Arc<App>, info: Arc<crate::stats::ClientInfo>) -> ClientRecord {
        app.client_records.insert(info.id, info.clone());
        ClientRecord {
            app: app.clone(),
            info,
        }
    }
}

impl Drop for ClientRecord {
    fn drop(&mut self) {
        self.app.client_records.remove(&self.info.id);
    }
}

/// A logged-in client, ready for its request loop.
pub struct Session {
    pub record: ClientRecord,
    pub pool: Arc<Pool>,
    pub params: ClientParams,
    pub user: String,
    pub db: String,
    pub cancel: CancelGuard,
    pub _slots: ClientSlots,
    /// Client bytes read past the login messages.
    pub rbuf: BytesMut,
}

pub enum Outcome {
    Session(Box<Session>),
    /// A console session (database `pgbouncer`), served by `admin::console::run`.
    Admin(Box<crate::admin::console::AdminSession>),
    /// A CancelRequest was served, or the client left during login.
    Done,
}

fn auth_failed() -> PgError {
    PgError::fatal("password authentication failed").with_code("28P01")
}

/// Reads startup-phase packets until a StartupMessage (or a cancel). With client TLS on,
/// an SSLRequest is answered `S` and the stream becomes TLS, and a connection that opens
/// with a TLS handshake record is PostgreSQL 17's direct TLS (`sslnegotiation=direct`),
/// which must agree on ALPN `postgresql`, as PostgreSQL requires. Unix sockets never
/// use TLS. `Ok(None)`: the client left (or its handshake failed; logged).
async fn read_startup(
    stream: &mut Stream,
    out: &mut BytesMut,
    tls: Option<&ClientSide>,
) -> Result<Option<StartupPacket>, PgError> {
    let mut ssl_done = false;
    let mut gss_done = false;
    if let (Some(t), Stream::Tcp(tcp)) = (tls, &*stream) {
        // One peek per TLS-enabled login; plaintext and SSLRequest clients are unaffected.
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1..) => {}
            _ => return Ok(None),
        }
        if first[0] == TLS_HANDSHAKE_RECORD {
            if let Err(e) = stream.accept_tls(t.config.clone()).await {
                tracing::info!("direct TLS handshake failed: {e}");
                return Ok(None);
            }
            if stream.alpn() != Some(ALPN_POSTGRESQL) {
                return Err(PgError::fatal(
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                ));
            }
            ssl_done = true;
        }
    }
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(None);
        }
        let n = startup::body_len(len).map_err(|e| PgError::fatal(e.to_string()))?;
        let mut body = vec![0u8; n];
        if stream.read_exact(&mut body).await.is_err() {
            return Ok(None);
        }
        match startup::parse(&body).map_err(|e| PgError::fatal(e.to_string()))? {
            StartupPacket::Ssl if !ssl_done => {
                ssl_done = true;
                match tls {
                    Some(t) if matches!(stream, Stream::Tcp(_)) => {
                        stream
                            .write_all(b"S")
                            .await
                            .map_err(|_| PgError::fatal("client write failed"))?;
                        if let Err(e) = stream.accept_tls(t.config.clone()).await {
                            tracing::info!("TLS handshake with client failed: {e}");
                            return Ok(None);
                        }
                    }
                    // TLS off (or a Unix socket): 'N' and the client carries on in
                    // plaintext, or gives up if it requires TLS.
                    _ => stream
                        .write_all(b"N")
                        .await
                        .map_err(|_| PgError::fatal("client write failed"))?,
                }
            }
            StartupPacket::GssEnc if !gss_done => {
                gss_done = true;
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|_| PgError::fatal("client write failed"))?;
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                return Err(PgError::fatal("client re-sent startup pkt"));
            }
            p => {
                out.clear();
                return Ok(Some(p));
            }
        }
    }
}

/// What the startup parameters ask for.
struct Wanted {
    user: String,
    database: String,
    params: ClientParams,
    unrecognised_pq: Vec<String>,
}

fn check_params(
    cfg: &Config,
    raw: Vec<(String, String)>,
    peer: &PeerAddr,
) -> Result<Wanted, PgError> {
    let g = &cfg.general;
    let tracked = tracked_names(&g.track_extra_parameters);
    let ignored = |k: &str| {
        g.ignore_startup_parameters
            .iter()
            .any(|i| i.eq_ignore_ascii_case(k))
    };
    let mut user = None;
    let mut database = None;
    let mut params = ClientParams::default();
    let mut pq = Vec::new();
    for (k, v) in raw {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication"
                if matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "0"
                ) => {}
            "options" if ignored("options") => {}
            "options" => {
                let opts = parse_options(&v).map_err(|_| {
                    PgError::fatal(
                        "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed",
                    )
                })?;
                for (ok, ov) in opts {
                    if let Some(name) = canonical(&tracked, &ok) {
                        params.set(name, &ov);
                    } else if !ignored(&ok) {
                        return Err(PgError::fatal(format!(
                            "unsupported startup parameter in options: {ok}"
                        )));
                    }
                }
            }
            k if k.starts_with("_pq_.") => pq.push(k.to_string()),
            k => {
                if let Some(name) = canonical(&tracked, k) {
                    params.set(name, &v);
                } else if !ignored(k) {
                    return Err(PgError::fatal(format!(
                        "unsupported startup parameter: {k}"
                    )));
                }
            }
        }
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| PgError::fatal("no username supplied"))?;
    if user.len() > 128 {
        return Err(PgError::fatal("username too long"));
    }
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if g.application_name_add_host {
        let app = params.get("application_name").unwrap_or("").to_string();
        params.set(
            "application_name",
            &format!("{app} - {}:{}", peer.ip_string(), peer.port()),
        );
    }
    Ok(Wanted {
        user,
        database,
        params,
        unrecognised_pq: pq,
    })
}

/// Logs a client in. Errors are sent by the caller (FATAL, then close). `who` is the log
/// prefix; it gains the database and user once the startup packet names them.
/// `awaiting_server` is set once the client has authenticated and waits for the pool's
/// first server login, so the caller's client_login_timeout can say "(server down)".
pub async fn login(
    app: &Arc<App>,
    stream: &mut Stream,
    peer: &PeerAddr,
    id: u64,
    who: &mut crate::net::stream::Who,
    awaiting_server: &mut bool,
) -> Result<Outcome, PgError> {
    let mut out = BytesMut::with_capacity(512);
    let tls = app.tls.load_full();
    let (minor, raw) = match read_startup(stream, &mut out, tls.client.as_ref()).await? {
        None => return Ok(Outcome::Done),
        Some(StartupPacket::Cancel { pid, secret }) => {
            let g = &app.config.load().general;
            // 0 leaves the wait to server_connect_timeout: a cancel is never unbounded.
            let wait = if g.cancel_wait_timeout.is_zero() {
                g.server_connect_timeout
            } else {
                g.cancel_wait_timeout
            };
            app.cancels.cancel(pid, secret, wait).await;
            return Ok(Outcome::Done);
        }
        Some(StartupPacket::Startup { minor, params, .. }) => (minor, params),
        Some(_) => return Err(PgError::fatal("bad startup packet")),
    };
    // PgBouncer: "require SSL except on unix socket", checked before anything else.
    if tls
        .client
        .as_ref()
        .is_some_and(|t| t.mode >= SslMode::Require)
        && !stream.is_tls()
        && !stream.is_unix()
    {
        return Err(PgError::fatal("SSL required"));
    }
    let cfg = app.config.load_full();
    let w = check_params(&cfg, raw, peer)?;
    if minor > 0 || !w.unrecognised_pq.is_empty() {
        // Protocol 3.0 only, as PgBouncer: keeps cancel keys 4 bytes.
        backend::negotiate_protocol_version(&mut out, 0, &w.unrecognised_pq);
    }
    who.named(&w.database, &w.user);
    if cfg.general.log_connections {
        let t = stream.tls_description();
        tracing::info!(
            "{who} login attempt: db={} user={} tls={} replication=no",
            w.database,
            w.user,
            if t.is_empty() { "no" } else { t.as_str() }
        );
    }
    if w.database == "pgbouncer" {
        // The admin console: its own access rules, no client caps, open during shutdown.
        let s =
            crate::admin::console::login(app, stream, &mut out, peer, id, &w.user, &w.params, who)
                .await?;
        return Ok(Outcome::Admin(Box::new(s)));
    }
    if app.is_shutting_down() {
        return Err(PgError::fatal("pooler is shutting down"));
    }
    let Some(db) = cfg.database(&w.database) else {
        return Err(PgError::fatal(format!("no such database: {}", w.database)));
    };

    if app
        .registry
        .db_shared_if_exists(&db.name)
        .is_some_and(|d| d.disabled.load(std::sync::atomic::Ordering::Acquire))
    {
        return Err(PgError::fatal(format!(
            "database \"{}\" is disabled",
            db.name
        )));
    }

    // Client limits, checked before any authentication work.
    let g = &cfg.general;
    if !app.clients.try_acquire(g.max_client_conn) {
        return Err(PgError::fatal(
            "no more connections allowed (max_client_conn)",
        ));
    }
    let release_global = Guard(Some(&app.clients));
    let db_max = db
        .max_db_client_connections
        .unwrap_or(g.max_db_client_connections);
    let Some(db_shared) = app.registry.db_client_acquire(&db.name, db_max) else {
        return Err(PgError::fatal(
            "client connections exceeded (max_db_client_connections)",
        ));
    };
    let release_db = Guard(Some(&db_shared.clients));
    let user_max = cfg
        .users
        .get(&w.user)
        .and_then(|u| u.max_user_client_connections)
        .unwrap_or(g.max_user_client_connections);
    let pool_user = db.user.clone().unwrap_or_else(|| w.user.clone());
    let user_shared = app.registry.user_shared(&pool_user);
    if !user_shared.clients.try_acquire(user_max) {
        return Err(PgError::fatal(
            "client connections exceeded (max_user_client_connections)",
        ));
    }
    let release_user = Guard(Some(&user_shared.clients));

    let users = app.userlist.load_full();
    let secret = users.users.get(&w.user).cloned();
    let keys = authenticate(
        stream,
        &mut out,
        g.auth_type,
        &w.user,
        secret.as_ref(),
        db.user.is_some(),
        g.scram_iterations,
    )
    .await?;
    backend::auth_ok(&mut out);

    let pool = app
        .registry
        .attach_client(&cfg, &app.tls.load(), &users, &db, &pool_user);
    if let Some(k) = keys {
        if db.user.is_none() {
            pool.set_scram_keys(k);
        }
    }
    // From here the slots are owned by the session.
    std::mem::forget(release_global);
    std::mem::forget(release_db);
    std::mem::forget(release_user);
    let slots = ClientSlots {
        app: app.clone(),
        db: db_shared,
        user: user_shared,
        pool: pool.clone(),
    };

    // The welcome needs the server's parameters: log one server in if the pool never has.
    let welcome = match pool.welcome() {
        Some(w) => w,
        None => {
            *awaiting_server = true;
            let conn = pool.acquire().await.map_err(|e| {
                if e.message == "query_wait_timeout" {
                    PgError::fatal("client_login_timeout (server down)")
                } else {
                    e
                }
            })?;
            pool.release(conn);
            pool.welcome()
                .ok_or_else(|| PgError::fatal("server login failed"))?
        }
    };
    let mut params = w.params;
    let tracked = tracked_names(&g.track_extra_parameters);
    params.fill_from(&tracked, &welcome);
    for (k, v) in &welcome.0 {
        let v = params.get(k).unwrap_or(v);
        backend::parameter_status(&mut out, k, v);
    }
    let cancel = app.cancels.register();
    backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
    backend::ready_for_query(&mut out, b'I');
    stream
        .write_all(&out)
        .await
        .map_err(|_| PgError::fatal("client write failed"))?;
    pool.stats.add(&crate::stats::Snapshot {
        client_login_count: 1,
        ..Default::default()
    });
    let (local_addr, local_port) = stream.local_host();
    let info = Arc::new(crate::stats::ClientInfo::new(
        id,
        peer.host(),
        peer.port(),
        local_addr,
        local_port,
        w.database.clone(),
        w.user.clone(),
        params.get("application_name").unwrap_or("").to_string(),
        stream.tls_description(),
    ));
    info.cancel_pid
        .store(cancel.pid as u32, std::sync::atomic::Ordering::Relaxed);
    info.set_state(crate::stats::ClientState::Idle);
    app.client_records.insert(id, info.clone());
    let record = ClientRecord {
        app: app.clone(),
        info,
    };
    Ok(Outcome::Session(Box::new(Session {
        record,
        pool,
        params,
        user: w.user,
        db: w.database,
        cancel,
        _slots: slots,
        rbuf: BytesMut::new(),
    })))
}

/// Releases a counter slot unless forgotten (login failed part-way).
struct Guard<'a>(Option<&'a Counter>);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.release();
        }
    }
}

async fn flush(stream: &mut Stream, out: &mut BytesMut) -> Result<(), PgError> {
    stream
        .write_all(out)
        .await
        .map_err(|_| PgError::fatal("client write failed"))?;
    out.clear();
    Ok(())
}

/// Reads the client's next authentication message ('p').
async fn read_auth(stream: &mut Stream, rbuf: &mut BytesMut) -> Result<BytesMut, PgError> {
    let m = read_msg(stream, rbuf, MAX_AUTH_MSG)
        .await
        .map_err(|_| PgError::fatal("client closed connection during authentication"))?;
    if m.tag != b'p' {
        return Err(PgError::fatal(
            "client sent unexpected message during authentication",
        ));
    }
    Ok(m.body)
}

/// Runs the configured authentication method. Returns SCRAM keys when the client proved a
/// stored SCRAM secret (usable for pass-through to the server).
pub(crate) async fn authenticate(
    stream: &mut Stream,
    out: &mut BytesMut,
    auth_type: AuthType,
    user: &str,
    secret: Option<&Secret>,
    forced_user: bool,
    iterations: u32,
) -> Result<Option<scram::ScramKeys>, PgError> {
    let mut rbuf = BytesMut::new();
    match auth_type {
        // The user name must be the client certificate's CommonName (PgBouncer: no
        // password, no auth_file entry needed). Without TLS or a certificate it fails.
        AuthType::Cert => match stream.peer_common_name() {
            Some(cn) if cn == user => Ok(None),
            other => {
                match other {
                    Some(cn) => tracing::warn!(
                        "TLS certificate name mismatch: certificate CN {cn:?}, user {user:?}"
                    ),
                    None => tracing::warn!("auth_type=cert: no TLS client certificate"),
                }
                Err(PgError::fatal("certificate authentication failed").with_code("28000"))
            }
        },
        // `any` ignores the client's user name, so it needs a forced user to log in as
        // (PgBouncer: "auth_type=any requires forced user").
        AuthType::Any if forced_user => Ok(None),
        AuthType::Any => {
            tracing::error!("auth_type=any requires forced user");
            Err(PgError::fatal("bouncer config error"))
        }
        // The client's own user must be in auth_file, forced user or not (as PgBouncer).
        AuthType::Trust => {
            if secret.is_some() {
                Ok(None)
            } else {
                Err(PgError::fatal("\"trust\" authentication failed"))
            }
        }
        AuthType::Plain => {
            backend::auth_cleartext(out);
            flush(stream, out).await?;
            let body = read_auth(stream, &mut rbuf).await?;
            let pw = body[..].split(|&b| b == 0).next().unwrap_or(&[]);
            if pw.is_empty() {
                return Err(PgError::fatal("empty password returned by client"));
            }
            let pw = std::str::from_utf8(pw).map_err(|_| auth_failed())?;
            match secret {
                Some(s) if md5::verify_plain(s, user, pw) => Ok(None),
                _ => Err(auth_failed()),
            }
        }
        AuthType::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
            let salt: [u8; 4] = rand::random();
            backend::auth_md5(out, salt);
            flush(stream, out).await?;
            let body = read_auth(stream, &mut rbuf).await?;
            let resp = body[..].split(|&b| b == 0).next().unwrap_or(&[]);
            if resp.is_empty() {
                return Err(PgError::fatal("empty password returned by client"));
            }
            let resp = std::str::from_utf8(resp).map_err(|_| auth_failed())?;
            // Unknown users get the same challenge and the same failure (no enumeration).
            match secret {
                Some(s) if md5::verify_client(s, user, salt, resp) => Ok(None),
                _ => Err(auth_failed()),
            }
        }
        AuthType::Md5 | AuthType::ScramSha256 => {
            let (mut server, real) = match secret {
                Some(Secret::Scram(s)) => (scram::ScramServer::new(s.clone()), true),
                Some(Secret::Plain(p)) => (
                    scram::ScramServer::new(scram::secret_from_password(p, iterations)),
                    false,
                ),
                // An md5 secret cannot verify SCRAM; unknown users get a mock exchange.
                _ => (scram::ScramServer::mock(user, iterations), false),
            };
            backend::auth_sasl(out, &[scram::SCRAM_SHA_256]);
            flush(stream, out).await?;
            let mut body = read_auth(stream, &mut rbuf).await?;
            let mech_end = body
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| PgError::fatal("malformed SASL message"))?;
            if &body[..mech_end] != scram::SCRAM_SHA_256.as_bytes() {
                return Err(PgError::fatal(
                    "client selected an invalid SASL authentication mechanism",
                ));
            }
            body.advance(mech_end + 1);
            if body.len() < 4 {
                return Err(PgError::fatal("malformed SASL message"));
            }
            let n = body.get_i32();
            if n < 0 || n as usize != body.len() {
                return Err(PgError::fatal("malformed SASL message"));
            }
            let first = server
                .handle_client_first(&body)
                .map_err(|_| PgError::fatal("SASL authentication failed").with_code("28P01"))?;
            backend::auth_sasl_continue(out, &first);
            flush(stream, out).await?;
            let body = read_auth(stream, &mut rbuf).await?;
            let (fin, keys) = server
                .handle_client_final(&body)
                .map_err(|_| PgError::fatal("SASL authentication failed").with_code("28P01"))?;
            backend::auth_sasl_final(out, &fin);
            Ok(real.then_some(keys))
        }
        other => Err(PgError::fatal(format!(
            "auth_type {} is not supported by pgsluice yet",
            other.as_str()
        ))),
    }
}
