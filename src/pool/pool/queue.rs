//! The wait queue: leasing a server (an idle one, else a FIFO place in the queue while
//! connects are started), and the one expiry task per pool that bounds the waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{pop_idle, Pool, PoolSettings, WaitResult, Waiter};
use crate::proto::PgError;
use crate::server::ServerConn;

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

impl Pool {
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
