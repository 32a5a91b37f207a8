//! PRELOGIN (MS-TDS §2.2.6.5) and LOGIN7 (§2.2.6.4).

use crate::wire::{Bytes, Malformed, Out};

/// PRELOGIN option tokens.
pub mod opt {
    /// VERSION.
    pub const VERSION: u8 = 0;
    /// ENCRYPTION.
    pub const ENCRYPTION: u8 = 1;
    /// INSTOPT.
    pub const INSTOPT: u8 = 2;
    /// THREADID.
    pub const THREADID: u8 = 3;
    /// MARS.
    pub const MARS: u8 = 4;
    /// Terminator.
    pub const TERMINATOR: u8 = 0xFF;
}

/// ENCRYPTION values.
pub mod enc {
    /// Encryption available, off (only the login encrypted).
    pub const OFF: u8 = 0;
    /// Encryption on.
    pub const ON: u8 = 1;
    /// Encryption not supported.
    pub const NOT_SUP: u8 = 2;
    /// Encryption required.
    pub const REQ: u8 = 3;
}

/// What a client's PRELOGIN said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prelogin {
    /// ENCRYPTION, if sent.
    pub encryption: Option<u8>,
    /// MARS requested.
    pub mars: bool,
}

/// Parse a client's PRELOGIN: the option table, then the data it points into.
pub fn parse_prelogin(data: &[u8]) -> Result<Prelogin, Malformed> {
    let mut b = Bytes::new(data);
    let mut p = Prelogin::default();
    for _ in 0..64 {
        let t = b.u8("PRELOGIN option")?;
        if t == opt::TERMINATOR {
            return Ok(p);
        }
        let off = b.take(2, "PRELOGIN offset")?;
        let len = b.take(2, "PRELOGIN length")?;
        let (off, len) = (
            usize::from(u16::from_be_bytes([off[0], off[1]])),
            usize::from(u16::from_be_bytes([len[0], len[1]])),
        );
        let Some(v) = data.get(off..off + len) else {
            return Err(Malformed(format!(
                "PRELOGIN option {t} at {off}+{len} is outside the {} bytes",
                data.len()
            )));
        };
        match t {
            opt::ENCRYPTION if !v.is_empty() => p.encryption = Some(v[0]),
            opt::MARS if !v.is_empty() => p.mars = v[0] != 0,
            _ => {}
        }
    }
    Err(Malformed("PRELOGIN has no terminator".into()))
}

/// The server's PRELOGIN answer: VERSION, ENCRYPTION, INSTOPT, THREADID, MARS off.
pub fn prelogin_reply(version: (u8, u8, u16), encryption: u8) -> Vec<u8> {
    let opts: [(u8, Vec<u8>); 5] = [
        (
            opt::VERSION,
            vec![
                version.0,
                version.1,
                (version.2 >> 8) as u8,
                version.2 as u8,
                0,
                0,
            ],
        ),
        (opt::ENCRYPTION, vec![encryption]),
        (opt::INSTOPT, vec![0]),
        (opt::THREADID, vec![]),
        (opt::MARS, vec![0]),
    ];
    let table = opts.len() * 5 + 1;
    let mut head = Vec::new();
    let mut body = Vec::new();
    for (t, v) in &opts {
        head.push(*t);
        head.extend_from_slice(&((table + body.len()) as u16).to_be_bytes());
        head.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    head.push(opt::TERMINATOR);
    head.extend_from_slice(&body);
    head
}

/// What LOGIN7 carries that the endpoint uses. Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct Login7 {
    /// TDS version the client speaks (as sent, little-endian value).
    pub tds_version: u32,
    /// Requested packet size (0: the server's default).
    pub packet_size: u32,
    /// Integrated (SSPI) authentication requested.
    pub integrated: bool,
    /// Host name.
    pub hostname: String,
    /// User name.
    pub user: String,
    /// Password (deobfuscated).
    pub password: String,
    /// Application name.
    pub app: String,
    /// Language.
    pub language: String,
    /// Initial database.
    pub database: String,
}

impl std::fmt::Debug for Login7 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login7")
            .field("tds_version", &format_args!("{:#010x}", self.tds_version))
            .field("packet_size", &self.packet_size)
            .field("integrated", &self.integrated)
            .field("hostname", &self.hostname)
            .field("user", &self.user)
            .field("password", &"<not shown>")
            .field("app", &self.app)
            .field("database", &self.database)
            .finish()
    }
}

/// Parse LOGIN7: the fixed part, then strings by (offset, length in characters).
pub fn parse_login7(data: &[u8]) -> Result<Login7, Malformed> {
    let mut b = Bytes::new(data);
    let total = b.u32("LOGIN7 length")? as usize;
    if total > data.len() || total < 94 {
        return Err(Malformed(format!(
            "LOGIN7 says {total} bytes; the message has {}",
            data.len()
        )));
    }
    let tds_version = b.u32("TDSVersion")?;
    let packet_size = b.u32("PacketSize")?;
    b.take(12, "ClientProgVer/ClientPID/ConnectionID")?;
    let _flags1 = b.u8("OptionFlags1")?;
    let flags2 = b.u8("OptionFlags2")?;
    b.take(10, "TypeFlags/OptionFlags3/ClientTimeZone/ClientLCID")?;
    let data = &data[..total];
    let mut field = |what: &str, password: bool| -> Result<String, Malformed> {
        let off = usize::from(b.u16(what)?);
        let chars = usize::from(b.u16(what)?);
        let Some(raw) = data.get(off..off + chars * 2) else {
            return Err(Malformed(format!(
                "LOGIN7 {what} at {off}+{} is outside the {} bytes",
                chars * 2,
                data.len()
            )));
        };
        if password {
            // §2.2.6.4: each byte had its nibbles swapped, then was XORed with 0xA5.
            let plain: Vec<u8> = raw.iter().map(|&x| (x ^ 0xA5).rotate_left(4)).collect();
            Ok(crate::wire::ucs2_to_string(&plain))
        } else {
            Ok(crate::wire::ucs2_to_string(raw))
        }
    };
    let hostname = field("HostName", false)?;
    let user = field("UserName", false)?;
    let password = field("Password", true)?;
    let app = field("AppName", false)?;
    let _server = field("ServerName", false)?;
    let _ext = field("Extension", false);
    let _lib = field("CltIntName", false)?;
    let language = field("Language", false)?;
    let database = field("Database", false)?;
    Ok(Login7 {
        tds_version,
        packet_size,
        integrated: flags2 & 0x80 != 0,
        hostname,
        user,
        password,
        app,
        language,
        database,
    })
}

/// Build a LOGIN7 (for tests and the fuzz harness: the endpoint's own client side).
pub fn build_login7(user: &str, password: &str, database: &str, tds_version: u32) -> Vec<u8> {
    let strings: [(&str, bool); 9] = [
        ("testhost", false),
        (user, false),
        (password, true),
        ("openvdi-test", false),
        ("", false),
        ("", false), // Extension (unused)
        ("openvdi", false),
        ("", false),
        (database, false),
    ];
    let mut fixed = Out::default();
    fixed
        .u32(0)
        .u32(tds_version)
        .u32(4096)
        .u32(0)
        .u32(std::process::id())
        .u32(0)
        .u8(0xE0)
        .u8(0x03)
        .u8(0)
        .u8(0)
        .u32(0)
        .u32(0x0409);
    let mut var = Out::default();
    let base = 94usize;
    for (s, pw) in strings {
        let mut enc = Out::default();
        enc.ucs2(s);
        if pw {
            for x in &mut enc.buf {
                *x = x.rotate_left(4) ^ 0xA5;
            }
        }
        fixed
            .u16((base + var.buf.len()) as u16)
            .u16((enc.buf.len() / 2) as u16);
        var.bytes(&enc.buf);
    }
    fixed.bytes(&[0; 6]); // ClientID
    for _ in 0..3 {
        fixed.u16((base + var.buf.len()) as u16).u16(0); // SSPI, AtchDBFile, ChangePassword
    }
    fixed.u32(0); // cbSSPILong
    assert_eq!(fixed.buf.len(), base);
    fixed.bytes(&var.buf);
    let len = fixed.buf.len() as u32;
    fixed.buf[..4].copy_from_slice(&len.to_le_bytes());
    fixed.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login7_round_trips_and_hides_the_password() {
        let raw = build_login7("sa", "pä$$wörd", "master", 0x7400_0004);
        let l = parse_login7(&raw).unwrap();
        assert_eq!(l.user, "sa");
        assert_eq!(l.password, "pä$$wörd");
        assert_eq!(l.database, "master");
        assert_eq!(l.tds_version, 0x7400_0004);
        assert!(!format!("{l:?}").contains("wörd"));
        // Truncations are errors, never panics.
        for n in 0..raw.len() {
            let _ = parse_login7(&raw[..n]);
        }
    }

    #[test]
    fn prelogin_round_trip() {
        let r = prelogin_reply((16, 0, 1000), enc::NOT_SUP);
        let p = parse_prelogin(&r).unwrap();
        assert_eq!(p.encryption, Some(enc::NOT_SUP));
        assert!(parse_prelogin(&[0, 0, 50, 0, 6, 0xFF]).is_err());
        assert!(parse_prelogin(&[]).is_err());
    }
}
