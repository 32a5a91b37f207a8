//! TDS packets (MS-TDS §2.2.3: the 8-byte header) and bounds-checked readers and
//! writers for the little-endian fields inside a message.
//!
//! Everything here reads bytes from an untrusted peer: every length is checked
//! against what is there before it is used, and a message is bounded
//! ([`MAX_MESSAGE`]) so a client cannot make the endpoint buffer without limit.

use std::io::{self, Read, Write};

/// Packet types (MS-TDS §2.2.3.1.1).
pub mod ptype {
    /// SQL batch.
    pub const SQL_BATCH: u8 = 1;
    /// Pre-TDS7 login (refused).
    pub const PRE7_LOGIN: u8 = 2;
    /// Remote procedure call.
    pub const RPC: u8 = 3;
    /// Tabular result (server to client).
    pub const REPLY: u8 = 4;
    /// Attention (cancel).
    pub const ATTENTION: u8 = 6;
    /// Bulk load data.
    pub const BULK: u8 = 7;
    /// Federated authentication token.
    pub const FEDAUTH: u8 = 8;
    /// Transaction manager request.
    pub const TRANSACTION: u8 = 14;
    /// LOGIN7.
    pub const LOGIN7: u8 = 16;
    /// SSPI.
    pub const SSPI: u8 = 17;
    /// PRELOGIN.
    pub const PRELOGIN: u8 = 18;
}

/// Status bit: end of message.
pub const STATUS_EOM: u8 = 0x01;
/// Status bit: ignore this event (a client cancelling a message it was sending).
pub const STATUS_IGNORE: u8 = 0x02;
/// Size of a packet header.
pub const HEADER: usize = 8;
/// Largest message the endpoint accepts (a batch, an RPC call): 16 MiB. A larger
/// one closes the connection (SQL Server's own limit for a batch is far larger,
/// but nothing the engine runs needs more).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Packet sizes the endpoint negotiates (MS-TDS: 512 to 32767).
pub const MIN_PACKET: usize = 512;
/// Largest packet size.
pub const MAX_PACKET: usize = 32767;

/// A whole message: its packet type and the payload of all its packets.
#[derive(Debug)]
pub struct Message {
    /// Packet type.
    pub ptype: u8,
    /// Status of the last packet (reset-connection bits etc.).
    pub status: u8,
    /// The payload.
    pub data: Vec<u8>,
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection closed between messages.
    #[error("the client closed the connection")]
    Closed,
    /// An I/O error (including a read timeout).
    #[error("reading from the client: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not TDS.
    #[error("malformed TDS packet: {0}")]
    Malformed(String),
}

/// Read one message (packets up to the one with EOM). A packet with the IGNORE
/// bit discards the message so far (MS-TDS §2.2.3.1.2).
pub fn read_message(r: &mut impl Read) -> Result<Message, ReadError> {
    let mut data = Vec::new();
    let mut first: Option<u8> = None;
    loop {
        let mut h = [0u8; HEADER];
        match read_full(r, &mut h) {
            Ok(0) if first.is_none() && data.is_empty() => return Err(ReadError::Closed),
            Ok(n) if n < HEADER => {
                return Err(ReadError::Malformed(
                    "the connection closed inside a packet header".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
        let (pt, status) = (h[0], h[1]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if len < HEADER {
            return Err(ReadError::Malformed(format!(
                "packet length {len} is shorter than its header"
            )));
        }
        if let Some(f) = first {
            if f != pt {
                return Err(ReadError::Malformed(format!(
                    "packet type {pt} inside a message of type {f}"
                )));
            }
        }
        first = Some(pt);
        let body = len - HEADER;
        if data.len() + body > MAX_MESSAGE {
            return Err(ReadError::Malformed(format!(
                "a message longer than {MAX_MESSAGE} bytes"
            )));
        }
        let start = data.len();
        data.resize(start + body, 0);
        if read_full(r, &mut data[start..])? < body {
            return Err(ReadError::Malformed(
                "the connection closed inside a packet".into(),
            ));
        }
        if status & STATUS_IGNORE != 0 && status & STATUS_EOM != 0 {
            data.clear();
            first = None;
            continue;
        }
        if status & STATUS_EOM != 0 {
            return Ok(Message {
                ptype: pt,
                status,
                data,
            });
        }
    }
}

/// Read until `buf` is full or end of file; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Write `payload` as one message of type `ptype` in packets of at most
/// `packet_size` bytes.
pub fn write_message(
    w: &mut impl Write,
    ptype: u8,
    payload: &[u8],
    packet_size: usize,
) -> io::Result<()> {
    let room = packet_size.clamp(MIN_PACKET, MAX_PACKET) - HEADER;
    let mut out = Vec::with_capacity(payload.len() + HEADER * (payload.len() / room + 1));
    let mut chunks = payload.chunks(room).peekable();
    let mut id: u8 = 1;
    if chunks.peek().is_none() {
        out.extend_from_slice(&[ptype, STATUS_EOM, 0, HEADER as u8, 0, 0, 1, 0]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = (c.len() + HEADER) as u16;
        out.push(ptype);
        out.push(if last { STATUS_EOM } else { 0 });
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, 0, id, 0]);
        out.extend_from_slice(c);
        id = id.wrapping_add(1);
    }
    w.write_all(&out)?;
    w.flush()
}

/// A cursor over a message's bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A field did not fit in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed request: {0}")]
pub struct Malformed(pub String);

impl<'a> Bytes<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Bytes<'a> {
        Bytes { buf, pos: 0 }
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// The current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// `n` bytes.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if self.remaining() < n {
            return Err(Malformed(format!(
                "{what}: {n} bytes needed, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// A little-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A little-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// `chars` UTF-16LE code units as a string (unpaired surrogates replaced).
    pub fn ucs2(&mut self, chars: usize, what: &str) -> Result<String, Malformed> {
        let b = self.take(chars * 2, what)?;
        Ok(ucs2_to_string(b))
    }
    /// A B_VARCHAR: one byte of length in characters, then UTF-16LE.
    pub fn b_varchar(&mut self, what: &str) -> Result<String, Malformed> {
        let n = self.u8(what)?;
        self.ucs2(usize::from(n), what)
    }
    /// A US_VARCHAR: two bytes of length in characters, then UTF-16LE.
    pub fn us_varchar(&mut self, what: &str) -> Result<String, Malformed> {
        let n = self.u16(what)?;
        self.ucs2(usize::from(n), what)
    }
}

/// UTF-16LE bytes to a string.
pub fn ucs2_to_string(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Appends TDS fields to a buffer.
#[derive(Debug, Default)]
pub struct Out {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Out {
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// UTF-16LE without a length.
    pub fn ucs2(&mut self, s: &str) -> &mut Self {
        for u in s.encode_utf16() {
            self.buf.extend_from_slice(&u.to_le_bytes());
        }
        self
    }
    /// B_VARCHAR (at most 255 UTF-16 units; longer is cut).
    pub fn b_varchar(&mut self, s: &str) -> &mut Self {
        let u: Vec<u16> = s.encode_utf16().take(255).collect();
        self.buf.push(u.len() as u8);
        for c in u {
            self.buf.extend_from_slice(&c.to_le_bytes());
        }
        self
    }
    /// US_VARCHAR (at most 65535 UTF-16 units; longer is cut).
    pub fn us_varchar(&mut self, s: &str) -> &mut Self {
        let u: Vec<u16> = s.encode_utf16().take(65535).collect();
        self.u16(u.len() as u16);
        for c in u {
            self.buf.extend_from_slice(&c.to_le_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_over_packets() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        write_message(&mut wire, ptype::REPLY, &payload, 512).unwrap();
        assert_eq!(wire.len(), 3000 + 6 * HEADER);
        let m = read_message(&mut wire.as_slice()).unwrap();
        assert_eq!(m.ptype, ptype::REPLY);
        assert_eq!(m.data, payload);
    }

    #[test]
    fn truncated_and_bad_packets_are_errors() {
        assert!(matches!(read_message(&mut &[][..]), Err(ReadError::Closed)));
        assert!(matches!(
            read_message(&mut &[1u8, 1, 0, 4, 0, 0, 1, 0][..]),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read_message(&mut &[1u8, 1, 0, 20, 0, 0, 1, 0, 1][..]),
            Err(ReadError::Malformed(_))
        ));
        let mut b = Bytes::new(&[1, 2]);
        assert!(b.u32("x").is_err());
        assert_eq!(b.u16("x").unwrap(), 0x0201);
    }
}
