//! Sockets: one `Stream` type over TCP and Unix sockets (plain or TLS), the listeners,
//! and outgoing connections to servers: the DNS cache (`dns.rs`), racing attempts under
//! one deadline (`connect.rs`) and TCP keepalive tuning (`tcp.rs`).

pub mod connect;
pub mod dns;
pub mod listener;
pub mod msgio;
pub mod scratch;
pub mod stream;
pub mod tcp;
pub mod tls;

pub use stream::{PeerAddr, Stream};
