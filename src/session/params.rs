//! A client's tracked parameters (PgBouncer's varcache): client_encoding, DateStyle,
//! TimeZone, standard_conforming_strings, application_name and track_extra_parameters.
//! Values come from the startup packet, then from every ParameterStatus the client's
//! server reports. On lease, values that differ from the server's are applied with one
//! `SET` packet, so a `SET TimeZone` in one client never shows in another's transaction.

use crate::server::ServerParams;

/// The parameters PgBouncer always tracks.
pub const BUILTIN_TRACKED: [&str; 5] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

/// The names of all tracked parameters for a configuration, canonical spelling as the
/// server reports them.
///
/// Every login asks; the answer for the current `track_extra_parameters` is kept, so
/// logins do not rebuild the list.
pub fn tracked_names(extra: &[String]) -> std::sync::Arc<Vec<String>> {
    type Cached = Option<(Vec<String>, std::sync::Arc<Vec<String>>)>;
    static LAST: parking_lot::Mutex<Cached> = parking_lot::Mutex::new(None);
    let mut last = LAST.lock();
    if let Some((key, names)) = last.as_ref() {
        if key.as_slice() == extra {
            return names.clone();
        }
    }
    let mut v: Vec<String> = BUILTIN_TRACKED.iter().map(|s| s.to_string()).collect();
    for e in extra {
        if !v.iter().any(|n| n.eq_ignore_ascii_case(e)) {
            v.push(e.clone());
        }
    }
    let names = std::sync::Arc::new(v);
    *last = Some((extra.to_vec(), names.clone()));
    names
}

/// The canonical tracked name for `name` (startup keys are case-insensitive).
pub fn canonical<'a>(tracked: &'a [String], name: &str) -> Option<&'a str> {
    tracked
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))
        .map(|s| s.as_str())
}

#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    vals: Vec<(String, String)>,
    /// This exact set of values as a number shared by every client with the same set
    /// ([`intern`]); `None` = not worked out since the last change.
    set_id: Option<u64>,
}

impl PartialEq for ClientParams {
    fn eq(&self, other: &Self) -> bool {
        self.vals == other.vals
    }
}

impl Eq for ClientParams {}

/// At most this many distinct parameter sets get a number; clients with others (many
/// distinct application_names, say) are compared value by value on every lease.
const MAX_INTERNED: usize = 4096;

/// The number of a set of parameter values: equal sets get equal numbers, so "the server
/// was last synchronised to set N and has not changed since" proves at the next lease, by
/// comparing two integers, that nothing needs to be sent.
fn intern(vals: &[(String, String)]) -> Option<u64> {
    use std::collections::HashMap;
    #[derive(Default)]
    struct Sets {
        all: HashMap<Vec<(String, String)>, u64>,
        /// The sets numbered most recently, compared before hashing: most clients of an
        /// application share one set, and a comparison is cheaper than SipHash.
        recent: Vec<(Vec<(String, String)>, u64)>,
    }
    const RECENT: usize = 4;
    static SETS: std::sync::OnceLock<parking_lot::Mutex<Sets>> = std::sync::OnceLock::new();
    let mut sets = SETS.get_or_init(Default::default).lock();
    if let Some((_, id)) = sets.recent.iter().find(|(v, _)| v.as_slice() == vals) {
        return Some(*id);
    }
    let id = match sets.all.get(vals) {
        Some(&id) => id,
        None if sets.all.len() >= MAX_INTERNED => return None,
        None => {
            let id = sets.all.len() as u64 + 1;
            sets.all.insert(vals.to_vec(), id);
            id
        }
    };
    if sets.recent.len() >= RECENT {
        sets.recent.remove(0);
    }
    sets.recent.push((vals.to_vec(), id));
    Some(id)
}

impl ClientParams {
    /// The parameters, in the order they were first set.
    pub fn values(&self) -> &[(String, String)] {
        &self.vals
    }

    /// The set's number (see [`intern`]); `None` when there are too many distinct sets.
    pub fn set_id(&mut self) -> Option<u64> {
        if self.set_id.is_none() {
            self.set_id = intern(&self.vals);
        }
        self.set_id
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vals
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(e) = self
            .vals
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            if e.1 != value {
                e.1 = value.to_string();
                self.set_id = None;
            }
        } else {
            self.vals.push((name.to_string(), value.to_string()));
            self.set_id = None;
        }
    }

    /// Fills parameters the client did not give from the pool's original values.
    pub fn fill_from(&mut self, tracked: &[String], orig: &ServerParams) {
        for n in tracked {
            if self.get(n).is_none() {
                if let Some(v) = orig.get(n) {
                    self.set(n, v);
                }
            }
        }
    }

    /// One query of `SET name=value;` for each value that differs from the server's
    /// (compared case-insensitively, as PgBouncer), or `None` when all match.
    pub fn sync_sql(&self, server: &ServerParams) -> Option<String> {
        let mut sql = String::new();
        for (k, v) in &self.vals {
            let same = server
                .get(k)
                .is_some_and(|sv| sv == v || sv.eq_ignore_ascii_case(v));
            if !same {
                sql.push_str("SET ");
                sql.push_str(&quote_ident(k));
                sql.push('=');
                sql.push_str(&quote_literal(v));
                sql.push(';');
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// After a sync SET, the server's canonical spelling becomes the client's value, so the
    /// next lease does not send the same SET again (PgBouncer #879).
    pub fn adopt_canonical(&mut self, server: &ServerParams) {
        for (k, v) in self.vals.iter_mut() {
            if let Some(sv) = server.get(k) {
                if sv.eq_ignore_ascii_case(v) && sv != v {
                    *v = sv.to_string();
                    self.set_id = None;
                }
            }
        }
    }
}

/// `E'…'` literal: correct whatever standard_conforming_strings is on the server.
pub fn quote_literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 3);
    s.push_str("E'");
    for c in v.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

fn quote_ident(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        k.to_string()
    } else {
        format!("\"{}\"", k.replace('"', "\"\""))
    }
}

/// The `options` startup parameter holds something other than `-c k=v` / `--k=v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOptions;

/// Parses the `options` startup parameter: `-c key=val`, `-ckey=val` and `--key=val`,
/// whitespace-separated with backslash escapes (libpq's rules). `Err` = something else
/// is in there.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, BadOptions> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next().ok_or(BadOptions)?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(BadOptions);
        };
        let (k, v) = kv.split_once('=').ok_or(BadOptions)?;
        // PostgreSQL treats '-' in option names as '_'.
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_sql_only_differences() {
        let mut c = ClientParams::default();
        c.set("TimeZone", "Europe/Paris");
        c.set("DateStyle", "ISO, MDY");
        let mut s = ServerParams::default();
        s.set("TimeZone", "UTC");
        s.set("DateStyle", "iso, mdy");
        assert_eq!(
            c.sync_sql(&s).as_deref(),
            Some("SET TimeZone=E'Europe/Paris';")
        );
        s.set("TimeZone", "Europe/Paris");
        assert_eq!(c.sync_sql(&s), None);
    }

    #[test]
    fn equal_sets_share_a_number_and_changes_renumber() {
        let mut a = ClientParams::default();
        a.set("TimeZone", "Asia/Tokyo");
        a.set("application_name", "set-id-test");
        let mut b = ClientParams::default();
        b.set("TimeZone", "Asia/Tokyo");
        b.set("application_name", "set-id-test");
        let id = a.set_id().expect("a number");
        assert_eq!(b.set_id(), Some(id), "equal sets, equal numbers");
        b.set("TimeZone", "Asia/Tokyo");
        assert_eq!(
            b.set_id(),
            Some(id),
            "setting the same value changes nothing"
        );
        b.set("TimeZone", "UTC");
        assert_ne!(b.set_id(), Some(id), "a changed value, another number");
        let mut s = ServerParams::default();
        s.set("timezone", "asia/tokyo");
        let v = s.version();
        s.set("TimeZone", "asia/tokyo");
        assert_eq!(s.version(), v, "same value: same version");
        a.adopt_canonical(&s);
        assert_eq!(a.get("TimeZone"), Some("asia/tokyo"));
        assert_ne!(
            a.set_id(),
            Some(id),
            "the canonical spelling is another set"
        );
        s.set("TimeZone", "UTC");
        assert_ne!(s.version(), v, "a changed server value bumps the version");
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote_literal("a'b\\c"), "E'a''b\\\\c'");
    }

    #[test]
    fn canonical_values_adopted() {
        let mut c = ClientParams::default();
        c.set("client_encoding", "utf8");
        let mut s = ServerParams::default();
        s.set("client_encoding", "UTF8");
        c.adopt_canonical(&s);
        assert_eq!(c.get("client_encoding"), Some("UTF8"));
    }

    #[test]
    fn options_forms() {
        assert_eq!(
            parse_options("-c geqo=off --search-path=a\\ b -cDateStyle=ISO").unwrap(),
            vec![
                ("geqo".into(), "off".into()),
                ("search_path".into(), "a b".into()),
                ("DateStyle".into(), "ISO".into())
            ]
        );
        assert!(parse_options("-x foo").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }
}
