//! The lease's meter: counters and clocks (bytes, queries, transactions, their times) and
//! the client-side timeouts worked out from those clocks.

use std::time::{Duration, Instant};

use crate::session::tracker::Tracker;

/// The client-side timeouts of one lease; zero = off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// query_timeout: a request unanswered for this long.
    pub query: Duration,
    /// idle_transaction_timeout: the server idle inside a transaction for this long.
    pub idle_transaction: Duration,
    /// transaction_timeout: a transaction open for this long.
    pub transaction: Duration,
}

impl Timeouts {
    pub fn any(&self) -> bool {
        !(self.query.is_zero() && self.idle_transaction.is_zero() && self.transaction.is_zero())
    }
}

/// Which timeout ended the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Query,
    IdleTransaction,
    Transaction,
}

impl Expired {
    /// PgBouncer's disconnect reason, sent to the client as FATAL 08P01.
    pub fn message(self) -> &'static str {
        match self {
            Expired::Query => "query timeout",
            Expired::IdleTransaction => "idle transaction timeout",
            Expired::Transaction => "transaction timeout",
        }
    }
}

/// Counters and clocks of one lease: bytes each way, queries (ReadyForQuery), transactions
/// (ReadyForQuery back to idle), and their times.
pub struct Meter<'a> {
    pub stats: &'a mut crate::stats::TxStats,
    /// When the oldest unanswered request was sent.
    pub(super) query_start: Option<Instant>,
    /// When the current transaction's first request was sent.
    pub(super) xact_start: Option<Instant>,
    pub(super) limits: Timeouts,
    /// Start of the current idle-in-transaction stretch, with the ReadyForQuery count it
    /// began at: a later ReadyForQuery starts a new stretch even if no wake-up saw the
    /// server busy in between.
    idle_mark: Option<(u64, Instant)>,
    /// When the lease began, until the first request scan has used it.
    pub(super) lease_start: Option<Instant>,
    /// When the last ReadyForQuery was read: the server has been idle since (the release
    /// time, without another clock read).
    pub last_ready: Option<Instant>,
}

impl<'a> Meter<'a> {
    pub fn new(stats: &'a mut crate::stats::TxStats) -> Self {
        Meter {
            stats,
            query_start: None,
            xact_start: None,
            limits: Timeouts::default(),
            idle_mark: None,
            lease_start: None,
            last_ready: None,
        }
    }

    /// Enforce these timeouts during the relay.
    /// The lease began at `t`: the requests already buffered when it began are timed
    /// from there, without another clock read.
    pub fn starting_at(mut self, t: Instant) -> Self {
        self.lease_start = Some(t);
        self
    }

    pub fn with_timeouts(mut self, limits: Timeouts) -> Self {
        self.limits = limits;
        self
    }

    #[inline]
    pub(super) fn request(&mut self, now: &mut Option<Instant>) {
        let t = *now.get_or_insert_with(|| self.lease_start.take().unwrap_or_else(Instant::now));
        self.query_start.get_or_insert(t);
        self.xact_start.get_or_insert(t);
    }

    /// A ReadyForQuery. `busy`: the client has more requests in flight (owed, or an
    /// extended batch not yet synced), so the next request starts running now.
    #[inline]
    pub(super) fn ready(&mut self, status: u8, busy: bool) {
        let now = Instant::now();
        self.last_ready = Some(now);
        self.stats.query_count += 1;
        // A one-query transaction started both clocks at once: one subtraction for both.
        let mut query_us = None;
        if let Some(t) = self.query_start.take() {
            let us = now.duration_since(t).as_micros() as u64;
            self.stats.query_time += us;
            query_us = Some((t, us));
        }
        if busy {
            self.query_start = Some(now);
        }
        if status == b'I' {
            self.stats.xact_count += 1;
            if let Some(t) = self.xact_start.take() {
                self.stats.xact_time += match query_us {
                    Some((q, us)) if q == t => us,
                    _ => now.duration_since(t).as_micros() as u64,
                };
            }
            // A pipelined request after an idle ReadyForQuery opens the next transaction.
            if busy {
                self.xact_start = Some(now);
            }
        }
    }

    /// The earliest timeout deadline in the current state, and which one it is.
    /// PgBouncer's clocks: query_timeout from the start of the running request,
    /// transaction_timeout from the transaction's first request, idle_transaction_timeout
    /// from the ReadyForQuery (`T`/`E`) that left the server idle in a transaction.
    pub(super) fn deadline(&mut self, tracker: &Tracker) -> Option<(Instant, Expired)> {
        let l = self.limits;
        let idle_start =
            if !l.idle_transaction.is_zero() && tracker.quiet() && tracker.tx_status() != b'I' {
                let n = self.stats.query_count;
                Some(match self.idle_mark {
                    Some((m, t)) if m == n => t,
                    _ => {
                        let t = Instant::now();
                        self.idle_mark = Some((n, t));
                        t
                    }
                })
            } else {
                None
            };
        let mut best: Option<(Instant, Expired)> = None;
        for (start, limit, what) in [
            (self.query_start, l.query, Expired::Query),
            (self.xact_start, l.transaction, Expired::Transaction),
            (idle_start, l.idle_transaction, Expired::IdleTransaction),
        ] {
            // An absurdly large setting overflows Instant: that timeout never fires.
            let Some(at) = start
                .filter(|_| !limit.is_zero())
                .and_then(|t| t.checked_add(limit))
            else {
                continue;
            };
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, what));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::TxStats;

    const Q: Duration = Duration::from_secs(3);
    const IDLE: Duration = Duration::from_secs(5);
    const XACT: Duration = Duration::from_secs(7);

    fn limits() -> Timeouts {
        Timeouts {
            query: Q,
            idle_transaction: IDLE,
            transaction: XACT,
        }
    }

    /// The client sends `tag` (as scan_client does).
    fn send(t: &mut Tracker, m: &mut Meter<'_>, tag: u8) {
        t.client_msg(tag);
        m.request(&mut None);
    }

    /// The server answers ReadyForQuery `status` (as scan_server does).
    fn ready(t: &mut Tracker, m: &mut Meter<'_>, status: u8) {
        t.server_msg(b'Z', status);
        m.ready(status, !t.quiet());
    }

    #[test]
    fn no_timeouts_no_deadline() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats);
        let mut t = Tracker::default();
        assert!(!m.limits.any());
        send(&mut t, &mut m, b'Q');
        assert_eq!(m.deadline(&t), None);
        ready(&mut t, &mut m, b'T');
        assert_eq!(m.deadline(&t), None);
    }

    #[test]
    fn running_query_is_bounded_by_query_timeout() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats).with_timeouts(limits());
        let mut t = Tracker::default();
        send(&mut t, &mut m, b'Q');
        let start = m.query_start.expect("request start");
        assert_eq!(m.deadline(&t), Some((start + Q, Expired::Query)));
        ready(&mut t, &mut m, b'I');
        assert_eq!(m.deadline(&t), None, "an idle server has no deadline");
    }

    #[test]
    fn idle_in_transaction_counts_from_the_last_ready_for_query() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats).with_timeouts(Timeouts {
            idle_transaction: IDLE,
            ..Default::default()
        });
        let mut t = Tracker::default();
        send(&mut t, &mut m, b'Q');
        assert_eq!(m.deadline(&t), None, "busy is not idle");
        ready(&mut t, &mut m, b'T');
        let (first, what) = m.deadline(&t).expect("idle in transaction");
        assert_eq!(what, Expired::IdleTransaction);
        assert_eq!(
            m.deadline(&t).map(|d| d.0),
            Some(first),
            "stable while idle"
        );
        // A whole request/answer cycle between two looks still starts a new stretch.
        std::thread::sleep(Duration::from_millis(2));
        send(&mut t, &mut m, b'Q');
        ready(&mut t, &mut m, b'E');
        let (second, _) = m.deadline(&t).expect("idle in a failed transaction");
        assert!(second > first);
        send(&mut t, &mut m, b'Q');
        ready(&mut t, &mut m, b'I');
        assert_eq!(m.deadline(&t), None);
    }

    #[test]
    fn transaction_timeout_runs_from_the_first_request() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats).with_timeouts(Timeouts {
            transaction: XACT,
            ..Default::default()
        });
        let mut t = Tracker::default();
        send(&mut t, &mut m, b'Q');
        let begun = m.xact_start.expect("transaction start");
        ready(&mut t, &mut m, b'T');
        send(&mut t, &mut m, b'Q');
        ready(&mut t, &mut m, b'T');
        assert_eq!(m.deadline(&t), Some((begun + XACT, Expired::Transaction)));
        send(&mut t, &mut m, b'Q');
        ready(&mut t, &mut m, b'I');
        assert_eq!(m.deadline(&t), None);
    }

    #[test]
    fn pipelined_request_after_idle_opens_the_next_transaction() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats).with_timeouts(limits());
        let mut t = Tracker::default();
        send(&mut t, &mut m, b'Q');
        send(&mut t, &mut m, b'Q');
        ready(&mut t, &mut m, b'I');
        assert!(m.query_start.is_some() && m.xact_start.is_some());
        let (_, what) = m.deadline(&t).expect("second query running");
        assert_eq!(what, Expired::Query, "the shortest deadline wins");
        ready(&mut t, &mut m, b'I');
        assert_eq!(m.deadline(&t), None);
        assert_eq!(m.stats.xact_count, 2);
    }

    #[test]
    fn huge_timeouts_never_fire_and_never_panic() {
        let mut stats = TxStats::default();
        let mut m = Meter::new(&mut stats).with_timeouts(Timeouts {
            query: Duration::MAX,
            idle_transaction: Duration::MAX,
            transaction: Duration::MAX,
        });
        let mut t = Tracker::default();
        send(&mut t, &mut m, b'Q');
        assert_eq!(m.deadline(&t), None);
        ready(&mut t, &mut m, b'T');
        assert_eq!(m.deadline(&t), None);
    }
}
