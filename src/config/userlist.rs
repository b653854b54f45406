//! `auth_file` in PgBouncer's userlist.txt format: `"user" "secret" [ignored…]` per line.

use std::collections::HashMap;

/// A stored SCRAM-SHA-256 secret: `SCRAM-SHA-256$<iter>:<salt b64>$<storedkey b64>:<serverkey b64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(..)")
    }
}

/// A password as stored in auth_file or a `password=` connection-string key.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Plain text password.
    Plain(String),
    /// `md5` + hex(md5(password ‖ user)), stored with its `md5` prefix.
    Md5(String),
    Scram(ScramSecret),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(..)"),
            Secret::Md5(_) => f.write_str("Md5(..)"),
            Secret::Scram(_) => f.write_str("Scram(..)"),
        }
    }
}

/// Users and their secrets, by user name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserList {
    pub users: HashMap<String, Secret>,
}
