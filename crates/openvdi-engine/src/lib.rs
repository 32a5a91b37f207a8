//! # openvdi-engine — a SQL Server-shaped server for VDI clients
//!
//! SQL Server cannot run here, yet a VDI client (a backup tool) is only worth
//! something against a server that issues commands the way SQL Server does. This
//! crate plays SQL Server's part: it executes `BACKUP` and `RESTORE` statements that
//! name virtual devices, drives the server half of the core protocol
//! ([`openvdi::ServerSet`]) with one thread per device, and writes and reads backup
//! streams in Microsoft Tape Format, the format of a real `.bak` (via
//! `openvdi-mtf`). Real SQL Server backups restore through it.
//!
//! The same code runs in the client's process (call [`Engine::execute`] from a
//! thread while other threads drive the client half) or as its own process (the
//! `openvdi-engine` and `openvdi-sqlcmd` binaries).
//!
//! ```no_run
//! use openvdi_engine::{Engine, Output};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::open("/tmp/openvdi-data")?;
//! engine.create_database("sales", 64 << 20)?;
//! // … a client creates the virtual device set "{GUID}" and serves its commands …
//! let run = engine.execute_detailed("BACKUP DATABASE sales TO VIRTUAL_DEVICE='{GUID}' WITH CHECKSUM");
//! for out in &run.outputs {
//!     if let Output::Message(m) = out { println!("{m}"); }
//! }
//! if let Some(report) = run.backups().next() {
//!     println!("{} pages, LSN {}..{}", report.pages, report.first_lsn, report.last_lsn);
//! }
//! # Ok(()) }
//! ```
//!
//! Modules: [`sql`] (lexer and parser), [`db`] / [`page`] / [`catalog`] (databases,
//! pages, the backup chain), [`vdi`] (the device threads), [`fault`] (fault
//! injection), [`sqlcmd`] (the sqlcmd front end's argument handling and output).

#![forbid(unsafe_code)]

pub mod catalog;
pub mod conformance;
pub mod db;
pub mod error;
mod exec;
pub mod fault;
pub mod media;
mod mtf_io;
pub mod page;
pub mod password;
pub mod serve;
pub mod sql;
pub mod sqlcmd;
pub mod stream;
pub mod vdi;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use db::DatabaseInfo;
pub use error::{EngineError, Message, SqlError};
pub use fault::FaultPlan;
pub use page::Lsn;
pub use sql::Param;

// ---------------------------------------------------------------------------
// Public API used by the backup tool (openvdi-cli). Keep it stable.
// ---------------------------------------------------------------------------

/// One output of a statement, as a client library would receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An informational message (e.g. 4035 "Processed N pages …", 3014).
    Message(Message),
    /// A result set (RESTORE HEADERONLY / FILELISTONLY / LABELONLY).
    ResultSet(ResultSet),
}

/// A result set: column names and rows of display values.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResultSet {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// SQL Server's type of each column, for a front end that sends typed values
    /// (the TDS endpoint). Empty, or shorter than `columns`, means NVARCHAR for the
    /// rest; the values stay display strings either way (see [`ColumnType`]).
    #[serde(skip)]
    pub types: Vec<ColumnType>,
    /// Produced under `SET NOCOUNT ON`: no "(N rows affected)" after it.
    #[serde(skip)]
    pub nocount: bool,
}

/// The SQL Server type of a result-set column, and the display form its values
/// take in [`ResultSet::rows`]: integers and numerics in decimal, BIT as `0`/`1`,
/// DATETIME as `YYYY-MM-DD hh:mm:ss.fff`, UNIQUEIDENTIFIER as the 36-character
/// hyphenated form. A front end that cannot read a value in its column's form
/// falls back to NVARCHAR for that column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum ColumnType {
    /// nvarchar (the fallback).
    #[default]
    NVarChar,
    /// tinyint.
    TinyInt,
    /// smallint.
    SmallInt,
    /// int.
    Int,
    /// bigint.
    BigInt,
    /// bit.
    Bit,
    /// datetime.
    DateTime,
    /// numeric(precision, scale); LSNs are numeric(25,0).
    Numeric(u8, u8),
    /// uniqueidentifier.
    UniqueIdentifier,
}

impl ResultSet {
    /// The type of column `i` (NVARCHAR where none is given).
    pub fn column_type(&self, i: usize) -> ColumnType {
        self.types.get(i).copied().unwrap_or_default()
    }
}

/// Cancels the statements an engine runs for one session: a TDS ATTENTION, or a
/// client connection that dropped. [`Cancel::cancel`] signals an abort on the
/// virtual device set a running BACKUP or RESTORE has open (`SignalAbort`: its
/// device threads and the client see `VD_E_ABORT`, the statement fails with SQL
/// Server's messages and 3013), stops a statement still waiting for the client to
/// create its set, and stops the batch before its next statement.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    inner: std::sync::Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: std::sync::atomic::AtomicBool,
    sets: std::sync::Mutex<Vec<openvdi::ServerSet>>,
    /// A statement under this token is waiting for its client to create the set.
    waiting: std::sync::atomic::AtomicBool,
}

impl Cancel {
    /// A token not cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancel: abort the open set, if any; later statements do not run.
    pub fn cancel(&self) {
        // The flag is stored before the list is read and `watch` pushes before it
        // reads the flag, both under the mutex: one of them sees the other.
        self.inner
            .cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let sets = self.inner.sets.lock().unwrap_or_else(|p| p.into_inner());
        for s in sets.iter() {
            let _ = s.signal_abort();
        }
    }

    /// Whether [`Cancel::cancel`] was called (since the last [`Cancel::reset`]).
    pub fn is_cancelled(&self) -> bool {
        self.inner
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a statement under this token is waiting for its client to create its
    /// virtual device set (what a front end shows as "waiting for the backup
    /// application", and the condition a test cancels on).
    pub fn is_waiting_for_set(&self) -> bool {
        self.inner.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn set_waiting(&self, on: bool) {
        self.inner
            .waiting
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Make the token usable for the next request.
    pub fn reset(&self) {
        self.inner
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.inner
            .cancelled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// A statement opened `set`: abort it on cancel (at once if cancelled already).
    pub(crate) fn watch(&self, set: &openvdi::ServerSet) {
        self.inner
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(set.clone());
        if self.is_cancelled() {
            let _ = set.signal_abort();
        }
    }

    /// The statement ended: forget its sets.
    pub(crate) fn release(&self) {
        self.inner
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl ResultSet {
    /// The value of `column` in row `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let c = self
            .columns
            .iter()
            .position(|n| n.eq_ignore_ascii_case(column))?;
        self.rows.get(row)?.get(c)?.as_deref()
    }
}

/// The kind of a backup (HEADERONLY's BackupType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Full database backup (BackupType 1).
    Full,
    /// Differential database backup (5).
    Differential,
    /// Transaction log backup (2).
    Log,
}

impl BackupKind {
    /// HEADERONLY's BackupType number.
    pub fn type_number(self) -> u8 {
        match self {
            BackupKind::Full => 1,
            BackupKind::Differential => 5,
            BackupKind::Log => 2,
        }
    }

    /// From HEADERONLY's BackupType number.
    pub fn from_type_number(n: u8) -> Option<BackupKind> {
        match n {
            1 => Some(BackupKind::Full),
            5 => Some(BackupKind::Differential),
            2 => Some(BackupKind::Log),
            _ => None,
        }
    }
}

/// What a successful BACKUP did: for the backup tool's catalog and chain logic.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackupReport {
    /// Database name.
    pub database: String,
    /// Server name recorded in the backup.
    pub server_name: String,
    /// Full, differential or log.
    pub kind: BackupKind,
    /// COPY_ONLY.
    pub copy_only: bool,
    /// WITH CHECKSUM.
    pub checksum: bool,
    /// BackupSetGUID.
    pub backup_set_guid: String,
    /// Media set GUID (same in every stripe).
    pub media_set_guid: String,
    /// Number of devices (media families).
    pub family_count: u32,
    /// FirstLSN.
    pub first_lsn: Lsn,
    /// LastLSN (exclusive end).
    pub last_lsn: Lsn,
    /// CheckpointLSN.
    pub checkpoint_lsn: Lsn,
    /// DatabaseBackupLSN: the checkpoint LSN of the full backup this one is based on
    /// (for a differential: its base; for a full: the previous full's; 0 if none).
    pub database_backup_lsn: Lsn,
    /// Differential base GUID (BackupSetGUID of the base full backup), if any.
    pub differential_base_guid: Option<String>,
    /// Differential base LSN (the base full backup's CheckpointLSN), for a
    /// differential.
    pub differential_base_lsn: Option<Lsn>,
    /// Pages processed, per file: (logical name, pages).
    pub files: Vec<(String, u64)>,
    /// Total pages processed.
    pub pages: u64,
    /// Bytes of MTF stream written over all devices.
    pub bytes: u64,
    /// Elapsed seconds.
    pub seconds: f64,
    /// The completion message text (3014).
    pub message: String,
}

/// What a successful RESTORE did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RestoreReport {
    /// Database restored into.
    pub database: String,
    /// Full, differential or log.
    pub kind: BackupKind,
    /// Files written: (logical name, path, pages).
    pub files: Vec<(String, PathBuf, u64)>,
    /// Total pages written.
    pub pages: u64,
    /// Bytes of stream read.
    pub bytes: u64,
    /// Elapsed seconds.
    pub seconds: f64,
    /// Whether the database is online afterwards (RECOVERY) or still restoring.
    pub recovered: bool,
    /// The completion message text (3014).
    pub message: String,
}

/// A structured report of a statement.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Report {
    /// A BACKUP.
    Backup(BackupReport),
    /// A RESTORE DATABASE / LOG.
    Restore(RestoreReport),
}

/// Everything a batch produced: outputs in order, a report per successful BACKUP or
/// RESTORE, and the error that stopped it, if one did.
#[derive(Clone, Debug, Default)]
pub struct Execution {
    /// Messages and result sets, in order.
    pub outputs: Vec<Output>,
    /// Reports of the statements that succeeded.
    pub reports: Vec<Report>,
    /// The error that ended the batch (statements after it did not run).
    pub error: Option<SqlError>,
    /// Whether the run was cancelled ([`Cancel`]) before it ended.
    pub cancelled: bool,
    /// `SET NOCOUNT` as the run left it (it lasts across the run's batches).
    pub nocount: bool,
}

impl Execution {
    /// The BACKUP reports.
    pub fn backups(&self) -> impl Iterator<Item = &BackupReport> {
        self.reports.iter().filter_map(|r| match r {
            Report::Backup(b) => Some(b),
            Report::Restore(_) => None,
        })
    }

    /// The RESTORE reports.
    pub fn restores(&self) -> impl Iterator<Item = &RestoreReport> {
        self.reports.iter().filter_map(|r| match r {
            Report::Restore(b) => Some(b),
            Report::Backup(_) => None,
        })
    }

    /// The result sets.
    pub fn result_sets(&self) -> impl Iterator<Item = &ResultSet> {
        self.outputs.iter().filter_map(|o| match o {
            Output::ResultSet(r) => Some(r),
            Output::Message(_) => None,
        })
    }
}

/// The engine: a data directory of databases, plus how to run statements.
#[derive(Clone, Debug)]
pub struct Engine {
    dir: db::DataDir,
    fault: FaultPlan,
    server_name: String,
    open_timeout: Duration,
    cancel: Option<Cancel>,
}

impl Engine {
    /// An engine over the data directory `data_dir` (created if missing). No faults.
    pub fn open(data_dir: impl Into<PathBuf>) -> Result<Engine, EngineError> {
        Ok(Engine {
            dir: db::DataDir::open(data_dir)?,
            fault: FaultPlan::none(),
            server_name: default_server_name(),
            open_timeout: vdi::DEFAULT_OPEN_TIMEOUT,
            cancel: None,
        })
    }

    /// An engine over the default data directory (`OPENVDI_DATA_DIR`, else
    /// `$XDG_DATA_HOME/openvdi`, else `~/.local/share/openvdi`), with the faults in
    /// `OPENVDI_FAULT`.
    pub fn from_env() -> Result<Engine, EngineError> {
        let plan = FaultPlan::from_env().map_err(EngineError::Invalid)?;
        Ok(Engine::open(db::default_data_dir())?.with_fault(plan))
    }

    /// Use these faults.
    pub fn with_fault(mut self, plan: FaultPlan) -> Engine {
        self.fault = plan;
        self
    }

    /// How long BACKUP/RESTORE wait for the client to create the set (default 30 s).
    pub fn with_open_timeout(mut self, d: Duration) -> Engine {
        self.open_timeout = d;
        self
    }

    /// The server name written into backups (default: `OPENVDI_SERVER_NAME`, else the
    /// host name).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Engine {
        self.server_name = name.into();
        self
    }

    /// Statements run by this engine (and its clones made after this call) can be
    /// cancelled through `cancel`; give each session its own token.
    pub fn with_cancel(mut self, cancel: Cancel) -> Engine {
        self.cancel = Some(cancel);
        self
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.root()
    }

    /// The fault plan in force.
    pub fn fault(&self) -> &FaultPlan {
        &self.fault
    }

    /// The server name written into backups.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Create database `name` with `size` bytes of data pages (see
    /// [`db::DataDir::create`]).
    pub fn create_database(&self, name: &str, size: u64) -> Result<DatabaseInfo, EngineError> {
        self.dir.create(name, size)?.info()
    }

    /// Change `pages` data pages of `name` and log them; returns the page ids.
    pub fn modify(&self, name: &str, pages: u32) -> Result<Vec<u32>, EngineError> {
        self.dir.modify(name, pages)
    }

    /// All databases.
    pub fn list_databases(&self) -> Result<Vec<DatabaseInfo>, EngineError> {
        self.dir.list()
    }

    /// One database.
    pub fn database_info(&self, name: &str) -> Result<DatabaseInfo, EngineError> {
        self.dir.database(name)?.info()
    }

    /// Remove a database and its files.
    pub fn drop_database(&self, name: &str) -> Result<(), EngineError> {
        self.dir.drop_database(name)
    }

    /// Run T-SQL (one batch; `GO` lines split it into several). Returns the outputs,
    /// or the first error (its `info` holds the messages printed before it).
    pub fn execute(&self, sql: &str) -> Result<Vec<Output>, SqlError> {
        let run = self.execute_detailed(sql);
        match run.error {
            None => Ok(run.outputs),
            Some(mut e) => {
                let mut info: Vec<Message> = run
                    .outputs
                    .into_iter()
                    .filter_map(|o| match o {
                        Output::Message(m) => Some(m),
                        Output::ResultSet(_) => None,
                    })
                    .collect();
                info.append(&mut e.info);
                e.info = info;
                Err(e)
            }
        }
    }

    /// Run T-SQL and return everything: outputs, reports of each BACKUP and RESTORE,
    /// and the error that stopped the run (statements after it do not run).
    pub fn execute_detailed(&self, sql: &str) -> Execution {
        self.execute_with_params(sql, &[])
    }

    /// [`Engine::execute_detailed`] with parameters bound to the batch's `@name`s
    /// (what `sp_executesql` does; see [`sql::Param`]: values are bound as
    /// literals after lexing, never spliced into the text).
    pub fn execute_with_params(&self, sql: &str, params: &[(String, sql::Param)]) -> Execution {
        let mut run = Execution::default();
        let batches = match sql::lexer::split_batches(sql) {
            Ok(b) => b,
            Err(e) => {
                run.error = Some(e);
                return run;
            }
        };
        for batch in batches {
            for _ in 0..batch.count.max(1) {
                self.run_batch_with(&batch.text, params, &mut run);
                if run.error.is_some() {
                    return run;
                }
            }
        }
        run
    }

    /// Run one batch, continuing into `run`. Stops at the first error.
    pub fn run_batch(&self, text: &str, run: &mut Execution) {
        self.run_batch_with(text, &[], run)
    }

    /// [`Engine::run_batch`] with parameters (see [`Engine::execute_with_params`]).
    pub fn run_batch_with(&self, text: &str, params: &[(String, sql::Param)], run: &mut Execution) {
        let stmts = match sql::parse_batch_with(text, params) {
            Ok(s) => s,
            Err(e) => {
                run.error = Some(e);
                return;
            }
        };
        for s in stmts {
            if self.cancelled() {
                run.cancelled = true;
                return;
            }
            if let sql::Statement::Session(sql::Session::NoCount(on)) = &s.stmt {
                run.nocount = *on;
            }
            let mut outs = Vec::new();
            let result = exec::execute(self, &s.stmt, &mut outs);
            for o in &mut outs {
                if let Output::ResultSet(rs) = o {
                    rs.nocount = run.nocount;
                }
            }
            if let Some(c) = &self.cancel {
                c.release();
            }
            if self.cancelled() {
                run.cancelled = true;
            }
            match result {
                Ok(report) => {
                    run.outputs
                        .extend(outs.into_iter().map(|o| relocate(o, s.line)));
                    run.reports.extend(report);
                }
                Err(e) => {
                    run.outputs
                        .extend(outs.into_iter().map(|o| relocate(o, s.line)));
                    run.error = Some(e.at_line(s.line));
                    return;
                }
            }
        }
    }

    pub(crate) fn dir(&self) -> &db::DataDir {
        &self.dir
    }

    pub(crate) fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    pub(crate) fn cancel_token(&self) -> Option<&Cancel> {
        self.cancel.as_ref()
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancel::is_cancelled)
    }
}

fn relocate(o: Output, line: u32) -> Output {
    match o {
        Output::Message(mut m) => {
            m.line = line;
            Output::Message(m)
        }
        other => other,
    }
}

/// `OPENVDI_SERVER_NAME`, else the host name, else "openvdi".
fn default_server_name() -> String {
    if let Ok(s) = std::env::var("OPENVDI_SERVER_NAME") {
        if !s.is_empty() {
            return s;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "openvdi".to_string())
}
