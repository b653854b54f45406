//! The PostgreSQL wire format, and nothing else: frame headers, the startup packet, the few
//! messages pgsluice builds itself, and the error/notice builders with PgBouncer's texts.
//! No I/O policy lives here (rust-postgres style: bytes apart from connection policy).

pub mod backend;
pub mod error;
pub mod frame;
pub mod startup;

pub use error::{ErrorFields, PgError};
pub use frame::{Header, HEADER_LEN};
