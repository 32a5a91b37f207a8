//! Writing and reading one media family of a backup as Microsoft Tape Format, the
//! shape of a SQL Server `.bak` (`shared/docs/mtf-and-bak.md`):
//!
//! ```text
//! TAPE (RAID stream: media set GUID, family count and number; SPAD)   @0, 1 KiB
//! SFMB                                                                 512 B
//! SSET, VOLB, MSCI (MQCI metadata)                                     FLB-aligned from SSET
//! MSDA: APAD, MQDA (2-byte prefix + raw 8 KiB pages), [CSUM], MQDA(0), SPAD
//! MSTL: APAD, MQTL (2-byte prefix + log pages), [CSUM], SPAD
//! MSLS (MQCI again), SFMB, ESET, ESET, SFMB
//! ```
//!
//! Every block header carries the XOR checksum of its 25 words, every stream header
//! the XOR of its 10 words; APAD places page data on 512-byte boundaries; SPAD ends
//! each block on a 1 KiB format logical block (FLB). The writer streams pages from
//! the database files straight into the device's shared buffers.
//!
//! The format-level encoding (header layouts, XOR checksums, packed dates, UTF-16)
//! comes from `openvdi-mtf`; what is specific to the engine stays here: its own
//! MQCI metadata record (openvdi's, JSON inside an `OPENVDI` record) and the walk
//! of any MTF stream's envelope; for real SQL Server streams it reads the SCIN record of MQCI for the
//! metadata.
//!
//! Integrity: CSUM streams (WITH CHECKSUM) hold the CRC-32C of the data stream;
//! every page of an openvdi stream carries its own CRC-32C in `m_tornBits`, and its
//! header must name the file and page the stream's chunk table puts it at. So a
//! corrupted byte is detected with or without CHECKSUM.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::catalog::FileKind;
use crate::error::{msg, SqlError};
use crate::media::StreamSink;
use crate::page::{self, Lsn, PAGE_SIZE};
use crate::password::{self, Credentials, Scope};
use crate::stream::{Chunk, FileMeta, Portion, SetMeta};
use crate::BackupKind;
use openvdi_mtf::{
    block_header, checksum as xor16, pack_date as mtf_date, stream_header, unpack_date,
    utf16le as utf16,
};

/// SoftwareVersionMajor the engine records (SQL Server 2008 R2's numbering).
pub const SOFTWARE_MAJOR: u32 = 10;
/// SoftwareVersionMinor.
pub const SOFTWARE_MINOR: u32 = 50;
/// SoftwareVersionBuild.
pub const SOFTWARE_BUILD: u32 = 1600;
/// DatabaseVersion (SQL Server 2008 R2's).
pub const DATABASE_VERSION: u32 = 661;

/// Format logical block size.
pub const FLB: u64 = 1024;
/// Soft filemark block size.
const SFMB_SIZE: u64 = 512;
/// Bytes of a block header.
const HDR: usize = openvdi_mtf::BLOCK_HEADER_LEN;
/// Bytes of a stream header.
const SHDR: usize = openvdi_mtf::STREAM_HEADER_LEN;
/// Magic of the engine's own metadata record inside MQCI.
const OUR_MAGIC: &[u8; 8] = b"OPENVDI\x01";
/// Pages read from a file per I/O while writing.
const READ_PAGES: usize = 128;

/// Parse a GUID in display form to Windows byte order.
fn guid_bytes(g: &str) -> [u8; 16] {
    let hex: String = g.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    [
        raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9], raw[10],
        raw[11], raw[12], raw[13], raw[14], raw[15],
    ]
}

/// The engine's MQCI record: the set's metadata and this family's chunk tables.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OurMeta {
    database_name: String,
    server_name: String,
    machine_name: String,
    user_name: String,
    backup_type: u8,
    copy_only: bool,
    checksum: bool,
    backup_set_guid: String,
    media_set_guid: String,
    family_count: u32,
    family_number: u32,
    first_lsn: Lsn,
    last_lsn: Lsn,
    checkpoint_lsn: Lsn,
    database_backup_lsn: Lsn,
    differential_base_guid: Option<String>,
    name: Option<String>,
    description: Option<String>,
    start_unix: u64,
    finish_unix: u64,
    #[serde(default)]
    created_unix: u64,
    files: Vec<(u16, String, String, String, u64)>,
    data: Vec<(u16, u32, u32)>,
    log: Vec<(u16, u32, u32)>,
}

fn encode_meta(m: &SetMeta, data: &[Chunk], log: &[Chunk]) -> Vec<u8> {
    let o = OurMeta {
        database_name: m.database_name.clone(),
        server_name: m.server_name.clone(),
        machine_name: m.machine_name.clone(),
        user_name: m.user_name.clone(),
        backup_type: m.kind.type_number(),
        copy_only: m.copy_only,
        checksum: m.checksum,
        backup_set_guid: m.backup_set_guid.clone(),
        media_set_guid: m.media_set_guid.clone(),
        family_count: m.family_count,
        family_number: m.family_number,
        first_lsn: m.first_lsn,
        last_lsn: m.last_lsn,
        checkpoint_lsn: m.checkpoint_lsn,
        database_backup_lsn: m.database_backup_lsn,
        differential_base_guid: m.differential_base_guid.clone(),
        name: m.name.clone(),
        description: m.description.clone(),
        start_unix: m.start_unix,
        finish_unix: m.finish_unix,
        created_unix: m.database_creation_unix,
        files: m
            .files
            .iter()
            .map(|f| {
                (
                    f.file_id,
                    f.logical_name.clone(),
                    f.physical_name.clone(),
                    if f.kind == FileKind::Data { "D" } else { "L" }.to_string(),
                    f.size_bytes,
                )
            })
            .collect(),
        data: data
            .iter()
            .map(|c| (c.file_id, c.start_page, c.pages))
            .collect(),
        log: log
            .iter()
            .map(|c| (c.file_id, c.start_page, c.pages))
            .collect(),
    };
    let json = serde_json::to_vec(&o).unwrap_or_default();
    let mut v = Vec::with_capacity(json.len() + 12);
    v.extend_from_slice(OUR_MAGIC);
    v.extend_from_slice(&(json.len() as u32).to_le_bytes());
    v.extend_from_slice(&json);
    // The names again as UTF-16, as SQL Server's MQCI has them, for tools that scan
    // for strings.
    v.extend_from_slice(&utf16(&m.database_name));
    v.extend_from_slice(&utf16(&m.server_name));
    v
}

fn decode_ours(b: &[u8]) -> Option<(SetMeta, Vec<Chunk>, Vec<Chunk>)> {
    if b.len() < 12 || &b[..8] != OUR_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(b[8..12].try_into().ok()?) as usize;
    let o: OurMeta = serde_json::from_slice(b.get(12..12 + n)?).ok()?;
    let kind = BackupKind::from_type_number(o.backup_type)?;
    let chunks = |v: &[(u16, u32, u32)]| {
        v.iter()
            .map(|&(file_id, start_page, pages)| Chunk {
                file_id,
                start_page,
                pages,
            })
            .collect::<Vec<_>>()
    };
    let meta = SetMeta {
        database_name: o.database_name,
        server_name: o.server_name,
        machine_name: o.machine_name,
        user_name: o.user_name,
        kind,
        copy_only: o.copy_only,
        checksum: o.checksum,
        backup_set_guid: o.backup_set_guid,
        media_set_guid: o.media_set_guid,
        family_count: o.family_count,
        family_number: o.family_number,
        first_lsn: o.first_lsn,
        last_lsn: o.last_lsn,
        checkpoint_lsn: o.checkpoint_lsn,
        database_backup_lsn: o.database_backup_lsn,
        differential_base_guid: o.differential_base_guid,
        name: o.name,
        description: o.description,
        start_unix: o.start_unix,
        finish_unix: o.finish_unix,
        carried_bytes: 0,
        files: o
            .files
            .into_iter()
            .map(
                |(file_id, logical_name, physical_name, t, size_bytes)| FileMeta {
                    file_id,
                    logical_name,
                    physical_name,
                    kind: if t == "L" {
                        FileKind::Log
                    } else {
                        FileKind::Data
                    },
                    size_bytes,
                    filegroup: (t != "L").then(|| "PRIMARY".to_string()),
                    filegroup_id: Some(u32::from(t != "L")),
                    source_block_size: Some(512),
                    backup_bytes: None,
                },
            )
            .collect(),
        openvdi: true,
        software_version: (SOFTWARE_MAJOR, SOFTWARE_MINOR, SOFTWARE_BUILD),
        database_version: DATABASE_VERSION,
        database_creation_unix: o.created_unix,
        collation: None,
        backup_size: None,
    };
    let (data, log) = (chunks(&o.data), chunks(&o.log));
    let mut meta = meta;
    for f in &mut meta.files {
        f.backup_bytes = Some(
            data.iter()
                .chain(&log)
                .filter(|c| c.file_id == f.file_id)
                .map(|c| u64::from(c.pages) * PAGE_SIZE as u64)
                .sum(),
        );
    }
    // Every page run must lie inside its file's recorded size: a damaged table must
    // not make the restore write far past the end of a file.
    let inside = |c: &Chunk| {
        meta.files.iter().any(|f| {
            f.file_id == c.file_id
                && (u64::from(c.start_page) + u64::from(c.pages)) * PAGE_SIZE as u64 <= f.size_bytes
        })
    };
    if !data.iter().chain(&log).all(inside) {
        return None;
    }
    Some((meta, data, log))
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

struct Out<'a> {
    w: &'a mut dyn StreamSink,
    pos: u64,
    /// Where FLB numbering starts (the SSET block); 0 before it.
    base: u64,
    cbid: u32,
}

impl Out<'_> {
    fn put(&mut self, mut b: &[u8]) -> Result<(), SqlError> {
        while !b.is_empty() {
            let n = self.w.fill_with(b.len(), &mut |dst: &mut [u8]| {
                let k = dst.len().min(b.len());
                dst[..k].copy_from_slice(&b[..k]);
                Ok(k)
            })?;
            b = &b[n..];
            self.pos += n as u64;
        }
        Ok(())
    }

    fn zeros(&mut self, n: u64) -> Result<(), SqlError> {
        let z = [0u8; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(z.len() as u64) as usize;
            self.put(&z[..k])?;
            left -= k as u64;
        }
        Ok(())
    }

    fn align4(&mut self) -> Result<(), SqlError> {
        let pad = (4 - self.pos % 4) % 4;
        self.zeros(pad)
    }

    fn fla(&self) -> u64 {
        if self.base == 0 {
            0
        } else {
            (self.pos - self.base) / FLB
        }
    }

    /// Header and block-specific bytes; returns nothing, streams follow.
    fn block(
        &mut self,
        ty: &[u8; 4],
        attrs: u32,
        spec: &[u8],
        str_type: u8,
        cbid: Option<u32>,
    ) -> Result<(), SqlError> {
        let mut spec = spec.to_vec();
        while !(HDR + spec.len()).is_multiple_of(4) {
            spec.push(0);
        }
        let fso = (HDR + spec.len()) as u16;
        let cbid = cbid.unwrap_or_else(|| {
            let c = self.cbid;
            self.cbid += 1;
            c
        });
        let h = block_header(ty, attrs, fso, self.fla(), cbid, str_type);
        self.put(&h)?;
        self.put(&spec)
    }

    fn stream(&mut self, id: &[u8; 4], data: &[u8]) -> Result<(), SqlError> {
        self.align4()?;
        self.put(&stream_header(id, 0, data.len() as u64))?;
        self.put(data)
    }

    /// SPAD up to the next FLB boundary counted from `from`.
    fn spad(&mut self, from: u64) -> Result<(), SqlError> {
        self.align4()?;
        let rel = self.pos - from;
        let mut end = rel.div_ceil(FLB) * FLB;
        if end - rel < SHDR as u64 {
            end += FLB;
        }
        let len = end - rel - SHDR as u64;
        self.put(&stream_header(b"SPAD", 0, len))?;
        self.zeros(len)
    }

    /// APAD so that the data of the next stream (after its header and `prefix`
    /// bytes) starts on a 512-byte boundary.
    fn apad(&mut self, prefix: u64) -> Result<(), SqlError> {
        self.align4()?;
        let after = self.pos + SHDR as u64 + SHDR as u64 + prefix;
        let pad = (512 - after % 512) % 512;
        self.put(&stream_header(b"APAD", 0, pad))?;
        self.zeros(pad)
    }

    fn sfmb(&mut self, used: u32) -> Result<(), SqlError> {
        let mut spec = vec![0u8; SFMB_SIZE as usize - HDR];
        spec[0..4].copy_from_slice(&55u32.to_le_bytes());
        spec[4..8].copy_from_slice(&used.to_le_bytes());
        spec[8..12].copy_from_slice(&0x48u32.to_le_bytes());
        let h = block_header(b"SFMB", 0x8000_0000, SFMB_SIZE as u16, 0, 0, 0);
        self.put(&h)?;
        self.put(&spec)
    }

    /// A data stream of pages from `chunks` (MQDA or MQTL), with CSUM if asked.
    fn pages(
        &mut self,
        id: &[u8; 4],
        chunks: &[Chunk],
        files: &HashMap<u16, File>,
        checksum: bool,
        progress: &dyn Fn(u64),
    ) -> Result<(), SqlError> {
        let total: u64 = chunks.iter().map(|c| u64::from(c.pages)).sum();
        let len = 2 + total * PAGE_SIZE as u64;
        self.align4()?;
        self.put(&stream_header(id, 0x0102, len))?;
        self.put(&[0, 0])?;
        let mut crc = crc32c::crc32c(&[0, 0]);
        for c in chunks {
            let f = files
                .get(&c.file_id)
                .ok_or_else(|| msg::damaged(&format!("file {} is not open", c.file_id)))?;
            let mut off = u64::from(c.start_page) * PAGE_SIZE as u64;
            let end = off + u64::from(c.pages) * PAGE_SIZE as u64;
            while off < end {
                let want = ((end - off) as usize).min(READ_PAGES * PAGE_SIZE);
                let n = self.w.fill_with(want, &mut |dst: &mut [u8]| {
                    f.read_exact_at(dst, off)?;
                    if checksum {
                        crc = crc32c::crc32c_append(crc, dst);
                    }
                    Ok(dst.len())
                })?;
                off += n as u64;
                self.pos += n as u64;
                progress(n as u64);
            }
        }
        if checksum {
            self.stream(b"CSUM", &crc.to_le_bytes())?;
        }
        Ok(())
    }
}

/// The sealed password fields a backup writes (`crate::password::seal`): the
/// media password into the TAPE block, the backup set password into SSET.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    pub media: Option<Vec<u8>>,
    pub set: Option<Vec<u8>>,
}

/// Write family `meta.family_number` of a backup: the envelope, the metadata, the
/// data pages `data` and log pages `log` read from `files`.
pub fn write_family(
    w: &mut dyn StreamSink,
    meta: &SetMeta,
    protection: &Protection,
    data: &[Chunk],
    log: &[Chunk],
    files: &HashMap<u16, File>,
    progress: &dyn Fn(u64),
) -> Result<(), SqlError> {
    let mut o = Out {
        w,
        pos: 0,
        base: 0,
        cbid: 0,
    };
    let date = mtf_date(meta.start_unix);

    // TAPE: media header with the RAID (media family) stream.
    let sw = utf16("Microsoft SQL Server");
    let mut spec = Vec::new();
    spec.extend_from_slice(&(0xEED8_B525u32 ^ meta.family_number).to_le_bytes()); // media family id
    spec.extend_from_slice(&5u32.to_le_bytes());
    spec.extend_from_slice(&1u16.to_le_bytes()); // media sequence
                                                 // @62: password encryption algorithm (0: no media password).
    let media_alg = if protection.media.is_some() {
        crate::password::ALGORITHM
    } else {
        0
    };
    spec.extend_from_slice(&media_alg.to_le_bytes());
    spec.extend_from_slice(&1u16.to_le_bytes()); // soft filemark block size (512-byte units)
    spec.extend_from_slice(&3u16.to_le_bytes()); // media-based catalog type
    spec.extend_from_slice(&[0u8; 8]); // name, label
                                       // @76: the media password's tape address, its bytes after the software name.
    let media_pw = protection.media.as_deref().unwrap_or(&[]);
    spec.extend_from_slice(&(media_pw.len() as u16).to_le_bytes());
    spec.extend_from_slice(&(94 + sw.len() as u16).to_le_bytes());
    spec.extend_from_slice(&(sw.len() as u16).to_le_bytes());
    spec.extend_from_slice(&94u16.to_le_bytes());
    spec.extend_from_slice(&(FLB as u16).to_le_bytes());
    spec.extend_from_slice(&0x1200u16.to_le_bytes());
    spec.extend_from_slice(&date);
    spec.push(1); // MTF major version
    spec.extend_from_slice(&sw);
    spec.extend_from_slice(media_pw);
    o.block(b"TAPE", 0x0003_0000, &spec, 2, Some(0))?;
    let mut raid = Vec::with_capacity(32);
    raid.extend_from_slice(&guid_bytes(&meta.media_set_guid));
    raid.extend_from_slice(&0xF000_00ADu32.to_le_bytes());
    raid.extend_from_slice(&(meta.family_count as u16).to_le_bytes());
    raid.extend_from_slice(&1u16.to_le_bytes());
    raid.extend_from_slice(&meta.family_number.to_le_bytes());
    raid.extend_from_slice(&0x0001_0000u32.to_le_bytes());
    o.stream(b"RAID", &raid)?;
    o.spad(0)?;
    o.sfmb(0)?;

    // SSET: FLB numbering starts here.
    o.base = o.pos;
    let mut user = utf16(&meta.user_name);
    user.truncate(512); // a tape address's offset is a u16
    let mut spec = Vec::new();
    let set_pw = protection.set.as_deref().unwrap_or(&[]);
    spec.extend_from_slice(&4u32.to_le_bytes());
    // @56: the backup set password's algorithm; compression, vendor.
    let set_alg = if protection.set.is_some() {
        crate::password::ALGORITHM
    } else {
        0
    };
    spec.extend_from_slice(&set_alg.to_le_bytes());
    spec.extend_from_slice(&[0u8; 4]);
    spec.extend_from_slice(&1u16.to_le_bytes()); // data set number
    spec.extend_from_slice(&[0u8; 8]); // name, description
                                       // @72: the password's tape address, its bytes after the user name.
    spec.extend_from_slice(&(set_pw.len() as u16).to_le_bytes());
    spec.extend_from_slice(&(100 + user.len() as u16).to_le_bytes());
    spec.extend_from_slice(&(user.len() as u16).to_le_bytes());
    spec.extend_from_slice(&100u16.to_le_bytes());
    spec.extend_from_slice(&[0u8; 8]); // PBA
    spec.extend_from_slice(&date);
    spec.extend_from_slice(&[SOFTWARE_MAJOR as u8, SOFTWARE_MINOR as u8, 0, 0, 0]);
    while HDR + spec.len() < 100 {
        spec.push(0);
    }
    spec.extend_from_slice(&user);
    spec.extend_from_slice(set_pw);
    o.block(b"SSET", 0, &spec, 2, Some(0))?;
    o.spad(o.base)?;

    let machine = utf16(&meta.machine_name);
    let mut spec = Vec::new();
    spec.extend_from_slice(&2u32.to_le_bytes());
    spec.extend_from_slice(&[0u8; 8]); // device, volume name
    spec.extend_from_slice(&(machine.len() as u16).to_le_bytes());
    spec.extend_from_slice(&77u16.to_le_bytes());
    spec.extend_from_slice(&date);
    spec.extend_from_slice(&machine);
    o.block(b"VOLB", 0, &spec, 2, None)?;
    o.spad(o.base)?;

    let mqci = encode_meta(meta, data, log);
    o.block(b"MSCI", 0, &[0u8; 4], 2, None)?;
    o.stream(b"MQCI", &mqci)?;
    o.spad(o.base)?;

    if meta.kind != BackupKind::Log {
        o.block(b"MSDA", 0, &[0, 0, 0, 0, 0, 0, 1, 0], 0, None)?;
        o.apad(2)?;
        o.pages(b"MQDA", data, files, meta.checksum, progress)?;
        o.stream(b"MQDA", &[])?;
        o.spad(o.base)?;
    }
    o.block(b"MSTL", 0, &[0, 0, 0, 0, 0, 0, 1, 0], 0, None)?;
    o.apad(2)?;
    o.pages(b"MQTL", log, files, meta.checksum, progress)?;
    o.spad(o.base)?;

    // The trailing copy of the metadata carries the finish time, as SQL Server's
    // does (the head's was written before any page).
    let mut fin = meta.clone();
    fin.finish_unix = crate::catalog::now_unix().max(meta.start_unix);
    o.block(b"MSLS", 0, &[0u8; 4], 2, None)?;
    o.stream(b"MQCI", &encode_meta(&fin, data, log))?;
    o.spad(o.base)?;
    o.sfmb(1)?;
    let eset_base = o.pos;
    let mut spec = vec![0u8; 36];
    spec[0] = 4;
    spec[26] = 1; // data set number
    spec[28..33].copy_from_slice(&mtf_date(fin.finish_unix));
    o.block(b"ESET", 0, &spec, 0, Some(0))?;
    o.spad(eset_base)?;
    // The second ESET records the bytes of the set up to the first, as SQL
    // Server's does.
    spec[8..16].copy_from_slice(&eset_base.to_le_bytes());
    o.block(b"ESET", 0, &spec, 0, Some(0))?;
    o.spad(eset_base)?;
    o.sfmb(2)?;
    // The stream must be a whole number of BLOCKSIZE blocks; pad with soft filemarks
    // rather than zeros, so that the padding is valid MTF a walker can step over.
    let block = o.w.block_size().max(SFMB_SIZE as usize) as u64;
    while !o.pos.is_multiple_of(block) {
        o.sfmb(2)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// A byte source with a position, for walking. Buffered so that page data can be
/// taken where it already lies (a VDI buffer, a file reader's buffer) instead of
/// being copied out first.
struct In<'a> {
    r: &'a mut dyn BufRead,
    pos: u64,
}

impl In<'_> {
    fn exact(&mut self, b: &mut [u8], what: &str) -> Result<(), SqlError> {
        let mut got = 0;
        while got < b.len() {
            match self.r.read(&mut b[got..]) {
                Ok(0) => {
                    return Err(msg::bad_family(
                        "",
                        &format!(
                            "the stream ends at byte {} inside {what}",
                            self.pos + got as u64
                        ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(msg::read_failed("", &e.to_string())),
            }
        }
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Pass over `n` bytes where the reader holds them, without copying them out.
    fn skip(&mut self, mut n: u64, what: &str) -> Result<(), SqlError> {
        while n > 0 {
            let avail = match self.r.fill_buf() {
                Ok(b) => b.len(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(msg::read_failed("", &e.to_string())),
            };
            if avail == 0 {
                return Err(msg::bad_family(
                    "",
                    &format!("the stream ends at byte {} inside {what}", self.pos),
                ));
            }
            let k = (avail as u64).min(n);
            self.r.consume(k as usize);
            self.pos += k;
            n -= k;
        }
        Ok(())
    }

    fn skip_to4(&mut self) -> Result<(), SqlError> {
        let pad = (4 - self.pos % 4) % 4;
        self.skip(pad, "alignment")
    }
}

/// A parsed block header.
#[derive(Debug, Clone)]
struct Block {
    ty: [u8; 4],
    fso: u16,
    fla: u64,
    at: u64,
    /// The block-specific bytes (up to the first stream).
    spec: Vec<u8>,
}

fn read_block(i: &mut In<'_>) -> Result<Block, SqlError> {
    let at = i.pos;
    let mut h = [0u8; HDR];
    i.exact(&mut h, "a block header")?;
    let ty: [u8; 4] = [h[0], h[1], h[2], h[3]];
    if xor16(&h[..50]) != u16::from_le_bytes([h[50], h[51]]) {
        return Err(msg::damaged(&format!(
            "the header checksum of the {} block at byte {at} is wrong",
            String::from_utf8_lossy(&ty)
        )));
    }
    let fso = u16::from_le_bytes([h[8], h[9]]);
    if (fso as usize) < HDR {
        return Err(msg::damaged(&format!(
            "block at byte {at} has a bad first-stream offset"
        )));
    }
    let mut spec = vec![0u8; usize::from(fso) - HDR];
    i.exact(&mut spec, "a block")?;
    Ok(Block {
        ty,
        fso,
        fla: u64::from_le_bytes(h[20..28].try_into().unwrap_or([0; 8])),
        at,
        spec,
    })
}

/// A parsed stream header.
#[derive(Debug, Clone, Copy)]
struct Stream {
    id: [u8; 4],
    len: u64,
}

fn read_stream(i: &mut In<'_>) -> Result<Stream, SqlError> {
    i.skip_to4()?;
    let at = i.pos;
    let mut h = [0u8; SHDR];
    i.exact(&mut h, "a stream header")?;
    if xor16(&h[..20]) != u16::from_le_bytes([h[20], h[21]]) {
        return Err(msg::damaged(&format!(
            "the header checksum of the {} stream at byte {at} is wrong",
            String::from_utf8_lossy(&h[..4])
        )));
    }
    Ok(Stream {
        id: [h[0], h[1], h[2], h[3]],
        len: u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8])),
    })
}

/// What the caller does with each run of pages: portion, file id, byte offset in
/// the file, the bytes.
pub type PageFn<'f> = dyn FnMut(Portion, u16, u64, &[u8]) -> Result<(), SqlError> + 'f;

/// Reads one family: [`FamilyReader::open`] reads up to the metadata, then
/// [`FamilyReader::for_each_page`] the rest.
#[derive(Debug)]
pub struct FamilyReader {
    meta: SetMeta,
    data: Vec<Chunk>,
    log: Vec<Chunk>,
    pos: u64,
    base: u64,
    /// Foreign streams: where the rest of the current MSTL block's log goes in the
    /// log file (next offset, end), from the range the block records.
    log_range: Option<(u64, u64)>,
    /// Soft filemark block size in bytes, from the TAPE block (512 × 1 in most SQL
    /// Server files, 512 × 8 in some of SQL Server 2012's).
    sfmb: u64,
    /// WITH CHECKSUM: check the page checksum of every data page of a SQL Server
    /// stream that says it has one (openvdi's pages are always checked).
    check_pages: bool,
    /// From the end of the stream: the finish date of the trailing MSLS copy of
    /// the metadata, and the bytes of the backup set the ESET block records.
    trailer: Trailer,
}

/// What only the end of a stream says (HEADERONLY's BackupFinishDate and
/// BackupSize); `None` until [`FamilyReader::for_each_page`] has read that far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trailer {
    pub finish_unix: Option<u64>,
    pub set_bytes: Option<u64>,
}

impl FamilyReader {
    /// Read the media header and the backup set's metadata, of a stream that has no
    /// passwords (a protected one is refused with 3279).
    pub fn open(r: &mut dyn BufRead) -> Result<(FamilyReader, SetMeta), SqlError> {
        FamilyReader::open_with(r, &Credentials::default())
    }

    /// [`FamilyReader::open`] with the passwords the statement gave: the media
    /// password is checked at the TAPE block, the backup set's at the SSET block
    /// (when `creds.check_set`), before any metadata is read.
    pub fn open_with(
        r: &mut dyn BufRead,
        creds: &Credentials,
    ) -> Result<(FamilyReader, SetMeta), SqlError> {
        let mut i = In { r, pos: 0 };
        let mut first = [0u8; 8];
        i.exact(&mut first, "the media header")?;
        if &first == b"MSSQLBAK" {
            return Err(msg::not_supported("A compressed backup (MSSQLBAK)"));
        }
        if &first[..4] != b"TAPE" {
            return Err(SqlError::msg(
                3242,
                "The file on device is not a valid Microsoft Tape Format backup set.",
            ));
        }
        // Re-read the TAPE header as a block: we consumed 8 bytes of it.
        let mut rest = [0u8; HDR - 8];
        i.exact(&mut rest, "the media header")?;
        let mut h = [0u8; HDR];
        h[..8].copy_from_slice(&first);
        h[8..].copy_from_slice(&rest);
        if xor16(&h[..50]) != u16::from_le_bytes([h[50], h[51]]) {
            return Err(msg::damaged(
                "the header checksum of the TAPE block is wrong",
            ));
        }
        let fso = u16::from_le_bytes([h[8], h[9]]);
        // The TAPE block's own fields (up to its first stream) hold the soft
        // filemark block size at offset 64.
        let mut tape = h.to_vec();
        tape.resize(usize::from(fso).max(HDR), 0);
        i.exact(&mut tape[HDR..], "the media header")?;
        let sfmb = if usize::from(fso) >= openvdi_mtf::TAPE_SFMB_SIZE_AT + 2 {
            openvdi_mtf::tape_sfmb_len(&tape).map_err(|e| msg::damaged(&e))?
        } else {
            SFMB_SIZE
        };
        if let Some(f) = openvdi_mtf::password_field(
            &tape[HDR..],
            openvdi_mtf::TAPE_PASSWORD_ALGORITHM_AT,
            openvdi_mtf::TAPE_PASSWORD_AT,
        ) {
            password::check(&f, creds.media.as_ref().map(|s| s.0.as_str()), Scope::Media)?;
        }
        let mut media_set = String::new();
        let (mut fam_count, mut fam_num) = (1u32, 1u32);
        loop {
            let s = read_stream(&mut i)?;
            if &s.id == b"SPAD" {
                i.skip(s.len, "SPAD")?;
                break;
            }
            if &s.id == b"RAID" && (28..=4096).contains(&s.len) {
                let mut b = vec![0u8; s.len as usize];
                i.exact(&mut b, "RAID")?;
                let mut g = [0u8; 16];
                g.copy_from_slice(&b[..16]);
                media_set = crate::catalog::format_guid(&g);
                fam_count = u32::from(u16::from_le_bytes([b[20], b[21]]));
                fam_num = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
            } else {
                i.skip(s.len, "a TAPE stream")?;
            }
        }
        let mut base = 0u64;
        let mut sset_info: Option<(u64, u8, u8)> = None;
        let mut sset_user = String::new();
        let mut meta: Option<(SetMeta, Vec<Chunk>, Vec<Chunk>)> = None;
        while meta.is_none() {
            let b = read_block(&mut i)?;
            match &b.ty {
                b"SFMB" => i.skip(sfmb.saturating_sub(u64::from(b.fso)), "SFMB")?,
                b"SSET" => {
                    base = b.at;
                    if creds.check_set {
                        if let Some(f) = openvdi_mtf::password_field(
                            &b.spec,
                            openvdi_mtf::SSET_PASSWORD_ALGORITHM_AT,
                            openvdi_mtf::SSET_PASSWORD_AT,
                        ) {
                            password::check(
                                &f,
                                creds.set.as_ref().map(|s| s.0.as_str()),
                                Scope::Set,
                            )?;
                        }
                    }
                    // @88 media write date, @93/@94 software major/minor version.
                    if b.spec.len() >= 43 {
                        let mut d = [0u8; 5];
                        d.copy_from_slice(&b.spec[36..41]);
                        sset_info = Some((unpack_date(d), b.spec[41], b.spec[42]));
                    }
                    // @76: the user name's tape address (size, offset from the
                    // block's start), as MTF defines it; SQL Server fills it with
                    // the login that took the backup.
                    sset_user = tape_string(&b.spec, 76);
                    skip_streams(&mut i)?;
                }
                b"VOLB" => skip_streams(&mut i)?,
                b"MSCI" => {
                    check_fla(&b, base)?;
                    let mut mq = None;
                    loop {
                        let s = read_stream(&mut i)?;
                        if &s.id == b"SPAD" {
                            i.skip(s.len, "SPAD")?;
                            break;
                        }
                        if &s.id == b"MQCI" && mq.is_none() {
                            if s.len > 16 << 20 {
                                return Err(msg::damaged("an MQCI stream is implausibly long"));
                            }
                            let mut v = vec![0u8; s.len as usize];
                            i.exact(&mut v, "MQCI")?;
                            mq = Some(v);
                        } else {
                            i.skip(s.len, "an MSCI stream")?;
                        }
                    }
                    let mq = mq.ok_or_else(|| msg::damaged("the MSCI block has no MQCI stream"))?;
                    meta = Some(match decode_ours(&mq) {
                        Some(x) => x,
                        None => (foreign_meta(&mq)?, Vec::new(), Vec::new()),
                    });
                }
                other => {
                    return Err(msg::damaged(&format!(
                        "unexpected {} block before the backup set's metadata",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        let (mut m, data, log) = meta.ok_or_else(|| msg::damaged("no metadata"))?;
        if !m.openvdi {
            m.media_set_guid = media_set;
            m.family_count = fam_count;
            m.family_number = fam_num;
            // The SCIN record's start date is the backup's; the SSET block's media
            // write date is the same second in every fixture and stands in only
            // when SCIN has none. The finish date is in the trailing MSLS copy of
            // the metadata, read at the end of the stream.
            if let Some((date, _, _)) = sset_info.filter(|_| m.start_unix == 0) {
                m.start_unix = date;
            }
            m.user_name = sset_user;
        } else if m.family_number != fam_num || m.family_count != fam_count {
            return Err(msg::damaged(
                "the RAID stream and the metadata disagree about the media family",
            ));
        }
        let carried: u64 = data
            .iter()
            .chain(&log)
            .map(|c| u64::from(c.pages) * PAGE_SIZE as u64)
            .sum();
        if m.openvdi {
            m.carried_bytes = carried;
        }
        let fr = FamilyReader {
            meta: m.clone(),
            data,
            log,
            pos: i.pos,
            base,
            log_range: None,
            sfmb,
            check_pages: false,
            trailer: Trailer::default(),
        };
        Ok((fr, m))
    }

    /// Check SQL Server page checksums (`m_flagBits` 0x200) of a real stream's data
    /// pages as they go by (RESTORE / VERIFYONLY … WITH CHECKSUM): a mismatch is
    /// 3183 naming the page.
    pub fn check_page_checksums(&mut self, on: bool) {
        self.check_pages = on;
    }

    /// What the end of the stream said (after [`FamilyReader::for_each_page`]).
    pub fn trailer(&self) -> Trailer {
        self.trailer
    }

    /// Page bytes this family will deliver (known for openvdi streams; 0 otherwise).
    pub fn expected_bytes(&self) -> u64 {
        self.data
            .iter()
            .chain(&self.log)
            .map(|c| u64::from(c.pages) * PAGE_SIZE as u64)
            .sum()
    }

    /// Read the rest of the family, calling `f` for every run of pages, and check
    /// everything: block order, header checksums, CSUM, page placement and (openvdi
    /// streams) page checksums.
    pub fn for_each_page(
        &mut self,
        r: &mut dyn BufRead,
        f: &mut PageFn<'_>,
    ) -> Result<(), SqlError> {
        let mut i = In { r, pos: self.pos };
        let mut esets = 0;
        let mut saw_data = false;
        loop {
            let b = read_block(&mut i)?;
            match &b.ty {
                b"SFMB" => {
                    i.skip(self.sfmb.saturating_sub(u64::from(b.fso)), "SFMB")?;
                    if esets > 0 {
                        break;
                    }
                }
                b"MSDA" => {
                    check_fla(&b, self.base)?;
                    saw_data = true;
                    self.portion(&mut i, Portion::Data, f)?;
                }
                b"MSTL" => {
                    check_fla(&b, self.base)?;
                    self.log_range = None;
                    if !self.meta.openvdi {
                        // Each MSTL block records where its log lies in the log
                        // file; a log that wrapped around its file comes as two
                        // blocks, the file's end and then its start.
                        let r =
                            openvdi_mtf::sql::log_range(&b.spec).map_err(|e| msg::damaged(&e))?;
                        let size = self
                            .meta
                            .files
                            .iter()
                            .find(|x| x.kind == FileKind::Log)
                            .map_or(0, |x| x.size_bytes);
                        if r.end > size {
                            return Err(msg::damaged(&format!(
                                "the MSTL block at byte {} records log up to offset {}, past the end of the log file ({size} bytes)",
                                b.at, r.end
                            )));
                        }
                        self.log_range = Some((r.start, r.end));
                    }
                    let start = self.log_range.map(|(s, _)| s);
                    self.portion(&mut i, Portion::Log, f)?;
                    // A striped set repeats the MSTL block in every family but only
                    // one carries its log (no MQTL in the others); a block that
                    // carries some but not all of its range is cut short.
                    if let Some((next, end)) = self.log_range.take() {
                        if Some(next) != start && next < end {
                            return Err(msg::damaged(&format!(
                                "the MSTL block at byte {} holds {} bytes less log than it records",
                                b.at,
                                end - next
                            )));
                        }
                    }
                }
                b"MSLS" => {
                    check_fla(&b, self.base)?;
                    // The metadata again, now with the finish date filled in.
                    loop {
                        let s = read_stream(&mut i)?;
                        if &s.id == b"MQCI" && s.len <= 16 << 20 {
                            let mut v = vec![0u8; s.len as usize];
                            i.exact(&mut v, "MQCI")?;
                            self.trailer.finish_unix = if self.meta.openvdi {
                                decode_ours(&v).map(|(m, _, _)| m.finish_unix)
                            } else {
                                openvdi_mtf::sql::metadata(&v)
                                    .ok()
                                    .and_then(|md| md.set.finish)
                            };
                            continue;
                        }
                        i.skip(s.len, "an MSLS stream")?;
                        if &s.id == b"SPAD" {
                            break;
                        }
                    }
                }
                b"VOLB" | b"SSET" | b"MSCI" => {
                    check_fla(&b, self.base)?;
                    skip_streams(&mut i)?;
                }
                b"ESET" => {
                    esets += 1;
                    // The second ESET records (@60) the bytes of the set up to the
                    // first ESET, which is where the first ESET starts (checked on
                    // every fixture: 1,459,200 in sql2008r2-db2-full.bak).
                    let recorded = b
                        .spec
                        .get(8..16)
                        .map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])));
                    if recorded > 0 {
                        self.trailer.set_bytes = Some(recorded);
                    } else if self.trailer.set_bytes.is_none() {
                        self.trailer.set_bytes = Some(b.at);
                    }
                    skip_streams(&mut i)?;
                }
                other => {
                    if other.iter().all(|c| c.is_ascii_uppercase()) {
                        skip_streams(&mut i)?;
                    } else {
                        return Err(msg::damaged(&format!("an unknown block at byte {}", b.at)));
                    }
                }
            }
        }
        if self.meta.kind != BackupKind::Log && !saw_data {
            return Err(msg::damaged("the backup set has no data portion"));
        }
        if self.meta.openvdi && (!self.data.is_empty() || !self.log.is_empty()) {
            return Err(msg::damaged(
                "the stream ended before every page the metadata lists",
            ));
        }
        self.pos = i.pos;
        Ok(())
    }

    /// The streams of an MSDA or MSTL block.
    fn portion(
        &mut self,
        i: &mut In<'_>,
        portion: Portion,
        f: &mut PageFn<'_>,
    ) -> Result<(), SqlError> {
        let mut last_crc: Option<u32> = None;
        loop {
            let s = read_stream(i)?;
            match &s.id {
                b"SPAD" => {
                    i.skip(s.len, "SPAD")?;
                    return Ok(());
                }
                b"MQDA" | b"MQTL" if s.len == 0 => {}
                b"MQDA" | b"MQTL" => {
                    let crc = self.pages(i, portion, s.len, f)?;
                    last_crc = Some(crc);
                }
                b"CSUM" => {
                    let mut c = [0u8; 4];
                    if s.len != 4 {
                        i.skip(s.len, "CSUM")?;
                        continue;
                    }
                    i.exact(&mut c, "CSUM")?;
                    // Only the engine's own CSUM algorithm is known (CRC-32C).
                    if self.meta.openvdi {
                        if let Some(v) = last_crc {
                            if v != u32::from_le_bytes(c) {
                                return Err(msg::damaged("a CSUM stream does not match its data"));
                            }
                        }
                    }
                }
                _ => i.skip(s.len, "a stream")?,
            }
        }
    }

    /// A page data stream of `len` bytes: 2-byte prefix then pages. Returns the
    /// CRC-32C of the whole stream.
    ///
    /// Whole pages are checked and handed on where the reader holds them (for a
    /// virtual device, the shared buffer the client filled): only a page split
    /// between two reads is copied, into `page`. The CRC and every check are
    /// computed on the same bytes that are handed on, once each.
    fn pages(
        &mut self,
        i: &mut In<'_>,
        portion: Portion,
        len: u64,
        f: &mut PageFn<'_>,
    ) -> Result<u32, SqlError> {
        if len < 2 {
            return Err(msg::damaged("a page stream shorter than its prefix"));
        }
        let mut prefix = [0u8; 2];
        i.exact(&mut prefix, "a page stream")?;
        let mut crc = crc32c::crc32c(&prefix);
        let mut left = len - 2;
        let mut page = [0u8; PAGE_SIZE];
        while left > 0 {
            let avail = match i.r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(msg::read_failed("", &e.to_string())),
            };
            let whole = (avail.len() as u64).min(left) as usize / PAGE_SIZE * PAGE_SIZE;
            if whole > 0 {
                let run = &avail[..whole];
                crc = crc32c::crc32c_append(crc, run);
                self.place(run, portion, f)?;
                i.r.consume(whole);
                i.pos += whole as u64;
                left -= whole as u64;
            } else {
                // Less than a page buffered (or left): gather one across reads.
                let k = left.min(PAGE_SIZE as u64) as usize;
                i.exact(&mut page[..k], "page data")?;
                crc = crc32c::crc32c_append(crc, &page[..k]);
                left -= k as u64;
                self.place(&page[..k], portion, f)?;
            }
        }
        Ok(crc)
    }

    fn place(&mut self, run: &[u8], portion: Portion, f: &mut PageFn<'_>) -> Result<(), SqlError> {
        if self.meta.openvdi {
            self.place_ours(run, portion, f)
        } else {
            self.place_foreign(run, portion, f)
        }
    }

    /// Pages of an openvdi stream go where the chunk table says; each must name
    /// that place and carry a good checksum.
    fn place_ours(
        &mut self,
        bytes: &[u8],
        portion: Portion,
        f: &mut PageFn<'_>,
    ) -> Result<(), SqlError> {
        if !bytes.len().is_multiple_of(PAGE_SIZE) {
            return Err(msg::damaged("a page stream is not a whole number of pages"));
        }
        let db = self.meta.database_name.clone();
        let mut at = 0;
        while at < bytes.len() {
            let table = match portion {
                Portion::Data => &mut self.data,
                Portion::Log => &mut self.log,
            };
            let c = table
                .first_mut()
                .ok_or_else(|| msg::damaged("more pages than the metadata lists"))?;
            let n = (c.pages as usize).min((bytes.len() - at) / PAGE_SIZE);
            let run = &bytes[at..at + n * PAGE_SIZE];
            for (k, p) in run.chunks(PAGE_SIZE).enumerate() {
                let want = c.start_page + k as u32;
                let h = page::header(p);
                if h.file_id != c.file_id || h.page_id != want || !page::verify(p) {
                    return Err(msg::page_damaged(c.file_id, want, &db));
                }
            }
            f(
                portion,
                c.file_id,
                u64::from(c.start_page) * PAGE_SIZE as u64,
                run,
            )?;
            c.start_page += n as u32;
            c.pages -= n as u32;
            let empty = c.pages == 0;
            if empty {
                table.remove(0);
            }
            at += n * PAGE_SIZE;
        }
        Ok(())
    }

    /// Pages of a real SQL Server stream. Data pages go where their header says,
    /// if the header is a SQL Server page header (version 1) naming a data file of
    /// the backup; other pages (unallocated, all zero or stale) are not written, the
    /// restored file holds zeros there. A striped backup spreads whole extents over
    /// the families, so the header is the only placement information. The log
    /// portion goes to the log file at the offset its MSTL block records.
    fn place_foreign(
        &mut self,
        bytes: &[u8],
        portion: Portion,
        f: &mut PageFn<'_>,
    ) -> Result<(), SqlError> {
        let unknown_limit = self
            .meta
            .carried_bytes
            .saturating_add(crate::stream::UNFILLED_SLACK);
        match portion {
            Portion::Data => {
                for p in bytes.chunks(PAGE_SIZE) {
                    if p.len() < PAGE_SIZE || p[0] != 1 {
                        continue;
                    }
                    let h = page::header(p);
                    // Only a data file of this backup, and inside its recorded size
                    // (or, when unknown, what the set carries plus the slack): a
                    // stale page must not create a huge sparse file.
                    let limit = self
                        .meta
                        .files
                        .iter()
                        .find(|x| x.file_id == h.file_id && x.kind == FileKind::Data)
                        .map(|x| {
                            if x.size_bytes > 0 {
                                x.size_bytes
                            } else {
                                unknown_limit
                            }
                        });
                    let at = u64::from(h.page_id) * PAGE_SIZE as u64;
                    if limit.is_some_and(|l| at + PAGE_SIZE as u64 <= l) {
                        if self.check_pages && !page::checksum_ok(p) {
                            return Err(msg::page_damaged(
                                h.file_id,
                                h.page_id,
                                &self.meta.database_name,
                            ));
                        }
                        f(
                            Portion::Data,
                            h.file_id,
                            u64::from(h.page_id) * PAGE_SIZE as u64,
                            p,
                        )?;
                    }
                }
            }
            Portion::Log => {
                let log_file = self
                    .meta
                    .files
                    .iter()
                    .find(|x| x.kind == FileKind::Log)
                    .map_or(2, |x| x.file_id);
                // Only the bytes the block records are log; the rest of the MQTL
                // stream pads it to 64 KiB and was never in the file.
                let Some((next, end)) = self.log_range.as_mut() else {
                    return Err(msg::damaged("log data outside an MSTL block"));
                };
                let take = (bytes.len() as u64).min(*end - *next) as usize;
                if take > 0 {
                    f(Portion::Log, log_file, *next, &bytes[..take])?;
                    *next += take as u64;
                }
            }
        }
        Ok(())
    }
}

/// A string at an MTF tape address (`u16` size, `u16` offset from the block's
/// start) whose field is at block offset `field`, read from a block's specific
/// bytes (`spec` starts at block offset 52). Empty when absent or out of range.
fn tape_string(spec: &[u8], field: usize) -> String {
    let at = |k: usize| -> Option<usize> {
        let j = k.checked_sub(HDR)?;
        Some(u16::from_le_bytes([*spec.get(j)?, *spec.get(j + 1)?]) as usize)
    };
    let (Some(len), Some(off)) = (at(field), at(field + 2)) else {
        return String::new();
    };
    let Some(b) = off
        .checked_sub(HDR)
        .and_then(|o| spec.get(o..o.checked_add(len)?))
    else {
        return String::new();
    };
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn check_fla(b: &Block, base: u64) -> Result<(), SqlError> {
    if base > 0 && b.at >= base && (b.at - base) / FLB != b.fla {
        return Err(msg::damaged(&format!(
            "the {} block at byte {} says it is format logical block {}, but it is block {}",
            String::from_utf8_lossy(&b.ty),
            b.at,
            b.fla,
            (b.at - base) / FLB
        )));
    }
    Ok(())
}

/// Skip a block's streams up to and including its SPAD.
fn skip_streams(i: &mut In<'_>) -> Result<(), SqlError> {
    loop {
        let s = read_stream(i)?;
        i.skip(s.len, "a stream")?;
        if &s.id == b"SPAD" {
            return Ok(());
        }
    }
}

/// Metadata of a real SQL Server backup from its MQCI stream, read by
/// `openvdi_mtf::sql` (the SCIN record for the set, SFGI for filegroup names, SFIN
/// per file; offsets and what each was checked against are documented there).
/// File types come from what each SFIN record says the file is, never from its
/// name. A file type the engine does not understand (FILESTREAM, full-text) is
/// refused rather than guessed.
pub fn foreign_meta(mq: &[u8]) -> Result<SetMeta, SqlError> {
    let md = openvdi_mtf::sql::metadata(mq).map_err(|e| msg::damaged(&e))?;
    let set = &md.set;
    let mut files = Vec::new();
    let mut carried_bytes = 0u64;
    for f in &md.files {
        let kind = match f.file_type {
            openvdi_mtf::sql::FileType::Data => FileKind::Data,
            openvdi_mtf::sql::FileType::Log => FileKind::Log,
            openvdi_mtf::sql::FileType::Other(t) => {
                return Err(msg::not_supported(&format!(
                    "A backup holding file '{}' of type {t} (FILESTREAM or full-text)",
                    f.logical_name
                )))
            }
        };
        let file_id = u16::try_from(f.file_id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| msg::damaged(&format!("a file record has file id {}", f.file_id)))?;
        if f.logical_name.is_empty() {
            return Err(msg::damaged("a file record has no logical name"));
        }
        carried_bytes = carried_bytes.saturating_add(u64::from(f.pages) * PAGE_SIZE as u64);
        files.push(FileMeta {
            file_id,
            logical_name: f.logical_name.clone(),
            physical_name: f.physical_name.clone(),
            kind,
            size_bytes: f.size_bytes,
            filegroup: match kind {
                FileKind::Log => None,
                FileKind::Data => md.filegroup_name(f.filegroup_id).map(str::to_string),
            },
            filegroup_id: Some(f.filegroup_id),
            source_block_size: Some(f.source_block_size),
            backup_bytes: Some(u64::from(f.pages) * PAGE_SIZE as u64),
        });
    }
    Ok(SetMeta {
        database_name: set.database_name.clone(),
        server_name: set.server_name.clone(),
        machine_name: set.server_name.split('\\').next().unwrap_or("").to_string(),
        user_name: String::new(),
        // msdb's backupset.type letter: D database, I differential, L log.
        kind: match set.type_letter {
            b'L' => BackupKind::Log,
            b'I' => BackupKind::Differential,
            b'D' => BackupKind::Full,
            other => {
                return Err(msg::not_supported(&format!(
                    "A backup of type '{}' (file, partial)",
                    char::from(other)
                )))
            }
        },
        copy_only: false,
        checksum: set.has_checksums(),
        backup_set_guid: String::new(),
        media_set_guid: String::new(),
        family_count: 1,
        family_number: 1,
        first_lsn: Lsn::from_bytes(&set.first_lsn),
        last_lsn: Lsn::from_bytes(&set.last_lsn),
        checkpoint_lsn: Lsn::from_bytes(&set.checkpoint_lsn),
        database_backup_lsn: Lsn::from_bytes(&set.database_backup_lsn),
        differential_base_guid: None,
        name: None,
        description: None,
        start_unix: set.start.unwrap_or(0),
        finish_unix: set.finish.unwrap_or(0),
        files,
        carried_bytes,
        openvdi: false,
        software_version: (
            u32::from(set.software_version.0),
            u32::from(set.software_version.1),
            u32::from(set.software_version.2),
        ),
        database_version: u32::from(set.database_version),
        database_creation_unix: set.database_creation.unwrap_or(0),
        collation: Some(set.collation),
        backup_size: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn headers_carry_xor_checksums() {
        let h = block_header(b"TAPE", 0x30000, 140, 0, 0, 2);
        assert_eq!(xor16(&h[..50]), u16::from_le_bytes([h[50], h[51]]));
        let s = stream_header(b"MQDA", 0x0102, 1_376_258);
        assert_eq!(xor16(&s[..20]), u16::from_le_bytes([s[20], s[21]]));
    }

    #[test]
    fn dates_pack() {
        // 2009-06-26 12:34:56 UTC.
        let d = mtf_date(1_246_019_696);
        let v = u64::from_be_bytes([0, 0, 0, d[0], d[1], d[2], d[3], d[4]]);
        assert_eq!(v >> 26, 2009);
        assert_eq!((v >> 22) & 0xf, 6);
        assert_eq!((v >> 17) & 0x1f, 26);
        assert_eq!((v >> 12) & 0x1f, 12);
        assert_eq!((v >> 6) & 0x3f, 34);
        assert_eq!(v & 0x3f, 56);
    }

    #[test]
    fn dates_unpack() {
        for t in [0u64, 1_246_019_696, 1_700_000_000] {
            let back = unpack_date(mtf_date(t));
            assert!(t == 0 || back == t, "{t} -> {back}");
        }
    }

    /// Damaged streams are refused with an error, never a panic, and never write
    /// outside the files' recorded sizes.
    #[test]
    fn damaged_real_streams_never_panic() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mssql");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for name in ["sql2008r2-db1-log.trn", "sql2008r2-db2-diff.bak"] {
            let good = std::fs::read(dir.join(name)).expect("fixture");
            for round in 0..60 {
                let mut bad = good.clone();
                for _ in 0..1 + round % 4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly the first 16 KiB (headers and metadata), sometimes anywhere.
                    let span = if round % 3 == 0 {
                        bad.len()
                    } else {
                        bad.len().min(16384)
                    };
                    let at = (x % span as u64) as usize;
                    bad[at] ^= (x >> 40) as u8 | 1;
                }
                let mut r: &[u8] = &bad;
                if let Ok((mut fr, meta)) = FamilyReader::open(&mut r) {
                    let sizes: Vec<(u16, u64)> = meta
                        .files
                        .iter()
                        .map(|f| (f.file_id, f.size_bytes))
                        .collect();
                    let _ = fr.for_each_page(&mut r, &mut |_, file, off, data| {
                        if let Some((_, s)) = sizes.iter().find(|(id, _)| *id == file) {
                            assert!(
                                *s == 0 || off + data.len() as u64 <= *s,
                                "write past the file"
                            );
                        }
                        Ok(())
                    });
                }
            }
        }
    }

    /// A reader that hands out its bytes in awkward pieces, as a virtual device
    /// whose client fills buffers of varying, non-page sizes does.
    struct Choppy<'a> {
        rest: &'a [u8],
        sizes: std::iter::Cycle<std::slice::Iter<'static, usize>>,
        cur: usize,
    }

    impl Read for Choppy<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let avail = self.fill_buf()?;
            let k = avail.len().min(out.len());
            out[..k].copy_from_slice(&avail[..k]);
            self.consume(k);
            Ok(k)
        }
    }

    impl BufRead for Choppy<'_> {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            if self.cur == 0 {
                self.cur = (*self.sizes.next().unwrap_or(&1)).min(self.rest.len());
            }
            Ok(&self.rest[..self.cur])
        }
        fn consume(&mut self, k: usize) {
            let k = k.min(self.cur);
            self.rest = &self.rest[k..];
            self.cur -= k;
        }
    }

    /// Every file image a restore of `r` writes, by (portion, file id).
    fn images(r: &mut dyn BufRead) -> std::collections::BTreeMap<(u8, u16), Vec<u8>> {
        let (mut fr, _) = FamilyReader::open(r).expect("open");
        let mut out = std::collections::BTreeMap::new();
        fr.for_each_page(r, &mut |portion, file, off, data| {
            let img: &mut Vec<u8> = out.entry((portion as u8, file)).or_default();
            let end = off as usize + data.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[off as usize..end].copy_from_slice(data);
            Ok(())
        })
        .expect("walk");
        out
    }

    #[test]
    fn pages_split_across_reads_land_as_from_one_slice() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mssql");
        static SIZES: [usize; 8] = [1, 8191, 8193, 512, 65_537, 3, 16_384, 4096 + 7];
        for name in [
            "sql2019-northwind-full.bak",
            "sql2008r2-db2-diff.bak",
            "sql2008r2-stripe-1of2.bak",
        ] {
            let bytes = std::fs::read(dir.join(name)).expect("fixture");
            let whole = images(&mut &bytes[..]);
            assert!(!whole.is_empty(), "{name}: the walk wrote nothing");
            let mut choppy = Choppy {
                rest: &bytes,
                sizes: SIZES.iter().cycle(),
                cur: 0,
            };
            assert!(
                images(&mut choppy) == whole,
                "{name}: pieces of odd sizes restore other bytes"
            );
        }
    }

    #[test]
    fn guid_round_trip() {
        let g = "11BD2A6D-81F2-214A-BADE-5F225071E793";
        assert_eq!(crate::catalog::format_guid(&guid_bytes(g)), g);
    }
}
