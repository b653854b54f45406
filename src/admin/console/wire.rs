//! Result-set encoding for the console: RowDescription with per-column format codes and
//! DataRows in text or binary format. The simple protocol is all text (as PgBouncer); the
//! extended protocol lets Bind ask for binary columns (tokio-postgres asks for binary on
//! every column, Npgsql on the types it knows), so int4, int8, numeric and bytea have a
//! binary encoding here.

use bytes::{BufMut, BytesMut};

use crate::admin::oid;
use crate::proto::backend::{message, put_cstr};

/// Format code of column `i` given Bind's result-format list (none = all text, one = all
/// columns, else one per column).
pub fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [f] => *f,
        fs => fs.get(i).copied().unwrap_or(0),
    }
}

/// RowDescription; `formats` as sent in Bind (empty for the simple protocol and for
/// Describe of a statement, whose formats are not known yet).
pub fn row_description(buf: &mut BytesMut, cols: &[(String, u32)], formats: &[i16]) {
    message(buf, b'T', |b| {
        b.put_i16(cols.len().min(i16::MAX as usize) as i16);
        for (i, (name, type_oid)) in cols.iter().enumerate() {
            put_cstr(b, name);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(*type_oid);
            b.put_i16(match *type_oid {
                oid::INT4 => 4,
                oid::INT8 => 8,
                _ => -1,
            });
            b.put_i32(-1); // type modifier
            b.put_i16(format_of(formats, i));
        }
    });
}

/// One DataRow; column `i` is encoded per `format_of(formats, i)` and its type.
pub fn data_row(
    buf: &mut BytesMut,
    cols: &[(String, u32)],
    values: &[Option<String>],
    formats: &[i16],
) {
    message(buf, b'D', |b| {
        b.put_i16(values.len().min(i16::MAX as usize) as i16);
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else {
                b.put_i32(-1);
                continue;
            };
            let ty = cols.get(i).map(|c| c.1).unwrap_or(oid::TEXT);
            if format_of(formats, i) == 1 {
                let enc = binary(ty, v);
                b.put_i32(enc.len() as i32);
                b.put_slice(&enc);
            } else {
                b.put_i32(v.len() as i32);
                b.put_slice(v.as_bytes());
            }
        }
    });
}

/// The binary send format of text value `v` of type `ty`.
fn binary(ty: u32, v: &str) -> Vec<u8> {
    match ty {
        oid::INT4 => {
            let n = v.parse::<i64>().unwrap_or(0);
            let n = i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX });
            n.to_be_bytes().to_vec()
        }
        oid::INT8 => v.parse::<i64>().unwrap_or(0).to_be_bytes().to_vec(),
        oid::NUMERIC => numeric(v),
        oid::BYTEA => bytea(v),
        _ => v.as_bytes().to_vec(),
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// PostgreSQL's numeric send format for an integer in decimal text: ndigits, weight, sign,
/// dscale, then base-10000 digits, most significant first, trailing zero digits dropped.
/// Every numeric the console shows is a counter, so integers are all that is needed; any
/// other text is sent as NaN rather than a wrong number.
fn numeric(v: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let Ok(n) = v.trim().parse::<i128>() else {
        for x in [0u16, 0, NUMERIC_NAN, 0] {
            out.extend_from_slice(&x.to_be_bytes());
        }
        return out;
    };
    let sign = if n < 0 { NUMERIC_NEG } else { NUMERIC_POS };
    let mut m = n.unsigned_abs();
    let mut digits = Vec::new(); // least significant first
    while m > 0 {
        digits.push((m % 10_000) as u16);
        m /= 10_000;
    }
    let weight = digits.len().saturating_sub(1) as i16;
    digits.reverse();
    while digits.last() == Some(&0) {
        digits.pop();
    }
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // dscale
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// bytea values are kept in their text form (`\x` + hex); binary is the raw bytes.
fn bytea(v: &str) -> Vec<u8> {
    let hex = v.strip_prefix("\\x").unwrap_or(v).as_bytes();
    hex.chunks(2)
        .filter_map(|p| std::str::from_utf8(p).ok())
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_encoding() {
        // 0: no digits.
        assert_eq!(numeric("0"), vec![0, 0, 0, 0, 0, 0, 0, 0]);
        // 12345678 = [1234, 5678], weight 1.
        assert_eq!(
            numeric("12345678"),
            vec![0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xD2, 0x16, 0x2E]
        );
        // 10000 = [1, 0] → trailing zero dropped: ndigits 1, weight 1.
        assert_eq!(numeric("10000"), vec![0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        // -5
        assert_eq!(numeric("-5"), vec![0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5]);
        // u64::MAX fits.
        assert_eq!(numeric(&u64::MAX.to_string())[..2], [0, 5]);
        assert_eq!(numeric("x")[4..6], [0xC0, 0]);
    }

    #[test]
    fn ints_and_formats() {
        assert_eq!(binary(oid::INT4, "7"), vec![0, 0, 0, 7]);
        assert_eq!(binary(oid::INT8, "-1"), vec![0xff; 8]);
        assert_eq!(binary(oid::TEXT, "ab"), b"ab".to_vec());
        assert_eq!(bytea("\\x00ff"), vec![0, 255]);
        assert_eq!(format_of(&[], 3), 0);
        assert_eq!(format_of(&[1], 3), 1);
        assert_eq!(format_of(&[0, 1], 1), 1);
        assert_eq!(format_of(&[0, 1], 5), 0);
    }
}
