//! Counters behind the limits that span pools: servers per database and per user
//! (max_db_connections, max_user_connections) and clients per database and per user
//! (max_db_client_connections, max_user_client_connections).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Weak;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Pool;

/// A counter with a check-and-increment against a limit (0 = unlimited).
#[derive(Debug, Default)]
pub struct Counter(AtomicU32);

impl Counter {
    /// Takes one unit if that stays within `max`; `max == 0` means unlimited.
    pub fn try_acquire(&self, max: u32) -> bool {
        if max == 0 {
            self.0.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// PAUSE / RESUME: while closed, no server is handed out and released servers are closed.
#[derive(Default)]
pub struct Gate {
    paused: AtomicBool,
    /// Bumped by every resume, so a PAUSE that is still waiting for servers can tell it
    /// was overtaken by a RESUME (PgBouncer #715: there the PAUSE hangs).
    resumes: AtomicU64,
    notify: Notify,
}

impl Gate {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Closes the gate; `false` if it was already closed.
    pub fn try_pause(&self) -> bool {
        self.paused
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn resume(&self) {
        self.resumes.fetch_add(1, Ordering::AcqRel);
        self.paused.store(false, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Opens the gate; `false` if it was not closed.
    pub fn try_resume(&self) -> bool {
        if self
            .paused
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.resumes.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
        true
    }

    /// How many times the gate was resumed; compare two readings to detect a RESUME.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Acquire)
    }

    /// Returns once the gate is open.
    pub async fn wait_open(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            // Registered before the check, so a resume in between is not missed.
            n.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            n.await;
        }
    }
}

/// What the pools of one database (or of one user) share.
#[derive(Default)]
pub struct Shared {
    /// PAUSE db / KILL db.
    pub gate: Gate,
    /// DISABLE db: new clients are refused.
    pub disabled: AtomicBool,
    /// Server connections open or being opened.
    pub servers: Counter,
    /// Client connections logged in.
    pub clients: Counter,
    /// Pools that have waiting clients but could not open a server because this limit was
    /// reached; they are woken when a server of this database/user closes.
    pub blocked: Mutex<Vec<Weak<Pool>>>,
    /// Every pool of this database/user, to find an idle server to evict.
    pub pools: Mutex<Vec<Weak<Pool>>>,
}

impl Shared {
    pub fn add_blocked(&self, p: Weak<Pool>) {
        let mut b = self.blocked.lock();
        if !b.iter().any(|w| w.ptr_eq(&p)) {
            b.push(p);
        }
    }

    pub fn has_blocked(&self) -> bool {
        !self.blocked.lock().is_empty()
    }

    pub fn take_blocked(&self) -> Vec<Weak<Pool>> {
        std::mem::take(&mut *self.blocked.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_limits() {
        let c = Counter::default();
        assert!(c.try_acquire(2));
        assert!(c.try_acquire(2));
        assert!(!c.try_acquire(2));
        c.release();
        assert!(c.try_acquire(2));
        assert!(c.try_acquire(0));
        assert_eq!(c.get(), 3);
        c.release();
        c.release();
        c.release();
        c.release();
        assert_eq!(c.get(), 0);
    }
}
