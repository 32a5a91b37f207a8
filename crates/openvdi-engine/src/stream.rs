//! The engine's view of a backup stream: what a backup set records ([`SetMeta`]),
//! what a media family carries ([`Chunk`]s of pages) and which part of the backup a
//! page belongs to ([`Portion`]). The MTF encoding of these lives in the engine's
//! `mtf_io` module.

use crate::catalog::FileKind;
use crate::page::Lsn;
use crate::BackupKind;

/// One database file as a backup records it (FILELISTONLY's row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// FileId.
    pub file_id: u16,
    /// LogicalName.
    pub logical_name: String,
    /// PhysicalName (as recorded: a Windows path for real SQL Server backups).
    pub physical_name: String,
    /// D or L.
    pub kind: FileKind,
    /// Size in bytes.
    pub size_bytes: u64,
    /// FileGroupName (PRIMARY for data, NULL for the log).
    pub filegroup: Option<String>,
    /// FileGroupId, where the stream records it.
    pub filegroup_id: Option<u32>,
    /// SourceBlockSize, where the stream records it.
    pub source_block_size: Option<u32>,
    /// BackupSizeInBytes: the bytes of this file's pages the backup carries.
    pub backup_bytes: Option<u64>,
}

/// A backup set's metadata (HEADERONLY's row and the media header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetMeta {
    /// DatabaseName.
    pub database_name: String,
    /// ServerName.
    pub server_name: String,
    /// MachineName.
    pub machine_name: String,
    /// UserName.
    pub user_name: String,
    /// BackupType.
    pub kind: BackupKind,
    /// IsCopyOnly.
    pub copy_only: bool,
    /// HasBackupChecksums.
    pub checksum: bool,
    /// BackupSetGUID.
    pub backup_set_guid: String,
    /// Media set GUID (MediaSetId).
    pub media_set_guid: String,
    /// FamilyCount.
    pub family_count: u32,
    /// FamilySequenceNumber of this family (1-based).
    pub family_number: u32,
    /// FirstLSN.
    pub first_lsn: Lsn,
    /// LastLSN.
    pub last_lsn: Lsn,
    /// CheckpointLSN.
    pub checkpoint_lsn: Lsn,
    /// DatabaseBackupLSN.
    pub database_backup_lsn: Lsn,
    /// DifferentialBaseGUID.
    pub differential_base_guid: Option<String>,
    /// BackupName.
    pub name: Option<String>,
    /// BackupDescription.
    pub description: Option<String>,
    /// BackupStartDate (seconds since the epoch).
    pub start_unix: u64,
    /// BackupFinishDate.
    pub finish_unix: u64,
    /// The files.
    pub files: Vec<FileMeta>,
    /// Bytes of page data this family says it carries (a reader fills it in):
    /// for an openvdi stream its chunk tables, for a SQL Server stream the page
    /// counts of the set's file records. A restore creates no file larger than
    /// this (over the set) plus [`UNFILLED_SLACK`].
    pub carried_bytes: u64,
    /// Whether the stream was written by openvdi (its pages carry openvdi content and
    /// its log can be redone) rather than by a real SQL Server.
    pub openvdi: bool,
    /// SoftwareVersionMajor/Minor/Build.
    pub software_version: (u32, u32, u32),
    /// Database version.
    pub database_version: u32,
    /// DatabaseCreationDate (seconds since the epoch; 0 unknown).
    pub database_creation_unix: u64,
    /// The database collation as a SQL Server stream records it (four bytes: LCID
    /// and comparison flags, then the SQL sort id); `None` for openvdi streams,
    /// whose collation is the engine's.
    pub collation: Option<[u8; 5]>,
    /// BackupSize: bytes of the backup set on the media (filled in from the end of
    /// the stream, when it was read).
    pub backup_size: Option<u64>,
}

/// The backup set's metadata from the head of one media family's stream: the
/// media header, the backup set's blocks and its metadata (MQCI), nothing after.
/// For a backup application that watches the bytes it stores, so it knows what it
/// holds (LSNs, GUIDs, database) before it tells the server the backup is safe —
/// without waiting for the statement's messages, which an external server may
/// never send in a form it can parse. The stream is untrusted: a damaged head is
/// an error, never a panic.
pub fn read_head(r: &mut dyn std::io::BufRead) -> Result<SetMeta, crate::SqlError> {
    crate::mtf_io::FamilyReader::open(r).map(|(_, m)| m)
}

/// How much larger than the pages a backup set carries a restored file may be.
/// Files are legitimately larger than their pages (SQL Server backs up allocated
/// extents only; a log file has unused space), but a size field far beyond the
/// stream is damage or an attack: restoring it would create a huge sparse file.
/// 64 MiB covers every real backup among the fixtures (the largest gap is a 5.7 MiB
/// log of which the backup carries one page) with room to spare, and is small next
/// to the 2^40 a hostile size field can claim.
pub const UNFILLED_SLACK: u64 = 64 << 20;

/// A run of pages of one file that a family carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// File id.
    pub file_id: u16,
    /// First page.
    pub start_page: u32,
    /// Pages.
    pub pages: u32,
}

/// Which part of the backup a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Portion {
    /// The data portion (MSDA/MQDA).
    Data,
    /// The log portion (MSTL/MQTL).
    Log,
}

/// Split `chunks` into runs of at most `per` pages (the unit the families share).
pub fn split_chunks(chunks: &[Chunk], per: u32) -> Vec<Chunk> {
    let mut out = Vec::new();
    for c in chunks {
        let mut s = c.start_page;
        let end = c.start_page + c.pages;
        while s < end {
            let n = (end - s).min(per);
            out.push(Chunk {
                file_id: c.file_id,
                start_page: s,
                pages: n,
            });
            s += n;
        }
    }
    out
}

/// Page runs from a sorted list of page ids.
pub fn chunks_of(file_id: u16, pages: &[u32]) -> Vec<Chunk> {
    crate::catalog::compress(pages)
        .into_iter()
        .map(|(s, n)| Chunk {
            file_id,
            start_page: s,
            pages: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking() {
        let c = chunks_of(1, &[0, 1, 2, 3, 10, 11]);
        assert_eq!(c.len(), 2);
        let s = split_chunks(&c, 3);
        assert_eq!(
            s.iter()
                .map(|c| (c.start_page, c.pages))
                .collect::<Vec<_>>(),
            vec![(0, 3), (3, 1), (10, 2)]
        );
    }
}
