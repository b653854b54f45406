//! Periodic pool upkeep that is not driven by demand (`Pool::maintain`): dropping idle
//! servers that died (backend terminated, server restarted) so SHOW SERVERS and
//! min_pool_size see the truth without waiting for a client to stumble on them; closing
//! servers idle past server_idle_timeout, past their (jittered) server_lifetime, or marked
//! to close; refreshing DNS answers and retiring servers whose address left them; a retry
//! for clients still queued after the fast-fail window; and keeping min_pool_size. Growth
//! for waiting clients is never throttled by this tick; it happens on demand in `pool.rs`.
//! It also frees pools nobody uses: auto-databases (from the `*` entry) after
//! autodb_idle_timeout without clients, other pools after pool_idle_timeout empty.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pool;
use crate::control::App;

/// Runs until the process exits.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unused = Unused::default();
    loop {
        tick.tick().await;
        ensure_forced_user_pools(&app);
        for p in app.registry.all() {
            p.maintain(p.clients.get() > 0);
        }
        unused.free(&app, Instant::now());
    }
}

/// Since when each pool has been unused, by (database, user).
#[derive(Default)]
struct Unused {
    since: HashMap<(String, String), Instant>,
}

impl Unused {
    /// An auto-database pool without clients for autodb_idle_timeout has its idle servers
    /// closed and is freed (with its database entry once no pool of it is left); any other
    /// pool without clients and servers for pool_idle_timeout is freed. 0 = never.
    fn free(&mut self, app: &App, now: Instant) {
        let cfg = app.config.load();
        let g = &cfg.general;
        let pools = app.registry.all();
        // Forget pools freed or replaced since the last tick (one pass, not pools × pools).
        let live: HashSet<(&str, &str)> = pools
            .iter()
            .map(|p| (p.db_name.as_str(), p.user_name.as_str()))
            .collect();
        self.since
            .retain(|k, _| live.contains(&(k.0.as_str(), k.1.as_str())));
        for p in pools {
            let auto = !cfg.databases.contains_key(&p.db_name);
            let limit = if auto {
                g.autodb_idle_timeout
            } else {
                g.pool_idle_timeout
            };
            let key = (p.db_name.clone(), p.user_name.clone());
            if limit.is_zero() || !unused(&p, auto) {
                self.since.remove(&key);
                continue;
            }
            let since = *self.since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) < limit {
                continue;
            }
            if auto {
                p.close_idle();
            }
            if app.registry.free_if_unused(&p) {
                self.since.remove(&key);
                tracing::info!(
                    "{}/{}: pool freed after {}s unused",
                    p.db_name,
                    p.user_name,
                    limit.as_secs()
                );
                if auto && app.registry.free_database_if_unused(&p.db_name) {
                    tracing::info!("{}: auto-database freed", p.db_name);
                }
            }
        }
    }
}

/// No client on the pool (and, outside auto-databases, no server either: those pools wait
/// for server_idle_timeout to close theirs first).
fn unused(p: &Pool, auto: bool) -> bool {
    let c = p.counts();
    p.clients.get() == 0 && c.waiting == 0 && (auto || c.is_empty())
}

/// A database entry with a forced user and a min_pool_size gets its pool without waiting
/// for a client (at startup, or once a RELOAD adds it), so min_pool_size is kept from the
/// start, as in PgBouncer.
fn ensure_forced_user_pools(app: &App) {
    let cfg = app.config.load();
    let users = app.userlist.load();
    for db in cfg.databases.values() {
        let Some(user) = db.user.as_deref() else {
            continue;
        };
        if db.name == "*" || db.min_pool_size.unwrap_or(cfg.general.min_pool_size) == 0 {
            continue;
        }
        if app.registry.get(&db.name, user).is_none() {
            app.registry
                .get_or_create(&cfg, &app.tls.load(), &users, db, user);
        }
    }
}
