//! Sockets: one `Stream` type over TCP and Unix sockets (TLS joins it later), the listeners,
//! and outgoing connections to servers.

pub mod listener;
pub mod msgio;
pub mod stream;

pub use stream::{PeerAddr, Stream};
