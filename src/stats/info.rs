//! Live records of clients and servers for SHOW CLIENTS / SERVERS / POOLS. Each record is
//! owned by the task that owns the connection and written with relaxed atomics; the admin
//! console reads them without stopping anyone.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Client states, as SHOW CLIENTS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Login = 0,
    /// Logged in, no server linked (PgBouncer 1.25 shows `idle`).
    Idle = 1,
    /// Linked to a server.
    Active = 2,
    /// Queued for a server.
    Waiting = 3,
}

impl ClientState {
    pub fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Idle,
            2 => ClientState::Active,
            3 => ClientState::Waiting,
            _ => ClientState::Login,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Login => "login",
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// An address column of SHOW CLIENTS/SOCKETS: an IP address, or `unix`. Kept as the
/// address and formatted when shown, not at every login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAddr {
    Ip(std::net::IpAddr),
    Unix,
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Ip(a) => a.fmt(f),
            HostAddr::Unix => f.write_str("unix"),
        }
    }
}

#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: HostAddr,
    pub port: u16,
    pub local_addr: HostAddr,
    pub local_port: u16,
    pub connect_time_us: u64,
    pub database: String,
    pub user: String,
    pub application_name: Mutex<String>,
    /// `TLSv1.3/<suite>` for a TLS client, empty otherwise (SHOW CLIENTS `tls`).
    pub tls: String,
    state: AtomicU8,
    /// Last request start (µs since epoch).
    pub request_time_us: AtomicU64,
    /// When the current wait for a server began (µs since epoch; 0 = not waiting).
    pub wait_start_us: AtomicU64,
    /// Linked server id (0 = none).
    pub link: AtomicU64,
    /// The client's pgsluice-issued cancel pid, for SHOW CLIENTS ptr/remote columns.
    pub cancel_pid: AtomicU32,
    /// Set by KILL_CLIENT / KILL: the session ends with `reason` at its next await point.
    pub killed: AtomicBool,
    pub kill_reason: Mutex<String>,
    /// The session's task, woken by [`ClientInfo::kill`] and
    /// [`ClientInfo::raise_queue_notice`]. One waker, registered with an atomic swap: a
    /// `Notify` here cost a mutex and a waiter list on every relay poll.
    waker: AtomicWaker,
    /// Set by the pool when this client has been queued for query_wait_notify.
    queue_notice: AtomicBool,
    /// Protocol-level prepared statements in this client's map (SHOW CLIENTS).
    pub prepared_statements: AtomicU64,
}

impl ClientInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        addr: HostAddr,
        port: u16,
        local_addr: HostAddr,
        local_port: u16,
        database: String,
        user: String,
        application_name: String,
        tls: String,
    ) -> ClientInfo {
        ClientInfo {
            id,
            addr,
            port,
            local_addr,
            local_port,
            connect_time_us: super::now_us(),
            database,
            user,
            application_name: Mutex::new(application_name),
            tls,
            state: AtomicU8::new(ClientState::Login as u8),
            request_time_us: AtomicU64::new(0),
            wait_start_us: AtomicU64::new(0),
            link: AtomicU64::new(0),
            cancel_pid: AtomicU32::new(0),
            killed: AtomicBool::new(false),
            kill_reason: Mutex::new(String::new()),
            waker: AtomicWaker::new(),
            queue_notice: AtomicBool::new(false),
            prepared_statements: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Relaxed);
    }

    /// Asks the session to end with `reason` (KILL_CLIENT, KILL, shutdown).
    pub fn kill(&self, reason: &str) {
        *self.kill_reason.lock() = reason.to_string();
        self.killed
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Ready once the session has been killed (at once if it already was). Only the
    /// session's own task waits on it.
    pub fn killed(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_killed() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_killed() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// The pool's expiry task: this client has waited query_wait_notify for a server.
    pub fn raise_queue_notice(&self) {
        self.queue_notice
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Forgets a notice raised for an earlier wait (raised just as that wait ended).
    pub fn clear_queue_notice(&self) {
        self.queue_notice
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Ready once [`ClientInfo::raise_queue_notice`] was called (and consumes it). Only
    /// the session's own task waits on it.
    pub fn queue_notice(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let take = || {
                self.queue_notice
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
            };
            if take() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if take() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Server states, as SHOW SERVERS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Connecting / logging in.
    Login = 0,
    Idle = 1,
    Active = 2,
    /// Released, not yet checked (server_check_delay).
    Used = 3,
    /// Running server_check_query.
    Tested = 4,
}

impl ServerState {
    pub fn from_u8(v: u8) -> ServerState {
        match v {
            1 => ServerState::Idle,
            2 => ServerState::Active,
            3 => ServerState::Used,
            4 => ServerState::Tested,
            _ => ServerState::Login,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Login => "new",
            ServerState::Idle => "idle",
            ServerState::Active => "active",
            ServerState::Used => "used",
            ServerState::Tested => "tested",
        }
    }
}

#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
    pub connect_time_us: u64,
    pub remote_pid: i32,
    state: AtomicU8,
    pub request_time_us: AtomicU64,
    /// Linked client id (0 = none).
    pub link: AtomicU64,
    pub close_needed: AtomicBool,
    pub application_name: Mutex<String>,
    /// `TLSv1.3/<suite>` for a TLS connection, empty otherwise (SHOW SERVERS `tls`).
    pub tls: String,
    /// Protocol-level prepared statements this server has (SHOW SERVERS).
    pub prepared_statements: AtomicU64,
}

impl ServerInfo {
    pub fn new(
        id: u64,
        addr: String,
        port: u16,
        local_addr: String,
        local_port: u16,
        remote_pid: i32,
        tls: String,
    ) -> ServerInfo {
        ServerInfo {
            tls,
            id,
            addr,
            port,
            local_addr,
            local_port,
            connect_time_us: super::now_us(),
            remote_pid,
            state: AtomicU8::new(ServerState::Idle as u8),
            request_time_us: AtomicU64::new(0),
            link: AtomicU64::new(0),
            close_needed: AtomicBool::new(false),
            application_name: Mutex::new(String::new()),
            prepared_statements: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, s: ServerState) {
        self.state.store(s as u8, Relaxed);
    }
}
