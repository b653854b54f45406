//! A client connection's life: login (startup packet, authentication, welcome), then the
//! request loop that leases a server per transaction and relays until the release point.

pub mod cancel;
pub mod client;
pub mod login;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod tracker;
