//! What one server connection has prepared: an LRU of capacity max_prepared_statements,
//! which never evicts a statement the running transaction may still use.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::Stmt;

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) stmt: Arc<Stmt>,
    /// Recency clock value of the last use.
    pub(super) used: u64,
    /// Lease and client sequence number of the last use: a statement used by the running
    /// transaction may back an open portal and is not evicted.
    pub(super) used_at: (u64, u64),
    /// Lease and client sequence number of the Parse that created it.
    pub(super) added_at: (u64, u64),
}

/// What one server connection has prepared (the LRU).
#[derive(Debug, Default)]
pub struct ServerStatements {
    pub(super) slots: HashMap<u64, Slot>,
    clock: u64,
    /// Lease counter: sequence numbers are per client session.
    pub(super) lease: u64,
    /// Statements used before this client sequence number in this lease belong to
    /// finished transactions.
    safe_seq: u64,
    /// Statements to Close on this server before anything else (stale plans).
    pub(super) to_close: Vec<Arc<Stmt>>,
}

impl ServerStatements {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A new lease: everything used so far belongs to finished transactions.
    pub fn new_lease(&mut self) {
        self.lease += 1;
        self.safe_seq = 0;
    }

    /// A ReadyForQuery `I` answered the request with client sequence number `seq`.
    pub fn transaction_ended(&mut self, seq: u64) {
        self.safe_seq = self.safe_seq.max(seq);
    }

    /// Forget everything (the server dropped all its statements).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.to_close.clear();
    }

    pub(super) fn has(&mut self, stmt: &Stmt, seq: u64) -> bool {
        self.clock += 1;
        let (clock, lease) = (self.clock, self.lease);
        match self.slots.get_mut(&stmt.id) {
            Some(s) => {
                s.used = clock;
                s.used_at = (lease, seq);
                true
            }
            None => false,
        }
    }

    pub(super) fn insert(&mut self, stmt: Arc<Stmt>, seq: u64) {
        self.clock += 1;
        let at = (self.lease, seq);
        self.slots.insert(
            stmt.id,
            Slot {
                stmt,
                used: self.clock,
                used_at: at,
                added_at: at,
            },
        );
    }

    /// The least recently used statement that no running transaction uses, if the cache
    /// is at `capacity`. Stale statements (nobody can use them again) go first.
    pub(super) fn evict(&mut self, capacity: usize) -> Option<Slot> {
        if self.slots.len() < capacity.max(1) {
            return None;
        }
        let (lease, safe) = (self.lease, self.safe_seq);
        let id = self
            .slots
            .values()
            .filter(|s| s.used_at.0 < lease || s.used_at.1 < safe)
            .min_by_key(|s| (!s.stmt.is_stale(), s.used))
            .map(|s| s.stmt.id)?;
        self.slots.remove(&id)
    }
}

/// Undoes the insertion of `stmt` by the message with client sequence number `seq`.
pub(super) fn remove_added(server: &mut ServerStatements, stmt: &Stmt, seq: u64) {
    let lease = server.lease;
    if server
        .slots
        .get(&stmt.id)
        .is_some_and(|s| s.added_at == (lease, seq))
    {
        server.slots.remove(&stmt.id);
    }
}
