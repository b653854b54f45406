//! The console's command grammar, as PgBouncer's three regular expressions accept it
//! (`admin.c`), written as a hand parser so no regex engine is needed:
//!
//! ```text
//! WS0  = [ \t\n\r]*            WS1 = [ \t\n\r]+
//! WORD = "([^"]+|"")*" | [0-9a-z_]+        (case-insensitive)
//! STR  = '([^']|'')*'
//! cmd  = ^ WS0 WORD (WS1 WORD)? WS0 (; WS0)? $
//! set  = ^ WS0 set WS1 WORD WS0 (=|to) WS0 (STR|WORD) WS0 (; WS0)? $
//! ```
//!
//! PgBouncer copies the matched groups into fixed buffers (command 16, argument and SET key
//! 64, SET value 256 bytes, quotes included); a group that does not fit is "bad arguments".
//! Exactly one command per query: `SHOW POOLS; SHOW STATS` matches neither form and is an
//! invalid command, as in PgBouncer.

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `WORD [ARG]`: `word` dequoted as written (not case-folded); `arg` dequoted, `None`
    /// when absent or empty.
    Cmd { word: String, arg: Option<String> },
    /// `SET key = value` / `SET key TO value`, both dequoted.
    Set { key: String, value: String },
}

/// Why a query is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Matches no form: "invalid command '<query>', use SHOW HELP;".
    Invalid,
    /// Matches, but a part is too long (or the SET key is empty): "bad arguments".
    BadArguments,
}

/// PgBouncer's buffer sizes; a group must be strictly shorter.
const CMD_MAX: usize = 16;
const ARG_MAX: usize = 64;
const VAL_MAX: usize = 256;

pub fn parse(query: &str) -> Result<Command, ParseError> {
    if let Some((word, arg)) = match_cmd(query) {
        if word.len() >= CMD_MAX || arg.is_some_and(|a| a.len() >= ARG_MAX) {
            return Err(ParseError::BadArguments);
        }
        let arg = arg.map(|a| dequote(a, b'"')).filter(|a| !a.is_empty());
        return Ok(Command::Cmd {
            word: dequote(word, b'"'),
            arg,
        });
    }
    if let Some((key, value)) = match_set(query) {
        if key.len() >= ARG_MAX || value.len() >= VAL_MAX {
            return Err(ParseError::BadArguments);
        }
        let key = dequote(key, b'"');
        if key.is_empty() {
            return Err(ParseError::BadArguments);
        }
        let q = if value.starts_with('\'') { b'\'' } else { b'"' };
        return Ok(Command::Set {
            key,
            value: dequote(value, q),
        });
    }
    Err(ParseError::Invalid)
}

/// `cmd` form: the raw command word and argument (quotes still on).
fn match_cmd(q: &str) -> Option<(&str, Option<&str>)> {
    let mut c = Cursor::new(q);
    c.ws();
    let word = c.word()?;
    let save = c.pos;
    let arg = if c.ws() > 0 {
        match c.word() {
            Some(a) => Some(a),
            None => {
                c.pos = save;
                None
            }
        }
    } else {
        None
    };
    c.end().then_some((word, arg))
}

/// `set` form: the raw key and value (quotes still on).
fn match_set(q: &str) -> Option<(&str, &str)> {
    let mut c = Cursor::new(q);
    c.ws();
    if !c.keyword("set") || c.ws() == 0 {
        return None;
    }
    let key = c.word()?;
    c.ws();
    if !(c.byte(b'=') || c.keyword("to")) {
        return None;
    }
    c.ws();
    let value = c.string().or_else(|| c.word())?;
    c.end().then_some((key, value))
}

/// Strips the surrounding quote character `q` and turns doubled quotes into one. A token
/// not starting with `q` is returned as is.
fn dequote(raw: &str, q: u8) -> String {
    let b = raw.as_bytes();
    if b.len() < 2 || b[0] != q {
        return raw.to_string();
    }
    let inner = &raw[1..raw.len() - 1];
    let qs = (q as char).to_string();
    inner.replace(&format!("{qs}{qs}"), &qs)
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    /// Skips `[ \t\n\r]*`; returns how many bytes.
    fn ws(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn byte(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A case-insensitive keyword. Not required to end at a word boundary: PgBouncer's
    /// regex has `(=|to)` followed by `WS0`, so `SET a tob` sets `a` to `b`.
    fn keyword(&mut self, kw: &str) -> bool {
        let end = self.pos + kw.len();
        match self.s.as_bytes().get(self.pos..end) {
            Some(b) if b.eq_ignore_ascii_case(kw.as_bytes()) => {
                self.pos = end;
                true
            }
            _ => false,
        }
    }

    /// WORD: a double-quoted name (`""` inside is one quote) or `[0-9A-Za-z_]+`.
    fn word(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.peek() == Some(b'"') {
            return self.quoted(b'"');
        }
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.s[start..self.pos])
    }

    /// STRING: `'...'` with `''` inside for one quote; may be empty.
    fn string(&mut self) -> Option<&'a str> {
        if self.peek() == Some(b'\'') {
            self.quoted(b'\'')
        } else {
            None
        }
    }

    /// A token between `q` quotes, quotes included; may be empty (`""` too: the regex's
    /// `([^"]+|"")*` may repeat zero times).
    fn quoted(&mut self, q: u8) -> Option<&'a str> {
        let start = self.pos;
        let b = self.s.as_bytes();
        let mut i = start + 1;
        loop {
            match b.get(i) {
                None => {
                    self.pos = start;
                    return None;
                }
                Some(&c) if c == q => {
                    if b.get(i + 1) == Some(&q) {
                        i += 2;
                    } else {
                        self.pos = i + 1;
                        return Some(&self.s[start..self.pos]);
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// `WS0 (; WS0)? $`
    fn end(&mut self) -> bool {
        self.ws();
        if self.byte(b';') {
            self.ws();
        }
        self.pos == self.s.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(word: &str, arg: Option<&str>) -> Result<Command, ParseError> {
        Ok(Command::Cmd {
            word: word.into(),
            arg: arg.map(Into::into),
        })
    }

    fn set(key: &str, value: &str) -> Result<Command, ParseError> {
        Ok(Command::Set {
            key: key.into(),
            value: value.into(),
        })
    }

    #[test]
    fn commands() {
        assert_eq!(parse("SHOW POOLS"), cmd("SHOW", Some("POOLS")));
        assert_eq!(parse("  show\tpools ; \n"), cmd("show", Some("pools")));
        assert_eq!(parse("show pools;"), cmd("show", Some("pools")));
        assert_eq!(parse("RELOAD"), cmd("RELOAD", None));
        assert_eq!(parse("reload;"), cmd("reload", None));
        assert_eq!(parse("PAUSE \"my db\""), cmd("PAUSE", Some("my db")));
        assert_eq!(parse("PAUSE \"a\"\"b\""), cmd("PAUSE", Some("a\"b")));
        assert_eq!(parse("PAUSE \"\""), cmd("PAUSE", None));
        assert_eq!(parse("\"show\" \"pools\""), cmd("show", Some("pools")));
        assert_eq!(parse("KILL_CLIENT 42"), cmd("KILL_CLIENT", Some("42")));
        assert_eq!(
            parse("SHUTDOWN WAIT_FOR_CLIENTS"),
            cmd("SHUTDOWN", Some("WAIT_FOR_CLIENTS"))
        );
    }

    #[test]
    fn not_commands() {
        for q in [
            "",
            " ",
            ";",
            "SHOW POOLS; SHOW STATS",
            "SHOW POOLS;;",
            "SHOW a b",
            "SHOW-POOLS",
            "SHOW\"pools\"",
            "SHOW \"pools",
            "SELECT 1+1",
            "SET a",
            "SET a =",
            "SET = 1",
            "SET a = 1.5",
            "SET a = 'x",
            "ŝow pools",
        ] {
            match parse(q) {
                Err(ParseError::Invalid) => {}
                // "SET a" is a valid command shape; the console rejects the word later.
                Ok(Command::Cmd { word, .. }) if word.eq_ignore_ascii_case("set") => {}
                other => panic!("{q:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            parse("SET default_pool_size = 30"),
            set("default_pool_size", "30")
        );
        assert_eq!(parse("set a TO b;"), set("a", "b"));
        assert_eq!(parse("set a=b"), set("a", "b"));
        assert_eq!(parse("SET a tob"), set("a", "b"));
        assert_eq!(
            parse("SET server_reset_query = 'DISCARD ALL'"),
            set("server_reset_query", "DISCARD ALL")
        );
        assert_eq!(parse("SET a = 'it''s'"), set("a", "it's"));
        assert_eq!(parse("SET a = ''"), set("a", ""));
        assert_eq!(parse("SET \"a\" = \"b c\""), set("a", "b c"));
        assert_eq!(
            parse("SET listen_addr = '127.0.0.1'"),
            set("listen_addr", "127.0.0.1")
        );
    }

    #[test]
    fn limits() {
        let long = "a".repeat(63);
        assert_eq!(parse(&format!("SHOW {long}")), cmd("SHOW", Some(&long)));
        let too_long = "a".repeat(64);
        assert_eq!(
            parse(&format!("SHOW {too_long}")),
            Err(ParseError::BadArguments)
        );
        assert_eq!(
            parse("abcdefghijklmnop"),
            Err(ParseError::BadArguments),
            "16-char command"
        );
        assert_eq!(parse("abcdefghijklmno"), cmd("abcdefghijklmno", None));
        let v = "v".repeat(253);
        assert_eq!(parse(&format!("SET a = '{v}'")), set("a", &v));
        let v = "v".repeat(254);
        assert_eq!(
            parse(&format!("SET a = '{v}'")),
            Err(ParseError::BadArguments)
        );
        assert_eq!(parse("SET \"\" = 1"), Err(ParseError::BadArguments));
    }

    /// Every string of up to 4 symbols from an alphabet of the grammar's special
    /// characters parses or is refused, without panicking.
    #[test]
    fn no_panic_on_generated_input() {
        let alphabet = ["", " ", "\"", "'", ";", "=", "a", "é", "set", "to", "\t"];
        let n = alphabet.len();
        for i in 0..n.pow(4) {
            let mut q = String::new();
            let mut k = i;
            for _ in 0..4 {
                q.push_str(alphabet[k % n]);
                k /= n;
            }
            let _ = parse(&q);
        }
    }

    #[test]
    fn no_panic_on_odd_input() {
        for q in [
            "\"",
            "'",
            "SET \"",
            "SET a = \"",
            "SET a = '",
            "é\"é\"",
            "\0",
            "SET é = 1",
        ] {
            let _ = parse(q);
        }
    }
}
