//! pgsluice: a PostgreSQL connection pooler that reads PgBouncer's configuration unchanged.
//! See `docs/architecture.md` for the data path.

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod ids;
pub mod logging;
pub mod net;
pub mod pool;
pub mod proto;
pub mod run;
pub mod server;
pub mod session;
pub mod stats;
