//! # openvdi-mtf — Microsoft Tape Format as SQL Server writes it
//!
//! Every SQL Server backup — to disk, tape, pipe or virtual device — is an MTF 1.00a
//! stream (`shared/docs/mtf-and-bak.md`): descriptor blocks on 1 KiB format logical
//! blocks, 512-byte soft filemarks, streams inside blocks, every block and stream
//! header protected by an XOR checksum. This crate holds the format-level code that
//! does not depend on what the stream carries:
//!
//! * [`family`], [`family_of_file`], [`order_stripes`]: the media-family facts of a
//!   stream's TAPE block (`RAID` stream: media-set GUID, family count and number), to
//!   order stripe files and refuse a missing family or a foreign media set;
//! * [`Walker`]: a streaming block walk — every descriptor block and stream header
//!   checksum, block alignment, and a clean end (ESET then a soft filemark) — fed
//!   through `std::io::Write` as the stream goes by, so gigabytes of page data are
//!   skipped, never buffered. Corrupt input is an error with its offset, never a panic.
//!
//! * [`sql`]: SQL Server's own metadata inside the stream — the SCIN, SFGI and SFIN
//!   records of `MQCI` and the log range of each `MSTL` block — one tested reading
//!   for the engine and the tools.
//!
//! The engine's family writer and reader (its chunk tables) live in
//! `openvdi-engine` (`mtf_io.rs`).
//!
//! ```
//! use std::io::Write;
//! let mut w = openvdi_mtf::Walker::new();
//! w.write_all(b"not a tape").unwrap();
//! assert!(w.finish().is_err());
//! ```

#![forbid(unsafe_code)]

pub mod sql;

use std::io::Read;
use std::path::Path;

/// Media family facts from the TAPE block's `RAID` stream (`mtf-and-bak.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Media set GUID, hex: identical in every stripe of one backup.
    pub media_set: String,
    pub count: u32,
    /// 1-based.
    pub number: u32,
}

/// Reads the family of a native stream from its first 1024 bytes; `None` when the
/// stream does not start with a TAPE block carrying a RAID stream.
pub fn family(head: &[u8]) -> Option<Family> {
    if head.len() < 52 || &head[0..4] != b"TAPE" {
        return None;
    }
    let first = u16::from_le_bytes([head[8], head[9]]) as usize;
    let h = head.get(first..first + 22)?;
    if &h[0..4] != b"RAID" {
        return None;
    }
    let len = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let body = head.get(first + 22..first + 22 + 28)?;
    if len < 28 {
        return None;
    }
    let media_set = body[..16].iter().map(|b| format!("{b:02x}")).collect();
    let count = u16::from_le_bytes([body[20], body[21]]) as u32;
    let number = u32::from_le_bytes(body[24..28].try_into().ok()?);
    Some(Family {
        media_set,
        count,
        number,
    })
}

/// The family of a `.bak` file.
pub fn family_of_file(path: &Path) -> std::io::Result<Option<Family>> {
    let mut head = vec![0u8; 1024];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    Ok(family(&head))
}

/// Orders the stripe files of one backup by family number and checks they form one
/// complete media set. Files without a RAID stream keep their order.
pub fn order_stripes(files: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, String> {
    let mut fams = Vec::new();
    for f in files {
        let fam = family_of_file(f).map_err(|e| format!("{}: {e}", f.display()))?;
        fams.push((f.clone(), fam));
    }
    if fams.iter().all(|(_, f)| f.is_none()) {
        return Ok(files.to_vec());
    }
    let first = fams
        .iter()
        .find_map(|(_, f)| f.clone())
        .expect("some family");
    for (p, f) in &fams {
        match f {
            None => {
                return Err(format!(
                    "{}: not a SQL Server backup medium (no TAPE/RAID header)",
                    p.display()
                ))
            }
            Some(f) if f.media_set != first.media_set => {
                return Err(format!(
                    "{}: belongs to media set {}, not {} (stripes of different backups)",
                    p.display(),
                    f.media_set,
                    first.media_set
                ))
            }
            Some(_) => {}
        }
    }
    if fams.len() as u32 != first.count {
        return Err(format!(
            "the media set has {} families but {} file(s) were given",
            first.count,
            fams.len()
        ));
    }
    fams.sort_by_key(|(_, f)| f.as_ref().map(|f| f.number));
    for (i, (p, f)) in fams.iter().enumerate() {
        if f.as_ref().map(|f| f.number) != Some(i as u32 + 1) {
            return Err(format!(
                "{}: media family {} given twice or missing",
                p.display(),
                i + 1
            ));
        }
    }
    Ok(fams.into_iter().map(|(p, _)| p).collect())
}

/// Descriptor blocks start on 512-byte boundaries (soft filemarks are 512 bytes; FLBs
/// are multiples of 512).
const ALIGN: u64 = 512;
const DBLK_LEN: usize = BLOCK_HEADER_LEN;
const STREAM_LEN: usize = STREAM_HEADER_LEN;

fn xor_words(b: &[u8]) -> u16 {
    checksum(b)
}

fn is_tag(t: &[u8]) -> bool {
    t.iter()
        .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Block,
    Stream,
}

/// Streaming MTF walker: feed the native stream through `Write`, then `finish`.
#[derive(Debug)]
pub struct Walker {
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]`.
    offset: u64,
    skip: u64,
    state: State,
    blocks: u64,
    streams: u64,
    last_tag: [u8; 4],
    /// An end-of-set block was seen (a complete backup set ends with ESET, then a
    /// soft filemark).
    eset: bool,
    /// Soft filemark block size in bytes, from the TAPE block (@64, in 512-byte
    /// units: 1 in most SQL Server files, 8 in some written by SQL Server 2012).
    sfmb_len: u64,
    error: Option<String>,
}

/// Offset of the TAPE block's soft-filemark block size (u16, 512-byte units).
pub const TAPE_SFMB_SIZE_AT: usize = 64;
/// The largest soft-filemark block size accepted: 64 KiB (128 units). Anything
/// larger is damage, not a format.
pub const MAX_SFMB_UNITS: u16 = 128;

/// The soft filemark block size in bytes that a TAPE block declares (0 is taken as 1
/// unit, as the format's default), or an error for an impossible value.
pub fn tape_sfmb_len(tape: &[u8]) -> Result<u64, String> {
    let b = tape
        .get(TAPE_SFMB_SIZE_AT..TAPE_SFMB_SIZE_AT + 2)
        .ok_or_else(|| "the TAPE block is too short".to_string())?;
    let units = u16::from_le_bytes([b[0], b[1]]);
    if units > MAX_SFMB_UNITS {
        return Err(format!(
            "the TAPE block declares a soft filemark block size of {units} × 512 bytes"
        ));
    }
    Ok(u64::from(units.max(1)) * 512)
}

/// TAPE block: offset of the password encryption algorithm (u16; MTF 1.00a,
/// `mtf-and-bak.md`).
pub const TAPE_PASSWORD_ALGORITHM_AT: usize = 62;
/// TAPE block: offset of the media password's tape address (u16 size, u16 offset
/// from the block's start).
pub const TAPE_PASSWORD_AT: usize = 76;
/// SSET block: offset of the data set password's encryption algorithm (u16).
pub const SSET_PASSWORD_ALGORITHM_AT: usize = 56;
/// SSET block: offset of the data set password's tape address.
pub const SSET_PASSWORD_AT: usize = 72;

/// A password field of a TAPE (media password) or SSET (backup set password) block:
/// the algorithm the writer names and the bytes its tape address points at.
///
/// MTF defines the fields but neither the algorithms' values (0 is "none") nor how
/// a writer derives the stored bytes from the password; SQL Server's choice is
/// undocumented. A field counts as set when either the algorithm or the size is
/// non-zero (every unprotected fixture has both zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordField {
    pub algorithm: u16,
    /// The stored bytes; `None` when the tape address points outside the block.
    pub data: Option<Vec<u8>>,
}

/// The password field of a block whose fixed part is `spec` (the bytes after the
/// 52-byte common header, up to the first stream), with the algorithm at block
/// offset `alg_at` and the tape address at `addr_at`. `None` when the block is not
/// password-protected (or too short to say so). Never panics, whatever `spec` holds.
pub fn password_field(spec: &[u8], alg_at: usize, addr_at: usize) -> Option<PasswordField> {
    let u16_at = |k: usize| -> u16 {
        k.checked_sub(BLOCK_HEADER_LEN)
            .and_then(|j| Some(u16::from_le_bytes([*spec.get(j)?, *spec.get(j + 1)?])))
            .unwrap_or(0)
    };
    let algorithm = u16_at(alg_at);
    let (len, off) = (
        usize::from(u16_at(addr_at)),
        usize::from(u16_at(addr_at + 2)),
    );
    if algorithm == 0 && len == 0 {
        return None;
    }
    let data = if len == 0 {
        Some(Vec::new())
    } else {
        off.checked_sub(BLOCK_HEADER_LEN)
            .and_then(|o| spec.get(o..o.checked_add(len)?))
            .map(<[u8]>::to_vec)
    };
    Some(PasswordField { algorithm, data })
}

/// What a clean walk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkSummary {
    pub blocks: u64,
    pub streams: u64,
    pub bytes: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Walker::new()
    }
}

impl Walker {
    pub fn new() -> Walker {
        Walker {
            buf: Vec::new(),
            offset: 0,
            skip: 0,
            state: State::Block,
            blocks: 0,
            streams: 0,
            last_tag: [0; 4],
            eset: false,
            sfmb_len: SFMB_LEN,
            error: None,
        }
    }

    fn fail(&mut self, what: String) {
        if self.error.is_none() {
            self.error = Some(what);
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.offset += n as u64;
    }

    fn step(&mut self) {
        while self.error.is_none() {
            if self.skip > 0 {
                let n = (self.skip.min(self.buf.len() as u64)) as usize;
                self.consume(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return;
                }
            }
            match self.state {
                State::Block => {
                    if self.buf.len() < DBLK_LEN {
                        return;
                    }
                    let at = self.offset;
                    let h = &self.buf[..DBLK_LEN];
                    let tag: [u8; 4] = h[0..4].try_into().expect("4");
                    if !at.is_multiple_of(ALIGN) {
                        return self.fail(format!("block at {at} is not 512-byte aligned"));
                    }
                    if !is_tag(&tag) {
                        return self.fail(format!("no descriptor block at offset {at}"));
                    }
                    if xor_words(&h[..50]) != u16::from_le_bytes([h[50], h[51]]) {
                        return self.fail(format!(
                            "{} block at offset {at}: header checksum mismatch",
                            String::from_utf8_lossy(&tag)
                        ));
                    }
                    if self.blocks == 0 && &tag != b"TAPE" {
                        return self.fail("the stream does not start with a TAPE block".into());
                    }
                    if &tag == b"TAPE" {
                        if self.buf.len() < TAPE_SFMB_SIZE_AT + 2 {
                            return; // wait for the rest of the TAPE header
                        }
                        match tape_sfmb_len(&self.buf) {
                            Ok(n) => self.sfmb_len = n,
                            Err(e) => return self.fail(e),
                        }
                    }
                    self.blocks += 1;
                    self.last_tag = tag;
                    self.eset |= &tag == b"ESET";
                    if &tag == b"SFMB" {
                        self.skip = self.sfmb_len;
                        continue;
                    }
                    let first = u16::from_le_bytes([h[8], h[9]]) as u64;
                    if (first as usize) < DBLK_LEN {
                        return self
                            .fail(format!("block at {at}: bad first-stream offset {first}"));
                    }
                    self.skip = first;
                    self.state = State::Stream;
                }
                State::Stream => {
                    if self.buf.len() < STREAM_LEN {
                        return;
                    }
                    let at = self.offset;
                    let h = &self.buf[..STREAM_LEN];
                    let id: [u8; 4] = h[0..4].try_into().expect("4");
                    if !is_tag(&id) {
                        return self.fail(format!("no stream header at offset {at}"));
                    }
                    if xor_words(&h[..20]) != u16::from_le_bytes([h[20], h[21]]) {
                        return self.fail(format!(
                            "{} stream at offset {at}: header checksum mismatch",
                            String::from_utf8_lossy(&id)
                        ));
                    }
                    let len = u64::from_le_bytes(h[8..16].try_into().expect("8"));
                    self.streams += 1;
                    let end = at + STREAM_LEN as u64 + len;
                    let next = end.div_ceil(4) * 4;
                    self.skip = next - at;
                    if &id == b"SPAD" {
                        self.state = State::Block; // SPAD pads to the next block
                    }
                }
            }
        }
    }

    /// The verdict: a clean end means the stream stopped exactly after a block.
    pub fn finish(mut self) -> Result<WalkSummary, String> {
        self.step();
        if let Some(e) = self.error {
            return Err(e);
        }
        let total = self.offset + self.buf.len() as u64;
        if self.blocks == 0 {
            return Err("empty stream".into());
        }
        if self.state != State::Block || self.skip > 0 || !self.buf.is_empty() {
            return Err(format!(
                "the stream ends inside a {} block (at {total} bytes)",
                String::from_utf8_lossy(&self.last_tag)
            ));
        }
        if !self.eset || &self.last_tag != b"SFMB" {
            return Err(format!(
                "the stream ends after a {} block at {total} bytes, not after a closed \
                 backup set (ESET, then a filemark): it is truncated",
                String::from_utf8_lossy(&self.last_tag)
            ));
        }
        Ok(WalkSummary {
            blocks: self.blocks,
            streams: self.streams,
            bytes: total,
        })
    }
}

impl std::io::Write for Walker {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.error.is_some() {
            return Ok(data.len());
        }
        // Skip without buffering where possible: page data is most of the stream.
        let mut d = data;
        if self.skip > 0 && self.buf.is_empty() {
            let n = self.skip.min(d.len() as u64) as usize;
            self.skip -= n as u64;
            self.offset += n as u64;
            d = &d[n..];
        }
        self.buf.extend_from_slice(d);
        self.step();
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------- encoding

/// Bytes of a block header (`MTF_DB_HDR`).
pub const BLOCK_HEADER_LEN: usize = 52;
/// Bytes of a stream header (`MTF_STREAM_HDR`).
pub const STREAM_HEADER_LEN: usize = 22;
/// SQL Server's format logical block size.
pub const FLB: u64 = 1024;
/// Size of a soft filemark block (SFMB).
pub const SFMB_LEN: u64 = 512;

/// MTF's header checksum: the XOR of the little-endian 16-bit words of `b` (a
/// block header's first 50 bytes, a stream header's first 20).
pub fn checksum(b: &[u8]) -> u16 {
    b.chunks(2).fold(0u16, |a, w| {
        a ^ u16::from_le_bytes([w[0], *w.get(1).unwrap_or(&0)])
    })
}

/// A 52-byte block header (`MTF_DB_HDR`) with its checksum: type, attributes, offset
/// to the first stream, format logical address, control block id, string type (2 =
/// UTF-16LE, as SQL Server writes); OS id 14 (Windows NT).
pub fn block_header(
    ty: &[u8; 4],
    attrs: u32,
    fso: u16,
    fla: u64,
    cbid: u32,
    str_type: u8,
) -> [u8; BLOCK_HEADER_LEN] {
    let mut h = [0u8; BLOCK_HEADER_LEN];
    h[0..4].copy_from_slice(ty);
    h[4..8].copy_from_slice(&attrs.to_le_bytes());
    h[8..10].copy_from_slice(&fso.to_le_bytes());
    h[10] = 14; // Windows NT
    h[11] = 1;
    h[20..28].copy_from_slice(&fla.to_le_bytes());
    h[36..40].copy_from_slice(&cbid.to_le_bytes());
    h[48] = str_type;
    let c = checksum(&h[..50]);
    h[50..52].copy_from_slice(&c.to_le_bytes());
    h
}

/// A 22-byte stream header (`MTF_STREAM_HDR`) with its checksum.
pub fn stream_header(id: &[u8; 4], media_attr: u16, len: u64) -> [u8; STREAM_HEADER_LEN] {
    let mut h = [0u8; STREAM_HEADER_LEN];
    h[0..4].copy_from_slice(id);
    h[6..8].copy_from_slice(&media_attr.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    let c = checksum(&h[..20]);
    h[20..22].copy_from_slice(&c.to_le_bytes());
    h
}

/// MTF's 5-byte packed date: year 14 bits, month 4, day 5, hour 5, minute 6, second 6.
pub fn pack_date(unix: u64) -> [u8; 5] {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = (yoe + era * 400 + i64::from(mo <= 2)) as u64;
    let v: u64 = ((y & 0x3fff) << 26)
        | (mo << 22)
        | (d << 17)
        | ((secs / 3600) << 12)
        | ((secs / 60 % 60) << 6)
        | (secs % 60);
    let b = v.to_be_bytes();
    [b[3], b[4], b[5], b[6], b[7]]
}

/// The inverse of [`pack_date`] (seconds since the epoch; 0 if out of range).
pub fn unpack_date(b: [u8; 5]) -> u64 {
    let v = u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]);
    let (y, mo, d) = (
        (v >> 26) as i64,
        ((v >> 22) & 0xf) as i64,
        ((v >> 17) & 0x1f) as i64,
    );
    let (h, mi, s) = ((v >> 12) & 0x1f, (v >> 6) & 0x3f, v & 0x3f);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return 0;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days.max(0) as u64) * 86400 + h * 3600 + mi * 60 + s
}

/// A string as UTF-16LE bytes (MTF string type 2).
pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/mssql")
            .join(name)
    }

    #[test]
    fn families_of_the_striped_fixture() {
        let (a, b) = (
            fx("sql2008r2-stripe-1of2.bak"),
            fx("sql2008r2-stripe-2of2.bak"),
        );
        let fa = family_of_file(&a).unwrap().unwrap();
        assert_eq!((fa.count, fa.number), (2, 1));
        assert_eq!(fa.media_set, "1698a9db6c9ab64ab68c76b2a726823d");
        assert_eq!(
            order_stripes(&[b.clone(), a.clone()]).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert!(order_stripes(std::slice::from_ref(&a))
            .unwrap_err()
            .contains("2 families"));
        assert!(order_stripes(&[a.clone(), a.clone()]).is_err());
        let other = fx("sql2008r2-db2-full.bak");
        assert!(order_stripes(&[a, other])
            .unwrap_err()
            .contains("media set"));
    }

    fn walk(data: &[u8], piece: usize) -> Result<WalkSummary, String> {
        use std::io::Write;
        let mut w = Walker::new();
        for c in data.chunks(piece) {
            w.write_all(c).unwrap();
        }
        w.finish()
    }

    #[test]
    fn walks_every_fixture_and_catches_damage() {
        for name in [
            "sql2008r2-db2-full.bak",
            "sql2008r2-db2-diff.bak",
            "sql2008r2-db1-log.trn",
            "sql2016-restoretimeclean2-full.bak",
            "sql2016-restoretimeclean2-log1.trn",
            "sql2008r2-stripe-1of2.bak",
            "sql2008r2-stripe-2of2.bak",
            "sql2008r2-dbareports-full.bak",
            "sql2008r2-dbareports-log1.trn",
            "sql2008r2-dbareports-log2.trn",
            "sql2008r2-simplebacktest-full.bak",
            "sql2008r2-simplebacktest-diff1.bak",
            "sql2008r2-simplebacktest-diff2.bak",
            "sql2016-restoretimeclean-full.bak",
            "sql2016-restoretimeclean2-log2.trn",
            "sql2019-northwind-full.bak",
            // Soft filemark block size 8 (4096 bytes) in its TAPE block.
            "sql2012-pubs-full.bak",
        ] {
            let d = std::fs::read(fx(name)).unwrap();
            let s = walk(&d, 100_003).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.bytes, d.len() as u64);
            assert_eq!(
                walk(&d, 7).unwrap(),
                s,
                "{name}: piece size must not matter"
            );
            // Truncation anywhere, also exactly at a block boundary.
            for cut in [512, 1024, 2048, 3072, 3584, d.len() / 2, d.len() - 1] {
                assert!(
                    walk(&d[..d.len() - cut], 4096).is_err(),
                    "{name}: cut {cut}"
                );
            }
        }
        let d = std::fs::read(fx("sql2008r2-db2-full.bak")).unwrap();
        // A flipped byte in the SSET header, and in a stream header of the MSDA block.
        for at in [1536 + 20, 6656 + 60] {
            let mut bad = d.clone();
            bad[at] ^= 0x01;
            assert!(walk(&bad, 65536).is_err(), "flip at {at}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use std::io::Write;

    /// Random bytes and randomly mutated real backups: the walker returns Ok or an
    /// error, never panics, whatever it is fed and however the input is split.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let real = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/mssql/sql2008r2-db1-log.trn"),
        )
        .expect("fixture");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400 {
            let mut d = if round % 2 == 0 {
                let n = (rnd() % 8192) as usize;
                (0..n).map(|_| rnd() as u8).collect::<Vec<u8>>()
            } else {
                real.clone()
            };
            if !d.is_empty() {
                for _ in 0..(1 + rnd() % 8) {
                    let i = (rnd() % d.len() as u64) as usize;
                    d[i] = rnd() as u8;
                }
            }
            let piece = 1 + (rnd() % 5000) as usize;
            let mut w = Walker::new();
            for c in d.chunks(piece) {
                let _ = w.write_all(c);
            }
            let _ = w.finish();
            let _ = family(&d);
        }
    }
}

#[cfg(test)]
mod encoding {
    use super::*;

    #[test]
    fn password_fields() {
        // No fixture is protected: both fields zero in every TAPE and SSET block.
        for name in ["sql2008r2-db2-full.bak", "sql2012-pubs-full.bak"] {
            let d = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/mssql")
                    .join(name),
            )
            .unwrap();
            let spec = &d[BLOCK_HEADER_LEN..140];
            assert_eq!(
                password_field(spec, TAPE_PASSWORD_ALGORITHM_AT, TAPE_PASSWORD_AT),
                None
            );
        }
        let mut spec = vec![0u8; 100];
        spec[TAPE_PASSWORD_ALGORITHM_AT - 52] = 7;
        let f = password_field(&spec, TAPE_PASSWORD_ALGORITHM_AT, TAPE_PASSWORD_AT).unwrap();
        assert_eq!((f.algorithm, f.data), (7, Some(vec![])));
        // A size alone marks the field set; an address outside the block has no data.
        spec[TAPE_PASSWORD_ALGORITHM_AT - 52] = 0;
        spec[TAPE_PASSWORD_AT - 52..TAPE_PASSWORD_AT - 48].copy_from_slice(&[4, 0, 148, 0]);
        spec[96..100].copy_from_slice(b"abcd");
        let f = password_field(&spec, TAPE_PASSWORD_ALGORITHM_AT, TAPE_PASSWORD_AT).unwrap();
        assert_eq!(f.data.as_deref(), Some(&b"abcd"[..]));
        spec[TAPE_PASSWORD_AT - 52..TAPE_PASSWORD_AT - 48]
            .copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        let f = password_field(&spec, TAPE_PASSWORD_ALGORITHM_AT, TAPE_PASSWORD_AT).unwrap();
        assert_eq!(f.data, None);
        assert_eq!(
            password_field(&[], TAPE_PASSWORD_ALGORITHM_AT, TAPE_PASSWORD_AT),
            None
        );
    }

    #[test]
    fn headers_carry_valid_checksums() {
        let b = block_header(b"SSET", 0, 52, 7, 1, 2);
        assert_eq!(&b[..4], b"SSET");
        assert_eq!(
            checksum(&b),
            0,
            "XOR over all 26 words of a valid header is 0"
        );
        let s = stream_header(b"MQDA", 0, 123_456);
        assert_eq!(checksum(&s), 0);
        assert_eq!(u64::from_le_bytes(s[8..16].try_into().unwrap()), 123_456);
    }

    #[test]
    fn dates_round_trip() {
        for t in [0u64, 1_000_000_000, 1_764_040_000, 4_102_444_799] {
            assert_eq!(unpack_date(pack_date(t)), t);
        }
        assert_eq!(utf16le("db"), vec![b'd', 0, b'b', 0]);
    }
}
