//! Authentication: the client side of login (pgsluice as the server) and the server side
//! (pgsluice logging into PostgreSQL as a client). Pure, sans-I/O state machines; the
//! session and server modules move the bytes.

pub mod md5;
pub mod scram;
