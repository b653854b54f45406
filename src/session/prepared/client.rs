//! One client's statements: its name → statement map, and the rewriting of its named
//! Parse/Bind/Describe('S')/Close('S') for the leased server. Each rewritten message
//! records an [`Effect`], settled when the server's answer arrives (`answers.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::cache::{intern, lookup, Stmt, SENTINEL};
use super::server::{ServerStatements, Slot};
use super::wire::{does_not_exist, put_close, put_describe, put_msg, put_parse};
use crate::proto::PgError;
use crate::session::tracker::{Disp, Tracker};

#[derive(Debug, Clone)]
pub(super) struct Named {
    pub(super) stmt: Arc<Stmt>,
    /// Client sequence number of the Parse that made it.
    pub(super) seq: u64,
}

/// What a rewritten message changed, to confirm or undo when the server has taken it.
#[derive(Debug)]
pub(super) enum Effect {
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
    /// A Bind or Describe('S') of a known statement: either may fail with "cached plan
    /// must not change result type".
    Use { stmt: Arc<Stmt> },
    /// The message was sent with the sentinel name: its ErrorResponse is replaced.
    Replace(Box<[u8]>),
}

impl Effect {
    /// Changes what a statement name means (so later batches must wait for it).
    pub(super) fn changes_maps(&self) -> bool {
        !matches!(self, Effect::Use { .. } | Effect::Replace(_))
    }
}

/// Server statement cache lookups of one client since they were last taken (added to
/// the pool's counters at the end of each lease: `/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounters {
    /// A named Parse, Bind or Describe('S') found its statement on the leased server.
    pub hits: u64,
    /// ... did not: a Parse was sent (forwarded or injected).
    pub misses: u64,
    /// Statements closed on a server to make room (max_prepared_statements).
    pub evictions: u64,
}

/// One client's prepared statements, and the state of the rewriting for its lease.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// Cache lookups made for this client, not yet added to the pool's counters.
    pub counters: CacheCounters,
    pub(super) map: HashMap<Box<[u8]>, Named>,
    pub(super) effects: VecDeque<Effect>,
    /// Effects that change maps not yet settled, and the batch of the last one pushed.
    pub(super) unsettled: usize,
    unsettled_batch: u64,
    /// Server LRU capacity.
    pub capacity: usize,
    /// The pool of the current lease (its address), for [`Stmt`]'s parse record.
    pub(super) pool: usize,
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
                    Some(named) if named.stmt.is_stale() => {
                        let stmt = named.stmt.clone();
                        self.replace_stale(t, b'B', &stmt);
                        put_bind_head(out, portal, SENTINEL, rest_len);
                        return Some(Step::Done {
                            consumed: head,
                            skip: rest_len,
                        });
                    }
                    Some(named) => {
                        let stmt = named.stmt.clone();
                        self.ensure(out, &stmt, t, server);
                        t.client_msg_as(b'B', Disp::Forward, true);
                        self.push_effect(t, Effect::Use { stmt: stmt.clone() });
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

    /// The next message (`tag`) uses a statement a server found stale: it goes with the
    /// sentinel name and its error becomes the server's stale-plan error, which is what
    /// PostgreSQL answers for every later use of a statement prepared before the DDL
    /// (`cache::invalidate`).
    fn replace_stale(&mut self, t: &mut Tracker, tag: u8, stmt: &Stmt) {
        match stmt.stale_error() {
            Some(e) => {
                t.client_msg_as(tag, Disp::Forward, true);
                self.push_effect(t, Effect::Replace(e.into()));
            }
            None => self.replace_next(
                t,
                tag,
                "0A000",
                "cached plan must not change result type".into(),
            ),
        }
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
            self.counters.misses += 1;
            self.make_room(out, t, server);
        } else {
            self.counters.hits += 1;
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
            Some(named) if named.stmt.is_stale() => {
                let stmt = named.stmt.clone();
                self.replace_stale(t, b'D', &stmt);
                put_describe(out, SENTINEL);
                return;
            }
            Some(named) => {
                let stmt = named.stmt.clone();
                self.ensure(out, &stmt, t, server);
                t.client_msg_as(b'D', Disp::Forward, true);
                put_describe(out, &stmt.name);
                self.push_effect(t, Effect::Use { stmt });
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
            self.counters.hits += 1;
            return;
        }
        self.counters.misses += 1;
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
            self.counters.evictions += 1;
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
}
