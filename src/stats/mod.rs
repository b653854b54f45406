//! Statistics and introspection: per-pool counters behind SHOW STATS and /metrics, the
//! averages over `stats_period`, and the live client/server records behind SHOW CLIENTS,
//! SHOW SERVERS and SHOW POOLS. Hot-path updates are relaxed atomic stores on records
//! owned by one task, and one batch of adds per transaction into the pool's counters.

pub mod counters;
pub mod info;
pub mod metrics_http;
pub mod period;
pub mod prometheus;

pub use counters::{Counters, Snapshot, TxStats};
pub use info::{ClientInfo, ClientState, HostAddr, ServerInfo, ServerState};

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 is "never").
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
