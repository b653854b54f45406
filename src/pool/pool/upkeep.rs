//! The janitor's per-pool upkeep: dead, idle-too-long, too-old and obsolete servers
//! closed, DNS answers checked, min_pool_size kept.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{close_server, Pool};
use crate::server::login::Host;
use crate::server::{ServerConn, Target};

impl Pool {
    /// Janitor work, once a second: drop idle servers that died (backend terminated,
    /// server restarted) or were marked to close (RECONNECT, RELOAD, a changed DNS
    /// answer), close those idle past server_idle_timeout or past their share of
    /// server_lifetime, retry for queued clients once the fast-fail window is over, and
    /// keep min_pool_size. `has_clients`: the pool has logged-in clients.
    pub fn maintain(&self, has_clients: bool) {
        let s = self.settings();
        self.check_dns(&self.target());
        let now = Instant::now();
        // (server, close cleanly): a dead server's socket is just dropped.
        let mut closing = Vec::new();
        let retry;
        {
            let mut st = self.state.lock();
            let keep = s.min_pool_size.min(if s.pool_size == 0 {
                u32::MAX
            } else {
                s.pool_size
            });
            let mut i = 0;
            while i < st.idle.len() {
                let c = &st.idle[i];
                // Cheap: no syscall unless epoll saw the socket readable.
                let dead = !c.is_clean();
                let idle_too_long = !s.server_idle_timeout.is_zero()
                    && now.duration_since(c.last_used) >= s.server_idle_timeout
                    && st.total > keep;
                let too_old =
                    !s.server_lifetime.is_zero() && c.lifetime_over(s.server_lifetime, now);
                let obsolete = c.info.close_needed.load(Ordering::Relaxed);
                if dead || idle_too_long || too_old || obsolete {
                    if let Some(c) = st.idle.remove(i) {
                        self.forget_server(&mut st, c.id);
                        closing.push((c, !dead));
                    }
                } else {
                    i += 1;
                }
            }
            // The window-end timer normally does this; this covers a client that queued
            // behind a busy server which then died, with no connect failing since.
            retry = !st.waiters.is_empty()
                && st.connecting == 0
                && st
                    .failed
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() >= s.server_login_retry);
        }
        let any = !closing.is_empty();
        for (c, clean) in closing {
            close_server(c, clean);
        }
        if any {
            self.wake_blocked();
        }
        if retry {
            self.grow();
        }
        if s.min_pool_size > 0 && (has_clients || s.forced_user) {
            self.grow_to(s.min_pool_size);
        }
    }

    /// Keeps this pool's host names fresh in the DNS cache, and when some answer changed
    /// marks the servers whose address is no longer among the answers: they close when
    /// released (idle ones at the next tick), and new ones go to the new addresses.
    fn check_dns(&self, t: &Target) {
        let cache = crate::net::dns::cache();
        for h in &t.hosts {
            if let Host::Tcp(name) = h {
                cache.refresh_if_stale(name, t.dns_max_ttl, t.dns_nxdomain_ttl);
            }
        }
        let changes = cache.changes();
        if self.dns_seen.swap(changes, Ordering::AcqRel) == changes {
            return;
        }
        let mut current: Vec<std::net::IpAddr> = Vec::new();
        for h in &t.hosts {
            if let Host::Tcp(name) = h {
                match cache.last_good(name) {
                    Some(a) => current.extend(a.iter().copied()),
                    // Never resolved: which servers are current is unknown; keep them all.
                    None => return,
                }
            }
        }
        let mut marked = 0;
        for info in self.servers.lock().iter() {
            let Ok(ip) = info.addr.parse::<std::net::IpAddr>() else {
                continue;
            };
            if !current.contains(&ip) && !info.close_needed.swap(true, Ordering::Relaxed) {
                marked += 1;
            }
        }
        if marked > 0 {
            tracing::info!(
                "{}/{}: DNS answer changed, {marked} server(s) to be replaced",
                self.db_name,
                self.user_name
            );
        }
    }

    /// Closes every idle server (shutdown, RECONNECT).
    pub fn close_idle(&self) {
        let idle: Vec<ServerConn> = {
            let mut st = self.state.lock();
            let v: Vec<_> = st.idle.drain(..).collect();
            for c in &v {
                self.forget_server(&mut st, c.id);
            }
            v
        };
        for c in idle {
            close_server(c, true);
        }
    }
}
