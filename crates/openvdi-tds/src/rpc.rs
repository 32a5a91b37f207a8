//! RPC requests (MS-TDS §2.2.6.6) and what the endpoint does with them:
//! `sp_executesql` (ProcID 10, or by name), whose first parameter is the
//! statement, the second the declaration of the others (`@device nvarchar(…)`),
//! and the rest their values; and the prepared-statement procedures ODBC drivers
//! use for a parameterised statement: `sp_prepexec` (13: handle OUTPUT,
//! declaration, statement, values), `sp_prepare` (11), `sp_execute` (12: handle,
//! values) and `sp_unprepare` (15: handle).

use crate::wire::{Bytes, Malformed};
use crate::Value;

/// `sp_executesql`'s ProcID.
pub const SP_EXECUTESQL: u16 = 10;

/// What a call asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// sp_executesql: run now.
    ExecuteSql,
    /// sp_prepexec: prepare (a handle comes back) and run.
    PrepExec,
    /// sp_prepare: prepare only.
    Prepare,
    /// sp_execute: run a prepared statement.
    Execute,
    /// sp_unprepare: forget a handle.
    Unprepare,
    /// Anything else (Msg 2812).
    Other,
}

/// Parameters by name.
pub type Params = [(String, Value)];

/// A call's statement, ready to run.
pub type Bound = (String, Vec<(String, Value)>);

/// Names `values` after a declaration: named values keep their name (with `@`),
/// unnamed ones take the declaration's names in order.
fn bind(
    proc: &str,
    decl: &[String],
    values: &[(String, Value)],
) -> Result<Vec<(String, Value)>, CallError> {
    let mut out = Vec::new();
    for (i, (name, v)) in values.iter().enumerate() {
        let name = if name.is_empty() {
            match decl.get(i) {
                Some(d) => d.clone(),
                None => {
                    return Err((
                        8144,
                        format!("Procedure or function {proc} has too many arguments specified."),
                    ))
                }
            }
        } else if name.starts_with('@') {
            name.clone()
        } else {
            format!("@{name}")
        };
        out.push((name, v.clone()));
    }
    Ok(out)
}

fn string_param(
    proc: &str,
    p: Option<&(String, Value)>,
    what: &str,
    optional: bool,
) -> Result<Option<String>, CallError> {
    match p {
        Some((_, Value::Str(s))) => Ok(Some(s.clone())),
        Some((_, Value::Null)) | None if optional => Ok(None),
        None => Err((
            201,
            format!("Procedure or function '{proc}' expects parameter '{what}', which was not supplied."),
        )),
        Some(_) => Err((
            214,
            format!("Procedure expects parameter '{what}' of type 'ntext/nchar/nvarchar'."),
        )),
    }
}

/// A malformed call: the SQL Server message number and text it gets.
pub type CallError = (u32, String);

/// One RPC call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The procedure: its name, or `#N` for a ProcID without one of ours.
    pub proc_name: String,
    /// Parameters: name (may be empty) and value.
    pub params: Vec<(String, Value)>,
}

impl Call {
    /// What the call asks for (by name or ProcID).
    pub fn kind(&self) -> Kind {
        let n = self.proc_name.to_ascii_lowercase();
        let n = n
            .trim_start_matches("master.")
            .trim_start_matches("sys.")
            .trim_start_matches("dbo.")
            .trim_start_matches('.');
        match n.trim_start_matches('[').trim_end_matches(']') {
            "sp_executesql" => Kind::ExecuteSql,
            "sp_prepexec" => Kind::PrepExec,
            "sp_prepare" => Kind::Prepare,
            "sp_execute" => Kind::Execute,
            "sp_unprepare" => Kind::Unprepare,
            _ => Kind::Other,
        }
    }

    /// Whether this calls `sp_executesql`.
    pub fn is_executesql(&self) -> bool {
        self.kind() == Kind::ExecuteSql
    }

    /// For `sp_prepexec` / `sp_prepare`: the declaration's names, the statement,
    /// and (prepexec) the values bound.
    pub fn prepare(&self) -> Result<(Vec<String>, Bound), CallError> {
        let proc = if self.kind() == Kind::Prepare {
            "sp_prepare"
        } else {
            "sp_prepexec"
        };
        let decl = string_param(proc, self.params.get(1), "@params", true)?
            .map(|d| declared_names(&d))
            .unwrap_or_default();
        let stmt = string_param(proc, self.params.get(2), "@stmt", false)?.unwrap_or_default();
        let rest = self.params.get(3..).unwrap_or(&[]);
        let values = if self.kind() == Kind::Prepare {
            Vec::new()
        } else {
            bind(proc, &decl, rest)?
        };
        Ok((decl, (stmt, values)))
    }

    /// For `sp_execute` / `sp_unprepare`: the handle, and the values after it.
    pub fn handle(&self) -> Result<(i64, &Params), CallError> {
        match self.params.first() {
            Some((_, Value::Int(h))) => Ok((*h, &self.params[1..])),
            _ => Err((
                8179,
                "Could not find prepared statement with handle 0.".into(),
            )),
        }
    }

    /// Binds `values` to a prepared statement's declaration.
    pub fn bind_prepared(
        decl: &[String],
        values: &[(String, Value)],
    ) -> Result<Vec<(String, Value)>, CallError> {
        bind("sp_execute", decl, values)
    }

    /// For `sp_executesql`: the statement and its parameters by name (`@x`).
    /// Unnamed values take the names of the declaration in order. `Err` holds the
    /// SQL Server message a malformed call gets (Msg 214 and friends).
    pub fn executesql(&self) -> Result<(String, Vec<(String, Value)>), CallError> {
        let mut it = self.params.iter();
        let stmt = match it.next() {
            Some((_, Value::Str(s))) => s.clone(),
            Some(_) => {
                return Err((214, "Procedure expects parameter '@statement' of type 'ntext/nchar/nvarchar'.".into()))
            }
            None => {
                return Err((201, "Procedure or function 'sp_executesql' expects parameter '@statement', which was not supplied.".into()))
            }
        };
        let decl = match it.next() {
            Some((_, Value::Str(s))) => declared_names(s),
            Some((_, Value::Null)) | None => Vec::new(),
            Some(_) => {
                return Err((
                    214,
                    "Procedure expects parameter '@params' of type 'ntext/nchar/nvarchar'.".into(),
                ))
            }
        };
        let rest: Vec<(String, Value)> = it.cloned().collect();
        let out = bind("sp_executesql", &decl, &rest)?;
        Ok((stmt, out))
    }
}

/// The parameter names of a `@params` declaration (`@a int, @b nvarchar(10) OUTPUT`).
pub fn declared_names(decl: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0i32;
    let mut part = String::new();
    let mut flush = |p: &mut String| {
        if let Some(n) = p.split_whitespace().next() {
            if n.starts_with('@') {
                names.push(n.to_string());
            }
        }
        p.clear();
    };
    for c in decl.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                flush(&mut part);
                continue;
            }
            _ => {}
        }
        part.push(c);
    }
    flush(&mut part);
    names
}

/// Parse an RPC request (one call; a batch of several runs them in order).
pub fn parse(data: &[u8], tds72: bool) -> Result<Vec<Call>, Malformed> {
    let mut b = Bytes::new(data);
    if tds72 {
        skip_all_headers(&mut b)?;
    }
    let mut calls = Vec::new();
    while b.remaining() > 0 {
        let n = b.u16("RPC name length")?;
        let proc_name = if n == 0xFFFF {
            match b.u16("ProcID")? {
                SP_EXECUTESQL => "sp_executesql".to_string(),
                11 => "sp_prepare".to_string(),
                12 => "sp_execute".to_string(),
                13 => "sp_prepexec".to_string(),
                15 => "sp_unprepare".to_string(),
                id => format!("#{id}"),
            }
        } else {
            b.ucs2(usize::from(n), "RPC name")?
        };
        let _flags = b.u16("RPC option flags")?;
        let mut params = Vec::new();
        while b.remaining() > 0 {
            let peek = b.take(1, "")?[0];
            // A batch separator ends this call (0x80 before TDS 7.2, 0xFF after).
            if peek == 0x80 || peek == 0xFF {
                break;
            }
            let name_len = peek;
            let name = b.ucs2(usize::from(name_len), "parameter name")?;
            let _status = b.u8("parameter status")?;
            let v = param_value(&mut b)?;
            params.push((name, v));
        }
        calls.push(Call { proc_name, params });
    }
    Ok(calls)
}

/// Skip ALL_HEADERS (§2.2.5.3), which TDS 7.2+ requests start with.
pub fn skip_all_headers(b: &mut Bytes<'_>) -> Result<(), Malformed> {
    let total = b.u32("ALL_HEADERS length")? as usize;
    if total < 4 {
        return Err(Malformed(format!("ALL_HEADERS length {total}")));
    }
    b.take(total - 4, "ALL_HEADERS")?;
    Ok(())
}

fn int_value(raw: &[u8]) -> Value {
    let mut a = [0u8; 8];
    a[..raw.len()].copy_from_slice(raw);
    let v = i64::from_le_bytes(a);
    // Sign-extend the narrower signed types; tinyint is unsigned.
    let v = match raw.len() {
        2 => i64::from(v as i16),
        4 => i64::from(v as i32),
        _ => v,
    };
    Value::Int(v)
}

/// TYPE_INFO then the value, for the types drivers send for strings and integers.
fn param_value(b: &mut Bytes<'_>) -> Result<Value, Malformed> {
    let t = b.u8("parameter type")?;
    match t {
        // INT1, INT2, INT4, INT8, BIT (fixed length).
        0x30 | 0x34 | 0x38 | 0x7F | 0x32 => {
            let n = match t {
                0x30 | 0x32 => 1,
                0x34 => 2,
                0x38 => 4,
                _ => 8,
            };
            Ok(int_value(b.take(n, "parameter value")?))
        }
        // INTN, BITN.
        0x26 | 0x68 => {
            let _max = b.u8("parameter size")?;
            let n = usize::from(b.u8("parameter length")?);
            if n == 0 {
                return Ok(Value::Null);
            }
            if ![1, 2, 4, 8].contains(&n) {
                return Err(Malformed(format!("integer parameter of {n} bytes")));
            }
            Ok(int_value(b.take(n, "parameter value")?))
        }
        // DECIMALN / NUMERICN: an integer when its scale is 0 and it fits.
        0x6A | 0x6C => {
            let _max = b.u8("parameter size")?;
            let _prec = b.u8("precision")?;
            let scale = b.u8("scale")?;
            let n = usize::from(b.u8("parameter length")?);
            if n == 0 {
                return Ok(Value::Null);
            }
            let raw = b.take(n, "parameter value")?;
            if n > 17 {
                return Err(Malformed("numeric parameter longer than 17 bytes".into()));
            }
            let mut a = [0u8; 16];
            a[..n - 1].copy_from_slice(&raw[1..]);
            let v = u128::from_le_bytes(a);
            let v = i64::try_from(v / 10u128.pow(u32::from(scale.min(38))))
                .map_err(|_| Malformed("numeric parameter out of range".into()))?;
            Ok(Value::Int(if raw[0] == 0 { -v } else { v }))
        }
        // NVARCHAR, NCHAR, VARCHAR, CHAR (the "big" forms).
        0xE7 | 0xEF | 0xA7 | 0xAF => {
            let max = b.u16("parameter size")?;
            b.take(5, "collation")?;
            let wide = matches!(t, 0xE7 | 0xEF);
            let raw = if max == 0xFFFF {
                match plp(b)? {
                    Some(r) => r,
                    None => return Ok(Value::Null),
                }
            } else {
                let n = b.u16("parameter length")?;
                if n == 0xFFFF {
                    return Ok(Value::Null);
                }
                b.take(usize::from(n), "parameter value")?.to_vec()
            };
            Ok(Value::Str(if wide {
                crate::wire::ucs2_to_string(&raw)
            } else {
                // Single-byte strings are in the collation's code page (1252 for
                // the default); Latin-1 covers what names and GUIDs use.
                raw.iter().map(|&c| char::from(c)).collect()
            }))
        }
        // NTEXT, TEXT (ODBC drivers send long statements and strings so):
        // LONGLEN maximum, collation, then LONGLEN length (0xFFFFFFFF: NULL).
        0x63 | 0x23 => {
            let _max = b.u32("parameter size")?;
            b.take(5, "collation")?;
            let n = b.u32("parameter length")?;
            if n == u32::MAX {
                return Ok(Value::Null);
            }
            let raw = b.take(n as usize, "parameter value")?;
            Ok(Value::Str(if t == 0x63 {
                crate::wire::ucs2_to_string(raw)
            } else {
                raw.iter().map(|&c| char::from(c)).collect()
            }))
        }
        other => Err(Malformed(format!(
            "parameter data type {other:#04x} is not supported (send NVARCHAR, VARCHAR, NTEXT, TEXT or an integer type)"
        ))),
    }
}

/// A PLP value (§2.2.5.2.3): `None` for NULL.
fn plp(b: &mut Bytes<'_>) -> Result<Option<Vec<u8>>, Malformed> {
    let total = b.u64("PLP length")?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let n = b.u32("PLP chunk length")? as usize;
        if n == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(b.take(n, "PLP chunk")?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Out;

    fn nvarchar(o: &mut Out, name: &str, v: &str) {
        o.b_varchar(name)
            .u8(0)
            .u8(0xE7)
            .u16(8000)
            .bytes(&crate::token::COLLATION);
        let mut s = Out::default();
        s.ucs2(v);
        o.u16(s.buf.len() as u16).bytes(&s.buf);
    }

    #[test]
    fn executesql_by_id_with_named_and_unnamed_params() {
        let mut o = Out::default();
        o.u32(22).u32(18).u16(2).bytes(&[0; 8]).u32(1); // ALL_HEADERS: a transaction descriptor
        o.u16(0xFFFF).u16(SP_EXECUTESQL).u16(0);
        nvarchar(
            &mut o,
            "",
            "BACKUP DATABASE @db TO VIRTUAL_DEVICE = @device",
        );
        nvarchar(
            &mut o,
            "",
            "@db nvarchar(128), @device nvarchar(4000), @n int",
        );
        nvarchar(&mut o, "@db", "sales");
        nvarchar(&mut o, "", "{6F9619FF-8B86-D011-B42D-00C04FC964FF}");
        o.b_varchar("").u8(0).u8(0x26).u8(4).u8(4).u32(-7i32 as u32);
        let calls = parse(&o.buf, true).unwrap();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].is_executesql());
        let (stmt, params) = calls[0].executesql().unwrap();
        assert!(stmt.starts_with("BACKUP"));
        assert_eq!(
            params,
            vec![
                ("@db".into(), Value::Str("sales".into())),
                (
                    "@device".into(),
                    Value::Str("{6F9619FF-8B86-D011-B42D-00C04FC964FF}".into())
                ),
                ("@n".into(), Value::Int(-7)),
            ]
        );
        for n in 0..o.buf.len() {
            let _ = parse(&o.buf[..n], true);
        }
    }

    #[test]
    fn prepexec_execute_and_unprepare() {
        let mut o = Out::default();
        o.u32(22).u32(18).u16(2).bytes(&[0; 8]).u32(1);
        o.u16(0xFFFF).u16(13).u16(0);
        o.b_varchar("@handle").u8(1).u8(0x26).u8(4).u8(0); // int OUTPUT, NULL
        nvarchar(&mut o, "", "@P1 nvarchar(40)");
        nvarchar(&mut o, "", "BACKUP DATABASE [a] TO VIRTUAL_DEVICE = @P1");
        nvarchar(&mut o, "", "dev1");
        let calls = parse(&o.buf, true).unwrap();
        assert_eq!(calls[0].kind(), Kind::PrepExec);
        let (decl, (stmt, values)) = calls[0].prepare().unwrap();
        assert_eq!(decl, vec!["@P1"]);
        assert!(stmt.ends_with("= @P1"));
        assert_eq!(values, vec![("@P1".into(), Value::Str("dev1".into()))]);

        let mut o = Out::default();
        o.u32(22).u32(18).u16(2).bytes(&[0; 8]).u32(1);
        o.u16(0xFFFF).u16(12).u16(0);
        o.b_varchar("").u8(0).u8(0x26).u8(4).u8(4).u32(7);
        nvarchar(&mut o, "", "dev2");
        o.u8(0xFF); // the next call of the batch
        o.u16(0xFFFF).u16(15).u16(0);
        o.b_varchar("").u8(0).u8(0x26).u8(4).u8(4).u32(7);
        let calls = parse(&o.buf, true).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].kind(), Kind::Execute);
        let (h, rest) = calls[0].handle().unwrap();
        assert_eq!(h, 7);
        assert_eq!(
            Call::bind_prepared(&decl, rest).unwrap(),
            vec![("@P1".into(), Value::Str("dev2".into()))]
        );
        assert_eq!(calls[1].kind(), Kind::Unprepare);
        assert_eq!(calls[1].handle().unwrap().0, 7);
        for n in 0..o.buf.len() {
            let _ = parse(&o.buf[..n], true);
        }
    }

    #[test]
    fn ntext_parameters() {
        let mut o = Out::default();
        o.u16(0xFFFF).u16(SP_EXECUTESQL).u16(0);
        let mut v = Out::default();
        v.ucs2("SELECT 1");
        o.b_varchar("")
            .u8(0)
            .u8(0x63)
            .u32(0x7FFF_FFFF)
            .bytes(&crate::token::COLLATION)
            .u32(v.buf.len() as u32)
            .bytes(&v.buf);
        let calls = parse(&o.buf, false).unwrap();
        assert_eq!(calls[0].executesql().unwrap().0, "SELECT 1");
    }

    #[test]
    fn declarations() {
        assert_eq!(
            declared_names("@a int, @b numeric(10, 2) OUTPUT,@c nvarchar(max)"),
            vec!["@a", "@b", "@c"]
        );
    }
}
