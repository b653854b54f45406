//! Protocol-level named prepared statements in transaction and statement mode (PgBouncer's
//! `max_prepared_statements`).
//!
//! - A process-wide cache maps each distinct Parse payload (query text + parameter type
//!   OIDs, the bytes after the statement name) to one [`Stmt`] with a server-side name
//!   `PGSLUICE_<n>`. Entries live while a client map or a server cache holds them.
//! - Each client has its own map, client name → statement ([`ClientStatements`]).
//! - Each server connection has an LRU of the statements it has prepared
//!   ([`ServerStatements`], capacity max_prepared_statements).
//!
//! The relay rewrites named Parse/Bind/Describe('S')/Close('S') as they go to the server
//! and records, per rewritten message, an [`Effect`] that is confirmed or undone when the
//! tracker reports how the server took it (answered, failed, skipped after an error). So
//! both maps always describe what the server and PostgreSQL semantics say, even after an
//! error mid-pipeline.
//!
//! Statement maps are only changed by messages of one Sync batch at a time: a named
//! message that would change or rely on them while effects of an *earlier* batch are
//! still unconfirmed waits (the relay stops reading the client) until those are settled.
//! Drivers that wait for each batch never see that wait.
//!
//! Errors pgsluice owes the client (Bind/Describe of an unknown name, Parse of a name in
//! use) are produced by the server itself, so transaction state and skip-to-Sync stay
//! exactly PostgreSQL's: the message is sent with [`SENTINEL`], a name no server has, and
//! the server's "does not exist" ErrorResponse is replaced by the right one. No
//! `PGSLUICE_` name ever reaches a client in an error text.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use bytes::{BufMut, BytesMut};
use dashmap::DashMap;

use super::tracker::{Disp, Outcome, Tracker};
use crate::proto::error::ErrorFields;
use crate::proto::PgError;

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
    hash: u64,
    /// A pool (its address) where a server parsed this statement successfully.
    ok_in: std::sync::atomic::AtomicUsize,
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
                if *s.payload == *payload {
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
fn lookup(payload: &[u8]) -> Option<Arc<Stmt>> {
    let hash = payload_hash(payload);
    let mut seen: Vec<Arc<Stmt>> = Vec::new();
    let found = CACHE.map.get(&hash).and_then(|bucket| {
        bucket.iter().find_map(|w| {
            let s = w.upgrade()?;
            if *s.payload == *payload {
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

/// Takes `stmt` out of the cache: the next Parse of the same text gets a new statement
/// (and name). Used when the server says its cached plan is stale.
pub fn invalidate(stmt: &Arc<Stmt>) {
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

// ------------------------------------------------------------------ server side

#[derive(Debug)]
struct Slot {
    stmt: Arc<Stmt>,
    /// Recency clock value of the last use.
    used: u64,
    /// Lease and client sequence number of the last use: a statement used by the running
    /// transaction may back an open portal and is not evicted.
    used_at: (u64, u64),
    /// Lease and client sequence number of the Parse that created it.
    added_at: (u64, u64),
}

/// What one server connection has prepared (the LRU).
#[derive(Debug, Default)]
pub struct ServerStatements {
    slots: HashMap<u64, Slot>,
    clock: u64,
    /// Lease counter: sequence numbers are per client session.
    lease: u64,
    /// Statements used before this client sequence number in this lease belong to
    /// finished transactions.
    safe_seq: u64,
    /// Statements to Close on this server before anything else (stale plans).
    to_close: Vec<Arc<Stmt>>,
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

    fn has(&mut self, stmt: &Stmt, seq: u64) -> bool {
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

    fn insert(&mut self, stmt: Arc<Stmt>, seq: u64) {
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
    /// is at `capacity`.
    fn evict(&mut self, capacity: usize) -> Option<Slot> {
        if self.slots.len() < capacity.max(1) {
            return None;
        }
        let (lease, safe) = (self.lease, self.safe_seq);
        let id = self
            .slots
            .values()
            .filter(|s| s.used_at.0 < lease || s.used_at.1 < safe)
            .min_by_key(|s| s.used)
            .map(|s| s.stmt.id)?;
        self.slots.remove(&id)
    }
}

// ------------------------------------------------------------------ client side

#[derive(Debug, Clone)]
struct Named {
    stmt: Arc<Stmt>,
    /// Client sequence number of the Parse that made it.
    seq: u64,
}

/// What a rewritten message changed, to confirm or undo when the server has taken it.
#[derive(Debug)]
enum Effect {
    /// Client Parse of `name`: the map entry (made at send time), and for a Parse sent to
    /// the server, the server cache entry.
    Parse {
        name: Box<[u8]>,
        seq: u64,
        server: bool,
        stmt: Arc<Stmt>,
    },
    /// Parse injected before a Bind/Describe.
    Inject { stmt: Arc<Stmt>, seq: u64 },
    /// Close injected to evict (or to drop a stale plan: `stale`).
    Evict {
        slot: Option<Slot>,
        stmt: Arc<Stmt>,
        stale: bool,
    },
    /// Client Close of `name` (the map entry removed at send time).
    Close { name: Box<[u8]>, was: Named },
    /// A Bind of a known statement (for "cached plan must not change result type").
    Bind { stmt: Arc<Stmt> },
    /// The message was sent with the sentinel name: its ErrorResponse is replaced.
    Replace(Box<[u8]>),
}

impl Effect {
    /// Changes what a statement name means (so later batches must wait for it).
    fn changes_maps(&self) -> bool {
        !matches!(self, Effect::Bind { .. } | Effect::Replace(_))
    }
}

/// One client's prepared statements, and the state of the rewriting for its lease.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Named>,
    effects: VecDeque<Effect>,
    /// Effects that change maps not yet settled, and the batch of the last one pushed.
    unsettled: usize,
    unsettled_batch: u64,
    /// Server LRU capacity.
    pub capacity: usize,
    /// The pool of the current lease (its address), for [`Stmt`]'s parse record.
    pool: usize,
}

/// What the client scan does with the message at the front of its buffer.
pub enum Step {
    /// Needs this many bytes buffered first.
    Need(usize),
    /// Consumed `n` input bytes; `skip` more of the same message follow and are copied.
    Done { consumed: usize, skip: usize },
    /// Must wait until earlier batches are settled.
    Stall,
}

impl ClientStatements {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A new lease: nothing is pending.
    pub fn new_lease(&mut self, capacity: usize, pool: usize) {
        self.effects.clear();
        self.unsettled = 0;
        self.capacity = capacity;
        self.pool = pool;
    }

    /// A named Parse followed by Sync, from a client that holds no server, for a statement
    /// a server of `pool` has parsed before: answered (ParseComplete, ReadyForQuery idle)
    /// without a server, so a client that prepares synchronously (libpq's PQprepare) does
    /// not queue for a server it holds nowhere near as long. Returns the bytes consumed.
    /// `seq` orders the new name before anything the client sends later.
    pub fn answer_without_server(
        &mut self,
        buf: &[u8],
        pool: usize,
        seq: u64,
        max: u32,
        reply: &mut BytesMut,
    ) -> Option<usize> {
        let p = crate::proto::frame::peek_header(buf, max).ok()??;
        if p.tag != b'P' || buf.len() < p.frame_len() {
            return None;
        }
        let rest = &buf[p.frame_len()..];
        let sync = crate::proto::frame::peek_header(rest, max).ok()??;
        if sync.tag != b'S' || sync.len != 4 {
            return None;
        }
        let body = &buf[5..p.frame_len()];
        let nul = body.iter().position(|&b| b == 0)?;
        if nul == 0 || self.map.contains_key(&body[..nul]) {
            return None;
        }
        let stmt = lookup(&body[nul + 1..])?;
        if stmt.ok_in.load(Ordering::Relaxed) != pool {
            return None;
        }
        self.map.insert(body[..nul].into(), Named { stmt, seq });
        reply.put_slice(&[b'1', 0, 0, 0, 4, b'Z', 0, 0, 0, 5, b'I']);
        Some(p.frame_len() + sync.frame_len())
    }

    fn push_effect(&mut self, t: &Tracker, e: Effect) {
        if e.changes_maps() {
            self.unsettled += 1;
            self.unsettled_batch = t.batch();
        }
        self.effects.push_back(e);
    }

    /// A named statement message must wait: maps changes of an earlier batch are not
    /// settled yet.
    fn must_wait(&self, t: &Tracker) -> bool {
        self.unsettled > 0 && self.unsettled_batch < t.batch()
    }

    /// Handles the client message at the front of `input` (its header is `tag`, `len`)
    /// if it is a named Parse/Bind/Describe('S')/Close('S'); `None` = not one: it goes
    /// through untouched.
    pub fn client_step(
        &mut self,
        out: &mut BytesMut,
        input: &[u8],
        tag: u8,
        frame_len: usize,
        t: &mut Tracker,
        server: &mut ServerStatements,
    ) -> Option<Step> {
        if !matches!(tag, b'P' | b'B' | b'D' | b'C') {
            return None;
        }
        let body_end = frame_len.min(input.len());
        let body = &input[5..body_end];
        let whole = input.len() >= frame_len;
        match tag {
            b'P' | b'D' | b'C' => {
                if !whole {
                    return Some(Step::Need(frame_len));
                }
                let (kind, name_at) = if tag == b'P' {
                    (b'S', 0)
                } else {
                    (body.first().copied().unwrap_or(0), 1)
                };
                if kind != b'S' {
                    return None;
                }
                let rest = body.get(name_at..)?;
                let nul = rest.iter().position(|&b| b == 0)?;
                if nul == 0 {
                    return None;
                }
                if self.must_wait(t) {
                    return Some(Step::Stall);
                }
                let name = &rest[..nul];
                let after = &rest[nul + 1..];
                self.close_stale(out, t, server);
                match tag {
                    b'P' => self.parse(out, name, after, t, server),
                    b'D' => self.describe(out, name, t, server),
                    _ => self.close(name, t),
                }
                Some(Step::Done {
                    consumed: frame_len,
                    skip: 0,
                })
            }
            _ => {
                // Bind: portal, statement name, then parameters streamed through as-is.
                let Some(p) = body.iter().position(|&b| b == 0) else {
                    return if whole {
                        None
                    } else {
                        Some(Step::Need((input.len() + 4096).min(frame_len)))
                    };
                };
                let Some(n) = body[p + 1..].iter().position(|&b| b == 0) else {
                    return if whole {
                        None
                    } else {
                        Some(Step::Need((input.len() + 4096).min(frame_len)))
                    };
                };
                if n == 0 {
                    return None;
                }
                if self.must_wait(t) {
                    return Some(Step::Stall);
                }
                self.close_stale(out, t, server);
                let portal = &body[..p];
                let name = &body[p + 1..p + 1 + n];
                let head = 5 + p + 1 + n + 1;
                let rest_len = frame_len - head;
                let target: &[u8] = match self.map.get(name) {
                    Some(named) => {
                        let stmt = named.stmt.clone();
                        self.ensure(out, &stmt, t, server);
                        t.client_msg_as(b'B', Disp::Forward, true);
                        self.push_effect(t, Effect::Bind { stmt: stmt.clone() });
                        put_bind_head(out, portal, &stmt.name, rest_len);
                        return Some(Step::Done {
                            consumed: head,
                            skip: rest_len,
                        });
                    }
                    None => SENTINEL,
                };
                self.replace_next(t, b'B', "26000", does_not_exist(name));
                put_bind_head(out, portal, target, rest_len);
                Some(Step::Done {
                    consumed: head,
                    skip: rest_len,
                })
            }
        }
    }
}

fn put_bind_head(out: &mut BytesMut, portal: &[u8], name: &[u8], rest_len: usize) {
    let len = 4 + portal.len() + 1 + name.len() + 1 + rest_len;
    out.put_u8(b'B');
    out.put_u32(len as u32);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(name);
    out.put_u8(0);
}
impl ClientStatements {
    /// The next message (`tag`) goes with the sentinel name; its error becomes this one.
    fn replace_next(&mut self, t: &mut Tracker, tag: u8, code: &str, message: String) {
        let mut b = BytesMut::new();
        PgError::error(code, message).write(&mut b);
        t.client_msg_as(tag, Disp::Forward, true);
        self.push_effect(t, Effect::Replace(b.to_vec().into_boxed_slice()));
    }

    fn parse(
        &mut self,
        out: &mut BytesMut,
        name: &[u8],
        payload: &[u8],
        t: &mut Tracker,
        server: &mut ServerStatements,
    ) {
        if self.map.contains_key(name) {
            // PostgreSQL: ERROR 42P05. The server says it: a Bind of the sentinel fails
            // and its error is replaced.
            let msg = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            );
            self.replace_next(t, b'B', "42P05", msg);
            put_msg(out, b'B', |o| {
                o.put_u8(0);
                o.put_slice(SENTINEL);
                o.put_u8(0);
                o.put_u16(0);
                o.put_u16(0);
                o.put_u16(0);
            });
            return;
        }
        let stmt = intern(payload);
        let sent = !server.has(&stmt, t.pushed());
        if sent {
            self.make_room(out, t, server);
        }
        let seq = t.pushed();
        self.map.insert(
            name.into(),
            Named {
                stmt: stmt.clone(),
                seq,
            },
        );
        if sent {
            server.insert(stmt.clone(), seq);
            put_parse(out, &stmt);
            t.client_msg_as(b'P', Disp::Forward, true);
        } else {
            t.client_msg_as(b'P', Disp::Synth, true);
        }
        self.push_effect(
            t,
            Effect::Parse {
                name: name.into(),
                seq,
                server: sent,
                stmt,
            },
        );
    }

    fn describe(
        &mut self,
        out: &mut BytesMut,
        name: &[u8],
        t: &mut Tracker,
        server: &mut ServerStatements,
    ) {
        let target = match self.map.get(name) {
            Some(named) => {
                let stmt = named.stmt.clone();
                self.ensure(out, &stmt, t, server);
                t.client_msg_as(b'D', Disp::Forward, false);
                put_describe(out, &stmt.name);
                return;
            }
            None => SENTINEL,
        };
        self.replace_next(t, b'D', "26000", does_not_exist(name));
        put_describe(out, target);
    }

    fn close(&mut self, name: &[u8], t: &mut Tracker) {
        // Nothing is sent: the server keeps the statement for other clients. Closing a
        // name that does not exist is not an error (PostgreSQL).
        match self.map.remove_entry(name) {
            Some((name, was)) => {
                t.client_msg_as(b'C', Disp::Synth, true);
                self.push_effect(t, Effect::Close { name, was });
            }
            None => t.client_msg_as(b'C', Disp::Synth, false),
        }
    }

    /// Makes sure the server has `stmt` before the message that uses it.
    fn ensure(
        &mut self,
        out: &mut BytesMut,
        stmt: &Arc<Stmt>,
        t: &mut Tracker,
        server: &mut ServerStatements,
    ) {
        if server.has(stmt, t.pushed()) {
            return;
        }
        self.make_room(out, t, server);
        let seq = t.pushed();
        server.insert(stmt.clone(), seq);
        put_parse(out, stmt);
        t.client_msg_as(b'P', Disp::Swallow, true);
        self.push_effect(
            t,
            Effect::Inject {
                stmt: stmt.clone(),
                seq,
            },
        );
    }

    /// Evicts (Close, answer swallowed) until there is room for one more statement.
    fn make_room(&mut self, out: &mut BytesMut, t: &mut Tracker, server: &mut ServerStatements) {
        while let Some(slot) = server.evict(self.capacity) {
            let stmt = slot.stmt.clone();
            put_close(out, &stmt.name);
            t.client_msg_as(b'C', Disp::Swallow, true);
            self.push_effect(
                t,
                Effect::Evict {
                    slot: Some(slot),
                    stmt,
                    stale: false,
                },
            );
        }
    }

    /// Closes statements whose plans the server declared stale.
    fn close_stale(&mut self, out: &mut BytesMut, t: &mut Tracker, server: &mut ServerStatements) {
        if t.skipping() {
            return;
        }
        while let Some(stmt) = server.to_close.pop() {
            put_close(out, &stmt.name);
            t.client_msg_as(b'C', Disp::Swallow, true);
            self.push_effect(
                t,
                Effect::Evict {
                    slot: None,
                    stmt,
                    stale: true,
                },
            );
        }
    }

    /// Applies the outcomes the tracker has reported. Failures undo in reverse order, so
    /// a batch skipped after an error leaves the maps as the server has them.
    pub fn settle(&mut self, t: &mut Tracker, server: &mut ServerStatements) {
        while let Some(o) = t.take_outcome() {
            let Some(e) = self.effects.pop_front() else {
                continue;
            };
            if o == Outcome::Done {
                self.done(e);
                continue;
            }
            let mut run = vec![(o, e)];
            while let Some(o) = t.take_outcome() {
                if let Some(e) = self.effects.pop_front() {
                    run.push((o, e));
                }
            }
            for (o, e) in run.into_iter().rev() {
                if o == Outcome::Done {
                    self.done(e);
                } else {
                    self.undo(e, server);
                }
            }
        }
    }

    fn settled(&mut self, e: &Effect) {
        if e.changes_maps() {
            self.unsettled = self.unsettled.saturating_sub(1);
        }
    }

    fn done(&mut self, e: Effect) {
        self.settled(&e);
        match &e {
            Effect::Parse {
                server: true, stmt, ..
            }
            | Effect::Inject { stmt, .. } => stmt.ok_in.store(self.pool, Ordering::Relaxed),
            _ => {}
        }
    }

    fn undo(&mut self, e: Effect, server: &mut ServerStatements) {
        self.settled(&e);
        match e {
            Effect::Parse {
                name,
                seq,
                server: sent,
                stmt,
            } => {
                if self.map.get(&name).is_some_and(|n| n.seq == seq) {
                    self.map.remove(&name);
                }
                if sent {
                    remove_added(server, &stmt, seq);
                }
            }
            Effect::Inject { stmt, seq } => remove_added(server, &stmt, seq),
            Effect::Evict { slot, stmt, stale } => {
                if stale {
                    server.to_close.push(stmt);
                } else if let Some(slot) = slot {
                    server.slots.entry(stmt.id).or_insert(slot);
                }
            }
            Effect::Close { name, was } => {
                self.map.entry(name).or_insert(was);
            }
            Effect::Bind { .. } | Effect::Replace(_) => {}
        }
    }

    /// The replacement for an ErrorResponse answering the head entry, if pgsluice sent
    /// it with the sentinel name.
    pub fn replacement(&self, t: &Tracker) -> Option<&[u8]> {
        if !t.head_has_effect() {
            return None;
        }
        match self.effects.front() {
            Some(Effect::Replace(b)) => Some(b),
            _ => None,
        }
    }

    /// An ErrorResponse (whole message) answers the head entry: a stale cached plan
    /// invalidates the statement; an internal name in the text is put back to the
    /// client's. Returns the message to send instead, if it must change.
    pub fn on_error(
        &mut self,
        msg: &[u8],
        t: &Tracker,
        server: &mut ServerStatements,
    ) -> Option<Vec<u8>> {
        let body = msg.get(5..)?;
        if t.head_has_effect() {
            if let Some(Effect::Bind { stmt }) = self.effects.front() {
                let f = ErrorFields::parse(body);
                if f.code == "0A000"
                    && f.message
                        .contains("cached plan must not change result type")
                {
                    let stmt = stmt.clone();
                    invalidate(&stmt);
                    if server.slots.remove(&stmt.id).is_some() {
                        server.to_close.push(stmt);
                    }
                }
            }
        }
        if !contains(body, PREFIX.as_bytes()) {
            return None;
        }
        Some(self.rewrite_names(msg))
    }

    /// Replaces `PGSLUICE_<n>` (and the sentinel) in every field of an Error/Notice
    /// message by the client's name for that statement.
    fn rewrite_names(&self, msg: &[u8]) -> Vec<u8> {
        let body = &msg[5..];
        let mut out = Vec::with_capacity(msg.len() + 16);
        out.push(msg[0]);
        out.extend_from_slice(&[0, 0, 0, 0]);
        let p = PREFIX.as_bytes();
        let mut i = 0;
        while i < body.len() {
            if body[i..].starts_with(SENTINEL) {
                out.extend_from_slice(b"?");
                i += SENTINEL.len();
                continue;
            }
            if body[i..].starts_with(p) {
                let digits = body[i + p.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let id = std::str::from_utf8(&body[i + p.len()..i + p.len() + digits])
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok());
                if let Some(id) = id {
                    let name = self.name_of(id);
                    out.extend_from_slice(name.unwrap_or(b"?"));
                    i += p.len() + digits;
                    continue;
                }
            }
            out.push(body[i]);
            i += 1;
        }
        let len = (out.len() - 1) as u32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }

    fn name_of(&self, id: u64) -> Option<&[u8]> {
        self.map
            .iter()
            .find(|(_, n)| n.stmt.id == id)
            .map(|(k, _)| &k[..])
            .or_else(|| {
                self.effects.iter().find_map(|e| match e {
                    Effect::Parse { name, stmt, .. } if stmt.id == id => Some(&name[..]),
                    Effect::Close { name, was } if was.stmt.id == id => Some(&name[..]),
                    _ => None,
                })
            })
    }

    /// CommandComplete `DEALLOCATE ALL` / `DISCARD ALL` for the request sent with client
    /// sequence number `seq`: what existed before it is gone, from this client's map and
    /// from the server.
    pub fn deallocated_all(&mut self, seq: u64, server: &mut ServerStatements) {
        self.map.retain(|_, n| n.seq > seq);
        let lease = server.lease;
        server
            .slots
            .retain(|_, s| s.added_at.0 == lease && s.added_at.1 > seq);
        server.to_close.clear();
    }
}

fn remove_added(server: &mut ServerStatements, stmt: &Stmt, seq: u64) {
    let lease = server.lease;
    if server
        .slots
        .get(&stmt.id)
        .is_some_and(|s| s.added_at == (lease, seq))
    {
        server.slots.remove(&stmt.id);
    }
}

fn does_not_exist(name: &[u8]) -> String {
    format!(
        "prepared statement \"{}\" does not exist",
        String::from_utf8_lossy(name)
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Appends `tag, len, body`.
fn put_msg(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    f(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_parse(out: &mut BytesMut, stmt: &Stmt) {
    put_msg(out, b'P', |o| {
        o.put_slice(&stmt.name);
        o.put_u8(0);
        o.put_slice(&stmt.payload);
    });
}

fn put_describe(out: &mut BytesMut, name: &[u8]) {
    put_msg(out, b'D', |o| {
        o.put_u8(b'S');
        o.put_slice(name);
        o.put_u8(0);
    });
}

fn put_close(out: &mut BytesMut, name: &[u8]) {
    put_msg(out, b'C', |o| {
        o.put_u8(b'S');
        o.put_slice(name);
        o.put_u8(0);
    });
}

/// The command tag of a whole CommandComplete message clears statements.
pub fn clears_all(msg: &[u8]) -> bool {
    let tag = msg.get(5..).unwrap_or_default();
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    tag == b"DEALLOCATE ALL" || tag == b"DISCARD ALL"
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
        invalidate(&a);
        let b = intern(b"SELECT 'inv'\0\0\0");
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn sentinel_is_longer_than_namedatalen() {
        assert!(SENTINEL.len() > 63);
    }

    #[test]
    fn error_names_are_rewritten() {
        let mut c = ClientStatements::default();
        let stmt = intern(b"SELECT 'rw'\0\0\0");
        c.map.insert(
            b"mine"[..].into(),
            Named {
                stmt: stmt.clone(),
                seq: 0,
            },
        );
        let mut m = BytesMut::new();
        let text = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(&stmt.name)
        );
        PgError::error("26000", text).write(&mut m);
        let out = c.rewrite_names(&m);
        let f = ErrorFields::parse(&out[5..]);
        assert_eq!(f.message, "prepared statement \"mine\" does not exist");
        assert_eq!(
            u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1,
            out.len()
        );
    }

    #[test]
    fn command_tags() {
        let mut m = BytesMut::new();
        crate::proto::backend::command_complete(&mut m, "DEALLOCATE ALL");
        assert!(clears_all(&m));
        m.clear();
        crate::proto::backend::command_complete(&mut m, "DEALLOCATE");
        assert!(!clears_all(&m));
    }
}
