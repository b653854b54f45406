//! Periodic pool upkeep that is not driven by demand (`Pool::maintain`): dropping idle
//! servers that died (backend terminated, server restarted) so SHOW SERVERS and
//! min_pool_size see the truth without waiting for a client to stumble on them; closing
//! servers idle past server_idle_timeout, past their (jittered) server_lifetime, or marked
//! to close; refreshing DNS answers and retiring servers whose address left them; a retry
//! for clients still queued after the fast-fail window; and keeping min_pool_size. Growth
//! for waiting clients is never throttled by this tick; it happens on demand in `pool.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::control::App;

/// Runs until the process exits.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ensure_forced_user_pools(&app);
        for p in app.registry.all() {
            p.maintain(p.clients.get() > 0);
        }
    }
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
