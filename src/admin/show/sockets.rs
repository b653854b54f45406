//! SHOW POOLS and the socket listings (CLIENTS, SERVERS, SOCKETS, ACTIVE_SOCKETS), built
//! from the pools' counts and the live client/server records.
//!
//! Pools are listed sorted by (database, user), as PgBouncer keeps its pool list, with the
//! admin pool `pgbouncer/pgbouncer` among them; within a pool, clients come before their
//! servers and each kind is ordered by state list, then by id.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{cols, num, opt, rows, timestamp, txt, Ctx, ADMIN_DB};
use crate::admin::Reply;
use crate::pool::Pool;
use crate::stats::{ClientInfo, ClientState, ServerInfo, ServerState};

/// A pool as the console lists it; `pool` is `None` for the admin pool.
struct PoolRef {
    db: String,
    user: String,
    pool: Option<Arc<Pool>>,
}

fn pool_list(c: &Ctx) -> Vec<PoolRef> {
    let mut v: Vec<PoolRef> = c
        .app
        .registry
        .all()
        .into_iter()
        .map(|p| PoolRef {
            db: p.db_name.clone(),
            user: p.user_name.clone(),
            pool: Some(p),
        })
        .collect();
    v.push(PoolRef {
        db: ADMIN_DB.into(),
        user: ADMIN_DB.into(),
        pool: None,
    });
    v.sort_by(|a, b| (&a.db, &a.user).cmp(&(&b.db, &b.user)));
    v
}

/// The pool user of a client: the database's forced user, else the login user. Console
/// sessions belong to the admin pool.
fn pool_user_of(c: &Ctx, info: &ClientInfo) -> String {
    if info.database == ADMIN_DB {
        return ADMIN_DB.into();
    }
    c.cfg
        .database(&info.database)
        .and_then(|d| d.user)
        .unwrap_or_else(|| info.user.clone())
}

/// PgBouncer's client lists: active (shown `idle` without a server), then waiting.
fn client_rank(s: ClientState) -> u8 {
    match s {
        ClientState::Idle | ClientState::Active => 0,
        ClientState::Waiting => 1,
        ClientState::Login => 2,
    }
}

/// PgBouncer's server lists: active, idle, used, tested, new.
fn server_rank(s: ServerState) -> u8 {
    match s {
        ServerState::Active => 0,
        ServerState::Idle => 1,
        ServerState::Used => 2,
        ServerState::Tested => 3,
        ServerState::Login => 4,
    }
}

/// Clients by (database, pool user), each group in list order.
fn clients_by_pool(c: &Ctx) -> HashMap<(String, String), Vec<Arc<ClientInfo>>> {
    let mut m: HashMap<(String, String), Vec<Arc<ClientInfo>>> = HashMap::new();
    for e in c.app.client_records.iter() {
        let info = e.value().clone();
        let key = (info.database.clone(), pool_user_of(c, &info));
        m.entry(key).or_default().push(info);
    }
    for v in m.values_mut() {
        v.sort_by_key(|i| (client_rank(i.state()), i.id));
    }
    m
}

fn servers_sorted(p: &Pool) -> Vec<Arc<ServerInfo>> {
    let mut v = p.servers();
    v.sort_by_key(|s| (server_rank(s.state()), s.id));
    v
}

/// How long a client has been waiting for a server (µs), 0 when it is not waiting.
fn wait_of(c: &Ctx, info: &ClientInfo) -> u64 {
    match info.wait_start_us.load(Relaxed) {
        0 => 0,
        t => c.now_us.saturating_sub(t),
    }
}

// ---------------------------------------------------------------- POOLS

pub fn pools(c: &Ctx) -> Reply {
    let clients = clients_by_pool(c);
    let mut out = Vec::new();
    for p in pool_list(c) {
        let cl = clients.get(&(p.db.clone(), p.user.clone()));
        let cl = cl.map(Vec::as_slice).unwrap_or_default();
        let cl_active = cl
            .iter()
            .filter(|i| matches!(i.state(), ClientState::Idle | ClientState::Active))
            .count();
        let waiting: Vec<_> = cl
            .iter()
            .filter(|i| i.state() == ClientState::Waiting)
            .collect();
        // The oldest waiter: the pool's own queue, or a client held at a PAUSE gate,
        // which waits before it joins the queue.
        let client_wait = waiting.iter().map(|i| wait_of(c, i)).max().unwrap_or(0);
        let (mut sv, mut mode, mut lb, mut pool_wait) = ([0usize; 5], "statement", None, 0u64);
        if let Some(pool) = &p.pool {
            let counts = pool.counts();
            let servers = pool.servers();
            let n = |s: ServerState| servers.iter().filter(|i| i.state() == s).count();
            sv = [
                n(ServerState::Active),
                counts.idle as usize,
                n(ServerState::Used),
                n(ServerState::Tested),
                counts.connecting as usize,
            ];
            mode = pool.settings().mode.as_str();
            lb = c
                .cfg
                .database(&p.db)
                .filter(|d| d.host.as_deref().is_some_and(|h| h.contains(',')))
                .map(|d| d.load_balance_hosts.unwrap_or_default().as_str());
            pool_wait = pool.max_wait().as_micros() as u64;
        }
        let maxwait = client_wait.max(pool_wait);
        let [sv_active, sv_idle, sv_used, sv_tested, sv_login] = sv;
        out.push(vec![
            txt(&p.db),
            txt(&p.user),
            num(cl_active),
            num(waiting.len()),
            num(0),
            num(0),
            num(sv_active),
            num(0),
            num(0),
            num(sv_idle),
            num(sv_used),
            num(sv_tested),
            num(sv_login),
            num(maxwait / 1_000_000),
            num(maxwait % 1_000_000),
            txt(mode),
            opt(lb),
        ]);
    }
    rows(
        cols(
            "ssiiiiiiiiiiiiiss",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ],
        ),
        out,
    )
}

// ---------------------------------------------------------------- socket rows

const SOCKET_TYPES: &str = "ssssssisiTTiiississii";
const SOCKET_NAMES: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];
/// SOCKETS / ACTIVE_SOCKETS add PgBouncer's buffer positions; pgsluice's buffers are
/// per-task and not shared, so these are 0.
const DEBUG_NAMES: [&str; 7] = [
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];

fn socket_columns(debug: bool) -> Vec<(String, u32)> {
    let mut names: Vec<&str> = SOCKET_NAMES.to_vec();
    let mut types = SOCKET_TYPES.to_string();
    if debug {
        names.extend(DEBUG_NAMES);
        types.push_str("iiiiiii");
    }
    cols(&types, &names)
}

/// `0x<id>`: pgsluice has no socket pointers; the connection id identifies the socket,
/// and `link` uses the same form, so a client's `link` is its server's `ptr`.
fn ptr(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!("{id:#x}")
    }
}

#[allow(clippy::too_many_arguments)]
fn socket_row(
    kind: &str,
    user: &str,
    database: &str,
    state: &str,
    addr: &str,
    port: u16,
    local_addr: &str,
    local_port: u16,
    connect_us: u64,
    request_us: u64,
    wait_us: u64,
    close_needed: bool,
    id: u64,
    link: u64,
    remote_pid: i32,
    tls: &str,
    application_name: String,
    prepared_statements: u64,
    debug: bool,
) -> Vec<Option<String>> {
    let mut r = vec![
        txt(kind),
        txt(user),
        txt(database),
        txt("none"),
        txt(state),
        txt(addr),
        num(port),
        txt(local_addr),
        num(local_port),
        timestamp(connect_us),
        // PgBouncer sets request_time at connect, so it is never NULL.
        timestamp(if request_us == 0 {
            connect_us
        } else {
            request_us
        }),
        num(wait_us / 1_000_000),
        num(wait_us % 1_000_000),
        num(close_needed as u8),
        txt(ptr(id)),
        txt(ptr(link)),
        num(remote_pid),
        // PgBouncer leaves the column empty for plain sockets.
        txt(tls),
        txt(application_name),
        num(prepared_statements),
        num(id),
    ];
    if debug {
        r.extend(std::iter::repeat_n(num(0), DEBUG_NAMES.len()));
    }
    r
}

fn client_row(c: &Ctx, i: &ClientInfo, state: &str, debug: bool) -> Vec<Option<String>> {
    socket_row(
        "C",
        &i.user,
        &i.database,
        state,
        &i.addr.to_string(),
        i.port,
        &i.local_addr.to_string(),
        i.local_port,
        i.connect_time_us,
        i.request_time_us.load(Relaxed),
        wait_of(c, i),
        false,
        i.id,
        i.link.load(Relaxed),
        // PgBouncer shows the peer's pid only for Unix-socket clients (from the socket's
        // credentials); pgsluice does not record it, so 0, as for TCP clients.
        0,
        &i.tls,
        i.application_name.lock().clone(),
        i.prepared_statements.load(Relaxed),
        debug,
    )
}

fn server_row(p: &Pool, s: &ServerInfo, state: &str, debug: bool) -> Vec<Option<String>> {
    socket_row(
        "S",
        &p.user_name,
        &p.db_name,
        state,
        &s.addr,
        s.port,
        &s.local_addr,
        s.local_port,
        s.connect_time_us,
        s.request_time_us.load(Relaxed),
        0,
        s.close_needed.load(Relaxed),
        s.id,
        s.link.load(Relaxed),
        s.remote_pid,
        &s.tls,
        s.application_name.lock().clone(),
        s.prepared_statements.load(Relaxed),
        debug,
    )
}

/// Every client, pool by pool; clients whose pool is no longer in the list (the config
/// changed under them) come last so none is hidden.
fn clients_in_order(c: &Ctx) -> Vec<Arc<ClientInfo>> {
    let mut by_pool = clients_by_pool(c);
    let mut out = Vec::new();
    for p in pool_list(c) {
        if let Some(v) = by_pool.remove(&(p.db, p.user)) {
            out.extend(v);
        }
    }
    let mut rest: Vec<_> = by_pool.into_values().flatten().collect();
    rest.sort_by_key(|i| i.id);
    out.extend(rest);
    out
}

pub fn clients(c: &Ctx) -> Reply {
    let out = clients_in_order(c)
        .iter()
        .map(|i| client_row(c, i, i.state().as_str(), false))
        .collect();
    rows(socket_columns(false), out)
}

pub fn servers(c: &Ctx) -> Reply {
    let mut out = Vec::new();
    for p in pool_list(c) {
        let Some(pool) = &p.pool else { continue };
        for s in servers_sorted(pool) {
            out.push(server_row(pool, &s, s.state().as_str(), false));
        }
    }
    rows(socket_columns(false), out)
}

fn client_socket_state(s: ClientState) -> &'static str {
    match s {
        ClientState::Idle | ClientState::Active => "cl_active",
        ClientState::Waiting => "cl_waiting",
        ClientState::Login => "cl_login",
    }
}

fn server_socket_state(s: ServerState) -> &'static str {
    match s {
        ServerState::Active => "sv_active",
        ServerState::Idle => "sv_idle",
        ServerState::Used => "sv_used",
        ServerState::Tested => "sv_tested",
        ServerState::Login => "sv_login",
    }
}

/// SOCKETS (`only_busy = false`) and ACTIVE_SOCKETS. PgBouncer's ACTIVE_SOCKETS lists the
/// sockets with bytes in their buffers; pgsluice's buffers belong to the relaying task,
/// so it lists the sockets that are relaying: linked clients and active servers.
fn socket_listing(c: &Ctx, only_busy: bool) -> Reply {
    let mut by_pool = clients_by_pool(c);
    let mut out = Vec::new();
    for p in pool_list(c) {
        for i in by_pool
            .remove(&(p.db.clone(), p.user.clone()))
            .unwrap_or_default()
        {
            let st = i.state();
            if !only_busy || st == ClientState::Active {
                out.push(client_row(c, &i, client_socket_state(st), true));
            }
        }
        if let Some(pool) = &p.pool {
            for s in servers_sorted(pool) {
                let st = s.state();
                if !only_busy || st == ServerState::Active {
                    out.push(server_row(pool, &s, server_socket_state(st), true));
                }
            }
        }
    }
    for i in by_pool.into_values().flatten() {
        let st = i.state();
        if !only_busy || st == ClientState::Active {
            out.push(client_row(c, &i, client_socket_state(st), true));
        }
    }
    rows(socket_columns(true), out)
}

pub fn sockets(c: &Ctx) -> Reply {
    socket_listing(c, false)
}

pub fn active_sockets(c: &Ctx) -> Reply {
    socket_listing(c, true)
}
