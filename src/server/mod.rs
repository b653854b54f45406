//! Server connections: opening a socket to PostgreSQL (TLS as server_tls_sslmode says),
//! logging in as a client, and the `ServerConn` value that the pool owns while idle and
//! a client task owns while leased.

pub mod conn;
pub mod dial;
pub mod login;

pub use conn::{Backend, ServerAddr, ServerConn, ServerParams};
pub use dial::ServerRoute;
pub use login::{connect, Credential, LoginError, Target};
