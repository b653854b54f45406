//! Growth: connects started on demand within the pool's limits, their results handed to
//! waiters or failed into the fast-fail window, and retries when the window ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{close_server, hand_to_waiter, Pool};
use crate::config::LoadBalanceHosts;
use crate::pool::limits::Shared;
use crate::proto::PgError;
use crate::server::{self, LoginError, ServerConn};

impl Pool {
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
                    conn.route
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
}
