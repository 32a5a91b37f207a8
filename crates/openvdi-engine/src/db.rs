//! Databases in a data directory: `NAME.mdf` (data, file id 1, logical name `NAME`),
//! `NAME_log.ldf` (log, file id 2, logical name `NAME_log`) and the catalog
//! `NAME.openvdi.json`.
//!
//! * [`DataDir::create`] writes every page deterministically (see [`crate::page`]).
//! * [`DataDir::modify`] rewrites N data pages at new LSNs and appends one log record
//!   per page, so that differential backups (changed pages) and log backups (new
//!   records) carry something.
//! * [`Database::redo`] replays log records onto the data file, which is how a log
//!   restore rolls forward.
//!
//! Files: every database file is opened with `O_NOFOLLOW` ([`open_file`]) and every
//! new one created with `O_CREAT|O_EXCL|O_NOFOLLOW` ([`create_file`]), so a symbolic
//! link planted at a file's name is refused, never followed. Whatever writes or
//! deletes a database's files first takes an exclusive `flock` on each of them
//! ([`lock`], [`lock_files`]) and keeps it for the length of the operation: a
//! second engine process (another data directory, another process) that reaches
//! the same files fails with [`EngineError::Locked`] instead of writing into them.
//! `flock` locks belong to the open file description, so the lock dies with the
//! process that held it, even under SIGKILL.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::catalog::{self, Catalog, DbState, FileInfo, FileKind};
use crate::error::EngineError;
use crate::page::{self, LogRecord, Lsn, PAGE_SIZE};

/// The smallest database: header, PFS, GAM, SGAM and 4 data pages.
pub const MIN_DATA_PAGES: u32 = 8;
/// Pages written per I/O when creating files.
const CHUNK_PAGES: usize = 128;

/// A directory of databases.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// A database's summary, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseInfo {
    /// Name.
    pub name: String,
    /// ONLINE / RESTORING.
    pub state: DbState,
    /// Data file pages.
    pub data_pages: u64,
    /// Log file pages.
    pub log_pages: u64,
    /// End of the log.
    pub end_lsn: Lsn,
    /// Last full backup's checkpoint LSN.
    pub last_full_lsn: Option<Lsn>,
    /// Pages changed since the last full backup.
    pub changed_pages: u64,
    /// The files.
    pub files: Vec<FileInfo>,
}

/// The default data directory: `$OPENVDI_DATA_DIR`, else `$XDG_DATA_HOME/openvdi`, else
/// `~/.local/share/openvdi`.
/// Milliseconds since the Unix epoch (a log record's time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPENVDI_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("openvdi");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/openvdi")
}

/// `O_NOFOLLOW` for [`OpenOptions::custom_flags`].
fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// An I/O error on `path`, with the cases the engine reports by name: ELOOP from
/// `O_NOFOLLOW` (a symbolic link), EEXIST from `O_EXCL`.
fn file_error(path: &Path, what: &str, e: std::io::Error) -> EngineError {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return EngineError::Symlink(path.to_path_buf());
    }
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        return if link {
            EngineError::Symlink(path.to_path_buf())
        } else {
            EngineError::FileExists(path.to_path_buf())
        };
    }
    EngineError::io(format!("{what} {}", path.display()), e)
}

/// Open an existing database file (read-only, or read-write) without following a
/// symbolic link at its last component (`open(2)` with `O_NOFOLLOW`).
pub fn open_file(path: &Path, write: bool) -> Result<File, EngineError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| file_error(path, "opening", e))
}

/// Open a database file for writing, creating it if it is missing, never through a
/// symbolic link (`O_CREAT|O_NOFOLLOW`, no `O_EXCL`): for files the database's
/// own catalog lists.
pub fn open_or_create_file(path: &Path) -> Result<File, EngineError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| file_error(path, "opening", e))
}

/// Create a new database file: `O_CREAT|O_EXCL|O_NOFOLLOW`. Fails with
/// [`EngineError::FileExists`] if anything is at `path` (with
/// [`EngineError::Symlink`] if it is a link, dangling or not).
pub fn create_file(path: &Path) -> Result<File, EngineError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| file_error(path, "creating", e))
}

/// How long [`lock`] keeps trying a lock that is held. Long enough for a lock that
/// is only held by accident: a descriptor of this process, closed already, that a
/// child forked by another thread still holds between its fork and its exec (the
/// descriptors are close-on-exec, and a `flock` belongs to the open file
/// description, so the lock lives as long as that child's copy). Short enough that
/// a file really in use by another engine fails the statement at once for a user.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Take the exclusive lock on an open database file (`flock(LOCK_EX|LOCK_NB)`, tried
/// again every millisecond for up to [`LOCK_PATIENCE`]: `flock` has no timed form):
/// held until every descriptor of this open file is closed. Fails with
/// [`EngineError::Locked`] when another process (or another open of the file) holds
/// it.
pub fn lock(f: &File, path: &Path) -> Result<(), EngineError> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let held = loop {
        match rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                if std::time::Instant::now() >= deadline {
                    break Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => break r,
        }
    };
    match held {
        Ok(()) => {
            // A restore may have replaced the file under the name between our open
            // and the lock (`replace_with_empty`): the lock on the old file then
            // guards nothing. Same as a held lock: the file is busy.
            use std::os::unix::fs::MetadataExt;
            let ours = f.metadata().map(|m| (m.dev(), m.ino()));
            let named = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()));
            match (ours, named) {
                (Ok(a), Ok(b)) if a == b => Ok(()),
                _ => Err(EngineError::Locked(path.to_path_buf())),
            }
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            Err(EngineError::Locked(path.to_path_buf()))
        }
        Err(e) => Err(EngineError::io(
            format!("locking {}", path.display()),
            std::io::Error::from_raw_os_error(e.raw_os_error()),
        )),
    }
}

/// Replace the file at `path`, which `old` (locked with [`lock`]) holds open, by an
/// empty one, locked, with the same permissions — without truncating `old`.
///
/// Truncating a large file whose pages are cached costs the kernel time in
/// proportion to them (0.4–0.5 s for 1 GiB here), and a restore that did it between
/// its first reads and the next would stall clients with short GetCommand timeouts.
/// The empty file is made under `.NAME.restoring` beside it (a leftover of a crash
/// is removed first: the lock on `old` says nobody else is at it) and renamed over
/// `path`; the caller drops `old` wherever freeing its blocks costs nobody a wait.
pub fn replace_with_empty(old: &File, path: &Path) -> Result<File, EngineError> {
    let name = path
        .file_name()
        .ok_or_else(|| EngineError::Invalid(format!("{} has no file name", path.display())))?;
    let mut staged = std::ffi::OsString::from(".");
    staged.push(name);
    staged.push(".restoring");
    let staged = path.with_file_name(staged);
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(file_error(&staged, "removing", e));
        }
        _ => {}
    }
    let fresh = create_file(&staged)?;
    let done = (|| {
        lock(&fresh, &staged)?;
        let perms = old
            .metadata()
            .map_err(|e| file_error(path, "reading the permissions of", e))?
            .permissions();
        fresh
            .set_permissions(perms)
            .map_err(|e| file_error(&staged, "setting the permissions of", e))?;
        std::fs::rename(&staged, path).map_err(|e| file_error(path, "replacing", e))
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    Ok(fresh)
}

/// Exclusive locks on a database's files, released when dropped.
#[derive(Debug)]
pub struct FileLocks {
    held: Vec<File>,
}

impl FileLocks {
    /// No locks yet.
    pub fn new() -> FileLocks {
        FileLocks { held: Vec::new() }
    }

    /// Keep `f`, whose lock was taken with [`lock`].
    pub fn keep(&mut self, f: File) {
        self.held.push(f);
    }
}

impl Default for FileLocks {
    fn default() -> Self {
        FileLocks::new()
    }
}

/// Lock every file of `files` that exists (opened read-only with `O_NOFOLLOW`; a
/// missing file has nothing to protect). A symbolic link fails with
/// [`EngineError::Symlink`].
pub fn lock_files(files: &[FileInfo]) -> Result<FileLocks, EngineError> {
    let mut locks = FileLocks::new();
    for f in files {
        let h = match open_file(&f.path, false) {
            Ok(h) => h,
            Err(EngineError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        lock(&h, &f.path)?;
        locks.keep(h);
    }
    Ok(locks)
}

/// fsync a directory, so that a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(format!("syncing directory {}", dir.display()), e))
}

/// Check a database name: 1..=128 characters, no `/`, NUL or leading `.`.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    if name.is_empty()
        || name.chars().count() > 128
        || name.contains('/')
        || name.contains('\0')
        || name.starts_with('.')
    {
        return Err(EngineError::Invalid(format!(
            "'{name}' is not a valid database name (1-128 characters, no '/', NUL or leading '.')"
        )));
    }
    Ok(())
}

/// Parse a size: bytes, or with a suffix K/KB/KiB, M/MB/MiB, G/GB/GiB (all binary, as
/// SQL Server's CREATE DATABASE SIZE), or `Np`/`Npages`.
pub fn parse_size(s: &str) -> Result<u64, EngineError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| EngineError::Invalid(format!("'{s}' is not a size")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "p" | "page" | "pages" => PAGE_SIZE as u64,
        _ => return Err(EngineError::Invalid(format!("'{s}': unknown size unit"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| EngineError::Invalid(format!("'{s}' is too large")))
}

impl DataDir {
    /// A data directory at `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<DataDir, EngineError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| EngineError::io(format!("creating {}", root.display()), e))?;
        Ok(DataDir { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Default file paths of database `name`.
    pub fn default_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.root.join(format!("{name}.mdf")),
            self.root.join(format!("{name}_log.ldf")),
        )
    }

    /// Whether database `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        Catalog::path(&self.root, name).exists()
    }

    /// Open database `name`.
    pub fn database(&self, name: &str) -> Result<Database, EngineError> {
        validate_name(name)?;
        let cat = Catalog::load(&self.root, name)?;
        Ok(Database {
            dir: self.root.clone(),
            cat,
        })
    }

    /// Names of all databases, sorted.
    pub fn names(&self) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| EngineError::io(format!("listing {}", self.root.display()), e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(db) = n.strip_suffix(".openvdi.json") {
                if !db.starts_with('.') {
                    out.push(db.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Summaries of all databases.
    pub fn list(&self) -> Result<Vec<DatabaseInfo>, EngineError> {
        self.names()?
            .iter()
            .map(|n| self.database(n).and_then(|d| d.info()))
            .collect()
    }

    /// Which database (other than `except`) uses the file at `path`.
    pub fn owner_of(&self, path: &Path, except: &str) -> Option<String> {
        let p = normalize(path);
        self.names()
            .ok()?
            .into_iter()
            .filter(|n| n != except)
            .find(|n| {
                Catalog::load(&self.root, n)
                    .map(|c| c.files.iter().any(|f| normalize(&f.path) == p))
                    .unwrap_or(false)
            })
    }

    /// Create database `name` of `size` bytes of data (rounded up to whole pages, at
    /// least [`MIN_DATA_PAGES`]) and a log file of an eighth of that (at least 16
    /// pages), every page written.
    pub fn create(&self, name: &str, size: u64) -> Result<Database, EngineError> {
        validate_name(name)?;
        if self.exists(name) {
            return Err(EngineError::Exists(name.to_string()));
        }
        let data_pages = size
            .div_ceil(PAGE_SIZE as u64)
            .max(u64::from(MIN_DATA_PAGES));
        let data_pages = u32::try_from(data_pages)
            .map_err(|_| EngineError::Invalid(format!("{size} bytes is too large")))?;
        let log_pages = (data_pages / 8).max(16);
        let (dp, lp) = self.default_paths(name);
        let seed = u64::from_le_bytes(catalog::random_bytes()[..8].try_into().unwrap_or([7; 8]));
        // New files only (O_EXCL): a leftover or planted file is never overwritten.
        let df = create_file(&dp)?;
        lock(&df, &dp)?;
        let lf = match create_file(&lp) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&dp);
                return Err(e);
            }
        };
        lock(&lf, &lp)?;
        write_data_file(&df, &dp, seed, data_pages)?;
        write_empty_log(&lf, &lp, 0, log_pages)?;
        lf.sync_all()
            .map_err(|e| EngineError::io(format!("syncing {}", lp.display()), e))?;
        let cat = Catalog {
            version: catalog::VERSION,
            name: name.to_string(),
            database_guid: catalog::new_guid(),
            seed,
            state: DbState::Online,
            files: vec![
                FileInfo {
                    file_id: 1,
                    logical_name: name.to_string(),
                    path: dp,
                    kind: FileKind::Data,
                },
                FileInfo {
                    file_id: 2,
                    logical_name: format!("{name}_log"),
                    path: lp,
                    kind: FileKind::Log,
                },
            ],
            next_record: 0,
            created_unix: catalog::now_unix(),
            last_full: None,
            changed_pages: Vec::new(),
            log_backup_lsn: None,
            restore: None,
            origin: None,
        };
        cat.save(&self.root)?;
        Ok(Database {
            dir: self.root.clone(),
            cat,
        })
    }

    /// Change `pages` data pages of database `name`: each gets new content at a new
    /// LSN and one log record. Returns the pages changed.
    pub fn modify(&self, name: &str, pages: u32) -> Result<Vec<u32>, EngineError> {
        let mut db = self.database(name)?;
        db.modify(pages)
    }

    /// Remove database `name`: the files its own catalog lists, then the catalog.
    /// Every file is locked first (so a file another engine process is working on
    /// is not deleted under it); a symbolic link at a file's path is removed itself,
    /// its target never (`unlink(2)` does not follow links).
    pub fn drop_database(&self, name: &str) -> Result<(), EngineError> {
        let db = self.database(name)?;
        let mut locks = FileLocks::new();
        for f in &db.cat.files {
            match open_file(&f.path, false) {
                Ok(h) => {
                    lock(&h, &f.path)?;
                    locks.keep(h);
                }
                Err(EngineError::Symlink(_)) => {}
                Err(EngineError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for f in &db.cat.files {
            match std::fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::io(format!("removing {}", f.path.display()), e)),
            }
        }
        std::fs::remove_file(Catalog::path(&self.root, name))
            .map_err(|e| EngineError::io("removing the catalog", e))?;
        sync_dir(&self.root)?;
        drop(locks);
        Ok(())
    }
}

/// A path made absolute (for comparing paths of different databases).
pub fn normalize(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        }
    })
}

fn write_data_file(f: &File, path: &Path, seed: u64, pages: u32) -> Result<(), EngineError> {
    let mut buf = vec![0u8; CHUNK_PAGES * PAGE_SIZE];
    let mut p = 0u32;
    while p < pages {
        let n = (pages - p).min(CHUNK_PAGES as u32);
        for i in 0..n {
            let off = i as usize * PAGE_SIZE;
            page::data_page(&mut buf[off..off + PAGE_SIZE], seed, 1, p + i, Lsn::ZERO);
        }
        f.write_all_at(
            &buf[..n as usize * PAGE_SIZE],
            u64::from(p) * PAGE_SIZE as u64,
        )
        .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))?;
        p += n;
    }
    f.sync_all()
        .map_err(|e| EngineError::io(format!("syncing {}", path.display()), e))
}

/// Write empty log pages `from..to` into the open log file `f` at `path`.
fn write_empty_log(f: &File, path: &Path, from: u32, to: u32) -> Result<(), EngineError> {
    let mut page = vec![0u8; PAGE_SIZE];
    for p in from..to {
        page::empty_log_page(&mut page, 2, p);
        f.write_all_at(&page, u64::from(p) * PAGE_SIZE as u64)
            .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// An open database: its directory and catalog.
#[derive(Clone, Debug)]
pub struct Database {
    dir: PathBuf,
    /// The catalog (save with [`Database::save`]).
    pub cat: Catalog,
}

impl Database {
    /// Build a handle from a catalog (a database being restored).
    pub fn from_catalog(dir: &Path, cat: Catalog) -> Database {
        Database {
            dir: dir.to_path_buf(),
            cat,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cat.name
    }

    /// Write the catalog.
    pub fn save(&self) -> Result<(), EngineError> {
        self.cat.save(&self.dir)
    }

    /// The data file.
    pub fn data_file(&self) -> Result<&FileInfo, EngineError> {
        self.cat
            .files
            .iter()
            .find(|f| f.kind == FileKind::Data)
            .ok_or_else(|| {
                EngineError::Invalid(format!("database '{}' has no data file", self.name()))
            })
    }

    /// The log file.
    pub fn log_file(&self) -> Result<&FileInfo, EngineError> {
        self.cat
            .files
            .iter()
            .find(|f| f.kind == FileKind::Log)
            .ok_or_else(|| {
                EngineError::Invalid(format!("database '{}' has no log file", self.name()))
            })
    }

    /// Pages in a file (its length / 8 KiB).
    pub fn pages_of(&self, f: &FileInfo) -> Result<u64, EngineError> {
        let len = std::fs::symlink_metadata(&f.path)
            .map_err(|e| EngineError::io(format!("reading {}", f.path.display()), e))?
            .len();
        Ok(len / PAGE_SIZE as u64)
    }

    /// Summary.
    pub fn info(&self) -> Result<DatabaseInfo, EngineError> {
        Ok(DatabaseInfo {
            name: self.cat.name.clone(),
            state: self.cat.state,
            data_pages: self.pages_of(self.data_file()?)?,
            log_pages: self.pages_of(self.log_file()?)?,
            end_lsn: self.cat.end_lsn(),
            last_full_lsn: self.cat.last_full.as_ref().map(|f| f.checkpoint_lsn),
            changed_pages: self.cat.changed_pages.iter().map(|r| u64::from(r.1)).sum(),
            files: self.cat.files.clone(),
        })
    }

    /// Append log records and write their log pages (not synced, see
    /// [`Database::sync_log`]); returns their numbers. The log file grows (in
    /// 16-page steps of empty log pages) when it is full.
    pub fn append_log(&mut self, recs: &[(u16, u16, u32)]) -> Result<Vec<u64>, EngineError> {
        let lf = self.log_file()?.clone();
        let f = open_file(&lf.path, true)?;
        let mut have = self.pages_of(&lf)? as u32;
        let mut numbers = Vec::with_capacity(recs.len());
        let mut cur: Option<(u32, Vec<u8>)> = None;
        let time_ms = now_ms();
        let flush = |f: &File, pg: u32, buf: &[u8]| {
            f.write_all_at(buf, u64::from(pg) * PAGE_SIZE as u64)
                .map_err(|e| EngineError::io(format!("writing {}", lf.path.display()), e))
        };
        for &(kind, file_id, page_id) in recs {
            let number = self.cat.next_record;
            let (pg, off) = LogRecord::place(number);
            if cur.as_ref().is_none_or(|c| c.0 != pg) {
                if let Some((p, b)) = cur.take() {
                    flush(&f, p, &b)?;
                }
                if pg >= have {
                    let to = (pg + 1).div_ceil(16) * 16;
                    write_empty_log(&f, &lf.path, have, to)?;
                    have = to;
                }
                let mut b = vec![0u8; PAGE_SIZE];
                f.read_exact_at(&mut b, u64::from(pg) * PAGE_SIZE as u64)
                    .map_err(|e| EngineError::io(format!("reading {}", lf.path.display()), e))?;
                cur = Some((pg, b));
            }
            if let Some((_, b)) = cur.as_mut() {
                let r = LogRecord {
                    number,
                    kind,
                    file_id,
                    page_id,
                    time_ms,
                };
                b[off..off + page::LOG_RECORD_SIZE].copy_from_slice(&r.encode());
                let slots = (number % page::RECORDS_PER_PAGE + 1) as u16;
                page::write_header(
                    b,
                    page::page_type::LOG,
                    lf.file_id,
                    pg,
                    Lsn::of_record(number),
                    slots,
                );
                page::seal(b);
            }
            numbers.push(number);
            self.cat.next_record += 1;
        }
        if let Some((p, b)) = cur.take() {
            flush(&f, p, &b)?;
        }
        Ok(numbers)
    }

    /// Make the log file durable. [`Database::append_log`] does not, so that the
    /// checkpoint at the start of every backup costs no fsync (a process crash keeps
    /// the page cache; only a power loss could lose a record whose backup then never
    /// completed either).
    pub fn sync_log(&self) -> Result<(), EngineError> {
        let lf = self.log_file()?;
        open_file(&lf.path, false)?
            .sync_data()
            .map_err(|e| EngineError::io(format!("syncing {}", lf.path.display()), e))
    }

    /// Change `n` data pages (see [`DataDir::modify`]).
    pub fn modify(&mut self, n: u32) -> Result<Vec<u32>, EngineError> {
        if self.cat.state != DbState::Online {
            return Err(EngineError::Invalid(format!(
                "database '{}' is restoring; finish the restore sequence WITH RECOVERY first",
                self.name()
            )));
        }
        // Writes the data and log files: hold their locks throughout.
        let _locks = lock_files(&self.cat.files)?;
        let df = self.data_file()?.clone();
        let total = self.pages_of(&df)? as u32;
        let candidates = total.saturating_sub(4);
        if n > candidates {
            return Err(EngineError::Invalid(format!(
                "database '{}' has only {candidates} data pages to modify",
                self.name()
            )));
        }
        // Choose n distinct data pages, deterministically from the log position.
        let mut x = self.cat.seed ^ self.cat.next_record.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut chosen = std::collections::BTreeSet::new();
        while (chosen.len() as u32) < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chosen.insert(4 + (x % u64::from(candidates)) as u32);
        }
        let pages: Vec<u32> = chosen.into_iter().collect();
        let recs: Vec<(u16, u16, u32)> = pages
            .iter()
            .map(|&p| (page::record_kind::MODIFY, df.file_id, p))
            .collect();
        let numbers = self.append_log(&recs)?;
        self.sync_log()?;
        let f = open_file(&df.path, true)?;
        let mut buf = vec![0u8; PAGE_SIZE];
        for (&p, &num) in pages.iter().zip(&numbers) {
            page::data_page(&mut buf, self.cat.seed, df.file_id, p, Lsn::of_record(num));
            f.write_all_at(&buf, u64::from(p) * PAGE_SIZE as u64)
                .map_err(|e| EngineError::io(format!("writing {}", df.path.display()), e))?;
        }
        f.sync_data()
            .map_err(|e| EngineError::io(format!("syncing {}", df.path.display()), e))?;
        self.cat.mark_changed(&pages);
        self.save()?;
        Ok(pages)
    }

    /// The content seed the data file's header page records (`None` when the page
    /// is not openvdi's, as after restoring a real SQL Server backup). A restore
    /// takes the seed from here, so the catalog and the data file never disagree.
    pub fn header_seed(&self) -> Result<Option<u64>, EngineError> {
        let df = self.data_file()?;
        let f = open_file(&df.path, false)?;
        let mut hdr = vec![0u8; PAGE_SIZE];
        f.read_exact_at(&mut hdr, 0)
            .map_err(|e| EngineError::io(format!("reading {}", df.path.display()), e))?;
        let body = &hdr[page::HEADER_SIZE..];
        Ok((&body[..8] == page::SEED_MAGIC)
            .then(|| u64::from_le_bytes(body[8..16].try_into().unwrap_or([0; 8]))))
    }

    /// Data pages (4 on) whose header LSN is after `lsn`: what changed since the
    /// backup whose checkpoint that is, as a restored database's differential
    /// bitmap must say.
    pub fn pages_changed_after(&self, lsn: Lsn) -> Result<Vec<u32>, EngineError> {
        let df = self.data_file()?;
        let f = open_file(&df.path, false)?;
        let total = self.pages_of(df)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 128 * PAGE_SIZE];
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(128) as usize;
            f.read_exact_at(&mut buf[..n * PAGE_SIZE], at * PAGE_SIZE as u64)
                .map_err(|e| EngineError::io(format!("reading {}", df.path.display()), e))?;
            for (k, p) in buf[..n * PAGE_SIZE].chunks(PAGE_SIZE).enumerate() {
                let id = at + k as u64;
                if id >= 4 && page::header(p).lsn > lsn {
                    out.push(id as u32);
                }
            }
            at += n as u64;
        }
        Ok(out)
    }

    /// Clears log records `from..to` from the log file (a restore that stopped at
    /// `from`): the page holding record `from - 1` keeps the records before it, with
    /// the header it had when that record was written; later pages become empty log
    /// pages, as the live log's were before those records existed.
    pub fn truncate_log(&self, from: u64, to: u64) -> Result<(), EngineError> {
        if from >= to {
            return Ok(());
        }
        let lf = self.log_file()?;
        let f = open_file(&lf.path, true)?;
        let (first_pg, _) = LogRecord::place(from);
        let (last_pg, _) = LogRecord::place(to - 1);
        let mut buf = vec![0u8; PAGE_SIZE];
        for pg in first_pg..=last_pg {
            let at = u64::from(pg) * PAGE_SIZE as u64;
            let keep = if pg == first_pg {
                from % page::RECORDS_PER_PAGE
            } else {
                0
            };
            if keep == 0 {
                page::empty_log_page(&mut buf, lf.file_id, pg);
            } else {
                f.read_exact_at(&mut buf, at)
                    .map_err(|e| EngineError::io(format!("reading {}", lf.path.display()), e))?;
                let cut = page::HEADER_SIZE + keep as usize * page::LOG_RECORD_SIZE;
                buf[cut..].fill(0);
                page::write_header(
                    &mut buf,
                    page::page_type::LOG,
                    lf.file_id,
                    pg,
                    Lsn::of_record(from - 1),
                    keep as u16,
                );
                page::seal(&mut buf);
            }
            f.write_all_at(&buf, at)
                .map_err(|e| EngineError::io(format!("writing {}", lf.path.display()), e))?;
        }
        f.sync_data()
            .map_err(|e| EngineError::io(format!("syncing {}", lf.path.display()), e))
    }

    /// Read log records `from..to` (record numbers) from the log file.
    pub fn read_log(&self, from: u64, to: u64) -> Result<Vec<LogRecord>, EngineError> {
        let lf = self.log_file()?;
        let f = open_file(&lf.path, false)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; PAGE_SIZE];
        let mut loaded = None;
        for n in from..to {
            let (pg, off) = LogRecord::place(n);
            if loaded != Some(pg) {
                f.read_exact_at(&mut buf, u64::from(pg) * PAGE_SIZE as u64)
                    .map_err(|e| EngineError::io(format!("reading {}", lf.path.display()), e))?;
                loaded = Some(pg);
            }
            let r = LogRecord::decode(&buf[off..off + page::LOG_RECORD_SIZE]).ok_or_else(|| {
                EngineError::Invalid(format!("log record {n} of '{}' is damaged", self.name()))
            })?;
            if r.number != n {
                return Err(EngineError::Invalid(format!(
                    "log record {n} of '{}' holds record {}",
                    self.name(),
                    r.number
                )));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Redo log records `from..to` onto the data file: each MODIFY record's page is
    /// regenerated at the record's LSN with the seed found in the data file's header
    /// page. Returns the pages written.
    pub fn redo(&self, from: u64, to: u64) -> Result<Vec<u32>, EngineError> {
        let df = self.data_file()?;
        let seed = self.header_seed()?.ok_or_else(|| {
            EngineError::Invalid(format!(
                "the data file of '{}' has no openvdi header page; its log cannot be redone",
                self.name()
            ))
        })?;
        let f = open_file(&df.path, true)?;
        let mut buf = vec![0u8; PAGE_SIZE];
        let mut pages = Vec::new();
        for r in self.read_log(from, to)? {
            if r.kind == page::record_kind::MODIFY && r.file_id == df.file_id {
                page::data_page(
                    &mut buf,
                    seed,
                    r.file_id,
                    r.page_id,
                    Lsn::of_record(r.number),
                );
                f.write_all_at(&buf, u64::from(r.page_id) * PAGE_SIZE as u64)
                    .map_err(|e| EngineError::io(format!("writing {}", df.path.display()), e))?;
                pages.push(r.page_id);
            }
        }
        f.sync_data()
            .map_err(|e| EngineError::io(format!("syncing {}", df.path.display()), e))?;
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flake this guards against: another thread's child, between its fork and
    /// its exec, holds a copy of a descriptor this process already closed, and with
    /// it the file's lock. Here a child holds it openly (as its stdout) for 0.2 s:
    /// a new open's lock is refused while the child lives (checked), and `lock`
    /// gets it once the child is gone instead of failing the statement.
    #[test]
    fn a_lock_held_by_a_passing_copy_of_our_descriptor_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.mdf");
        let first = create_file(&path).unwrap();
        lock(&first, &path).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .stdout(first.try_clone().unwrap())
            .spawn()
            .unwrap();
        drop(first);
        let second = open_file(&path, true).unwrap();
        assert_eq!(
            rustix::fs::flock(
                &second,
                rustix::fs::FlockOperation::NonBlockingLockExclusive
            ),
            Err(rustix::io::Errno::WOULDBLOCK),
            "the child holds the lock of the closed descriptor"
        );
        lock(&second, &path).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(parse_size("10p").unwrap(), 81920);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("db 1").is_ok());
        for bad in ["", "a/b", ".x", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_modify_redo() {
        let d = tempfile::tempdir().unwrap();
        let dir = DataDir::open(d.path()).unwrap();
        let db = dir.create("t", 1 << 20).unwrap();
        assert!(matches!(
            dir.create("t", 1 << 20),
            Err(EngineError::Exists(_))
        ));
        let info = db.info().unwrap();
        assert_eq!(info.data_pages, 128);
        assert_eq!(info.log_pages, 16);
        // Every page names its own file and page.
        let data = std::fs::read(d.path().join("t.mdf")).unwrap();
        for (i, p) in data.chunks(PAGE_SIZE).enumerate() {
            let h = page::header(p);
            assert_eq!((h.file_id, h.page_id), (1, i as u32));
        }
        let before = data.clone();
        let changed = dir.modify("t", 10).unwrap();
        assert_eq!(changed.len(), 10);
        let after = std::fs::read(d.path().join("t.mdf")).unwrap();
        let diff: Vec<usize> = (0..128)
            .filter(|&i| {
                before[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
                    != after[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
            })
            .collect();
        assert_eq!(
            diff,
            changed.iter().map(|&p| p as usize).collect::<Vec<_>>()
        );
        let db = dir.database("t").unwrap();
        assert_eq!(db.cat.next_record, 10);
        assert_eq!(db.cat.changed(), changed);
        // Redo onto the old image reproduces the new one.
        std::fs::write(d.path().join("t.mdf"), &before).unwrap();
        assert_eq!(db.redo(0, 10).unwrap().len(), 10);
        assert_eq!(std::fs::read(d.path().join("t.mdf")).unwrap(), after);
        // The log grows past its initial 16 pages.
        dir.modify("t", 120).unwrap();
        let mut db = dir.database("t").unwrap();
        let recs: Vec<_> = (0..4000)
            .map(|_| (page::record_kind::CHECKPOINT, 0, 0))
            .collect();
        db.append_log(&recs).unwrap();
        assert!(db.info().unwrap().log_pages > 16);
        assert_eq!(
            db.read_log(0, db.cat.next_record).unwrap().len() as u64,
            db.cat.next_record
        );
        assert_eq!(dir.names().unwrap(), vec!["t".to_string()]);
        assert!(dir.modify("t", 1000).is_err());
    }
}
#[cfg(test)]
mod log_page_tests {
    use super::*;
    /// Every page of a log file, appended to or not, names itself and verifies.
    #[test]
    fn log_pages_verify() {
        let d = tempfile::tempdir().unwrap();
        let dir = DataDir::open(d.path()).unwrap();
        let mut db = dir.create("t", 1 << 20).unwrap();
        db.append_log(&[(page::record_kind::CHECKPOINT, 0, 0)])
            .unwrap();
        let l = std::fs::read(d.path().join("t_log.ldf")).unwrap();
        for (i, p) in l.chunks(PAGE_SIZE).enumerate() {
            let h = page::header(p);
            assert_eq!((h.file_id, h.page_id), (2, i as u32));
            assert!(page::verify(p), "page {i}");
        }
    }
}
