//! Prometheus text exposition format 0.0.4: HELP/TYPE lines, samples, escaping.

use std::fmt::Write as _;

/// Prometheus text exposition format 0.0.4 writer. Every family is announced once with
/// HELP and TYPE, and its samples follow it contiguously.
#[derive(Default)]
pub(super) struct Expo {
    pub(super) out: String,
}

impl Expo {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        self.out.push('}');
    }

    pub(super) fn int(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.out, " {v}");
    }

    pub(super) fn float(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.out, " {}", format_float(v));
    }
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_escapes() {
        let mut x = Expo::default();
        x.family("m", "gauge", "a\\b\nc");
        x.int("m", &[("l", "q\"uo\\te\nx")], 3);
        x.float("m", &[], f64::INFINITY);
        x.float("m", &[], 0.25);
        assert_eq!(
            x.out,
            "# HELP m a\\\\b\\nc\n# TYPE m gauge\nm{l=\"q\\\"uo\\\\te\\nx\"} 3\nm +Inf\nm 0.25\n"
        );
    }
}
