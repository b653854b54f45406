//! One (database, user) pool: idle servers (a LIFO stack, or FIFO with
//! `server_round_robin`), FIFO waiters with direct hand-off, demand-driven growth within
//! pool_size (+ reserve_pool_size after reserve_pool_timeout), max_db_connections and
//! max_user_connections, and the fast-fail window after a failed server login.
//!
//! All state sits behind one mutex whose critical sections never await. Connects run in
//! their own tasks and hand their server to the oldest waiter when done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::limits::Shared;
use crate::config::PoolMode;
use crate::proto::PgError;
use crate::server::{self, Credential, LoginError, ServerConn, ServerParams, Target};

// `impl Pool` continued, by concern: starting connects and taking their results, the
// wait queue, and the janitor's upkeep.
mod growth;
mod queue;
mod upkeep;

/// The effective settings of one pool (global → database → user precedence resolved).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    /// 0 = unlimited.
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: Duration,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    /// 0 = wait without limit (PgBouncer's meaning; the default is 120 s).
    pub query_wait_timeout: Duration,
    /// A queued client gets one NOTICE after this long; 0 = never.
    pub query_wait_notify: Duration,
    /// Client-side timeouts (`[users]` over `[pgbouncer]`); 0 = off. query_timeout also
    /// bounds the wait in the queue ("query_timeout").
    pub query_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub transaction_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub server_login_retry: Duration,
    pub server_round_robin: bool,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub max_packet_size: u32,
    /// Protocol-level prepared statements per server (global; here so the lease path
    /// reads it without loading the whole configuration).
    pub max_prepared_statements: u32,
    /// Forced user from the database entry: the pool is kept at min_pool_size even
    /// without clients.
    pub forced_user: bool,
}

type WaitResult = Result<ServerConn, PgError>;

struct Waiter {
    id: u64,
    tx: oneshot::Sender<WaitResult>,
    since: Instant,
    /// When this request's wait began (before `since` if it waited out a PAUSE first):
    /// query_wait_timeout / query_timeout / query_wait_notify count from here.
    wait_start: Instant,
    /// The client to tell once it has waited query_wait_notify (taken when told).
    notice: Option<Arc<crate::stats::ClientInfo>>,
    /// Waited longer than reserve_pool_timeout: may use the reserve pool.
    reserve: bool,
}

#[derive(Default)]
struct State {
    idle: VecDeque<ServerConn>,
    waiters: VecDeque<Waiter>,
    /// Servers of this pool: idle + leased + being connected.
    total: u32,
    connecting: u32,
    /// Fast-fail window: when the last login failed and with what.
    failed: Option<(Instant, PgError)>,
    /// A timer will call `grow` when the fast-fail window ends (queued clients are served
    /// as soon as a connect is allowed again, without waiting for a new arrival).
    retry_scheduled: bool,
    /// The last waiter id handed out when the current run of failed logins began: waiters
    /// up to it were queued before anyone knew of the outage and keep waiting; later ones
    /// (queued in the instant between a fast-fail window and the retry) fail with it.
    outage_mark: u64,
    next_waiter: u64,
    /// When the pool's expiry task wakes next (`None`: no task): it sleeps until the
    /// earliest waiter's wait limit runs out. One per pool, not one timer per waiter: see
    /// [`Pool::expire_waiters`].
    expiry_at: Option<Instant>,
}

/// Counts a pool exposes to SHOW POOLS and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: u32,
    pub total: u32,
    pub connecting: u32,
    pub waiting: u32,
}

impl PoolCounts {
    /// No server (idle, leased or connecting) and nobody waiting.
    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.connecting == 0 && self.waiting == 0
    }
}

pub struct Pool {
    pub db_name: String,
    pub user_name: String,
    settings: ArcSwap<PoolSettings>,
    target: ArcSwap<Target>,
    credential: Mutex<Credential>,
    pub db: Arc<Shared>,
    pub user: Arc<Shared>,
    /// Process-wide PAUSE gate.
    global: Arc<super::Gate>,
    /// Clients logged in to this pool (min_pool_size applies only while there are some).
    pub clients: super::Counter,
    /// SHOW STATS counters.
    pub stats: crate::stats::Counters,
    /// Averages over the last stats_period, and the totals they were computed from.
    pub averages: Mutex<(crate::stats::Snapshot, crate::stats::Snapshot)>,
    /// Every logged-in server of this pool, idle or leased, for SHOW SERVERS.
    servers: Mutex<Vec<Arc<crate::stats::ServerInfo>>>,
    state: Mutex<State>,
    welcome: Mutex<Option<Arc<ServerParams>>>,
    /// Bumped when connection settings change; older servers close on release.
    generation: AtomicU64,
    /// Host to start the next connect at: a round-robin counter, or with
    /// load_balance_hosts=disable the host that worked last.
    rr: AtomicUsize,
    /// The DNS cache's change count when this pool last compared its servers' addresses
    /// with the current answers.
    dns_seen: AtomicU64,
    me: Weak<Pool>,
}

impl Pool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db_name: String,
        user_name: String,
        settings: PoolSettings,
        target: Target,
        credential: Credential,
        db: Arc<Shared>,
        user: Arc<Shared>,
        global: Arc<super::Gate>,
    ) -> Arc<Pool> {
        let p = Arc::new_cyclic(|me| Pool {
            db_name,
            user_name,
            settings: ArcSwap::from_pointee(settings),
            target: ArcSwap::from_pointee(target),
            credential: Mutex::new(credential),
            db,
            user,
            global,
            clients: super::Counter::default(),
            stats: crate::stats::Counters::default(),
            averages: Mutex::new(Default::default()),
            servers: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            welcome: Mutex::new(None),
            generation: AtomicU64::new(1),
            rr: AtomicUsize::new(0),
            dns_seen: AtomicU64::new(crate::net::dns::cache().changes()),
            me: me.clone(),
        });
        p.db.pools.lock().push(Arc::downgrade(&p));
        p.user.pools.lock().push(Arc::downgrade(&p));
        p
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Where servers connect, and the server-health settings (check query, fast close).
    pub fn target(&self) -> Arc<Target> {
        self.target.load_full()
    }

    /// Applies new settings (RELOAD). A changed connection target marks every current
    /// server to be closed when it is next released.
    pub fn reconfigure(
        &self,
        settings: PoolSettings,
        target: Target,
        credential: Option<Credential>,
    ) {
        let old = self.target.load();
        let changed = old.hosts != target.hosts
            || old.port != target.port
            || old.dbname != target.dbname
            || old.user != target.user
            || old.startup != target.startup
            || old.connect_query != target.connect_query
            || !old.tls.same_settings(&target.tls);
        self.settings.store(Arc::new(settings));
        self.target.store(Arc::new(target));
        if let Some(c) = credential {
            *self.credential.lock() = c;
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            // Leased servers close when released; WAIT_CLOSE waits for these marks.
            for s in self.servers.lock().iter() {
                s.close_needed.store(true, Ordering::Relaxed);
            }
            let mut st = self.state.lock();
            let idle: Vec<_> = st.idle.drain(..).collect();
            for s in idle {
                self.forget_server(&mut st, s.id);
                close_server(s, true);
            }
        }
        self.grow();
    }

    /// Records ClientKey/ServerKey from a client's SCRAM login, used for server logins when
    /// only a SCRAM secret is stored (pass-through).
    pub fn set_scram_keys(&self, keys: crate::auth::scram::ScramKeys) {
        let mut c = self.credential.lock();
        if matches!(*c, Credential::None | Credential::ScramKeys(_)) {
            *c = Credential::ScramKeys(keys);
        }
    }

    pub fn has_credential(&self) -> bool {
        !matches!(*self.credential.lock(), Credential::None)
    }

    /// The ParameterStatus set of the first server login, for the welcome message.
    pub fn welcome(&self) -> Option<Arc<ServerParams>> {
        self.welcome.lock().clone()
    }

    /// PAUSE (process-wide or of this database) is in force.
    pub fn is_paused(&self) -> bool {
        self.global.is_paused() || self.db.gate.is_paused()
    }

    /// Every logged-in server of this pool.
    pub fn servers(&self) -> Vec<Arc<crate::stats::ServerInfo>> {
        self.servers.lock().clone()
    }

    /// Waiting time of the oldest waiter.
    pub fn max_wait(&self) -> Duration {
        let st = self.state.lock();
        st.waiters
            .front()
            .map(|w| w.since.elapsed())
            .unwrap_or_default()
    }

    /// The configuration generation; servers from older ones close on release.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// RECONNECT: every current server is closed when next released; idle ones now.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in self.servers.lock().iter() {
            s.close_needed.store(true, Ordering::Relaxed);
        }
        self.close_idle();
        self.grow();
    }

    /// Servers still marked to close on release (RECONNECT, changed connection
    /// settings), for WAIT_CLOSE.
    pub fn close_needed_count(&self) -> usize {
        self.servers
            .lock()
            .iter()
            .filter(|s| s.close_needed.load(Ordering::Relaxed))
            .count()
    }

    pub fn counts(&self) -> PoolCounts {
        let st = self.state.lock();
        PoolCounts {
            idle: st.idle.len() as u32,
            total: st.total,
            connecting: st.connecting,
            waiting: st.waiters.len() as u32,
        }
    }

    /// Returns a server whose last ReadyForQuery was idle and whose output was fully
    /// relayed. It goes to the oldest waiter, else onto the idle stack — unless it has
    /// outlived its share of server_lifetime, belongs to an old configuration or address
    /// (marked close_needed: RECONNECT, RELOAD, a changed DNS answer), or another pool of
    /// the same database/user is blocked on a shared limit.
    pub fn release(&self, conn: ServerConn) {
        self.release_with(conn, &self.settings());
    }

    /// [`Pool::release`] with the settings the caller already holds.
    pub fn release_with(&self, conn: ServerConn, s: &PoolSettings) {
        self.release_at(conn, s, Instant::now());
    }

    /// [`Pool::release_with`] for a server idle since `now` (its last ReadyForQuery, which
    /// the relay has read the clock for already).
    pub fn release_at(&self, mut conn: ServerConn, s: &PoolSettings, now: Instant) {
        conn.last_used = now;
        let expired = conn.generation != self.generation.load(Ordering::Acquire)
            || conn.info.close_needed.load(Ordering::Relaxed)
            || conn.lifetime_over(s.server_lifetime, now);
        let expired = expired || self.is_paused();
        let mut st = self.state.lock();
        if !expired {
            let Some(conn) = hand_to_waiter(&mut st, conn) else {
                return;
            };
            if !(self.db.has_blocked() || self.user.has_blocked()) {
                conn.info.set_state(crate::stats::ServerState::Idle);
                conn.info.link.store(0, Ordering::Relaxed);
                st.idle.push_back(conn);
                return;
            }
            self.forget_server(&mut st, conn.id);
            drop(st);
            close_server(conn, true);
            self.wake_blocked();
            return;
        }
        self.forget_server(&mut st, conn.id);
        drop(st);
        close_server(conn, true);
        self.wake_blocked();
        self.grow();
    }

    /// A leased server that cannot be reused (client vanished mid-transaction, protocol
    /// error, server crash): close it and let waiters have its slot.
    pub fn discard(&self, conn: ServerConn) {
        {
            let mut st = self.state.lock();
            self.forget_server(&mut st, conn.id);
        }
        close_server(conn, false);
        self.wake_blocked();
        self.grow();
    }

    /// An idle server at once, without waiting or connecting; `None` if there is none or
    /// the pool is paused (then [`Pool::acquire_with`] decides what happens).
    pub fn try_idle(&self, s: &PoolSettings) -> Option<ServerConn> {
        if self.is_paused() {
            return None;
        }
        pop_idle(&mut self.state.lock(), s.server_round_robin)
    }

    /// [`Pool::check_server`] would run server_check_query on `conn` before reuse.
    pub fn needs_check(&self, conn: &ServerConn) -> bool {
        self.needs_check_at(conn, Instant::now())
    }

    /// [`Pool::needs_check`] at `now` (a clock reading the caller has already made).
    pub fn needs_check_at(&self, conn: &ServerConn, now: Instant) -> bool {
        let t = self.target.load();
        t.check_query.is_some() && now.saturating_duration_since(conn.last_used) >= t.check_delay
    }

    /// server_check_query before reuse: a server idle for server_check_delay or longer
    /// (0 = always) runs the check first. `None` = it failed (the server is closed and
    /// gone from the pool) and the caller takes the next one.
    ///
    /// The check is bounded by server_connect_timeout: a half-open server must not hold
    /// a client for longer than opening a new one could take. If the caller is cancelled
    /// mid-check (KILL, a client timeout), the server is discarded, never lost to the
    /// pool's counts.
    pub async fn check_server(&self, conn: ServerConn) -> Option<ServerConn> {
        if !self.needs_check(&conn) {
            return Some(conn);
        }
        let t = self.target.load();
        let Some(q) = &t.check_query else {
            return Some(conn);
        };
        let (q, limit, max) = (q.clone(), t.connect_timeout, t.max_packet_size);
        drop(t);
        let mut guard = DiscardOnDrop {
            pool: self,
            conn: Some(conn),
        };
        let c = guard.conn.as_mut()?;
        c.info.set_state(crate::stats::ServerState::Tested);
        let check = server::login::simple_query(c, &q, max);
        let res = if limit.is_zero() {
            check.await
        } else {
            tokio::time::timeout(limit, check)
                .await
                .unwrap_or(Err(LoginError::Timeout))
        };
        match res {
            Ok(()) => {
                let mut conn = guard.conn.take()?;
                conn.last_used = Instant::now();
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(
                    "{}/{}: server check failed, closing {}: {}",
                    self.db_name,
                    self.user_name,
                    c.route,
                    e.log_text()
                );
                // The guard discards it.
                None
            }
        }
    }

    /// Bookkeeping for a server leaving this pool (caller closes it). `id` 0 = a connect
    /// that never produced a server.
    fn forget_server(&self, st: &mut State, id: u64) {
        if id != 0 {
            self.servers.lock().retain(|s| s.id != id);
        }
        st.total = st.total.saturating_sub(1);
        self.db.servers.release();
        self.user.servers.release();
    }

    /// Pools of the same database/user that were waiting for a shared slot try again.
    fn wake_blocked(&self) {
        let mut pools = self.db.take_blocked();
        pools.extend(self.user.take_blocked());
        for p in pools.into_iter().filter_map(|w| w.upgrade()) {
            if !std::ptr::eq(Arc::as_ptr(&p), self) {
                p.grow();
            }
        }
    }
}

/// A leased server being checked; discarded if the check does not hand it back.
struct DiscardOnDrop<'a> {
    pool: &'a Pool,
    conn: Option<ServerConn>,
}

impl Drop for DiscardOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.discard(c);
        }
    }
}

fn pop_idle(st: &mut State, round_robin: bool) -> Option<ServerConn> {
    // LIFO keeps the working set small and warm; round-robin spreads load (PgBouncer).
    if round_robin {
        st.idle.pop_front()
    } else {
        st.idle.pop_back()
    }
}

/// Gives `conn` to the oldest waiter still listening; returns it if there is none.
fn hand_to_waiter(st: &mut State, mut conn: ServerConn) -> Option<ServerConn> {
    while let Some(w) = st.waiters.pop_front() {
        match w.tx.send(Ok(conn)) {
            Ok(()) => return None,
            Err(Ok(c)) => conn = c,
            Err(Err(_)) => return None,
        }
    }
    Some(conn)
}

/// Closes a server. A clean close sends Terminate first so PostgreSQL logs no
/// "unexpected EOF"; a dirty one just drops the socket, which makes the backend abort
/// whatever transaction it had.
pub fn close_server(mut conn: ServerConn, clean: bool) {
    if !clean {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            conn.stream.write_all(b"X\0\0\0\x04"),
        )
        .await;
    });
}
