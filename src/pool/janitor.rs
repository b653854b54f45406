//! Periodic pool upkeep that is not driven by demand: closing servers idle past
//! server_idle_timeout or older than server_lifetime, and keeping min_pool_size. Growth for
//! waiting clients is never throttled by this tick; it happens on demand in `pool.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::control::App;

/// Runs until the process exits.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for p in app.registry.all() {
            p.maintain(p.clients.get() > 0);
        }
    }
}
