//! The per-database catalog file, `NAME.openvdi.json`: what SQL Server keeps in
//! `sys.databases`, the file headers and msdb, reduced to what BACKUP and RESTORE
//! need — the files, the end of the log, the backup chain (last full backup, the
//! pages changed since it, where the next log backup starts) and, while a restore
//! sequence is in progress, where redo stands.
//!
//! It is written atomically and durably: a temporary file is written and fsynced,
//! renamed over the old one, and the directory fsynced. A crash (of the process or
//! of the machine) leaves either the old or the new catalog, never a torn one, and a
//! catalog that [`Catalog::save`] returned from is on disk. A restore relies on this:
//! it saves the catalog as RESTORING before it truncates or writes any file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::page::Lsn;

/// Catalog format version.
pub const VERSION: u32 = 1;

/// Whether the database is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DbState {
    /// Online.
    Online,
    /// Restored WITH NORECOVERY: waiting for differential or log restores.
    Restoring,
}

/// Data file or log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Rows data (`D` in FILELISTONLY).
    Data,
    /// Log (`L`).
    Log,
}

/// One database file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File id (1 = primary data file, 2 = log, as SQL Server numbers them).
    pub file_id: u16,
    /// Logical name (`NAME`, `NAME_log`).
    pub logical_name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Data or log.
    pub kind: FileKind,
}

/// The last full (not copy-only) backup: the differential base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullBackupInfo {
    /// BackupSetGUID of that backup; differentials name it as their base.
    pub backup_set_guid: String,
    /// Its checkpoint LSN (DatabaseBackupLSN of differentials based on it).
    pub checkpoint_lsn: Lsn,
    /// Its first and last LSN.
    pub first_lsn: Lsn,
    /// Last LSN (exclusive end).
    pub last_lsn: Lsn,
}

/// Where a restore sequence stands (state RESTORING).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    /// The full backup restored first: its checkpoint LSN (what a differential's
    /// DatabaseBackupLSN must equal).
    pub base_checkpoint_lsn: Lsn,
    /// That full backup's BackupSetGUID.
    pub base_guid: String,
    /// That full backup's first and last LSN (the database keeps it as its
    /// differential base after recovery).
    #[serde(default)]
    pub base_first_lsn: Lsn,
    #[serde(default)]
    pub base_last_lsn: Lsn,
    /// Redo point: the LastLSN of the last backup restored. A log backup applies if
    /// FirstLSN ≤ redo < LastLSN.
    pub redo_lsn: Lsn,
    /// What was restored last (1 full, 5 differential, 2 log: HEADERONLY BackupType).
    pub last_backup_type: u8,
    /// Whether a differential was restored (only one may be).
    pub diff_applied: bool,
    /// Whether the restored backups came from a foreign (real SQL Server) stream: then
    /// there is no openvdi log to redo and chain checks use the LSNs in the stream.
    pub foreign: bool,
    /// Foreign sequences: the last database or differential backup restored (its
    /// kind and LastLSN), which is what the data files reflect, and how many log
    /// backups were stored after it without their records being applied.
    #[serde(default)]
    pub data_reflects: Option<(String, Lsn)>,
    /// Log backups of a foreign sequence stored but not applied.
    #[serde(default)]
    pub unapplied_logs: u32,
    /// Data pages (4 on) this sequence wrote with an LSN after the base's
    /// checkpoint — the restored database's differential bitmap at recovery —
    /// collected as the pages were written. `None`: not known (a catalog of an
    /// older engine, or a stream whose writes were not page-aligned); recovery
    /// then reads the data file for them.
    #[serde(default)]
    pub changed: Option<Vec<(u32, u32)>>,
}

/// A database's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version.
    pub version: u32,
    /// Database name.
    pub name: String,
    /// Database GUID.
    pub database_guid: String,
    /// Content seed (also stored in the data file's header page).
    pub seed: u64,
    /// ONLINE or RESTORING.
    pub state: DbState,
    /// The files.
    pub files: Vec<FileInfo>,
    /// Records in the log so far: the next record gets [`Lsn::of_record`] of this.
    pub next_record: u64,
    /// When the database was created (seconds since the epoch).
    pub created_unix: u64,
    /// Last full backup (the differential base).
    pub last_full: Option<FullBackupInfo>,
    /// Data pages changed since the last full backup, as sorted (start, count) runs.
    pub changed_pages: Vec<(u32, u32)>,
    /// Where the next log backup starts; `None` until the first full backup.
    pub log_backup_lsn: Option<Lsn>,
    /// A restore sequence in progress.
    pub restore: Option<RestoreProgress>,
    /// Server name recorded for a database restored from a foreign backup.
    #[serde(default)]
    pub origin: Option<String>,
}

impl Catalog {
    /// The catalog file of database `name` in `dir`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.openvdi.json"))
    }

    /// Read it.
    pub fn load(dir: &Path, name: &str) -> Result<Catalog, EngineError> {
        let p = Catalog::path(dir, name);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::NotFound(name.to_string()))
            }
            Err(e) => return Err(EngineError::io(format!("reading {}", p.display()), e)),
        };
        let c: Catalog = serde_json::from_str(&text).map_err(|e| EngineError::Catalog {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if c.version != VERSION {
            return Err(EngineError::Catalog {
                name: name.to_string(),
                reason: format!("version {} (this engine reads {VERSION})", c.version),
            });
        }
        Ok(c)
    }

    /// Write it atomically and durably: write-temp → fsync → rename → fsync(dir).
    pub fn save(&self, dir: &Path) -> Result<(), EngineError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = Catalog::path(dir, &self.name);
        let tmp = dir.join(format!(
            ".{}.openvdi.json.tmp{}",
            self.name,
            std::process::id()
        ));
        let text = serde_json::to_string_pretty(self).map_err(|e| EngineError::Catalog {
            name: self.name.clone(),
            reason: e.to_string(),
        })?;
        // O_NOFOLLOW: a link planted at the temporary name is refused, not written
        // through.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| EngineError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &p)
            .map_err(|e| EngineError::io(format!("renaming {}", p.display()), e))?;
        crate::db::sync_dir(dir)
    }

    /// The file with this id.
    pub fn file(&self, id: u16) -> Option<&FileInfo> {
        self.files.iter().find(|f| f.file_id == id)
    }

    /// The LSN the next log record will get (the end of the log).
    pub fn end_lsn(&self) -> Lsn {
        Lsn::of_record(self.next_record)
    }

    /// Mark data pages changed (for the next differential).
    pub fn mark_changed(&mut self, pages: &[u32]) {
        let mut all = expand(&self.changed_pages);
        all.extend_from_slice(pages);
        all.sort_unstable();
        all.dedup();
        self.changed_pages = compress(&all);
    }

    /// The data pages changed since the last full backup, sorted.
    pub fn changed(&self) -> Vec<u32> {
        expand(&self.changed_pages)
    }
}

pub(crate) fn expand(runs: &[(u32, u32)]) -> Vec<u32> {
    runs.iter()
        .flat_map(|&(s, n)| s..s.saturating_add(n))
        .collect()
}

/// Sorted, deduplicated page ids to (start, count) runs.
pub fn compress(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((s, n)) if *s + *n == p => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// A new random GUID in SQL Server's display form (`8-4-4-4-12`, upper case).
pub fn new_guid() -> String {
    format_guid(&random_bytes())
}

/// 16 random bytes from the kernel (falling back to time and pid mixing if
/// /dev/urandom is unreadable, which only weakens uniqueness, not correctness).
pub fn random_bytes() -> [u8; 16] {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return b;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let x = t ^ (u128::from(std::process::id()) << 64);
    x.to_le_bytes()
}

/// Format 16 bytes as a GUID the way Windows does (first three groups little-endian).
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs() {
        assert_eq!(compress(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(expand(&[(1, 3), (7, 1)]), vec![1, 2, 3, 7]);
    }

    #[test]
    fn guid_format() {
        let g = format_guid(&[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 8, 9, 10, 11, 12, 13, 14, 15,
        ]);
        assert_eq!(g, "00112233-4455-6677-0809-0A0B0C0D0E0F");
        assert_ne!(new_guid(), new_guid());
    }

    #[test]
    fn save_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog {
            version: VERSION,
            name: "x y".into(),
            database_guid: new_guid(),
            seed: 7,
            state: DbState::Online,
            files: vec![],
            next_record: 3,
            created_unix: 1,
            last_full: None,
            changed_pages: vec![],
            log_backup_lsn: Some(Lsn::of_record(2)),
            restore: None,
            origin: None,
        };
        c.mark_changed(&[5, 4, 9]);
        c.save(d.path()).unwrap();
        let back = Catalog::load(d.path(), "x y").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.changed(), vec![4, 5, 9]);
        assert!(matches!(
            Catalog::load(d.path(), "nope"),
            Err(EngineError::NotFound(_))
        ));
    }
}
