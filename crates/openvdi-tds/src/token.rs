//! The tokens the server sends (MS-TDS §2.2.7): LOGINACK, ENVCHANGE, INFO, ERROR,
//! COLMETADATA, ROW, RETURNSTATUS and the DONE family, and the encoding of the
//! column types the endpoint sends (§2.2.5.4, §2.2.5.5).
//!
//! Values arrive as display strings; each type reads its form:
//! integers and numerics in decimal (optionally signed), BIT as `0`/`1`,
//! DATETIME as `YYYY-MM-DD hh:mm:ss[.fff]`, UNIQUEIDENTIFIER as the hyphenated
//! 36-character form (braces allowed). [`encode_table`] checks every value of a
//! column before it commits to a type, and sends the column as nvarchar when one
//! does not read.

use crate::wire::Out;
use crate::{ColType, Msg, Table};

/// Token types.
pub mod tok {
    /// COLMETADATA.
    pub const COLMETADATA: u8 = 0x81;
    /// RETURNSTATUS.
    pub const RETURNSTATUS: u8 = 0x79;
    /// RETURNVALUE.
    pub const RETURNVALUE: u8 = 0xAC;
    /// ERROR.
    pub const ERROR: u8 = 0xAA;
    /// INFO.
    pub const INFO: u8 = 0xAB;
    /// LOGINACK.
    pub const LOGINACK: u8 = 0xAD;
    /// ROW.
    pub const ROW: u8 = 0xD1;
    /// ENVCHANGE.
    pub const ENVCHANGE: u8 = 0xE3;
    /// DONE.
    pub const DONE: u8 = 0xFD;
    /// DONEPROC.
    pub const DONEPROC: u8 = 0xFE;
    /// DONEINPROC.
    pub const DONEINPROC: u8 = 0xFF;
}

/// DONE status bits (§2.2.7.6).
pub mod done {
    /// More results follow.
    pub const MORE: u16 = 0x0001;
    /// The statement failed.
    pub const ERROR: u16 = 0x0002;
    /// The row count is valid.
    pub const COUNT: u16 = 0x0010;
    /// Acknowledges an ATTENTION.
    pub const ATTN: u16 = 0x0020;
}

/// The collation the endpoint announces and tags strings with:
/// SQL_Latin1_General_CP1_CI_AS (LCID 0x0409, CI/AS flags, sort id 52).
pub const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// How a connection encodes tokens: TDS 7.2 and later widened several fields.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    /// TDS 7.2 or later.
    pub tds72: bool,
}

/// Append a token with a u16 length prefix, the body written by `f`.
fn with_len(o: &mut Out, t: u8, f: impl FnOnce(&mut Out)) {
    let mut body = Out::default();
    f(&mut body);
    o.u8(t)
        .u16(body.buf.len().min(0xFFFF) as u16)
        .bytes(&body.buf);
}

/// ENVCHANGE with string values (database 1, language 2, packet size 4).
pub fn envchange_str(o: &mut Out, kind: u8, new: &str, old: &str) {
    with_len(o, tok::ENVCHANGE, |b| {
        b.u8(kind).b_varchar(new).b_varchar(old);
    });
}

/// ENVCHANGE with binary values (collation 7, transactions 8/9/10).
pub fn envchange_bin(o: &mut Out, kind: u8, new: &[u8], old: &[u8]) {
    with_len(o, tok::ENVCHANGE, |b| {
        b.u8(kind)
            .u8(new.len() as u8)
            .bytes(new)
            .u8(old.len() as u8)
            .bytes(old);
    });
}

/// INFO (class ≤ 10) or ERROR.
pub fn message(o: &mut Out, d: Dialect, m: &Msg, server: &str) {
    let t = if m.class > 10 { tok::ERROR } else { tok::INFO };
    with_len(o, t, |b| {
        b.u32(m.number)
            .u8(m.state)
            .u8(m.class)
            .us_varchar(&m.text)
            .b_varchar(server)
            .b_varchar("");
        if d.tds72 {
            b.u32(m.line);
        } else {
            b.u16(m.line.min(0xFFFF) as u16);
        }
    });
}

/// LOGINACK: interface T-SQL, the TDS version agreed (big-endian on the wire),
/// the program name and version.
pub fn loginack(o: &mut Out, tds_version: u32, version: (u8, u8, u16)) {
    with_len(o, tok::LOGINACK, |b| {
        b.u8(1)
            .bytes(&tds_version.to_be_bytes())
            .b_varchar("Microsoft SQL Server")
            .u8(version.0)
            .u8(version.1)
            .bytes(&version.2.to_be_bytes());
    });
}

/// DONE, DONEPROC or DONEINPROC.
pub fn done(o: &mut Out, d: Dialect, t: u8, status: u16, curcmd: u16, rows: u64) {
    o.u8(t).u16(status).u16(curcmd);
    if d.tds72 {
        o.u64(rows);
    } else {
        o.u32(rows.min(u64::from(u32::MAX)) as u32);
    }
}

/// RETURNSTATUS.
pub fn return_status(o: &mut Out, v: i32) {
    o.u8(tok::RETURNSTATUS).u32(v as u32);
}

/// RETURNVALUE (§2.2.7.19) of an int OUTPUT parameter: `ordinal` is its position
/// in the call (0 first), sent as INTN(4).
pub fn return_value_int(o: &mut Out, d: Dialect, ordinal: u16, name: &str, v: i32) {
    o.u8(tok::RETURNVALUE).u16(ordinal).b_varchar(name).u8(0x01); // status: OUTPUT
    if d.tds72 {
        o.u32(0); // UserType
    } else {
        o.u16(0);
    }
    o.u16(0x0001) // flags: nullable
        .u8(0x26)
        .u8(4)
        .u8(4)
        .u32(v as u32);
}

/// How one column goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    NVarChar,
    NVarCharMax,
    Int(u8),
    Bit,
    DateTime,
    Numeric(u8, u8),
    Guid,
}

/// COLMETADATA and one ROW per row.
pub fn encode_table(o: &mut Out, d: Dialect, t: &Table) {
    let wires: Vec<Wire> = (0..t.columns.len()).map(|i| wire_for(t, i, d)).collect();
    o.u8(tok::COLMETADATA).u16(t.columns.len() as u16);
    for (c, w) in t.columns.iter().zip(&wires) {
        if d.tds72 {
            o.u32(0);
        } else {
            o.u16(0);
        }
        o.u16(0x0001); // fNullable
        match *w {
            Wire::NVarChar => {
                o.u8(0xE7).u16(8000).bytes(&COLLATION);
            }
            Wire::NVarCharMax => {
                o.u8(0xE7).u16(0xFFFF).bytes(&COLLATION);
            }
            Wire::Int(n) => {
                o.u8(0x26).u8(n);
            }
            Wire::Bit => {
                o.u8(0x68).u8(1);
            }
            Wire::DateTime => {
                o.u8(0x6F).u8(8);
            }
            Wire::Numeric(p, s) => {
                o.u8(0x6C).u8(numeric_len(p)).u8(p).u8(s);
            }
            Wire::Guid => {
                o.u8(0x24).u8(16);
            }
        }
        o.b_varchar(&c.name);
    }
    for row in &t.rows {
        o.u8(tok::ROW);
        for (i, w) in wires.iter().enumerate() {
            let v = row.get(i).and_then(|v| v.as_deref());
            value(o, *w, v);
        }
    }
}

/// The wire form of column `i`: its type if every value reads as one, else
/// nvarchar (nvarchar(max) when a value is longer than 4000 units and the
/// dialect has PLP; cut at 4000 otherwise).
fn wire_for(t: &Table, i: usize, d: Dialect) -> Wire {
    let ty = t.columns[i].ty;
    let values = t
        .rows
        .iter()
        .filter_map(|r| r.get(i).and_then(|v| v.as_deref()));
    let typed = match ty {
        ColType::NVarChar => None,
        ColType::TinyInt => Some(Wire::Int(1)),
        ColType::SmallInt => Some(Wire::Int(2)),
        ColType::Int => Some(Wire::Int(4)),
        ColType::BigInt => Some(Wire::Int(8)),
        ColType::Bit => Some(Wire::Bit),
        ColType::DateTime => Some(Wire::DateTime),
        ColType::Numeric(p, s) if (1..=38).contains(&p) && s <= p => Some(Wire::Numeric(p, s)),
        ColType::Numeric(..) => None,
        ColType::UniqueIdentifier => Some(Wire::Guid),
    };
    if let Some(w) = typed {
        let mut ok = true;
        let mut scratch = Out::default();
        for v in values.clone() {
            if !encode_typed(&mut scratch, w, v) {
                ok = false;
                break;
            }
            scratch.buf.clear();
        }
        if ok {
            return w;
        }
    }
    let long = values.clone().any(|v| v.encode_utf16().nth(4000).is_some());
    if long && d.tds72 {
        Wire::NVarCharMax
    } else {
        Wire::NVarChar
    }
}

fn numeric_len(p: u8) -> u8 {
    match p {
        0..=9 => 5,
        10..=19 => 9,
        20..=28 => 13,
        _ => 17,
    }
}

fn value(o: &mut Out, w: Wire, v: Option<&str>) {
    match (w, v) {
        (Wire::NVarChar, None) => {
            o.u16(0xFFFF);
        }
        (Wire::NVarChar, Some(s)) => {
            let u: Vec<u16> = s.encode_utf16().take(4000).collect();
            o.u16((u.len() * 2) as u16);
            for c in u {
                o.u16(c);
            }
        }
        (Wire::NVarCharMax, None) => {
            o.u64(u64::MAX);
        }
        (Wire::NVarCharMax, Some(s)) => {
            // PLP (§2.2.5.2.3): total length, chunks, a zero-length terminator.
            let mut b = Out::default();
            b.ucs2(s);
            o.u64(b.buf.len() as u64);
            if !b.buf.is_empty() {
                o.u32(b.buf.len() as u32).bytes(&b.buf);
            }
            o.u32(0);
        }
        (_, None) => {
            o.u8(0);
        }
        (w, Some(s)) => {
            // Checked by wire_for: every value encodes.
            let ok = encode_typed(o, w, s);
            debug_assert!(ok);
        }
    }
}

/// Append the length byte and value of `s` as `w`; false (and nothing written)
/// when `s` does not read as that type.
fn encode_typed(o: &mut Out, w: Wire, s: &str) -> bool {
    let s = s.trim();
    match w {
        Wire::Int(n) => {
            let Ok(v) = s.parse::<i64>() else {
                return false;
            };
            let fits = match n {
                1 => (0..=255).contains(&v),
                2 => i16::try_from(v).is_ok(),
                4 => i32::try_from(v).is_ok(),
                _ => true,
            };
            if !fits {
                return false;
            }
            o.u8(n).bytes(&v.to_le_bytes()[..usize::from(n)]);
            true
        }
        Wire::Bit => {
            let v = match s {
                "0" => 0,
                "1" => 1,
                _ => return false,
            };
            o.u8(1).u8(v);
            true
        }
        Wire::DateTime => match datetime(s) {
            Some((days, ticks)) => {
                o.u8(8).u32(days as u32).u32(ticks);
                true
            }
            None => false,
        },
        Wire::Numeric(p, scale) => {
            let (neg, digits) = match s.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, s),
            };
            let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
            if int.is_empty() && frac.is_empty()
                || !int.bytes().all(|c| c.is_ascii_digit())
                || !frac.bytes().all(|c| c.is_ascii_digit())
                || frac.len() > usize::from(scale)
            {
                return false;
            }
            let mut all = String::from(int);
            all.push_str(frac);
            for _ in frac.len()..usize::from(scale) {
                all.push('0');
            }
            let all = all.trim_start_matches('0');
            if all.len() > usize::from(p) {
                return false;
            }
            let v: u128 = if all.is_empty() {
                0
            } else {
                match all.parse() {
                    Ok(v) => v,
                    Err(_) => return false,
                }
            };
            let len = numeric_len(p);
            o.u8(len)
                .u8(u8::from(!neg || v == 0))
                .bytes(&v.to_le_bytes()[..usize::from(len - 1)]);
            true
        }
        Wire::Guid => match guid(s) {
            Some(b) => {
                o.u8(16).bytes(&b);
                true
            }
            None => false,
        },
        Wire::NVarChar | Wire::NVarCharMax => false,
    }
}

/// `YYYY-MM-DD hh:mm:ss[.fff]` as DATETIME's days since 1900-01-01 and
/// 1/300-second ticks since midnight.
pub fn datetime(s: &str) -> Option<(i32, u32)> {
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1753..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':');
    let h: u32 = t.next()?.parse().ok()?;
    let mi: u32 = t.next()?.parse().ok()?;
    let sec: u32 = t.next().unwrap_or("0").parse().ok()?;
    if h > 23 || mi > 59 || sec > 59 || frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let ms: u32 = format!("{frac:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(y, mo, day) - days_from_civil(1900, 1, 1);
    let ticks = (h * 3600 + mi * 60 + sec) * 300 + (ms * 3 + 5) / 10;
    Some((i32::try_from(days).ok()?, ticks))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A hyphenated GUID in UNIQUEIDENTIFIER's byte order (the first three groups
/// little-endian).
pub fn guid(s: &str) -> Option<[u8; 16]> {
    let s = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(s);
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
        return None;
    }
    let hex: String = groups.concat();
    let mut b = [0u8; 16];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Column;

    #[test]
    fn datetimes() {
        assert_eq!(datetime("1900-01-01 00:00:00.000"), Some((0, 0)));
        assert_eq!(datetime("1900-01-02 00:00:01.000"), Some((1, 300)));
        assert_eq!(datetime("2024-02-29 12:00:00.500").unwrap().0, 45_349);
        assert_eq!(
            datetime("2024-02-29 12:00:00.500").unwrap().1,
            43_200 * 300 + 150
        );
        assert_eq!(datetime("2024-13-01 00:00:00"), None);
        assert_eq!(datetime("yesterday"), None);
    }

    #[test]
    fn guids_in_sql_server_order() {
        let g = guid("01020304-0506-0708-090a-0b0c0d0e0f10").unwrap();
        assert_eq!(g, [4, 3, 2, 1, 6, 5, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert!(guid("{01020304-0506-0708-090A-0B0C0D0E0F10}").is_some());
        assert!(guid("0102030405060708090a0b0c0d0e0f10").is_none());
    }

    #[test]
    fn numerics_and_fallback() {
        let mut o = Out::default();
        assert!(encode_typed(
            &mut o,
            Wire::Numeric(25, 0),
            "41000000012300001"
        ));
        assert_eq!(o.buf[0], 13);
        assert_eq!(o.buf[1], 1);
        let mut v = [0u8; 16];
        v[..12].copy_from_slice(&o.buf[2..14]);
        assert_eq!(u128::from_le_bytes(v), 41_000_000_012_300_001);
        assert!(!encode_typed(&mut o, Wire::Numeric(25, 0), "12a"));
        assert!(!encode_typed(&mut o, Wire::Numeric(3, 0), "1234"));
        assert!(!encode_typed(&mut o, Wire::Int(1), "300"));
        // A column with one value that is not an int goes out as nvarchar.
        let t = Table {
            columns: vec![Column {
                name: "n".into(),
                ty: ColType::Int,
            }],
            rows: vec![vec![Some("1".into())], vec![Some("x".into())], vec![None]],
        };
        assert_eq!(wire_for(&t, 0, Dialect { tds72: true }), Wire::NVarChar);
        let t = Table {
            rows: vec![vec![Some("1".into())], vec![None]],
            ..t
        };
        assert_eq!(wire_for(&t, 0, Dialect { tds72: true }), Wire::Int(4));
    }
}
