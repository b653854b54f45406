//! Protocol-level named prepared statements in transaction and statement mode (PgBouncer's
//! `max_prepared_statements`).
//!
//! - A process-wide cache maps each distinct Parse payload (query text + parameter type
//!   OIDs, the bytes after the statement name) to one [`Stmt`] with a server-side name
//!   `PGSLUICE_<n>`. Entries live while a client map or a server cache holds them.
//! - Each client has its own map, client name → statement ([`ClientStatements`]).
//! - Each server connection has an LRU of the statements it has prepared
//!   ([`ServerStatements`], capacity max_prepared_statements).
//!
//! The relay rewrites named Parse/Bind/Describe('S')/Close('S') as they go to the server
//! and records, per rewritten message, an effect (`client::Effect`) that is confirmed or undone when the
//! tracker reports how the server took it (answered, failed, skipped after an error). So
//! both maps always describe what the server and PostgreSQL semantics say, even after an
//! error mid-pipeline.
//!
//! Statement maps are only changed by messages of one Sync batch at a time: a named
//! message that would change or rely on them while effects of an *earlier* batch are
//! still unconfirmed waits (the relay stops reading the client) until those are settled.
//! Drivers that wait for each batch never see that wait.
//!
//! Errors pgsluice owes the client (Bind/Describe of an unknown name, Parse of a name in
//! use) are produced by the server itself, so transaction state and skip-to-Sync stay
//! exactly PostgreSQL's: the message is sent with [`SENTINEL`], a name no server has, and
//! the server's "does not exist" ErrorResponse is replaced by the right one. No
//! `PGSLUICE_` name ever reaches a client in an error text.
//!
//! A statement whose plan a server reports stale (DDL changed its result type) is taken
//! out of the cache, so preparing it again works on every server; old handles keep
//! getting PostgreSQL's own error for it (`cache::invalidate`).
//!
//! Modules: `cache` (the process-wide statements), `server` (one server's LRU), `client`
//! (one client's map and the rewriting), `answers` (settling effects, error texts),
//! `wire` (messages pgsluice writes).

mod answers;
mod cache;
mod client;
mod server;
mod wire;

pub use cache::{cached, intern, invalidate, Stmt, PREFIX, SENTINEL};
pub use client::{CacheCounters, ClientStatements, Step};
pub use server::ServerStatements;
pub use wire::clears_all;
