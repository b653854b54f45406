//! Parsers for single setting values, one per kind of setting, shared by the ini and TOML
//! readers so both accept exactly the same text. They follow libusual's `cfparser.c`
//! (`strtol(.., 0)` for ints, `strtod` seconds for times, case-insensitive lookups) and
//! PgBouncer's `loader.c` (`atoi` seconds in connection strings). Each returns the reason
//! on failure; callers add the key name and the file position.

use std::time::Duration;

use super::keys::{self, Kind};
use super::{AuthType, LoadBalanceHosts, PoolMode};

/// PgBouncer keeps booleans in ints, so any integer is accepted (non-zero = on). The words
/// are a pgsluice extension that TOML users and YAML-minded people expect.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    if let Ok(n) = parse_int(text) {
        return Ok(n != 0);
    }
    match text.trim().to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" => Ok(true),
        "no" | "off" | "false" => Ok(false),
        _ => Err("expected a boolean (0/1, yes/no, on/off, true/false)".into()),
    }
}

/// `strtol(text, .., 0)` with the partial-parse check of `cf_set_int`: leading white
/// space, an optional sign, then `0x`/`0X` hex, a leading `0` octal, or decimal; nothing
/// may follow the digits.
pub fn parse_int(text: &str) -> Result<i64, String> {
    let err = || "expected an integer".to_string();
    let t = text.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (digits, radix) = if let Some(hex) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (hex, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    // from_str_radix would accept another sign here; strtol would not.
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return Err(err());
    }
    let n = i64::from_str_radix(digits, radix).map_err(|_| "integer out of range".to_string())?;
    Ok(if neg { -n } else { n })
}

/// An int setting stored in a `u32`. Negative values have no meaning for any of them.
pub fn parse_u32(text: &str) -> Result<u32, String> {
    let n = parse_int(text)?;
    u32::try_from(n).map_err(|_| format!("{n} is out of range 0..{}", u32::MAX))
}

pub fn parse_u16(text: &str) -> Result<u16, String> {
    let n = parse_int(text)?;
    u16::try_from(n).map_err(|_| format!("{n} is out of range 0..{}", u16::MAX))
}

/// Float seconds without unit (`5`, `5.0`, `0.5`), as libusual's `parse_time`: negative
/// values are refused. PgBouncer truncates to microseconds; we round to the nearest one so
/// that `4.35` does not become 4.349999 s.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let err = || "expected seconds, e.g. 5 or 0.5".to_string();
    let v: f64 = text.trim_start().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    let micros = (v * 1e6).round();
    if micros >= u64::MAX as f64 {
        return Err("time out of range".into());
    }
    Ok(Duration::from_micros(micros as u64))
}

/// A comma-separated list (`listen_addr`, `admin_users`, …): items trimmed, empty items
/// dropped, `*` kept as written.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which of `allowed` `text` names, ignoring ASCII case (libusual's `cf_set_lookup`).
pub fn parse_enum(text: &str, allowed: &[&'static str]) -> Result<&'static str, String> {
    allowed
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("expected one of: {}", allowed.join(", ")))
}

pub fn parse_pool_mode(text: &str) -> Result<PoolMode, String> {
    Ok(match parse_enum(text, keys::POOL_MODES)? {
        "transaction" => PoolMode::Transaction,
        "statement" => PoolMode::Statement,
        _ => PoolMode::Session,
    })
}

pub fn parse_auth_type(text: &str) -> Result<AuthType, String> {
    Ok(match parse_enum(text, keys::AUTH_TYPES)? {
        "cert" => AuthType::Cert,
        "scram-sha-256" => AuthType::ScramSha256,
        "plain" => AuthType::Plain,
        "trust" => AuthType::Trust,
        "any" => AuthType::Any,
        "hba" => AuthType::Hba,
        "ldap" => AuthType::Ldap,
        "pam" => AuthType::Pam,
        _ => AuthType::Md5,
    })
}

pub fn parse_load_balance_hosts(text: &str) -> Result<LoadBalanceHosts, String> {
    Ok(match parse_enum(text, keys::LOAD_BALANCE_HOSTS)? {
        "disable" => LoadBalanceHosts::Disable,
        _ => LoadBalanceHosts::RoundRobin,
    })
}

/// Text just after an opening `quote` → (content with doubled quotes undone, text after the
/// closing quote); `None` if the quote is never closed. SQL-style doubling is the one escape
/// PgBouncer knows in all its files: `''` in connection strings, `""` in database names and
/// in auth_file.
pub fn unquote(s: &str, quote: char) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, n)| n == quote) {
                chars.next();
            } else {
                return Some((out, &s[i + c.len_utf8()..]));
            }
        }
        out.push(c);
    }
    None
}

/// Check `text` against a key's kind without storing it: how keys that pgsluice accepts
/// but does not implement still get PgBouncer's value checking.
pub fn check(kind: Kind, text: &str) -> Result<(), String> {
    match kind {
        Kind::Bool => parse_bool(text).map(drop),
        // PgBouncer's CF_INT is a C int.
        Kind::Int => parse_int(text).and_then(|n| {
            i32::try_from(n)
                .map(drop)
                .map_err(|_| "integer out of range".to_string())
        }),
        Kind::Time => parse_time(text).map(drop),
        Kind::Str | Kind::List => Ok(()),
        Kind::Enum(allowed) => parse_enum(text, allowed).map(drop),
    }
}

/// A time the way SHOW CONFIG prints it: whole seconds without a fraction (`5`), else the
/// shortest decimal (`0.5`).
pub fn format_time(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// A count in a `[databases]`/`[users]`/`[peers]` string. PgBouncer reads these with
/// `atoi` and uses -1 for "not set", so `-1` gives `None`; other negatives and junk are
/// refused rather than read as 0.
pub fn parse_connstr_count(text: &str) -> Result<Option<u32>, String> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| "expected an integer".to_string())?;
    if n == -1 {
        return Ok(None);
    }
    u32::try_from(n)
        .map(Some)
        .map_err(|_| format!("{n} is out of range"))
}

/// Seconds in a `[databases]`/`[users]` string: integer seconds as PgBouncer's
/// `atoi(val) * USEC`, so a fraction is dropped (`1.9` → 1 s). `-1` gives `None`.
pub fn parse_connstr_seconds(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    let whole = match t.split_once('.') {
        // Only digits may follow the point, as in "1.5"; "1.x" stays an error.
        Some((w, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => w,
        Some(_) => return Err("expected whole seconds".into()),
        None => t,
    };
    let n: i64 = whole
        .parse()
        .map_err(|_| "expected whole seconds".to_string())?;
    match n {
        -1 => Ok(None),
        n if n < 0 => Err(format!("{n} is out of range")),
        n => Ok(Some(Duration::from_secs(n.unsigned_abs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_detect_their_base() {
        assert_eq!(parse_int("0777"), Ok(0o777));
        assert_eq!(parse_int("0x1f"), Ok(31));
        assert_eq!(parse_int("0X1F"), Ok(31));
        assert_eq!(parse_int("10"), Ok(10));
        assert_eq!(parse_int("0"), Ok(0));
        assert_eq!(parse_int("-12"), Ok(-12));
        assert_eq!(parse_int(" 7"), Ok(7));
        for bad in [
            "",
            "08",
            "0x",
            "12abc",
            "1.5",
            "--1",
            "+-1",
            "0x+1",
            "99999999999999999999",
        ] {
            assert!(parse_int(bad).is_err(), "{bad:?}");
        }
        assert!(parse_u32("-1").is_err());
        assert!(parse_u16("70000").is_err());
    }

    #[test]
    fn booleans() {
        for t in ["1", "2", "yes", "ON", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for t in ["0", "no", "Off", "FALSE"] {
            assert_eq!(parse_bool(t), Ok(false), "{t}");
        }
        assert!(parse_bool("maybe").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn times_are_float_seconds() {
        assert_eq!(parse_time("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("5.0"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_time("4.35"), Ok(Duration::from_millis(4350)));
        assert_eq!(parse_time("1e3"), Ok(Duration::from_secs(1000)));
        for bad in ["", "-1", "5s", "inf", "NaN", "1e300"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_time(Duration::from_secs(5)), "5");
        assert_eq!(format_time(Duration::from_millis(500)), "0.5");
    }

    #[test]
    fn lists_and_enums() {
        assert_eq!(parse_list(" a , b,,c "), ["a", "b", "c"]);
        assert_eq!(parse_list("*"), ["*"]);
        assert!(parse_list("").is_empty());
        assert_eq!(parse_pool_mode("Transaction"), Ok(PoolMode::Transaction));
        assert_eq!(parse_auth_type("SCRAM-SHA-256"), Ok(AuthType::ScramSha256));
        assert!(parse_pool_mode("tx").is_err());
        assert_eq!(
            parse_load_balance_hosts("disable"),
            Ok(LoadBalanceHosts::Disable)
        );
        assert!(check(Kind::Enum(keys::SSL_MODES), "verify-full").is_ok());
        assert!(check(Kind::Enum(keys::SSL_MODES), "sometimes").is_err());
        assert!(check(Kind::Int, "4294967296").is_err());
    }

    #[test]
    fn connstr_numbers() {
        assert_eq!(parse_connstr_count("20"), Ok(Some(20)));
        assert_eq!(parse_connstr_count("-1"), Ok(None));
        assert!(parse_connstr_count("-2").is_err());
        assert!(parse_connstr_count("2x").is_err());
        assert_eq!(
            parse_connstr_seconds("90"),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_connstr_seconds("1.9"),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(parse_connstr_seconds("-1"), Ok(None));
        assert!(parse_connstr_seconds("1.x").is_err());
        assert!(parse_connstr_seconds("").is_err());
    }
}
