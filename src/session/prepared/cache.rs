//! The process-wide statement cache: one [`Stmt`] (and one server-side name) per distinct
//! Parse payload, alive while a client map or a server cache holds it.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use dashmap::DashMap;

/// Prefix of every server-side statement name pgsluice makes.
pub const PREFIX: &str = "PGSLUICE_";

/// A statement name no server has: longer than NAMEDATALEN - 1, so SQL `PREPARE` cannot
/// create it, and pgsluice never sends it in a Parse. Bind/Describe of it fail with
/// 26000 and change nothing else.
pub const SENTINEL: &[u8] =
    b"PGSLUICE_no_such_statement_________________________________________________________";

/// One distinct statement (Parse payload) and its server-side name.
pub struct Stmt {
    pub id: u64,
    /// `PGSLUICE_<id>`.
    pub name: Box<[u8]>,
    /// The Parse body after the statement name: query text, NUL, parameter types.
    pub payload: Box<[u8]>,
    pub(super) hash: u64,
    /// A pool (its address) where a server parsed this statement successfully.
    pub(super) ok_in: std::sync::atomic::AtomicUsize,
    /// The server's ErrorResponse when it reported the statement's cached plan stale
    /// (DDL changed its result type): see [`invalidate`].
    stale: OnceLock<Box<[u8]>>,
}

impl Stmt {
    /// [`invalidate`]d: its plan changed result type on some server.
    pub fn is_stale(&self) -> bool {
        self.stale.get().is_some()
    }

    /// The ErrorResponse the server sent when it found the plan stale.
    pub fn stale_error(&self) -> Option<&[u8]> {
        self.stale.get().map(|e| &e[..])
    }
}

impl std::fmt::Debug for Stmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", PREFIX, self.id)
    }
}

struct Cache {
    map: DashMap<u64, Vec<Weak<Stmt>>>,
    hasher: std::collections::hash_map::RandomState,
    next: AtomicU64,
}

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache {
    map: DashMap::new(),
    hasher: std::collections::hash_map::RandomState::new(),
    next: AtomicU64::new(1),
});

impl Drop for Stmt {
    fn drop(&mut self) {
        // The last holder let go: forget the cache slot. Never runs under a cache lock
        // (see `intern`).
        if let Some(mut bucket) = CACHE.map.get_mut(&self.hash) {
            bucket.retain(|w| w.strong_count() > 0);
            if bucket.is_empty() {
                drop(bucket);
                CACHE.map.remove_if(&self.hash, |_, v| v.is_empty());
            }
        }
    }
}

fn payload_hash(payload: &[u8]) -> u64 {
    CACHE.hasher.hash_one(payload)
}

/// The statement for a Parse payload: the cached one, or a new one with a new name.
pub fn intern(payload: &[u8]) -> Arc<Stmt> {
    let hash = payload_hash(payload);
    // Statements upgraded while comparing: dropped after the lock is released, since the
    // last drop of a statement takes the lock itself.
    let mut seen: Vec<Arc<Stmt>> = Vec::new();
    let found = {
        let mut bucket = CACHE.map.entry(hash).or_default();
        let mut found = None;
        for w in bucket.iter() {
            if let Some(s) = w.upgrade() {
                if *s.payload == *payload && !s.is_stale() {
                    found = Some(s);
                    break;
                }
                seen.push(s);
            }
        }
        match found {
            Some(s) => s,
            None => {
                bucket.retain(|w| w.strong_count() > 0);
                let id = CACHE.next.fetch_add(1, Ordering::Relaxed);
                let s = Arc::new(Stmt {
                    id,
                    name: format!("{PREFIX}{id}").into_bytes().into_boxed_slice(),
                    payload: payload.into(),
                    hash,
                    ok_in: std::sync::atomic::AtomicUsize::new(0),
                    stale: OnceLock::new(),
                });
                bucket.push(Arc::downgrade(&s));
                s
            }
        }
    };
    drop(seen);
    found
}

/// The cached statement for a Parse payload, if there is one.
pub(super) fn lookup(payload: &[u8]) -> Option<Arc<Stmt>> {
    let hash = payload_hash(payload);
    let mut seen: Vec<Arc<Stmt>> = Vec::new();
    let found = CACHE.map.get(&hash).and_then(|bucket| {
        bucket.iter().find_map(|w| {
            let s = w.upgrade()?;
            if *s.payload == *payload && !s.is_stale() {
                Some(s)
            } else {
                seen.push(s);
                None
            }
        })
    });
    drop(seen);
    found
}

/// A server said `stmt`'s cached plan is stale: DDL changed its result type. It is taken
/// out of the cache, so the next Parse of the same text (a client preparing again, or a
/// new one) gets a new statement and name, and works on every server — no RECONNECT
/// (PgBouncer #1038). Clients that still hold `stmt` prepared it before the error; their
/// Bind and Describe get PostgreSQL's answer for such a statement, "cached plan must not
/// change result type" (`error`, the server's own ErrorResponse, routine field included:
/// drivers such as asyncpg recognise it by that and prepare again), from pgsluice. It is
/// never parsed again under its old name: rows of a new shape would reach a client that
/// was described the old one (asyncpg: "the number of columns in the result row is
/// different from what was described").
pub fn invalidate(stmt: &Arc<Stmt>, error: &[u8]) {
    let _ = stmt.stale.set(error.into());
    if let Some(mut bucket) = CACHE.map.get_mut(&stmt.hash) {
        let me = Arc::downgrade(stmt);
        bucket.retain(|w| !w.ptr_eq(&me) && w.strong_count() > 0);
    }
}

/// Distinct statements in the cache (for tests and metrics).
pub fn cached() -> usize {
    CACHE
        .map
        .iter()
        .map(|b| b.iter().filter(|w| w.strong_count() > 0).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_per_payload() {
        let a = intern(b"SELECT 1\0\0\0");
        let b = intern(b"SELECT 1\0\0\0");
        let c = intern(b"SELECT 2\0\0\0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert!(a.name.starts_with(PREFIX.as_bytes()));
        let id = a.id;
        drop((a, b));
        let again = intern(b"SELECT 1\0\0\0");
        assert_ne!(again.id, id, "freed when nobody holds it");
    }

    #[test]
    fn invalidated_statement_gets_a_new_name() {
        let a = intern(b"SELECT 'inv'\0\0\0");
        invalidate(&a, b"E\0\0\0\x04");
        let b = intern(b"SELECT 'inv'\0\0\0");
        assert_ne!(a.id, b.id);
        assert!(a.is_stale() && !b.is_stale());
    }

    #[test]
    fn sentinel_is_longer_than_namedatalen() {
        assert!(SENTINEL.len() > 63);
    }
}
