//! Server pools: one per (database, user). A pool owns its idle servers and a FIFO of
//! waiting clients; a server released while clients wait goes straight to the oldest.
//! Limits shared between pools (max_db_connections, max_user_connections and the client
//! caps) live in `limits.rs`; pools are found through `registry.rs`.

pub mod janitor;
pub mod limits;
#[allow(clippy::module_inception)]
pub mod pool;
pub mod registry;

pub use limits::{Counter, Gate, Shared};
pub use pool::{Pool, PoolSettings};
pub use registry::Registry;
