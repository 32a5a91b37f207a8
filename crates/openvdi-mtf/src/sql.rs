//! SQL Server's own metadata inside an MTF stream: the records of the `MQCI` stream
//! (`SCIN` for the backup set, `SFGI` per filegroup, `SFIN` per file) and the log
//! range an `MSTL` block records.
//!
//! None of this is documented by Microsoft. Every offset below was worked out from
//! the real backups in `tests/fixtures/mssql/` (SQL Server 2008 R2, 2012, 2016 and
//! 2019) and is checked by tests against what their README states; where a field
//! is not understood it is not read, so nothing here stands in for a fact.
//!
//! `MQCI` is a plain sequence of records, each `tag: [u8; 4]`, `len: u32` (the
//! whole record, header included), then the body; the records fill the stream
//! exactly (checked on every fixture). Strings are `(byte length: u16, offset:
//! u16)` pairs pointing into their own record, UTF-16LE.
//!
//! The input is untrusted: any length or offset that points outside its record is
//! an error, never a panic.

use crate::unpack_date;

/// One record of an `MQCI` stream: its tag and its bytes (header included, so the
/// offsets below are from the record's start, as in a hex dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// `SCIN`, `SFGI`, `SFIN`, …
    pub tag: [u8; 4],
    /// The whole record.
    pub bytes: &'a [u8],
}

/// Split an `MQCI` stream into its records. Unknown tags are returned too; a length
/// that is shorter than a header or runs past the stream is an error.
pub fn records(mq: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < mq.len() {
        let head = mq
            .get(at..at + 8)
            .ok_or_else(|| format!("a metadata record at byte {at} is cut short"))?;
        let tag = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len < 8 {
            return Err(format!(
                "the {} record at byte {at} has an impossible length {len}",
                String::from_utf8_lossy(&tag)
            ));
        }
        let bytes = at
            .checked_add(len)
            .and_then(|end| mq.get(at..end))
            .ok_or_else(|| {
                format!(
                    "the {} record at byte {at} runs past the end of the metadata",
                    String::from_utf8_lossy(&tag)
                )
            })?;
        out.push(Record { tag, bytes });
        at += len;
    }
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .ok_or_else(|| format!("a metadata record is too short for its field at {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| format!("a metadata record is too short for its field at {at}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let lo = u64::from(u32_at(b, at)?);
    let hi = u64::from(u32_at(b, at + 4)?);
    Ok(lo | hi << 32)
}

fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    out.copy_from_slice(
        b.get(at..at + N)
            .ok_or_else(|| format!("a metadata record is too short for its field at {at}"))?,
    );
    Ok(out)
}

/// A `(byte length, offset)` string of a record.
fn string_at(rec: &[u8], at: usize) -> Result<String, String> {
    let len = usize::from(u16_at(rec, at)?);
    let off = usize::from(u16_at(rec, at + 2)?);
    if len == 0 {
        return Ok(String::new());
    }
    let b = rec
        .get(off..off + len)
        .ok_or_else(|| format!("a metadata string (field {at}) points outside its record"))?;
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    Ok(String::from_utf16_lossy(&units))
}

/// A packed MTF date, `None` when all zero (the field is not filled in).
fn date_at(rec: &[u8], at: usize) -> Result<Option<u64>, String> {
    let d: [u8; 5] = bytes_at(rec, at)?;
    Ok((d != [0; 5]).then(|| unpack_date(d)))
}

/// A GUID in SQL Server's display form from its 16 bytes in Windows order.
pub fn guid_text(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// The backup set as the `SCIN` record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRecord {
    /// +8: flags. 0x10 is set exactly in the fixtures whose streams carry CSUM
    /// streams (taken WITH CHECKSUM).
    pub flags: u32,
    /// +0x1b major, +0x1a minor, +0x18 build: the version of the SQL Server that
    /// wrote the backup (10.50.1600, 11.0.2100, 13.0.5081, 15.0.2080 in the fixtures).
    pub software_version: (u8, u8, u16),
    /// +0x20, +0x2a, +0x34, +0x3e: FirstLSN, LastLSN, CheckpointLSN and
    /// DatabaseBackupLSN, 10 bytes each (u32 VLF sequence, u32 block, u16 slot).
    /// A differential's DatabaseBackupLSN is its base's CheckpointLSN.
    pub first_lsn: [u8; 10],
    pub last_lsn: [u8; 10],
    pub checkpoint_lsn: [u8; 10],
    pub database_backup_lsn: [u8; 10],
    /// +0x48: when the database was created (packed MTF date).
    pub database_creation: Option<u64>,
    /// +0x4d: when the backup started.
    pub start: Option<u64>,
    /// +0x52: when it finished — zero in the head record (written before the data),
    /// filled in the copy in the trailing `MSLS` block.
    pub finish: Option<u64>,
    /// +0x57: msdb's `backupset.type` letter: `D` database, `I` differential, `L`
    /// log (`F`, `G`, `P`, `Q` for file and partial backups).
    pub type_letter: u8,
    /// +0x5e: the database version (661 for 2008 R2, 706 for 2012, 852 for 2016,
    /// 904 for 2019).
    pub database_version: u16,
    /// +0x60: bytes of data and log pages the set carries (the log as the MSTL
    /// ranges record it): 168 pages + 8 KiB of log = 1,384,448 in
    /// `sql2008r2-db2-full.bak`.
    pub carried_bytes: u64,
    /// +0x68: DatabaseName.
    pub database_name: String,
    /// +0x6c: ServerName (`MACHINE\INSTANCE` for a named instance).
    pub server_name: String,
    /// +0xd8: the database collation's four bytes (LCID in the low 20 bits, the
    /// comparison flags in the top byte) and its SQL sort id (+0xdc; 52 is
    /// SQL_Latin1_General_CP1_CI_AS, 0 a Windows collation).
    pub collation: [u8; 5],
}

impl SetRecord {
    /// Whether the backup was taken WITH CHECKSUM (flag 0x10).
    pub fn has_checksums(&self) -> bool {
        self.flags & 0x10 != 0
    }
}

/// Parse a `SCIN` record.
pub fn set_record(rec: &[u8]) -> Result<SetRecord, String> {
    if rec.get(..4) != Some(b"SCIN".as_slice()) {
        return Err("the metadata does not start with a SCIN record".into());
    }
    let version = bytes_at::<4>(rec, 0x18)?;
    Ok(SetRecord {
        flags: u32_at(rec, 8)?,
        software_version: (
            version[3],
            version[2],
            u16::from_le_bytes([version[0], version[1]]),
        ),
        first_lsn: bytes_at(rec, 0x20)?,
        last_lsn: bytes_at(rec, 0x2a)?,
        checkpoint_lsn: bytes_at(rec, 0x34)?,
        database_backup_lsn: bytes_at(rec, 0x3e)?,
        database_creation: date_at(rec, 0x48)?,
        start: date_at(rec, 0x4d)?,
        finish: date_at(rec, 0x52)?,
        type_letter: *rec.get(0x57).ok_or("the SCIN record is too short")?,
        database_version: u16_at(rec, 0x5e)?,
        carried_bytes: u64_at(rec, 0x60)?,
        database_name: string_at(rec, 0x68)?,
        server_name: string_at(rec, 0x6c)?,
        collation: bytes_at(rec, 0xd8)?,
    })
}

/// What a file record says the file is (+0x1c): 1 rows data, 2 log in every
/// fixture. (The flags word at +8 is no guide: 0x08 is set on the 2019 data file as
/// on every log file.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Rows data (FILELISTONLY `D`).
    Data,
    /// Transaction log (`L`).
    Log,
    /// Any other value (FILESTREAM, full-text): not understood.
    Other(u32),
}

/// One `SFIN` record: a database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// +8: flags (0x80: the backup carries pages of this data file).
    pub flags: u32,
    /// +0x14: FileId.
    pub file_id: u32,
    /// +0x18: pages of this file in the backup.
    pub pages: u32,
    /// +0x1c: data or log.
    pub file_type: FileType,
    /// +0x20: the source block size (512 or 4096).
    pub source_block_size: u32,
    /// +0x24: FileGroupId (1 PRIMARY; 0 for the log).
    pub filegroup_id: u32,
    /// +0x28: the file's size in bytes.
    pub size_bytes: u64,
    /// +0x30: LogicalName.
    pub logical_name: String,
    /// +0x34: PhysicalName (the source server's path).
    pub physical_name: String,
}

/// Parse an `SFIN` record.
pub fn file_record(rec: &[u8]) -> Result<FileRecord, String> {
    Ok(FileRecord {
        flags: u32_at(rec, 8)?,
        file_id: u32_at(rec, 0x14)?,
        pages: u32_at(rec, 0x18)?,
        file_type: match u32_at(rec, 0x1c)? {
            1 => FileType::Data,
            2 => FileType::Log,
            other => FileType::Other(other),
        },
        source_block_size: u32_at(rec, 0x20)?,
        filegroup_id: u32_at(rec, 0x24)?,
        size_bytes: u64_at(rec, 0x28)?,
        logical_name: string_at(rec, 0x30)?,
        physical_name: string_at(rec, 0x34)?,
    })
}

/// One `SFGI` record: a filegroup's id (+0xc) and name (+0x10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilegroupRecord {
    pub id: u32,
    pub name: String,
}

/// Parse an `SFGI` record.
pub fn filegroup_record(rec: &[u8]) -> Result<FilegroupRecord, String> {
    Ok(FilegroupRecord {
        id: u32_at(rec, 0xc)?,
        name: string_at(rec, 0x10)?,
    })
}

/// Everything an `MQCI` stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub set: SetRecord,
    pub filegroups: Vec<FilegroupRecord>,
    pub files: Vec<FileRecord>,
}

impl Metadata {
    /// The name of filegroup `id`, if a record names it.
    pub fn filegroup_name(&self, id: u32) -> Option<&str> {
        self.filegroups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.name.as_str())
    }
}

/// Parse a SQL Server `MQCI` stream: a `SCIN` record first, then its `SFGI` and
/// `SFIN` records (others are skipped).
pub fn metadata(mq: &[u8]) -> Result<Metadata, String> {
    let recs = records(mq)?;
    let first = recs.first().ok_or("the metadata stream is empty")?;
    let set = set_record(first.bytes)?;
    let mut filegroups = Vec::new();
    let mut files = Vec::new();
    for r in &recs[1..] {
        match &r.tag {
            b"SFGI" => filegroups.push(filegroup_record(r.bytes)?),
            b"SFIN" => files.push(file_record(r.bytes)?),
            _ => {}
        }
    }
    Ok(Metadata {
        set,
        filegroups,
        files,
    })
}

/// Where an `MSTL` block's log lies in the log file: its block-specific bytes (after
/// the 52-byte common header) hold the start at +8 and the end at +16, as byte
/// offsets in the log file. The block's `MQTL` stream carries `end - start` bytes
/// of log first, padded up to a multiple of 64 KiB with zeros the backup did not
/// take from the file (checked on every fixture: the non-zero bytes of each MQTL
/// end exactly at `end - start`). A block without log records `start = end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    pub start: u64,
    pub end: u64,
}

impl LogRange {
    /// Bytes of log the block holds.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the block holds no log.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The log range of an `MSTL` block from its block-specific bytes.
pub fn log_range(spec: &[u8]) -> Result<LogRange, String> {
    let start = u64_at(spec, 8)?;
    let end = u64_at(spec, 16)?;
    if end < start {
        return Err(format!(
            "an MSTL block records a log range that ends ({end}) before it starts ({start})"
        ));
    }
    Ok(LogRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_must_fill_the_stream() {
        let mut mq = b"SCIN".to_vec();
        mq.extend_from_slice(&12u32.to_le_bytes());
        mq.extend_from_slice(&[0; 4]);
        assert_eq!(records(&mq).unwrap().len(), 1);
        mq.push(0);
        assert!(records(&mq).is_err(), "a trailing byte is a cut record");
        let mut bad = b"SFIN".to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(records(&bad).is_err());
        let mut zero = b"SFIN".to_vec();
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert!(records(&zero).is_err(), "a zero length would loop forever");
    }

    #[test]
    fn strings_outside_their_record_are_errors() {
        let mut rec = vec![0u8; 64];
        rec[0x30..0x34].copy_from_slice(&[8, 0, 60, 0]);
        assert!(string_at(&rec, 0x30).is_err());
        rec[0x30..0x34].copy_from_slice(&[4, 0, 56, 0]);
        rec[56..60].copy_from_slice(&[b'a', 0, b'b', 0]);
        assert_eq!(string_at(&rec, 0x30).unwrap(), "ab");
    }

    #[test]
    fn log_ranges() {
        let mut spec = vec![0u8; 24];
        spec[8..16].copy_from_slice(&0x6dc00u64.to_le_bytes());
        spec[16..24].copy_from_slice(&0x90000u64.to_le_bytes());
        let r = log_range(&spec).unwrap();
        assert_eq!(r.len(), 0x22400);
        spec[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(log_range(&spec).is_err());
        assert!(log_range(&spec[..12]).is_err());
    }

    #[test]
    fn guids_print_in_windows_order() {
        let b = [
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(guid_text(&b), "00112233-4455-6677-8899-AABBCCDDEEFF");
    }
}
