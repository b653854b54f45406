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
use crate::config::{LoadBalanceHosts, PoolMode};
use crate::proto::PgError;
use crate::server::login::Host;
use crate::server::{self, Credential, LoginError, ServerConn, ServerParams, Target};

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

/// The bound on a queued request's whole wait and the error it ends with: the shorter of
/// query_timeout and query_wait_timeout (query_timeout on a tie), as PgBouncer's janitor
/// bounds a queued client by both. `None` = no bound.
fn wait_limit(s: &PoolSettings) -> Option<(Duration, &'static str)> {
    match (s.query_timeout.is_zero(), s.query_wait_timeout.is_zero()) {
        (true, true) => None,
        (false, true) => Some((s.query_timeout, "query_timeout")),
        (true, false) => Some((s.query_wait_timeout, "query_wait_timeout")),
        (false, false) if s.query_timeout <= s.query_wait_timeout => {
            Some((s.query_timeout, "query_timeout"))
        }
        (false, false) => Some((s.query_wait_timeout, "query_wait_timeout")),
    }
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

    /// Leases a server: an idle one at once, else waits in FIFO order while a connect is
    /// started if the limits allow. The whole wait (PAUSE included) is bounded by
    /// query_wait_timeout and by query_timeout, as PgBouncer's janitor bounds a queued
    /// client by both; the shorter one names the error, query_timeout on a tie.
    pub async fn acquire(&self) -> Result<ServerConn, PgError> {
        self.acquire_with(&self.settings(), None).await
    }

    /// [`Pool::acquire`] with the settings the caller already holds. `notice`: the
    /// client to tell (see [`crate::stats::ClientInfo::queue_notice`]) once it has been
    /// queued for query_wait_notify.
    pub async fn acquire_with(
        &self,
        s: &PoolSettings,
        notice: Option<&Arc<crate::stats::ClientInfo>>,
    ) -> Result<ServerConn, PgError> {
        // When the wait began: read only if there is one (a PAUSE, or no idle server).
        let mut start = None;
        let limit = wait_limit(s);
        let expired = || PgError::fatal(limit.map_or("query_wait_timeout", |(_, text)| text));
        if self.is_paused() {
            start = Some(Instant::now());
            let open = async {
                while self.is_paused() {
                    self.global.wait_open().await;
                    self.db.gate.wait_open().await;
                }
            };
            match limit {
                None => open.await,
                Some((w, _)) => {
                    if tokio::time::timeout(w, open).await.is_err() {
                        return Err(expired());
                    }
                }
            }
        }
        let (id, rx, start) = {
            let mut st = self.state.lock();
            if let Some(conn) = pop_idle(&mut st, s.server_round_robin) {
                return Ok(conn);
            }
            if let Some((at, err)) = &st.failed {
                // Servers still logging in do not count (PgBouncer's check_fast_fail): a
                // retry stuck on a black hole must not make new clients queue behind it.
                if at.elapsed() < s.server_login_retry && st.total == st.connecting {
                    return Err(PgError::fatal(format!(
                        "server login has been failing, cached error: {} (server_login_retry)",
                        err.message
                    )));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            let now = Instant::now();
            let start = start.unwrap_or(now);
            let notice = notice.filter(|_| !s.query_wait_notify.is_zero());
            let notify_at = notice.and_then(|_| start.checked_add(s.query_wait_notify));
            st.waiters.push_back(Waiter {
                id,
                tx,
                since: now,
                wait_start: start,
                notice: notice.cloned(),
                reserve: false,
            });
            // A task is started only if none would wake in time for this waiter (the
            // first waiter, or one whose wait began earlier, during a PAUSE).
            let first = limit.and_then(|(w, _)| start.checked_add(w));
            let first = match (first, notify_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = first {
                if st.expiry_at.is_none_or(|e| at < e) {
                    st.expiry_at = Some(at);
                    if let Some(me) = self.me.upgrade() {
                        tokio::spawn(me.expire_waiters());
                    }
                }
            }
            (id, rx, start)
        };
        let mut slot = QueueSlot {
            pool: self,
            id,
            rx,
            answered: false,
        };
        self.grow();

        if s.reserve_pool_size > 0 {
            let first = match limit {
                Some((w, _)) => s
                    .reserve_pool_timeout
                    .min(w.saturating_sub(start.elapsed())),
                None => s.reserve_pool_timeout,
            };
            match tokio::time::timeout(first, &mut slot.rx).await {
                Ok(r) => {
                    slot.answered = true;
                    return r.unwrap_or_else(|_| Err(PgError::fatal("pooler is shutting down")));
                }
                Err(_) => {
                    let mut st = self.state.lock();
                    if let Some(w) = st.waiters.iter_mut().find(|w| w.id == id) {
                        w.reserve = true;
                    }
                    drop(st);
                    self.grow();
                }
            }
        }
        // The wait limit is enforced by the pool's expiry task, which answers this
        // waiter with the error when its time is up.
        let r = (&mut slot.rx).await;
        slot.answered = true;
        r.unwrap_or_else(|_| Err(PgError::fatal("pooler is shutting down")))
    }

    /// Fails waiters whose wait limit has run out and tells those queued for
    /// query_wait_notify, sleeping until the next such moment in between, while anyone
    /// waits. One timer for the whole queue: a timer per waiter cost a timer-wheel insert
    /// and removal on every queued request (callgrind: a tenth of the pooler's
    /// instructions per transaction with 200 clients on a pool of 20). The limits are
    /// taken from the current settings each time, as PgBouncer's janitor does.
    async fn expire_waiters(self: Arc<Self>) {
        loop {
            let next = {
                let mut st = self.state.lock();
                let s = self.settings();
                let limit = wait_limit(&s);
                let notify = s.query_wait_notify;
                let now = Instant::now();
                let mut next: Option<Instant> = None;
                let mut soonest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
                let mut i = 0;
                while i < st.waiters.len() {
                    let w = &mut st.waiters[i];
                    if let Some((limit, text)) = limit {
                        match w.wait_start.checked_add(limit) {
                            Some(at) if at <= now => {
                                if let Some(w) = st.waiters.remove(i) {
                                    let _ = w.tx.send(Err(PgError::fatal(text)));
                                }
                                continue;
                            }
                            Some(at) => soonest(at),
                            None => {}
                        }
                    }
                    if w.notice.is_some() && !notify.is_zero() {
                        match w.wait_start.checked_add(notify) {
                            Some(at) if at <= now => {
                                if let Some(c) = w.notice.take() {
                                    c.raise_queue_notice();
                                }
                            }
                            Some(at) => soonest(at),
                            None => {}
                        }
                    }
                    i += 1;
                }
                // Two tasks may run for a moment (one started for an earlier waiter);
                // both compute the same `next`, and the scan is idempotent.
                st.expiry_at = next;
                match next {
                    Some(at) => at,
                    None => return,
                }
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
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
    pub fn release_with(&self, mut conn: ServerConn, s: &PoolSettings) {
        let now = Instant::now();
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
        let t = self.target.load();
        t.check_query.is_some() && conn.last_used.elapsed() >= t.check_delay
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
        let t = self.target.load();
        let Some(q) = &t.check_query else {
            return Some(conn);
        };
        if conn.last_used.elapsed() < t.check_delay {
            return Some(conn);
        }
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
                    c.addr,
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

    /// Starts connects while waiters outnumber connects in flight and the limits allow.
    /// Also fills up to min_pool_size when asked to by the janitor.
    pub fn grow(&self) {
        self.grow_to(0);
    }

    /// `min_total`: keep at least this many servers (min_pool_size), even with no waiters.
    pub fn grow_to(&self, min_total: u32) {
        if self.is_paused() {
            // Nothing is handed out while paused; RESUME calls `grow` again.
            return;
        }
        let s = self.settings();
        // The shared limit (database or user) that stopped growth, if any.
        let mut blocked: Option<&Arc<Shared>> = None;
        let mut starts = 0u32;
        {
            let mut st = self.state.lock();
            loop {
                let waiting = st.waiters.len() as u32;
                let want_for_waiters = waiting > st.connecting;
                let want_for_min = st.total < min_total;
                if !want_for_waiters && !want_for_min {
                    break;
                }
                if let Some((at, _)) = &st.failed {
                    if at.elapsed() < s.server_login_retry {
                        break;
                    }
                }
                // Waiters are scanned for one past reserve_pool_timeout only when the pool
                // is full and has a reserve: with hundreds queued, this runs per request.
                let cap = if s.pool_size == 0 {
                    u32::MAX
                } else if st.total >= s.pool_size
                    && s.reserve_pool_size > 0
                    && want_for_waiters
                    && st.waiters.iter().any(|w| w.reserve)
                {
                    s.pool_size.saturating_add(s.reserve_pool_size)
                } else {
                    s.pool_size
                };
                if st.total >= cap {
                    break;
                }
                if !self.db.servers.try_acquire(s.max_db_connections) {
                    blocked = Some(&self.db);
                    break;
                }
                if !self.user.servers.try_acquire(s.max_user_connections) {
                    self.db.servers.release();
                    blocked = Some(&self.user);
                    break;
                }
                if st.total >= s.pool_size && s.pool_size > 0 {
                    tracing::info!(
                        "{}/{}: taking connection from reserve_pool",
                        self.db_name,
                        self.user_name
                    );
                }
                st.total += 1;
                st.connecting += 1;
                starts += 1;
            }
        }
        for _ in 0..starts {
            self.spawn_connect();
        }
        if let Some(limit) = blocked {
            if let Some(me) = self.me.upgrade() {
                self.db.add_blocked(Arc::downgrade(&me));
                self.user.add_blocked(Arc::downgrade(&me));
            }
            // The evicted server's slot is free now: take it. (If a woken sibling took it
            // first, this evicts the next idle server; bounded by the idle servers.)
            if self.evict_sibling_idle(limit) {
                self.grow_to(min_total);
            }
        }
    }

    /// Closes one idle server of another pool under the same `limit` (this pool's
    /// database or user), so a pool blocked on max_db_connections / max_user_connections
    /// can open one. True if a server was closed.
    fn evict_sibling_idle(&self, limit: &Shared) -> bool {
        let pools: Vec<Arc<Pool>> = limit
            .pools
            .lock()
            .iter()
            .filter_map(|w| w.upgrade())
            .collect();
        for p in pools {
            if std::ptr::eq(Arc::as_ptr(&p), self) {
                continue;
            }
            let victim = {
                let mut st = p.state.lock();
                let v = st.idle.pop_front();
                if let Some(c) = &v {
                    p.forget_server(&mut st, c.id);
                }
                v
            };
            if let Some(v) = victim {
                close_server(v, true);
                self.wake_blocked();
                return true;
            }
        }
        false
    }

    fn spawn_connect(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let target = self.target.load_full();
        let cred = self.credential.lock().clone();
        let generation = self.generation.load(Ordering::Acquire);
        let start = match target.load_balance {
            LoadBalanceHosts::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed),
            // Stay on the host that worked last; a failure there moves on (connect_done).
            LoadBalanceHosts::Disable => self.rr.load(Ordering::Relaxed),
        };
        tokio::spawn(async move {
            let res = server::connect(&target, &cred, start, generation).await;
            me.connect_done(res);
        });
    }

    fn connect_done(&self, res: Result<ServerConn, LoginError>) {
        crate::stats::prometheus::server_connect(self, &res);
        let mut st = self.state.lock();
        st.connecting = st.connecting.saturating_sub(1);
        match res {
            Ok(conn) => {
                st.failed = None;
                {
                    let mut w = self.welcome.lock();
                    if w.is_none() {
                        *w = Some(Arc::new(conn.params.clone()));
                    }
                }
                tracing::debug!(
                    "{}/{}: new server connection {}",
                    self.db_name,
                    self.user_name,
                    conn.addr
                );
                if self.is_paused() {
                    // PAUSE / KILL: no server is handed out, and one kept idle would only
                    // hold PAUSE up. RESUME grows the pool again for the waiters.
                    self.forget_server(&mut st, conn.id);
                    drop(st);
                    close_server(conn, true);
                    self.wake_blocked();
                    return;
                }
                if conn.generation != self.generation() {
                    // Started before a RECONNECT / RELOAD: closes on release.
                    conn.info.close_needed.store(true, Ordering::Relaxed);
                }
                if self.target.load().load_balance == LoadBalanceHosts::Disable {
                    self.rr.store(conn.host_index, Ordering::Relaxed);
                }
                self.servers.lock().push(conn.info.clone());
                if let Some(conn) = hand_to_waiter(&mut st, conn) {
                    st.idle.push_back(conn);
                }
            }
            Err(e) => {
                self.forget_server(&mut st, 0);
                tracing::warn!(
                    "{}/{}: server login failed: {}",
                    self.db_name,
                    self.user_name,
                    e.log_text()
                );
                if e.is_starting_up() {
                    // 57P03: clients keep waiting; try again shortly.
                    drop(st);
                    if let Some(me) = self.me.upgrade() {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            me.grow();
                        });
                    }
                    return;
                }
                let client_err = match &e {
                    LoginError::Server(_) => e.to_client(),
                    other => PgError::fatal(format!(
                        "server login has been failing, cached error: {other} (server_login_retry)"
                    )),
                };
                if st.failed.is_none() {
                    st.outage_mark = st.next_waiter;
                }
                st.failed = Some((Instant::now(), e.to_client()));
                // Who fails now: clients still logging in (the pool has no welcome yet, so
                // every waiter is one: PgBouncer's kill_pool_logins); for an answer about
                // credentials or the database, everyone, as waiting would not change it;
                // and clients that queued after the outage was known (a new client in the
                // fast-fail window is refused at once; one that arrived just as the window
                // ended waited for this retry). Requests queued before the outage keep
                // waiting, up to query_wait_timeout: a restarting server is back before
                // that, and the retry below serves them. A connect still in flight may
                // yet serve some, so that many stay.
                let everyone = self.welcome.lock().is_none() || e.is_definitive();
                let mark = if everyone { 0 } else { st.outage_mark };
                let mut n = st.waiters.len().saturating_sub(st.connecting as usize);
                let mut i = st.waiters.len();
                while n > 0 && i > 0 {
                    i -= 1;
                    if st.waiters[i].id > mark {
                        if let Some(w) = st.waiters.remove(i) {
                            let _ = w.tx.send(Err(client_err.clone()));
                        }
                        n -= 1;
                    }
                }
                let retry = !st.waiters.is_empty() && !st.retry_scheduled;
                st.retry_scheduled |= retry;
                drop(st);
                if retry {
                    self.retry_after(self.settings().server_login_retry);
                }
                // The failed connect's slot under max_db/max_user_connections is free.
                self.wake_blocked();
            }
        }
    }

    /// Calls `grow` once `after` has passed: the end of the fast-fail window, so the
    /// clients still queued are served as soon as a connect may be tried again.
    fn retry_after(&self, after: Duration) {
        let Some(me) = self.me.upgrade() else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // server_login_retry = 0 must not turn a dead server into a connect loop.
        let after = after.max(Duration::from_millis(100));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            me.state.lock().retry_scheduled = false;
            me.grow();
        });
    }

    /// Janitor work, once a second: drop idle servers that died (backend terminated,
    /// server restarted) or were marked to close (RECONNECT, RELOAD, a changed DNS
    /// answer), close those idle past server_idle_timeout or past their share of
    /// server_lifetime, retry for queued clients once the fast-fail window is over, and
    /// keep min_pool_size. `has_clients`: the pool has logged-in clients.
    pub fn maintain(&self, has_clients: bool) {
        let s = self.settings();
        self.check_dns(&self.target());
        let now = Instant::now();
        // (server, close cleanly): a dead server's socket is just dropped.
        let mut closing = Vec::new();
        let retry;
        {
            let mut st = self.state.lock();
            let keep = s.min_pool_size.min(if s.pool_size == 0 {
                u32::MAX
            } else {
                s.pool_size
            });
            let mut i = 0;
            while i < st.idle.len() {
                let c = &st.idle[i];
                // Cheap: no syscall unless epoll saw the socket readable.
                let dead = !c.is_clean();
                let idle_too_long = !s.server_idle_timeout.is_zero()
                    && now.duration_since(c.last_used) >= s.server_idle_timeout
                    && st.total > keep;
                let too_old =
                    !s.server_lifetime.is_zero() && c.lifetime_over(s.server_lifetime, now);
                let obsolete = c.info.close_needed.load(Ordering::Relaxed);
                if dead || idle_too_long || too_old || obsolete {
                    if let Some(c) = st.idle.remove(i) {
                        self.forget_server(&mut st, c.id);
                        closing.push((c, !dead));
                    }
                } else {
                    i += 1;
                }
            }
            // The window-end timer normally does this; this covers a client that queued
            // behind a busy server which then died, with no connect failing since.
            retry = !st.waiters.is_empty()
                && st.connecting == 0
                && st
                    .failed
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() >= s.server_login_retry);
        }
        let any = !closing.is_empty();
        for (c, clean) in closing {
            close_server(c, clean);
        }
        if any {
            self.wake_blocked();
        }
        if retry {
            self.grow();
        }
        if s.min_pool_size > 0 && (has_clients || s.forced_user) {
            self.grow_to(s.min_pool_size);
        }
    }

    /// Keeps this pool's host names fresh in the DNS cache, and when some answer changed
    /// marks the servers whose address is no longer among the answers: they close when
    /// released (idle ones at the next tick), and new ones go to the new addresses.
    fn check_dns(&self, t: &Target) {
        let cache = crate::net::dns::cache();
        for h in &t.hosts {
            if let Host::Tcp(name) = h {
                cache.refresh_if_stale(name, t.dns_max_ttl, t.dns_nxdomain_ttl);
            }
        }
        let changes = cache.changes();
        if self.dns_seen.swap(changes, Ordering::AcqRel) == changes {
            return;
        }
        let mut current: Vec<std::net::IpAddr> = Vec::new();
        for h in &t.hosts {
            if let Host::Tcp(name) = h {
                match cache.last_good(name) {
                    Some(a) => current.extend(a.iter().copied()),
                    // Never resolved: which servers are current is unknown; keep them all.
                    None => return,
                }
            }
        }
        let mut marked = 0;
        for info in self.servers.lock().iter() {
            let Ok(ip) = info.addr.parse::<std::net::IpAddr>() else {
                continue;
            };
            if !current.contains(&ip) && !info.close_needed.swap(true, Ordering::Relaxed) {
                marked += 1;
            }
        }
        if marked > 0 {
            tracing::info!(
                "{}/{}: DNS answer changed, {marked} server(s) to be replaced",
                self.db_name,
                self.user_name
            );
        }
    }

    /// Closes every idle server (shutdown, RECONNECT).
    pub fn close_idle(&self) {
        let idle: Vec<ServerConn> = {
            let mut st = self.state.lock();
            let v: Vec<_> = st.idle.drain(..).collect();
            for c in &v {
                self.forget_server(&mut st, c.id);
            }
            v
        };
        for c in idle {
            close_server(c, true);
        }
    }
}

/// A client's place in the wait queue. When the waiting future is dropped before it got
/// its answer (KILL / KILL_CLIENT / shutdown end a waiting session), the place is given
/// up and a server handed over in the meantime goes back to the pool; otherwise that
/// server would be lost with the pool still counting it, and PAUSE would never finish.
struct QueueSlot<'a> {
    pool: &'a Pool,
    id: u64,
    rx: oneshot::Receiver<WaitResult>,
    answered: bool,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.pool.state.lock().waiters.retain(|w| w.id != self.id);
        self.rx.close();
        if let Ok(Ok(conn)) = self.rx.try_recv() {
            self.pool.release(conn);
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
