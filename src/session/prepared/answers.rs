//! The server's answers to rewritten messages: effects confirmed or undone in order,
//! ErrorResponses put in the client's terms (its names, the errors pgsluice owes), stale
//! plans invalidated, and DEALLOCATE ALL / DISCARD ALL applied.

use std::sync::atomic::Ordering;

use super::cache::{invalidate, PREFIX, SENTINEL};
use super::client::{ClientStatements, Effect};
use super::server::{remove_added, ServerStatements};
use super::wire::contains;
use crate::proto::frame::read_cstr;
use crate::session::tracker::{Outcome, Tracker};

impl ClientStatements {
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
            Effect::Use { .. } | Effect::Replace(_) => {}
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
            if let Some(Effect::Use { stmt }) = self.effects.front() {
                if is_stale_plan(body) {
                    let stmt = stmt.clone();
                    invalidate(&stmt, msg);
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

/// PostgreSQL's "cached plan must not change result type": 0A000 from
/// RevalidateCachedQuery (the message is localised, the routine name is not).
fn is_stale_plan(body: &[u8]) -> bool {
    let (mut code, mut routine, mut message) = (false, false, false);
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let field = body[pos];
        pos += 1;
        let Some(v) = read_cstr(body, &mut pos) else {
            break;
        };
        match field {
            b'C' => code = v == "0A000",
            b'R' => routine = v == "RevalidateCachedQuery",
            b'M' => message = v == "cached plan must not change result type",
            _ => {}
        }
    }
    code && (routine || message)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::super::cache::intern;
    use super::super::client::Named;
    use super::*;
    use crate::proto::error::ErrorFields;
    use crate::proto::PgError;

    fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (code, v) in fields {
            b.push(*code);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn stale_plan_errors_are_recognised_in_any_language() {
        let en = "cached plan must not change result type";
        let de = "gecachter Plan darf den Ergebnistyp nicht ändern";
        let r = "RevalidateCachedQuery";
        assert!(is_stale_plan(&error_body(&[(b'C', "0A000"), (b'M', en)])));
        assert!(is_stale_plan(&error_body(&[
            (b'C', "0A000"),
            (b'M', de),
            (b'R', r)
        ])));
        assert!(!is_stale_plan(&error_body(&[(b'C', "0A000"), (b'M', de)])));
        assert!(!is_stale_plan(&error_body(&[(b'C', "42P01"), (b'M', en)])));
        assert!(!is_stale_plan(b"C0A0"));
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
}
