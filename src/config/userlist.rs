//! `auth_file` in PgBouncer's userlist.txt format: `"user" "secret" [ignored…]` per line,
//! and the classification of a stored secret (plain, MD5 or SCRAM-SHA-256) shared with the
//! `password=` key of `[databases]`.

use std::collections::HashMap;
use std::path::Path;

use super::values::unquote;
use super::{read_lossy, ConfigError};

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

/// PgBouncer's MAX_USERNAME: a user name must be shorter than this.
const MAX_USERNAME: usize = 128;
/// PgBouncer's MAX_PASSWORD (master): a secret must be shorter than this.
const MAX_PASSWORD: usize = 65531;

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl Secret {
    /// Classify a stored secret as PostgreSQL's `get_password_type` does: `md5` followed by
    /// 32 lowercase hex digits is MD5, `SCRAM-SHA-256$…` is SCRAM, anything else is a plain
    /// password. Unlike PostgreSQL, a malformed SCRAM secret is an error rather than a
    /// plain password that happens to start with `SCRAM-SHA-256$`.
    pub fn parse(text: &str) -> Result<Secret, String> {
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Ok(Secret::Md5(text.to_string()));
            }
        }
        if let Some(rest) = text.strip_prefix(SCRAM_PREFIX) {
            return parse_scram(rest)
                .map(Secret::Scram)
                .map_err(|e| format!("malformed SCRAM-SHA-256 secret: {e}"));
        }
        Ok(Secret::Plain(text.to_string()))
    }
}

/// `<iterations>:<salt>$<stored key>:<server key>`, base64 as PostgreSQL writes it.
fn parse_scram(rest: &str) -> Result<ScramSecret, String> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    let (iter_salt, keys) = rest.split_once('$').ok_or("expected '$' before the keys")?;
    let (iterations, salt) = iter_salt
        .split_once(':')
        .ok_or("expected <iterations>:<salt>")?;
    let (stored, server) = keys
        .split_once(':')
        .ok_or("expected <stored key>:<server key>")?;
    let iterations: u32 = match iterations.parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("bad iteration count {iterations:?}")),
    };
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| "salt is not base64".to_string())?;
    if salt.is_empty() {
        return Err("empty salt".into());
    }
    let key = |name: &str, b64: &str| -> Result<[u8; 32], String> {
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| format!("{name} is not base64"))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{name} is not 32 bytes"))
    };
    Ok(ScramSecret {
        iterations,
        salt,
        stored_key: key("stored key", stored)?,
        server_key: key("server key", server)?,
    })
}

impl UserList {
    /// Read an auth_file (bytes that are not UTF-8 are replaced, see `read_lossy`).
    pub fn load(path: &Path) -> Result<UserList, ConfigError> {
        let text = read_lossy(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_str(&text, &path.display().to_string())
    }

    /// Parse auth_file text: per line `"user" "secret"`, anything after the second field
    /// ignored, `""` inside a field standing for one `"`, `;` and `#` lines and blank lines
    /// skipped. Where PgBouncer logs "broken auth file" and keeps the users read so far, we
    /// refuse the file and name the line. A later line for the same user wins.
    pub fn parse_str(text: &str, file_name: &str) -> Result<UserList, ConfigError> {
        let mut list = UserList::default();
        for (i, line) in text.lines().enumerate() {
            let at = |msg: String| ConfigError::At {
                file: file_name.to_string(),
                line: i + 1,
                msg,
            };
            let line = line.trim_start();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let (user, rest) = quoted_field(line)
                .ok_or_else(|| at("broken auth file: expected \"user\"".into()))?;
            // PgBouncer skips anything up to the next quote; we only allow blanks there.
            let (secret, _ignored) = quoted_field(rest.trim_start())
                .ok_or_else(|| at("broken auth file: expected \"secret\" after the user".into()))?;
            if user.len() >= MAX_USERNAME {
                return Err(at("username too long in auth file".into()));
            }
            if secret.len() >= MAX_PASSWORD {
                return Err(at("password too long in auth file".into()));
            }
            let secret = Secret::parse(&secret).map_err(|e| at(format!("user {user:?}: {e}")))?;
            list.users.insert(user, secret);
        }
        Ok(list)
    }
}

/// `"…"` at the start of `s` → (unescaped content, text after the closing quote).
fn quoted_field(s: &str) -> Option<(String, &str)> {
    unquote(s.strip_prefix('"')?, '"')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAM: &str = "SCRAM-SHA-256$4096:cGdzbHVpY2UtZXhhbXBsZQ==$\
        EhV4zeMMAOPN0p/BEWku9/ki7Sixn6pXUjnaSYiKRCg=:ypZ7nkWQRdSAdSjDWmEEsmlBoLwrW5OeJRjLxYS5Euo=";

    #[test]
    fn classifies_secrets() {
        assert_eq!(
            Secret::parse("hunter2"),
            Ok(Secret::Plain("hunter2".into()))
        );
        assert_eq!(Secret::parse(""), Ok(Secret::Plain(String::new())));
        let md5 = "md50e9070b976a76706bb4bc4369e934be1";
        assert_eq!(Secret::parse(md5), Ok(Secret::Md5(md5.into())));
        // Upper-case hex or a wrong length is not an MD5 secret for PostgreSQL either.
        let upper = "md50E9070B976A76706BB4BC4369E934BE1";
        assert_eq!(Secret::parse(upper), Ok(Secret::Plain(upper.into())));
        assert!(matches!(Secret::parse("md5abc"), Ok(Secret::Plain(_))));
        let Ok(Secret::Scram(s)) = Secret::parse(SCRAM) else {
            panic!("not scram");
        };
        assert_eq!(s.iterations, 4096);
        assert_eq!(s.salt, b"pgsluice-example");
    }

    #[test]
    fn malformed_scram_is_an_error() {
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$EhV4zeMMAOPN0p/BEWku9/ki7Sixn6pXUjnaSYiKRCg=:ypZ7nkWQRdSAdSjDWmEEsmlBoLwrW5OeJRjLxYS5Euo=",
        ] {
            assert!(Secret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_userlist_lines() {
        let text = format!(
            "; comment\n\
             # another\n\
             \n\
             \"alice\" \"plain pass\"\n\
             \"bob\"\t\"md50e9070b976a76706bb4bc4369e934be1\" trailing junk\n\
             \"we\"\"ird\" \"pa\"\"ss\"\n  \"carol\" \"{SCRAM}\"\r\n\
             \"alice\" \"second wins\"\n"
        );
        let list = UserList::parse_str(&text, "userlist.txt").unwrap();
        assert_eq!(list.users.len(), 4);
        assert_eq!(list.users["alice"], Secret::Plain("second wins".into()));
        assert!(matches!(list.users["bob"], Secret::Md5(_)));
        assert_eq!(list.users["we\"ird"], Secret::Plain("pa\"ss".into()));
        assert!(matches!(list.users["carol"], Secret::Scram(_)));
    }

    #[test]
    fn broken_lines_name_the_line() {
        for (text, line) in [
            ("\"a\" \"b\"\nalice \"x\"\n", 2),
            ("\"a\" \"b\"\n\n\"alice\"\n", 3),
            ("\"alice\" \"open\n", 1),
            ("\"a\" x \"b\"\n", 1),
            ("\"a\" \"SCRAM-SHA-256$1:x\"\n", 1),
        ] {
            match UserList::parse_str(text, "u.txt") {
                Err(ConfigError::At { file, line: l, .. }) => {
                    assert_eq!((file.as_str(), l), ("u.txt", line), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let long = format!("\"{}\" \"x\"\n", "u".repeat(MAX_USERNAME));
        assert!(UserList::parse_str(&long, "u").is_err());
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = UserList::load(Path::new("/nonexistent/userlist.txt")).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    }
}
