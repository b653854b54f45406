//! pgsluice: a PostgreSQL connection pooler that reads PgBouncer's configuration unchanged.
//! See `docs/architecture.md` for the data path.

pub mod auth;
pub mod config;
