//! Sockets: one `Stream` type over TCP and Unix sockets (TLS joins it later), the listeners,
//! and outgoing connections to servers: the DNS cache (`dns.rs`), racing attempts under
//! one deadline (`connect.rs`) and TCP keepalive tuning (`tcp.rs`).

pub mod connect;
pub mod dns;
pub mod listener;
pub mod msgio;
pub mod stream;
pub mod tcp;

pub use stream::{PeerAddr, Stream};
