//! What a leased server owes its client, as an explicit queue of expected responses, and
//! therefore when the server may go back to the pool.
//!
//! Every message the client sends that the server answers pushes one entry, in order:
//!
//! | client message | expected answer (the entry is done when it arrives) |
//! |---|---|
//! | Parse | ParseComplete |
//! | Bind | BindComplete |
//! | Describe | [ParameterDescription] then RowDescription or NoData |
//! | Execute | DataRow* then CommandComplete, EmptyQueryResponse or PortalSuspended (or a COPY) |
//! | Close | CloseComplete |
//! | Sync | ReadyForQuery |
//! | Query, FunctionCall | anything, then ReadyForQuery |
//! | Flush | nothing (no entry) |
//!
//! Each entry has a disposition: *forward* the answer to the client, *swallow* it (a
//! message pgsluice injected itself), or *synthesise* it (pgsluice answers for the server:
//! the entry is taken off the queue when it reaches the head, which is where, in order,
//! the relay writes the answer). An ErrorResponse to an extended-protocol entry makes the
//! server skip every message up to the next Sync: those entries are dropped (a synthesised
//! answer among them is never written), and until a Sync is sent, new entries are dropped
//! as they are pushed. Errors are always forwarded, even for swallowed entries: the client
//! must learn that its request failed.
//!
//! COPY: a Sync the server receives while in COPY IN is ignored by PostgreSQL (libpq sends
//! a second Sync after CopyDone for a COPY started by Execute), so it is struck from the
//! queue. A server may be released only when nothing is queued, no extended-protocol
//! messages are waiting for their Sync, no COPY is running, and the last ReadyForQuery said
//! idle (`I`).
//!
//! Entries may carry an *effect* (a change to prepared-statement maps that the caller
//! keeps in its own FIFO): the tracker reports, in order, whether each such entry was
//! answered, failed or was skipped ([`Tracker::take_outcome`]).

use std::collections::VecDeque;

/// What the server answers a client message with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// ReadyForQuery.
    Sync,
    /// Simple Query or FunctionCall: anything, then ReadyForQuery.
    Simple,
}

impl Expect {
    /// The entry a client message pushes; `None` for messages the server does not answer.
    #[inline]
    pub fn of_client_tag(tag: u8) -> Option<Expect> {
        Some(match tag {
            b'P' => Expect::Parse,
            b'B' => Expect::Bind,
            b'D' => Expect::Describe,
            b'E' => Expect::Execute,
            b'C' => Expect::Close,
            b'S' => Expect::Sync,
            b'Q' | b'F' => Expect::Simple,
            _ => return None,
        })
    }

    /// Answered by ReadyForQuery.
    #[inline]
    fn owes_ready(self) -> bool {
        matches!(self, Expect::Sync | Expect::Simple)
    }
}

/// What happens to an entry's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disp {
    /// Sent to the server; its answer goes to the client.
    Forward,
    /// Injected by pgsluice; its answer (unless an error) is dropped.
    Swallow,
    /// Not sent to the server; pgsluice writes the answer when the entry reaches the head.
    Synth,
}

/// How an entry with an effect ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered normally (or synthesised).
    Done,
    /// Answered with ErrorResponse.
    Failed,
    /// Never processed by the server: an earlier error in its batch.
    Skipped,
}

/// What the relay does with a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    Forward,
    Swallow,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expect: Expect,
    disp: Disp,
    effect: bool,
    /// Describe: the ParameterDescription has arrived.
    got_t: bool,
    /// Push order (see [`Tracker::pushed`]).
    seq: u64,
}

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Entry>,
    /// Entries in `queue` answered by ReadyForQuery.
    owed: usize,
    /// Extended-protocol messages sent since the last Sync.
    ext_open: bool,
    /// The server reported an error in the current batch and no Sync has been sent yet:
    /// it discards everything it gets until one arrives.
    skipping: bool,
    /// Between the server's CopyInResponse and the client's CopyDone/CopyFail.
    copy_in: bool,
    /// The running COPY IN was started by Execute: after CopyDone/CopyFail the server
    /// still needs a Sync before it answers ReadyForQuery.
    copy_in_ext: bool,
    /// Between the server's CopyOutResponse and its CopyDone.
    copy_out: bool,
    /// Status byte of the last ReadyForQuery.
    tx_status: u8,
    /// Outcomes of entries with effects, in queue order, not yet taken.
    outcomes: VecDeque<Outcome>,
    /// Entries pushed so far (the next entry's `seq`).
    pushed: u64,
    /// ReadyForQuery-owing entries pushed so far: batch number of the next entry.
    batches: u64,
    /// A server message did not fit the queue (never with a real server).
    desync: bool,
    /// `seq` of the request the last ReadyForQuery answered.
    ready_seq: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::with_capacity(8),
            owed: 0,
            ext_open: false,
            skipping: false,
            copy_in: false,
            copy_in_ext: false,
            copy_out: false,
            tx_status: b'I',
            outcomes: VecDeque::new(),
            pushed: 0,
            batches: 0,
            desync: false,
            ready_seq: 0,
        }
    }
}

/// What the relay must do with a client message besides forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    Forward,
    /// Terminate: not forwarded; the client is leaving.
    Terminate,
}

/// A synthesised answer the relay writes now, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synth {
    ParseComplete,
    CloseComplete,
}

impl Tracker {
    /// A message from the client, by tag, forwarded as it is.
    #[inline]
    pub fn client_msg(&mut self, tag: u8) -> ClientAction {
        match tag {
            b'X' => ClientAction::Terminate,
            _ => {
                self.client_msg_as(tag, Disp::Forward, false);
                ClientAction::Forward
            }
        }
    }

    /// A message from the client (or injected by pgsluice), with the disposition of its
    /// answer; `effect`: the caller keeps an effect for this entry and wants its outcome.
    /// For a tag without an answer, `disp` and `effect` are ignored.
    #[inline]
    pub fn client_msg_as(&mut self, tag: u8, disp: Disp, effect: bool) {
        match tag {
            b'S' => {
                self.ext_open = false;
                // The Sync the server was skipping to.
                self.skipping = false;
                // Ignored by the server during COPY IN: no ReadyForQuery will answer it.
                if !self.copy_in {
                    self.push(Expect::Sync, disp, effect);
                }
            }
            b'Q' | b'F' => self.push(Expect::Simple, disp, effect),
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                self.ext_open = true;
                if let Some(e) = Expect::of_client_tag(tag) {
                    self.push(e, disp, effect);
                }
            }
            b'c' | b'f' => {
                if self.copy_in && self.copy_in_ext {
                    self.ext_open = true;
                }
                self.copy_in = false;
                self.copy_in_ext = false;
            }
            _ => {}
        }
    }

    #[inline]
    fn push(&mut self, expect: Expect, disp: Disp, effect: bool) {
        let seq = self.pushed;
        self.pushed += 1;
        if expect.owes_ready() {
            self.batches += 1;
        }
        if self.skipping {
            // The server discards it unread (PostgreSQL: "reads and discards messages
            // until a Sync is reached"); a Sync ends the skipping before it gets here.
            if effect {
                self.outcomes.push_back(Outcome::Skipped);
            }
            return;
        }
        if expect.owes_ready() {
            self.owed += 1;
        }
        self.queue.push_back(Entry {
            expect,
            disp,
            effect,
            got_t: false,
            seq,
        });
    }

    /// Takes the synthesised answer at the head of the queue, if any: the relay writes it
    /// to the client now. Call at every server message boundary until `None`.
    #[inline]
    pub fn take_synth(&mut self) -> Option<Synth> {
        let head = self.queue.front()?;
        if head.disp != Disp::Synth {
            return None;
        }
        let e = self.pop();
        if e.effect {
            self.outcomes.push_back(Outcome::Done);
        }
        Some(match e.expect {
            Expect::Close => Synth::CloseComplete,
            _ => Synth::ParseComplete,
        })
    }

    /// Whether a synthesised answer waits at the head.
    #[inline]
    pub fn synth_ready(&self) -> bool {
        self.queue.front().is_some_and(|e| e.disp == Disp::Synth)
    }

    #[inline]
    fn pop(&mut self) -> Entry {
        // Only called with a non-empty queue.
        let e = self.queue.pop_front().unwrap_or(Entry {
            expect: Expect::Simple,
            disp: Disp::Forward,
            effect: false,
            got_t: false,
            seq: 0,
        });
        if e.expect.owes_ready() {
            self.owed -= 1;
        }
        e
    }

    /// Pops the head if it expects `kind`: the answer's disposition.
    #[inline]
    fn complete(&mut self, kind: Expect) -> ServerAction {
        match self.queue.front() {
            Some(h) if h.expect == kind => {
                let e = self.pop();
                if e.effect {
                    self.outcomes.push_back(Outcome::Done);
                }
                if e.disp == Disp::Swallow {
                    ServerAction::Swallow
                } else {
                    ServerAction::Forward
                }
            }
            _ => {
                self.desync = true;
                ServerAction::Forward
            }
        }
    }

    /// A message from the server, by tag; `first` is the first body byte (ReadyForQuery's
    /// status) where the caller has it. Synthesised answers at the head must have been
    /// taken first ([`Tracker::take_synth`]); any left are taken here, unwritten.
    #[inline]
    pub fn server_msg(&mut self, tag: u8, first: u8) -> ServerAction {
        while self.take_synth().is_some() {
            self.desync = true;
        }
        match tag {
            b'1' => self.complete(Expect::Parse),
            b'2' => self.complete(Expect::Bind),
            b'3' => self.complete(Expect::Close),
            b't' => match self.queue.front_mut() {
                Some(h) if h.expect == Expect::Describe && !h.got_t => {
                    h.got_t = true;
                    ServerAction::Forward
                }
                _ => {
                    self.desync = true;
                    ServerAction::Forward
                }
            },
            b'T' | b'n' => match self.queue.front().map(|h| h.expect) {
                Some(Expect::Describe) => self.complete(Expect::Describe),
                Some(Expect::Simple) if tag == b'T' => ServerAction::Forward,
                _ => {
                    self.desync = true;
                    ServerAction::Forward
                }
            },
            b'C' | b'I' | b's' => match self.queue.front().map(|h| h.expect) {
                Some(Expect::Execute) => self.complete(Expect::Execute),
                Some(Expect::Simple) if tag != b's' => ServerAction::Forward,
                _ => {
                    self.desync = true;
                    ServerAction::Forward
                }
            },
            b'Z' => {
                self.ready(first);
                ServerAction::Forward
            }
            b'E' => {
                self.error();
                ServerAction::Forward
            }
            b'G' => {
                self.copy_in = true;
                // A COPY started by Execute: the batch's Sync, if already sent, reaches
                // the server in copy-in mode and is ignored.
                if let Some(i) = self.queue.iter().position(|e| e.expect.owes_ready()) {
                    if self.queue[i].expect == Expect::Sync {
                        if let Some(e) = self.queue.remove(i) {
                            self.owed -= 1;
                            if e.effect {
                                self.outcomes.push_back(Outcome::Skipped);
                            }
                        }
                        self.copy_in_ext = true;
                    }
                } else if self.ext_open {
                    // Execute sent, Sync not yet: the Sync will come after CopyDone.
                    self.copy_in_ext = true;
                }
                ServerAction::Forward
            }
            b'H' => {
                self.copy_out = true;
                ServerAction::Forward
            }
            b'c' => {
                self.copy_out = false;
                ServerAction::Forward
            }
            b'W' => {
                self.copy_in = true;
                self.copy_out = true;
                ServerAction::Forward
            }
            _ => ServerAction::Forward,
        }
    }

    /// ReadyForQuery: answers the first ReadyForQuery-owing entry; anything still queued
    /// before it was never answered.
    fn ready(&mut self, status: u8) {
        while let Some(h) = self.queue.front() {
            let done = h.expect.owes_ready();
            let e = self.pop();
            if e.effect {
                self.outcomes.push_back(if done {
                    Outcome::Done
                } else {
                    Outcome::Skipped
                });
            }
            if done {
                self.ready_seq = e.seq;
                break;
            }
            if e.disp != Disp::Synth {
                self.desync = true;
            }
        }
        self.tx_status = status;
        self.copy_in = false;
        self.copy_in_ext = false;
        self.copy_out = false;
        self.skipping = false;
    }

    /// ErrorResponse.
    fn error(&mut self) {
        let extended = match self.queue.front() {
            None => false,
            Some(h) => !h.expect.owes_ready(),
        };
        if self.copy_in {
            // The COPY failed; a COPY started by Execute still needs its Sync.
            if self.copy_in_ext {
                self.ext_open = true;
            }
            self.copy_in = false;
            self.copy_in_ext = false;
        }
        self.copy_out = false;
        if !extended {
            return;
        }
        let failed = self.pop();
        if failed.effect {
            self.outcomes.push_back(Outcome::Failed);
        }
        // The server skips everything up to the next Sync.
        while let Some(h) = self.queue.front() {
            if h.expect == Expect::Sync {
                return;
            }
            let e = self.pop();
            if e.effect {
                self.outcomes.push_back(Outcome::Skipped);
            }
        }
        self.skipping = true;
    }

    /// The next outcome of an entry with an effect, in push order.
    #[inline]
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.pop_front()
    }

    /// Whether outcomes wait to be taken.
    #[inline]
    pub fn has_outcomes(&self) -> bool {
        !self.outcomes.is_empty()
    }

    /// Nothing owed, nothing half-sent, no COPY, transaction idle.
    #[inline]
    pub fn may_release(&self) -> bool {
        self.quiet() && self.tx_status == b'I'
    }

    /// Nothing owed, not skipping to a Sync, and no COPY running: the server is between
    /// requests (maybe inside a transaction block).
    #[inline]
    pub fn quiet(&self) -> bool {
        self.queue.is_empty() && !self.ext_open && !self.skipping && !self.copy_in && !self.copy_out
    }

    /// Requests still owed a ReadyForQuery.
    #[inline]
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Entries waiting for an answer.
    #[inline]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The server discards what it is sent until the next Sync.
    #[inline]
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Entries pushed so far: an increasing clock of what was sent, in order.
    #[inline]
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// ReadyForQuery-owing entries pushed so far: the batch the next entry belongs to.
    #[inline]
    pub fn batch(&self) -> u64 {
        self.batches
    }

    /// `seq` of the entry the server is answering now.
    #[inline]
    pub fn head_seq(&self) -> Option<u64> {
        self.queue.front().map(|e| e.seq)
    }

    /// Whether the head entry carries an effect (its outcome is the next one reported).
    #[inline]
    pub fn head_has_effect(&self) -> bool {
        self.queue.front().is_some_and(|e| e.effect)
    }

    /// `seq` of the request the last ReadyForQuery answered.
    #[inline]
    pub fn ready_seq(&self) -> u64 {
        self.ready_seq
    }

    /// The expected answer at the head.
    #[inline]
    pub fn head(&self) -> Option<Expect> {
        self.queue.front().map(|e| e.expect)
    }

    /// A server message did not fit what was expected; only possible with a server that
    /// breaks the protocol (or a tracker bug). With synthesised or swallowed answers in
    /// play, the stream can then no longer be trusted.
    #[inline]
    pub fn desync(&self) -> bool {
        self.desync
    }

    /// Forget everything (a new lease).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.owed = 0;
        self.ext_open = false;
        self.skipping = false;
        self.copy_in = false;
        self.copy_in_ext = false;
        self.copy_out = false;
        self.tx_status = b'I';
        self.outcomes.clear();
        self.desync = false;
    }
}

#[cfg(test)]
#[path = "tracker_tests/mod.rs"]
mod tests;
