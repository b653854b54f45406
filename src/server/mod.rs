//! Server connections: connecting to PostgreSQL, logging in as a client, and the
//! `ServerConn` value that the pool owns while idle and a client task owns while leased.

pub mod conn;
pub mod login;

pub use conn::{Backend, ServerAddr, ServerConn, ServerParams};
pub use login::{connect, Credential, LoginError, Target};
