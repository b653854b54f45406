//! What a leased server owes its client, from the message tags flowing each way, and
//! therefore when the server may go back to the pool.
//!
//! Every simple Query, FunctionCall and Sync the client sends is answered by exactly one
//! ReadyForQuery — except a Sync the server swallows while in COPY IN (PostgreSQL ignores
//! Sync and Flush in copy-in mode; libpq sends a second Sync after CopyDone for a COPY
//! started with the extended protocol). The tracker keeps those requests in a FIFO and
//! pops one per ReadyForQuery. A server may be released only when nothing is owed, no
//! extended-protocol messages are waiting for their Sync, no COPY is running, and the
//! last ReadyForQuery said idle (`I`).

use std::collections::VecDeque;

/// A request that will be answered by one ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    /// Simple Query or FunctionCall.
    Simple,
    /// Sync ending a batch of extended-protocol messages.
    Sync,
}

#[derive(Debug)]
pub struct Tracker {
    owed: VecDeque<Req>,
    /// Extended-protocol messages sent since the last Sync.
    ext_open: bool,
    /// Between the server's CopyInResponse and the client's CopyDone/CopyFail.
    copy_in: bool,
    /// The running COPY IN was started by Execute: after CopyDone/CopyFail the server
    /// still needs a Sync before it answers ReadyForQuery.
    copy_in_ext: bool,
    /// Between the server's CopyOutResponse and its CopyDone.
    copy_out: bool,
    /// Status byte of the last ReadyForQuery.
    tx_status: u8,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            owed: VecDeque::with_capacity(4),
            ext_open: false,
            copy_in: false,
            copy_in_ext: false,
            copy_out: false,
            tx_status: b'I',
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

impl Tracker {
    /// A message from the client, by tag.
    #[inline]
    pub fn client_msg(&mut self, tag: u8) -> ClientAction {
        match tag {
            b'Q' | b'F' => self.owed.push_back(Req::Simple),
            b'S' => {
                // Ignored by the server during COPY IN: no ReadyForQuery will answer it.
                if !self.copy_in {
                    self.owed.push_back(Req::Sync);
                }
                self.ext_open = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => self.ext_open = true,
            b'H' => {}
            b'c' | b'f' => {
                if self.copy_in && self.copy_in_ext {
                    self.ext_open = true;
                }
                self.copy_in = false;
                self.copy_in_ext = false;
            }
            b'd' => {}
            b'X' => return ClientAction::Terminate,
            _ => {}
        }
        ClientAction::Forward
    }

    /// A message from the server, by tag; `first` is the first body byte (ReadyForQuery's
    /// status) where the caller has it.
    #[inline]
    pub fn server_msg(&mut self, tag: u8, first: u8) {
        match tag {
            b'Z' => {
                self.owed.pop_front();
                self.tx_status = first;
                self.copy_in = false;
                self.copy_in_ext = false;
                self.copy_out = false;
            }
            b'G' => {
                self.copy_in = true;
                // A COPY started by Execute: the batch's Sync, already sent, reaches the
                // server in copy-in mode and is swallowed.
                if self.owed.front() == Some(&Req::Sync) {
                    self.owed.pop_front();
                    self.copy_in_ext = true;
                } else if self.owed.is_empty() && self.ext_open {
                    // Execute sent, Sync not yet: the Sync will come after CopyDone.
                    self.copy_in_ext = true;
                }
            }
            b'H' => self.copy_out = true,
            b'c' => self.copy_out = false,
            b'W' => {
                self.copy_in = true;
                self.copy_out = true;
            }
            _ => {}
        }
    }

    /// Nothing owed, nothing half-sent, no COPY, transaction idle.
    #[inline]
    pub fn may_release(&self) -> bool {
        self.owed.is_empty()
            && !self.ext_open
            && !self.copy_in
            && !self.copy_out
            && self.tx_status == b'I'
    }

    /// Nothing owed and no COPY running: the server is between requests (maybe inside a
    /// transaction block).
    #[inline]
    pub fn quiet(&self) -> bool {
        self.owed.is_empty() && !self.ext_open && !self.copy_in && !self.copy_out
    }

    /// Requests still owed a ReadyForQuery.
    #[inline]
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// Forget everything (a new lease).
    pub fn reset(&mut self) {
        self.owed.clear();
        self.ext_open = false;
        self.copy_in = false;
        self.copy_in_ext = false;
        self.copy_out = false;
        self.tx_status = b'I';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Tracker, client: &[u8], server: &[(u8, u8)]) {
        for &c in client {
            t.client_msg(c);
        }
        for &(s, b) in server {
            t.server_msg(s, b);
        }
    }

    #[test]
    fn simple_query_cycle() {
        let mut t = Tracker::default();
        assert!(t.may_release());
        t.client_msg(b'Q');
        assert!(!t.may_release());
        run(
            &mut t,
            b"",
            &[(b'T', 0), (b'D', 0), (b'C', 0), (b'Z', b'I')],
        );
        assert!(t.may_release());
    }

    #[test]
    fn transaction_block_holds_server() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'C', 0), (b'Z', b'T')]);
        assert!(!t.may_release());
        assert!(t.quiet());
        run(&mut t, b"Q", &[(b'C', 0), (b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn pipeline_of_syncs() {
        let mut t = Tracker::default();
        run(
            &mut t,
            b"PBESPBESPBES",
            &[(b'1', 0), (b'2', 0), (b'C', 0), (b'Z', b'I')],
        );
        assert!(!t.may_release());
        run(&mut t, b"", &[(b'Z', b'I')]);
        assert!(!t.may_release());
        run(&mut t, b"", &[(b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn extended_without_sync_holds_server() {
        let mut t = Tracker::default();
        run(&mut t, b"PBEH", &[(b'1', 0), (b'2', 0), (b'C', 0)]);
        assert!(!t.may_release());
        run(&mut t, b"S", &[(b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn error_mid_pipeline_still_one_z_per_sync() {
        let mut t = Tracker::default();
        run(
            &mut t,
            b"PBESPBES",
            &[(b'E', 0), (b'Z', b'I'), (b'1', 0), (b'2', 0), (b'C', 0)],
        );
        assert!(!t.may_release());
        run(&mut t, b"", &[(b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn simple_copy_in() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'G', 0)]);
        assert!(!t.may_release());
        run(&mut t, b"dddc", &[(b'C', 0), (b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn extended_copy_in_swallowed_sync() {
        // libpq: P B D E S, then CopyData…, CopyDone, Sync.
        let mut t = Tracker::default();
        run(&mut t, b"PBDES", &[(b'1', 0), (b'2', 0), (b'G', 0)]);
        run(&mut t, b"ddc", &[]);
        assert!(!t.may_release());
        run(&mut t, b"S", &[(b'C', 0), (b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn copy_fail() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'G', 0)]);
        run(&mut t, b"f", &[(b'E', 0), (b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn copy_out() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'H', 0), (b'd', 0)]);
        assert!(!t.may_release());
        run(&mut t, b"", &[(b'c', 0), (b'C', 0), (b'Z', b'I')]);
        assert!(t.may_release());
    }

    #[test]
    fn failed_transaction_is_not_idle() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'E', 0), (b'Z', b'E')]);
        assert!(!t.may_release());
        assert_eq!(t.tx_status(), b'E');
    }

    #[test]
    fn terminate_is_not_forwarded() {
        let mut t = Tracker::default();
        assert_eq!(t.client_msg(b'X'), ClientAction::Terminate);
        assert_eq!(t.client_msg(b'Q'), ClientAction::Forward);
    }
}
