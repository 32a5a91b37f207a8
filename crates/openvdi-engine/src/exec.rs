//! Executing statements: BACKUP (full, differential, log), RESTORE (database, log,
//! WITH RECOVERY alone), and RESTORE HEADERONLY / FILELISTONLY / LABELONLY /
//! VERIFYONLY, each over virtual devices with one thread per device.
//!
//! A restore reads the media header and backup set metadata from every device
//! first, then plans on the main thread — one media set, every family present,
//! the backup chain in order (3117, 3136, 4305, 4326), REPLACE and MOVE (3159,
//! 3154, 1834, 3156, 3234) — and only then lets the device threads write pages.
//! Any failure aborts the set, so the client sees `VD_E_ABORT`, and the statement
//! ends with SQL Server's messages and 3013.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Instant;

use crate::catalog::{self, Catalog, DbState, FileInfo, FileKind, FullBackupInfo, RestoreProgress};
use crate::db::{self, Database};
use crate::error::{msg, Message, SqlError};
use crate::media::{FileSink, Media};
use crate::mtf_io;
use crate::page::{self, record_kind, Lsn, PAGE_SIZE};
use crate::password::Credentials;
use crate::sql::{BackupOptions, Device, InfoKind, RestoreOptions, Statement, StopPoint, Target};
use crate::stream::{self, Chunk, FileMeta, Portion, SetMeta, UNFILLED_SLACK};
use crate::vdi::{DeviceWriter, Direction, TransferOptions};
use crate::{BackupKind, BackupReport, Engine, Output, Report, RestoreReport, ResultSet};

/// Pages per unit when spreading a backup over several devices.
const STRIPE_PAGES: u32 = 64;

/// Databases with a BACKUP or RESTORE running in this process (by catalog path):
/// SQL Server serializes them per database (message 3023).
static BUSY: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Holds a database's slot in [`BUSY`] for the length of a statement.
#[derive(Debug)]
struct BusyGuard(PathBuf);

impl BusyGuard {
    fn take(engine: &Engine, database: &str) -> Result<BusyGuard, SqlError> {
        let key = Catalog::path(engine.data_dir(), &database.to_ascii_lowercase());
        let mut b = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if b.contains(&key) {
            return Err(SqlError::msg(3023, "Backup, file manipulation operations (such as ALTER DATABASE ADD FILE) and encryption changes on a database must be serialized. Reissue the statement after the current backup or file manipulation operation is completed."));
        }
        b.push(key.clone());
        Ok(BusyGuard(key))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut b = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|k| k != &self.0);
    }
}

/// Execute one statement, appending its outputs; returns its report.
pub fn execute(
    engine: &Engine,
    stmt: &Statement,
    outs: &mut Vec<Output>,
) -> Result<Option<Report>, SqlError> {
    let verb = stmt.verb();
    if let Statement::Session(s) = stmt {
        return session(engine, s, outs).map(|()| None);
    }
    let _busy = match stmt {
        Statement::Backup { database, .. } | Statement::Restore { database, .. } => {
            Some(BusyGuard::take(engine, database).map_err(|e| e.terminating(verb))?)
        }
        Statement::RestoreInfo { .. } | Statement::Session(_) => None,
    };
    let r = match stmt {
        Statement::Backup {
            target,
            database,
            devices,
            options,
        } => backup(engine, *target, database, devices, options, outs)
            .map(|r| Some(Report::Backup(r))),
        Statement::Restore {
            target,
            database,
            devices,
            options,
        } if devices.is_empty() => {
            recover_only(engine, *target, database, options, outs).map(|r| Some(Report::Restore(r)))
        }
        Statement::Restore {
            target,
            database,
            devices,
            options,
        } => restore(engine, *target, database, devices, options, outs)
            .map(|r| r.map(Report::Restore)),
        Statement::RestoreInfo {
            kind,
            devices,
            options,
        } => info(engine, *kind, devices, options, outs).map(|()| None),
        Statement::Session(_) => Ok(None),
    };
    r.map_err(|e| e.terminating(verb))
}

/// The engine's @@VERSION text: what it emulates, and that it is openvdi.
fn version_text() -> String {
    format!(
        "Microsoft SQL Server {}.{}.{} compatible - openvdi-engine {} (emulates SQL Server's BACKUP/RESTORE to virtual devices) on Linux",
        mtf_io::SOFTWARE_MAJOR,
        mtf_io::SOFTWARE_MINOR,
        mtf_io::SOFTWARE_BUILD,
        env!("CARGO_PKG_VERSION")
    )
}

/// SET, USE, PRINT and SELECT of constants and server properties: answered as SQL
/// Server does, or accepted as harmless no-ops (SET options do not change anything
/// the engine does).
fn session(
    engine: &Engine,
    s: &crate::sql::Session,
    outs: &mut Vec<Output>,
) -> Result<(), SqlError> {
    use crate::sql::{SelectItem, Session};
    match s {
        // NOCOUNT is the run's state (`Execution::nocount`), kept by the caller.
        Session::Set(_) | Session::NoCount(_) => Ok(()),
        Session::Use(db) => {
            let system = ["master", "msdb", "model", "tempdb"]
                .iter()
                .any(|d| d.eq_ignore_ascii_case(db));
            if system || (db::validate_name(db).is_ok() && engine.dir().exists(db)) {
                outs.push(Output::Message(Message::info(
                    5701,
                    format!("Changed database context to '{db}'."),
                )));
                Ok(())
            } else {
                Err(msg::use_no_database(db))
            }
        }
        Session::Print(t) => {
            outs.push(Output::Message(Message::info(0, t.clone())));
            Ok(())
        }
        Session::Select(items) => {
            let mut columns = Vec::new();
            let mut row = Vec::new();
            let mut types = Vec::new();
            for (item, alias) in items {
                types.push(match item {
                    SelectItem::Number(n) if *n <= i32::MAX as u64 => crate::ColumnType::Int,
                    SelectItem::Number(_) => crate::ColumnType::BigInt,
                    SelectItem::Global(g)
                        if matches!(g.as_str(), "SPID" | "TRANCOUNT" | "ERROR" | "ROWCOUNT") =>
                    {
                        crate::ColumnType::Int
                    }
                    _ => crate::ColumnType::NVarChar,
                });
                let v = match item {
                    SelectItem::Number(n) => Some(n.to_string()),
                    SelectItem::Str(s) => Some(s.clone()),
                    SelectItem::Global(g) => match g.as_str() {
                        "VERSION" => Some(version_text()),
                        "SERVERNAME" => Some(engine.server_name().to_string()),
                        "SERVICENAME" => Some("MSSQLSERVER".to_string()),
                        "SPID" => Some(std::process::id().to_string()),
                        "LANGUAGE" => Some("us_english".to_string()),
                        "TRANCOUNT" | "ERROR" | "ROWCOUNT" => Some("0".to_string()),
                        other => {
                            return Err(SqlError::new(
                                137,
                                15,
                                format!("Must declare the scalar variable \"@@{other}\"."),
                            ))
                        }
                    },
                    SelectItem::ServerProperty(p) => match p.to_ascii_lowercase().as_str() {
                        "productversion" => Some(format!(
                            "{}.{}.{}.0",
                            mtf_io::SOFTWARE_MAJOR,
                            mtf_io::SOFTWARE_MINOR,
                            mtf_io::SOFTWARE_BUILD
                        )),
                        "productmajorversion" => Some(mtf_io::SOFTWARE_MAJOR.to_string()),
                        "productminorversion" => Some(mtf_io::SOFTWARE_MINOR.to_string()),
                        "productlevel" => Some("RTM".to_string()),
                        "edition" => Some("Developer Edition (64-bit)".to_string()),
                        "engineedition" => Some("3".to_string()),
                        "servername" | "machinename" => Some(engine.server_name().to_string()),
                        "instancename" => None,
                        "isclustered" | "ishadrenabled" => Some("0".to_string()),
                        // SQL Server answers NULL for a property it does not know.
                        _ => None,
                    },
                };
                columns.push(alias.clone().unwrap_or_default());
                row.push(v);
            }
            outs.push(Output::ResultSet(ResultSet {
                columns,
                rows: vec![row],
                types,
                nocount: false,
            }));
            Ok(())
        }
    }
}

fn transfer_options(
    engine: &Engine,
    block: Option<u32>,
    max: Option<u32>,
    count: Option<u32>,
) -> TransferOptions {
    TransferOptions {
        block_size: block.unwrap_or(crate::vdi::DEFAULT_BLOCK_SIZE),
        max_transfer: max.unwrap_or(crate::vdi::DEFAULT_MAX_TRANSFER),
        buffer_count: count,
        open_timeout: engine.open_timeout(),
        cancel: engine.cancel_token().cloned(),
    }
}

fn engine_err(e: crate::error::EngineError) -> SqlError {
    match e {
        crate::error::EngineError::Sql(s) => s,
        crate::error::EngineError::NotFound(n) => msg::no_database(&n),
        crate::error::EngineError::Locked(p) => msg::file_locked(&p.display().to_string()),
        crate::error::EngineError::Symlink(p) => msg::file_is_symlink(&p.display().to_string()),
        other => SqlError::msg(3013, other.to_string()),
    }
}

/// The "N.NNN seconds (R.RRR MB/sec)" tail of 3014.
fn rate_text(pages: u64, secs: f64) -> String {
    let secs = secs.max(0.001);
    let mb = pages as f64 * PAGE_SIZE as f64 / 1_048_576.0;
    format!("{secs:.3} seconds ({:.3} MB/sec)", mb / secs)
}

/// STATS: "N percent processed." messages as progress crosses each step.
#[derive(Debug)]
struct Progress {
    /// Bytes expected; 0 while unknown (no messages then).
    total: AtomicU64,
    done: AtomicU64,
    step: Option<u32>,
    msgs: Mutex<Vec<Message>>,
}

impl Progress {
    fn new(total: u64, step: Option<u32>) -> Progress {
        Progress {
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            step,
            msgs: Mutex::new(Vec::new()),
        }
    }

    /// Add to the expected total (a restore learns it family by family).
    fn expect(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    fn add(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let (Some(step), total) = (self.step, self.total.load(Ordering::Relaxed)) else {
            return;
        };
        if total == 0 {
            return;
        }
        let after = before + n;
        let pct = |v: u64| (v.min(total) * 100 / total) as u32;
        let (a, b) = (pct(before) / step, pct(after) / step);
        if b > a {
            if let Ok(mut m) = self.msgs.lock() {
                for k in a + 1..=b {
                    m.push(Message::info(
                        3211,
                        format!("{} percent processed.", k * step),
                    ));
                }
            }
        }
    }

    fn take(&self) -> Vec<Message> {
        self.msgs
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// BACKUP
// ---------------------------------------------------------------------------

fn backup(
    engine: &Engine,
    target: Target,
    database: &str,
    devices: &[Device],
    o: &BackupOptions,
    outs: &mut Vec<Output>,
) -> Result<BackupReport, SqlError> {
    if o.compression == Some(true) {
        return Err(msg::not_supported("BACKUP WITH COMPRESSION"));
    }
    let dir = engine.dir();
    if db::validate_name(database).is_err() || !dir.exists(database) {
        return Err(msg::no_database(database));
    }
    let mut dbh = dir.database(database).map_err(engine_err)?;
    if dbh.cat.state == DbState::Restoring {
        return Err(msg::restoring(database));
    }
    // The backup appends a checkpoint to the log and reads every file: hold the
    // files' locks for the whole statement, so another engine process cannot write
    // them meanwhile (nor this one be reading files another is rewriting).
    let _locks = db::lock_files(&dbh.cat.files).map_err(engine_err)?;
    let kind = match (target, o.differential) {
        (Target::Log, _) => BackupKind::Log,
        (Target::Database, true) => BackupKind::Differential,
        (Target::Database, false) => BackupKind::Full,
    };
    match kind {
        BackupKind::Differential if dbh.cat.last_full.is_none() => {
            return Err(msg::no_full_for_diff(database))
        }
        BackupKind::Log if dbh.cat.log_backup_lsn.is_none() => return Err(msg::no_full_for_log()),
        _ => {}
    }
    let topts = transfer_options(engine, o.block_size, o.max_transfer_size, o.buffer_count);
    let session = Media::open(
        devices,
        Direction::Write,
        &topts,
        engine.fault(),
        o.init || o.format,
    )?;
    let start = Instant::now();
    let start_unix = catalog::now_unix();

    // A checkpoint starts every backup: its LSN is the backup's CheckpointLSN.
    let ck = match dbh
        .append_log(&[(record_kind::CHECKPOINT, 0, 0)])
        .and_then(|n| dbh.save().map(|()| n))
    {
        Ok(n) => Lsn::of_record(n[0]),
        Err(e) => {
            session.abort_and_close();
            return Err(engine_err(e));
        }
    };
    let end = dbh.cat.end_lsn();
    let last_full = dbh.cat.last_full.clone();
    let (first_lsn, database_backup_lsn, diff_base) = match kind {
        BackupKind::Full => (
            ck,
            last_full.as_ref().map_or(Lsn::ZERO, |f| f.checkpoint_lsn),
            None,
        ),
        BackupKind::Differential => {
            let f = last_full
                .as_ref()
                .ok_or_else(|| msg::no_full_for_diff(database))?;
            (ck, f.checkpoint_lsn, Some(f.backup_set_guid.clone()))
        }
        BackupKind::Log => (
            dbh.cat.log_backup_lsn.unwrap_or(ck),
            last_full.as_ref().map_or(Lsn::ZERO, |f| f.checkpoint_lsn),
            None,
        ),
    };
    let prepared = prepare_backup(&dbh, kind, first_lsn);
    let (files_meta, data_chunks, log_chunks) = match prepared {
        Ok(p) => p,
        Err(e) => {
            session.abort_and_close();
            return Err(e);
        }
    };
    let media_set_guid = catalog::new_guid();
    let backup_set_guid = catalog::new_guid();
    let n = devices.len() as u32;
    let meta = SetMeta {
        database_name: database.to_string(),
        server_name: engine.server_name().to_string(),
        machine_name: engine.server_name().to_string(),
        user_name: std::env::var("USER").unwrap_or_else(|_| "openvdi".into()),
        kind,
        copy_only: o.copy_only,
        checksum: o.checksum == Some(true),
        backup_set_guid: backup_set_guid.clone(),
        media_set_guid: media_set_guid.clone(),
        family_count: n,
        family_number: 1,
        first_lsn,
        last_lsn: end,
        checkpoint_lsn: ck,
        database_backup_lsn,
        differential_base_guid: diff_base.clone(),
        name: o.name.clone(),
        description: o.description.clone(),
        start_unix,
        finish_unix: start_unix,
        files: files_meta,
        carried_bytes: 0,
        openvdi: true,
        software_version: (
            mtf_io::SOFTWARE_MAJOR,
            mtf_io::SOFTWARE_MINOR,
            mtf_io::SOFTWARE_BUILD,
        ),
        database_version: mtf_io::DATABASE_VERSION,
        database_creation_unix: dbh.cat.created_unix,
        collation: None,
        backup_size: None,
    };
    // MEDIAPASSWORD / PASSWORD: sealed once, the same fields in every family.
    let protection = mtf_io::Protection {
        media: o
            .media_password
            .as_ref()
            .map(|p| crate::password::seal(&p.0)),
        set: o.password.as_ref().map(|p| crate::password::seal(&p.0)),
    };
    // Spread the pages over the families in STRIPE_PAGES units, round robin.
    let units_d = stream::split_chunks(&data_chunks, STRIPE_PAGES);
    let units_l = stream::split_chunks(&log_chunks, STRIPE_PAGES);
    let mut per_family: Vec<(Vec<Chunk>, Vec<Chunk>)> = vec![(Vec::new(), Vec::new()); n as usize];
    for (i, c) in units_d.iter().enumerate() {
        per_family[i % n as usize].0.push(*c);
    }
    for (i, c) in units_l.iter().enumerate() {
        per_family[i % n as usize].1.push(*c);
    }
    let data_pages: u64 = data_chunks.iter().map(|c| u64::from(c.pages)).sum();
    let log_pages: u64 = log_chunks.iter().map(|c| u64::from(c.pages)).sum();
    let total_bytes = (data_pages + log_pages) * PAGE_SIZE as u64;
    session.set_total_hint(total_bytes);
    let progress = Progress::new(total_bytes, o.stats);
    let files = match open_files(&dbh.cat.files) {
        Ok(f) => f,
        Err(e) => {
            session.abort_and_close();
            return Err(e);
        }
    };

    let results: Vec<Result<u64, SqlError>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_family
            .iter()
            .enumerate()
            .map(|(i, (d, l))| {
                let mut fm = meta.clone();
                fm.family_number = i as u32 + 1;
                let files = &files;
                let progress = &progress;
                let protection = &protection;
                let media = &session;
                s.spawn(move || match media {
                    Media::Vdi(session) => {
                        let sh = &session.shared;
                        // A panicking thread must not leave the others waiting at
                        // the rendezvous before VDC_Complete.
                        let _guard = crate::vdi::FailOnPanic(&sh.rendezvous);
                        let mut w = DeviceWriter::new(sh, &session.devices[i]);
                        match mtf_io::write_family(&mut w, &fm, protection, d, l, files, &|n| {
                            progress.add(n)
                        }) {
                            Ok(()) => w.finish(),
                            Err(e) => {
                                w.fail();
                                let _ = sh.set.signal_abort();
                                Err(e)
                            }
                        }
                    }
                    Media::Disk(paths, block) => {
                        let mut w = FileSink::create(paths[i].clone(), *block)?;
                        match mtf_io::write_family(&mut w, &fm, protection, d, l, files, &|n| {
                            progress.add(n)
                        }) {
                            Ok(()) => w.finish(),
                            Err(e) => {
                                w.discard();
                                Err(e)
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(msg::damaged("a device thread panicked")))
            })
            .collect()
    });
    let mut bytes = 0;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(b) => bytes += b,
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = root_cause(errors) {
        session.abort_and_close();
        return Err(e);
    }
    session.close();
    let secs = start.elapsed().as_secs_f64();

    // The backup is complete: advance the chain.
    if let Ok(fresh) = dir.database(database) {
        dbh = fresh;
    }
    match kind {
        BackupKind::Full if !o.copy_only => {
            dbh.cat.last_full = Some(FullBackupInfo {
                backup_set_guid: backup_set_guid.clone(),
                checkpoint_lsn: ck,
                first_lsn,
                last_lsn: end,
            });
            dbh.cat.changed_pages.clear();
            if dbh.cat.log_backup_lsn.is_none() {
                dbh.cat.log_backup_lsn = Some(first_lsn);
            }
        }
        BackupKind::Log if !o.copy_only => dbh.cat.log_backup_lsn = Some(end),
        _ => {}
    }
    dbh.save().map_err(engine_err)?;

    let df = dbh.data_file().map_err(engine_err)?.logical_name.clone();
    let lf = dbh.log_file().map_err(engine_err)?.logical_name.clone();
    let mut file_pages = Vec::new();
    outs.extend(progress.take().into_iter().map(Output::Message));
    if kind != BackupKind::Log {
        file_pages.push((df.clone(), data_pages));
        outs.push(Output::Message(Message::info(
            4035,
            format!(
                "Processed {data_pages} pages for database '{database}', file '{df}' on file 1."
            ),
        )));
    }
    file_pages.push((lf.clone(), log_pages));
    outs.push(Output::Message(Message::info(
        4035,
        format!("Processed {log_pages} pages for database '{database}', file '{lf}' on file 1."),
    )));
    let what = match kind {
        BackupKind::Full => "BACKUP DATABASE",
        BackupKind::Differential => "BACKUP DATABASE WITH DIFFERENTIAL",
        BackupKind::Log => "BACKUP LOG",
    };
    let pages = data_pages * u64::from(kind != BackupKind::Log) + log_pages;
    let text = format!(
        "{what} successfully processed {pages} pages in {}.",
        rate_text(pages, secs)
    );
    outs.push(Output::Message(Message::info(3014, text.clone())));
    Ok(BackupReport {
        database: database.to_string(),
        server_name: engine.server_name().to_string(),
        kind,
        copy_only: o.copy_only,
        checksum: meta.checksum,
        backup_set_guid,
        media_set_guid,
        family_count: n,
        first_lsn,
        last_lsn: end,
        checkpoint_lsn: ck,
        database_backup_lsn,
        differential_base_lsn: (kind == BackupKind::Differential).then_some(database_backup_lsn),
        differential_base_guid: diff_base,
        files: file_pages,
        pages,
        bytes,
        seconds: secs,
        message: text,
    })
}

/// When one device fails, the engine aborts the set and the other devices then
/// fail with "the server signalled an abort"; report the failure that caused it.
fn root_cause(errors: Vec<SqlError>) -> Option<SqlError> {
    let ours = openvdi::AbortReason::Server.to_string();
    let secondary = |e: &SqlError| e.messages.iter().any(|m| m.text.contains(&ours));
    let first = errors.iter().position(|e| !secondary(e)).unwrap_or(0);
    errors.into_iter().nth(first)
}

/// The files' metadata, data page runs and log page runs of a backup.
type BackupContents = (Vec<FileMeta>, Vec<Chunk>, Vec<Chunk>);

/// What a backup of `kind` carries: the files' metadata, data page runs, log page runs.
fn prepare_backup(
    dbh: &Database,
    kind: BackupKind,
    first_lsn: Lsn,
) -> Result<BackupContents, SqlError> {
    let df = dbh.data_file().map_err(engine_err)?.clone();
    let lf = dbh.log_file().map_err(engine_err)?.clone();
    let dp = dbh.pages_of(&df).map_err(engine_err)? as u32;
    let lp = dbh.pages_of(&lf).map_err(engine_err)? as u32;
    let log_file_pages = lp;
    let files = vec![
        FileMeta {
            file_id: df.file_id,
            logical_name: df.logical_name.clone(),
            physical_name: df.path.to_string_lossy().into_owned(),
            kind: FileKind::Data,
            size_bytes: u64::from(dp) * PAGE_SIZE as u64,
            filegroup: Some("PRIMARY".into()),
            filegroup_id: Some(1),
            source_block_size: Some(512),
            backup_bytes: None,
        },
        FileMeta {
            file_id: lf.file_id,
            logical_name: lf.logical_name.clone(),
            physical_name: lf.path.to_string_lossy().into_owned(),
            kind: FileKind::Log,
            size_bytes: u64::from(lp) * PAGE_SIZE as u64,
            filegroup: None,
            filegroup_id: Some(0),
            source_block_size: Some(512),
            backup_bytes: None,
        },
    ];
    // Log pages from the one holding `from` to the one holding the last record
    // written (the backup's own checkpoint): the log since `from`, not the whole
    // file — pages past the end of the log hold nothing a restore needs.
    let last_page = dbh
        .cat
        .next_record
        .checked_sub(1)
        .map_or(0, |r| page::LogRecord::place(r).0);
    let lp = lp.min(last_page.saturating_add(1));
    let log_from = |from: Lsn| -> Vec<Chunk> {
        let first_page = from.record().map_or(0, |r| page::LogRecord::place(r).0);
        // Page 0 (the log file header) always travels, so a restore can rebuild it.
        let mut v = vec![Chunk {
            file_id: lf.file_id,
            start_page: 0,
            pages: 1,
        }];
        let s = first_page.max(1);
        if s < lp {
            v.push(Chunk {
                file_id: lf.file_id,
                start_page: s,
                pages: lp - s,
            });
        }
        v
    };
    let (data, log) = match kind {
        BackupKind::Full => (
            vec![Chunk {
                file_id: df.file_id,
                start_page: 0,
                pages: dp,
            }],
            vec![Chunk {
                file_id: lf.file_id,
                start_page: 0,
                pages: log_file_pages,
            }],
        ),
        BackupKind::Differential => {
            // The allocation pages (0..4) always go, as SQL Server's do, then every
            // page changed since the full backup.
            let mut pages: Vec<u32> = (0..4.min(dp)).collect();
            pages.extend(dbh.cat.changed().into_iter().filter(|&p| p < dp));
            pages.sort_unstable();
            pages.dedup();
            let base = dbh
                .cat
                .last_full
                .as_ref()
                .map_or(Lsn::ZERO, |f| f.first_lsn);
            (stream::chunks_of(df.file_id, &pages), log_from(base))
        }
        BackupKind::Log => (Vec::new(), log_from(first_lsn)),
    };
    Ok((files, data, log))
}

/// Open the files of a database by id, read-only, never through a symbolic link.
/// (Not locked here: the caller holds the locks on its own descriptors, and a
/// second `flock` from this process on a new descriptor would conflict with them.)
fn open_files(files: &[FileInfo]) -> Result<HashMap<u16, File>, SqlError> {
    let mut m = HashMap::new();
    for f in files {
        let h = db::open_file(&f.path, false).map_err(|e| match e {
            crate::error::EngineError::Symlink(p) => msg::file_is_symlink(&p.display().to_string()),
            other => SqlError::msg(
                3201,
                format!(
                    "Cannot open database file '{}'. Operating system error {other}.",
                    f.path.display()
                ),
            ),
        })?;
        m.insert(f.file_id, h);
    }
    Ok(m)
}

// ---------------------------------------------------------------------------
// RESTORE
// ---------------------------------------------------------------------------

/// `RESTORE DATABASE x WITH RECOVERY` with no devices: finish a restore sequence.
fn recover_only(
    engine: &Engine,
    target: Target,
    database: &str,
    o: &RestoreOptions,
    outs: &mut Vec<Output>,
) -> Result<RestoreReport, SqlError> {
    let start = Instant::now();
    if db::validate_name(database).is_err() || !engine.dir().exists(database) {
        return Err(msg::no_database(database));
    }
    let mut dbh = engine.dir().database(database).map_err(engine_err)?;
    if dbh.cat.state == DbState::Restoring && dbh.cat.restore.is_none() {
        // A full restore started and did not finish.
        return Err(SqlError::msg(
            4333,
            "The database cannot be recovered because the log was not restored.",
        ));
    }
    if o.recovers() {
        outs.extend(recovery_note(&dbh).map(Output::Message));
        finish_recovery(&mut dbh)?;
        dbh.save().map_err(engine_err)?;
    }
    let what = if target == Target::Log {
        "RESTORE LOG"
    } else {
        "RESTORE DATABASE"
    };
    let text = format!(
        "{what} successfully processed 0 pages in {}.",
        rate_text(0, start.elapsed().as_secs_f64())
    );
    outs.push(Output::Message(Message::info(3014, text.clone())));
    Ok(RestoreReport {
        database: database.to_string(),
        kind: BackupKind::Full,
        files: Vec::new(),
        pages: 0,
        bytes: 0,
        seconds: start.elapsed().as_secs_f64(),
        recovered: dbh.cat.state == DbState::Online,
        message: text,
    })
}

/// On recovery of a sequence restored from real SQL Server backups: which backup
/// the data files reflect, since the log backups after it were stored, not applied.
fn recovery_note(dbh: &Database) -> Option<Message> {
    let r = dbh.cat.restore.as_ref().filter(|r| r.foreign)?;
    let (what, lsn) = r.data_reflects.as_ref()?;
    let logs = match r.unapplied_logs {
        0 => String::new(),
        1 => "; the log backup restored after it was stored but not applied".to_string(),
        n => format!("; the {n} log backups restored after it were stored but not applied"),
    };
    Some(Message::info(
        50000,
        format!(
            "The data files of database '{}' reflect the {what} backup ending at LSN {lsn}{logs}.",
            dbh.cat.name
        ),
    ))
}

/// 4338: the stop point lies before what the database already holds.
fn stop_too_early() -> SqlError {
    SqlError::msg(
        4338,
        "The STOPAT clause specifies a point too early to allow this backup set to be \
         restored. Choose a different stop point or use RESTORE DATABASE WITH RECOVERY to \
         recover at the current point.",
    )
}

/// Where redo of records `a..b` of log backup `m` stops for `sp`: the first record
/// not to redo (`b`: all of them). Records carry their commit time (see
/// `LogRecord::time_ms`); a record written at the stop time is redone.
fn stop_record(
    dbh: &Database,
    m: &SetMeta,
    a: u64,
    b: u64,
    sp: &StopPoint,
) -> Result<u64, SqlError> {
    match sp {
        StopPoint::At(t) => {
            // The record before the redo start (if this log holds it) says whether
            // the database is already past the stop point.
            let lo = m.first_lsn.record().unwrap_or(a).min(a);
            let recs = dbh.read_log(lo, b).map_err(engine_err)?;
            if recs.iter().any(|r| r.time_ms == 0) {
                return Err(SqlError::msg(
                    4338,
                    "The log records of this backup set carry no commit time (they were \
                     written by an older openvdi), so STOPAT cannot be applied to them. Use \
                     STOPBEFOREMARK = 'lsn:N', or RESTORE DATABASE WITH RECOVERY to recover \
                     at the current point.",
                ));
            }
            if a > lo && recs[(a - 1 - lo) as usize].time_ms > *t {
                return Err(stop_too_early());
            }
            Ok(recs[(a - lo) as usize..]
                .iter()
                .find(|r| r.time_ms > *t)
                .map_or(b, |r| r.number))
        }
        StopPoint::AtMark(l) | StopPoint::BeforeMark(l) => {
            let n = Lsn::from_numeric(*l).and_then(Lsn::record).ok_or_else(|| {
                SqlError::msg(
                    4308,
                    format!("The LSN {l} is not an LSN of this database's log."),
                )
            })?;
            let n = if matches!(sp, StopPoint::AtMark(_)) {
                n + 1
            } else {
                n
            };
            if n < a {
                return Err(stop_too_early());
            }
            Ok(n.min(b))
        }
    }
}

/// Bring a restoring database online: the end of its log is where redo stopped.
///
/// The database keeps the chain of the backups it was restored from, as SQL
/// Server's does: the restored full is its differential base (differentials taken
/// now are based on it), the pages changed since that full's checkpoint (read
/// from the pages' own LSNs) are its differential bitmap, and the log chain
/// continues from the redo point, so DIFFERENTIAL and LOG backups work at once.
fn finish_recovery(dbh: &mut Database) -> Result<(), SqlError> {
    if let Some(r) = dbh.cat.restore.take() {
        if !r.foreign {
            if let Some(n) = r.redo_lsn.record() {
                dbh.cat.next_record = n;
            }
        }
        dbh.cat.last_full = Some(FullBackupInfo {
            backup_set_guid: r.base_guid.clone(),
            checkpoint_lsn: r.base_checkpoint_lsn,
            first_lsn: r.base_first_lsn,
            last_lsn: r.base_last_lsn,
        });
        dbh.cat.changed_pages = match r.changed.clone() {
            Some(c) => c,
            None => catalog::compress(
                &dbh.pages_changed_after(r.base_checkpoint_lsn)
                    .map_err(engine_err)?,
            ),
        };
        // A real SQL Server log cannot be continued by openvdi's: a restored real
        // database's next log backup starts at the end of openvdi's own log.
        dbh.cat.log_backup_lsn = Some(if r.foreign {
            dbh.cat.end_lsn()
        } else {
            r.redo_lsn
        });
    }
    dbh.cat.state = DbState::Online;
    Ok(())
}

/// A device thread's first phase: the metadata of its family.
type HeaderResult = Result<SetMeta, SqlError>;

/// What the main thread tells the device threads after planning.
#[derive(Debug, Clone)]
enum Go {
    /// Write pages into the planned target files.
    Write,
    /// Read and validate only (VERIFYONLY).
    Verify,
    /// Stop reading (FILELISTONLY, LABELONLY, or a refused restore).
    Stop,
    /// Read to the end for what only the end says (HEADERONLY's finish date and
    /// backup size); damage there is not HEADERONLY's business, so a walk that
    /// fails leaves those values NULL instead of failing the statement.
    Trailer,
}

/// Where each file of the backup goes: the open (and locked) target files.
#[derive(Debug)]
struct Targets {
    files: Vec<(FileMeta, PathBuf)>,
    /// By file id: the descriptor, which holds the file's lock, and its path.
    handles: HashMap<u16, (File, PathBuf)>,
    /// By file id: taken around each write. The kernel runs buffered writes to one
    /// file one at a time (the inode's lock) and a second writer spins for it: 23 %
    /// of a two-stripe restore's CPU went there, taken from the client's threads on
    /// a two-core machine. Waiting here sleeps instead.
    /// It also guards the file's [`WriteBehind`].
    write_locks: HashMap<u16, Mutex<WriteBehind>>,
    /// Fault `enospc-after:N`: writes fail with ENOSPC past N bytes (test only).
    enospc_after: Option<u64>,
    /// Bytes written so far, over all devices (for `enospc_after`).
    written: AtomicU64,
    /// The data file whose pages are watched, and the base checkpoint after which
    /// a page counts as changed (see `RestoreProgress::changed`).
    track: Option<(u16, Lsn)>,
    /// Watched pages written with a later LSN; `None` once a write was not
    /// page-aligned (then nothing is known).
    changed: Mutex<Option<Vec<u32>>>,
}

/// Bytes a restore writes to one file before it starts their write-back.
const WRITE_BEHIND: u64 = 32 << 20;

/// What one target file received since its write-back was last started.
///
/// A restore's files are written through the page cache and fsynced at the end; left
/// to itself the kernel starts writing them out only when a tenth of memory is dirty,
/// so the final fsync waited for most of the database to reach the disk after the
/// data had all arrived. Starting the write-back of every 32 MiB as it is written
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`: queue the dirty pages' I/O without waiting
/// for it, and drop the range's pages that are already clean) overlaps the disk with
/// the stream, as SQL Server's own unbuffered writes do, and keeps a restore from
/// filling memory with dirty pages.
#[derive(Debug, Default)]
struct WriteBehind {
    lo: u64,
    hi: u64,
    pending: u64,
}

impl WriteBehind {
    /// Note a write; the range to start writing back when enough has gathered.
    fn wrote(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        if self.pending == 0 {
            (self.lo, self.hi) = (offset, end);
        } else {
            self.lo = self.lo.min(offset);
            self.hi = self.hi.max(end);
        }
        self.pending += len;
        if self.pending < WRITE_BEHIND {
            return None;
        }
        self.pending = 0;
        Some((self.lo, self.hi - self.lo))
    }
}

impl Targets {
    /// Write a run of pages of file `file_id` at `offset`.
    fn write(&self, dev: &str, file_id: u16, offset: u64, data: &[u8]) -> Result<(), SqlError> {
        let (f, path) = self
            .handles
            .get(&file_id)
            .ok_or_else(|| msg::bad_family(dev, &format!("a page of unknown file {file_id}")))?;
        if let Some(limit) = self.enospc_after {
            let before = self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
            if before + data.len() as u64 > limit {
                let e = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
                return Err(write_error(path, &e));
            }
        }
        let flush = {
            let mut one_writer = self.write_locks.get(&file_id).map(|m| m.lock());
            f.write_all_at(data, offset)
                .map_err(|e| write_error(path, &e))?;
            match one_writer.as_mut() {
                Some(Ok(wb)) => wb.wrote(offset, data.len() as u64),
                _ => None,
            }
        };
        if let Some((from, len)) = flush {
            // Start the write-back of what this file gathered (asynchronous: the
            // kernel queues the pages' I/O and returns). A failure here costs only
            // the overlap; the fsync at the end reports any write error.
            let _ = rustix::fs::fadvise(
                f,
                from,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            );
        }
        if let Some((_, after)) = self.track.filter(|(id, _)| *id == file_id) {
            let mut found = Vec::new();
            let aligned =
                offset.is_multiple_of(PAGE_SIZE as u64) && data.len().is_multiple_of(PAGE_SIZE);
            if aligned {
                let first = offset / PAGE_SIZE as u64;
                for (k, p) in data.chunks_exact(PAGE_SIZE).enumerate() {
                    let pg = first + k as u64;
                    if pg >= 4 && page::header(p).lsn > after {
                        found.push(u32::try_from(pg).unwrap_or(u32::MAX));
                    }
                }
            }
            let mut c = self
                .changed
                .lock()
                .map_err(|_| msg::damaged("lock poisoned"))?;
            match (aligned, c.as_mut()) {
                (true, Some(v)) => v.extend(found),
                _ => *c = None,
            }
        }
        Ok(())
    }

    /// The watched pages written, sorted, as ranges (`None`: not known).
    fn changed_ranges(&self) -> Option<Vec<(u32, u32)>> {
        self.track?;
        let mut v = self.changed.lock().ok()?.clone()?;
        v.sort_unstable();
        v.dedup();
        Some(catalog::compress(&v))
    }
}

/// Union of two sets of changed pages (`None` wins: not known).
fn union_changed(
    a: Option<Vec<(u32, u32)>>,
    b: Option<Vec<(u32, u32)>>,
) -> Option<Vec<(u32, u32)>> {
    let mut all = catalog::expand(&a?);
    all.extend(catalog::expand(&b?));
    all.sort_unstable();
    all.dedup();
    Some(catalog::compress(&all))
}

/// A failed write into a database file: a full disk by name (3202 with 112, "no
/// space left on device", and the path), anything else as 3202 with the OS error.
fn write_error(path: &Path, e: &std::io::Error) -> SqlError {
    if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        return msg::disk_full(&path.display().to_string());
    }
    SqlError::msg(3202, format!("Write on \"{}\" failed: {e}", path.display()))
}

/// Pages and bytes a device thread wrote.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    data_pages: u64,
    log_pages: u64,
    bytes: u64,
    /// What the end of the family's stream said (HEADERONLY).
    trailer: mtf_io::Trailer,
}

/// The families' metadata (or why planning failed), and each device thread's result.
type ThreadResults = (
    Result<Vec<SetMeta>, SqlError>,
    Vec<Result<Written, SqlError>>,
);

/// Run one reader thread per device: read each family's metadata, let `plan`
/// decide (on this thread, with every family's metadata), then write or verify.
fn run_restore_threads<F>(
    session: &Media,
    devices: &[Device],
    plan: F,
    targets: &OnceLock<Targets>,
    progress: &Progress,
    check_pages: bool,
    creds: &Credentials,
) -> ThreadResults
where
    F: FnOnce(&[SetMeta]) -> Result<Go, SqlError>,
{
    let n = session.count();
    let (htx, hrx) = mpsc::channel::<(usize, HeaderResult)>();
    let mut go_tx = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let (gtx, grx) = mpsc::channel::<Go>();
            go_tx.push(gtx);
            let htx = htx.clone();
            handles.push(s.spawn(move || -> Result<Written, SqlError> {
                let mut r = match session.source(i) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = htx.send((i, Err(e.clone())));
                        return Err(e);
                    }
                };
                let opened = mtf_io::FamilyReader::open_with(&mut r, creds);
                let (mut fr, meta) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        let e = r.take_error().unwrap_or(e);
                        let _ = htx.send((i, Err(e.clone())));
                        return Err(e);
                    }
                };
                fr.check_page_checksums(check_pages);
                progress.expect(fr.expected_bytes());
                // For `crash-at:mid` / `abort-at:mid` of a restore.
                session.add_total_hint(fr.expected_bytes());
                let _ = htx.send((i, Ok(meta)));
                // Drop the sender now: if another thread panics before sending, the
                // main thread's receive loop ends instead of waiting for it.
                drop(htx);
                let go = grx.recv().unwrap_or(Go::Stop);
                let mut w = Written::default();
                match go {
                    Go::Stop => {}
                    Go::Trailer => {
                        let res = fr.for_each_page(&mut r, &mut |_, _, _, _| Ok(()));
                        match res {
                            Ok(()) => w.trailer = fr.trailer(),
                            Err(e) => {
                                if let Some(dev_err) = r.take_error() {
                                    session.signal_abort();
                                    return Err(dev_err);
                                }
                                let _ = e;
                            }
                        }
                    }
                    Go::Write | Go::Verify => {
                        let write = matches!(go, Go::Write);
                        // Set once by the plan before Go; read without a lock so the
                        // devices restore in parallel.
                        let files: Option<&Targets> = if write { targets.get() } else { None };
                        let res =
                            fr.for_each_page(&mut r, &mut |portion, file_id, offset, data| {
                                if let Some(t) = files {
                                    t.write(&dev.name, file_id, offset, data)?;
                                }
                                let pages = data.len().div_ceil(PAGE_SIZE) as u64;
                                match portion {
                                    Portion::Data => w.data_pages += pages,
                                    Portion::Log => w.log_pages += pages,
                                }
                                progress.add(data.len() as u64);
                                Ok(())
                            });
                        if let Err(e) = res {
                            // Stop the other devices promptly.
                            session.signal_abort();
                            return Err(r.take_error().unwrap_or(e));
                        }
                        w.trailer = fr.trailer();
                    }
                }
                w.bytes = r.bytes();
                r.finish()?;
                Ok(w)
            }));
        }
        drop(htx);
        // Phase 1: every family's metadata (or its error).
        let mut metas: Vec<Option<SetMeta>> = vec![None; n];
        let mut first_err = None;
        for (i, m) in hrx.iter().take(n) {
            match m {
                Ok(m) => metas[i] = Some(m),
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        let planned = match first_err {
            Some(e) => Err(e),
            None => {
                let metas: Vec<SetMeta> = metas.into_iter().flatten().collect();
                if metas.len() != n {
                    Err(msg::damaged("a device thread ended without a header"))
                } else {
                    plan(&metas).map(|go| (go, metas))
                }
            }
        };
        let header_result = match planned {
            Ok((go, metas)) => {
                for t in &go_tx {
                    let _ = t.send(go.clone());
                }
                Ok(metas)
            }
            Err(e) => {
                session.signal_abort();
                for t in &go_tx {
                    let _ = t.send(Go::Stop);
                }
                Err(e)
            }
        };
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(msg::damaged("a device thread panicked")))
            })
            .collect();
        (header_result, results)
    })
}

/// Check that the families form one complete media set.
fn check_media_set(devices: &[Device], metas: &[SetMeta]) -> Result<(), SqlError> {
    let first = &metas[0];
    for (d, m) in devices.iter().zip(metas) {
        if m.media_set_guid != first.media_set_guid || m.backup_set_guid != first.backup_set_guid {
            return Err(msg::other_media_set(&d.name));
        }
        if m.family_count as usize != metas.len() && (m.family_count as usize) < metas.len() {
            return Err(msg::family_count(
                &d.name,
                m.family_count as usize,
                metas.len(),
            ));
        }
    }
    let need = first.family_count as usize;
    let mut seen = vec![false; need.max(1)];
    for (d, m) in devices.iter().zip(metas) {
        let k = m.family_number as usize;
        if k == 0 || k > need || seen[k - 1] {
            return Err(msg::other_media_set(&d.name));
        }
        seen[k - 1] = true;
    }
    if metas.len() < need {
        return Err(msg::families_missing(metas.len(), need));
    }
    Ok(())
}

/// Where a file of the backup goes without MOVE: always the engine's data
/// directory. The physical name a backup records is the source server's path (a
/// Windows path for SQL Server, another machine's directory for openvdi) and is
/// data from the stream, not an instruction: only its last component is used, and
/// sanitised ([`confined_name`]), so no backup can make a restore write outside the
/// data directory. Writing elsewhere takes an explicit MOVE.
fn default_target(engine: &Engine, f: &FileMeta) -> PathBuf {
    engine.data_dir().join(confined_name(
        &f.physical_name,
        &f.logical_name,
        f.kind,
        f.file_id,
    ))
}

/// The file name (one path component) a restored file gets in the data directory:
/// the last component of the recorded physical name (after the last `/` or `\\`),
/// without control characters (NUL included) and leading dots. If nothing usable is
/// left (empty, `..`, longer than NAME_MAX, or a name ending in `.openvdi.json`,
/// which would pose as a catalog), the logical name, cleaned the same way, plus
/// `.mdf` / `.ldf`; failing that `file<ID>.mdf`.
pub(crate) fn confined_name(physical: &str, logical: &str, kind: FileKind, file_id: u16) -> String {
    fn clean(s: &str) -> String {
        let last = s.rsplit(['/', '\\']).next().unwrap_or("");
        let t: String = last.chars().filter(|c| !c.is_control()).collect();
        t.trim().trim_start_matches('.').trim().to_string()
    }
    fn usable(n: &str) -> bool {
        !n.is_empty() && n.len() <= 240 && !n.to_ascii_lowercase().ends_with(".openvdi.json")
    }
    let name = clean(physical);
    if usable(&name) {
        return name;
    }
    let ext = match kind {
        FileKind::Data => "mdf",
        FileKind::Log => "ldf",
    };
    let base = clean(logical);
    let base = if base.is_empty() || base.len() > 200 {
        format!("file{file_id}")
    } else {
        base
    };
    format!("{base}.{ext}")
}

fn restore(
    engine: &Engine,
    target: Target,
    database: &str,
    devices: &[Device],
    o: &RestoreOptions,
    outs: &mut Vec<Output>,
) -> Result<Option<RestoreReport>, SqlError> {
    if db::validate_name(database).is_err() {
        return Err(msg::syntax(database));
    }
    let topts = transfer_options(engine, o.block_size, o.max_transfer_size, o.buffer_count);
    let session = Media::open(devices, Direction::Read, &topts, engine.fault(), false)?;
    let start = Instant::now();
    let dir = engine.dir();
    let targets: OnceLock<Targets> = OnceLock::new();
    let progress = Progress::new(0, o.stats);
    // Decided while planning, used afterwards.
    let decided: Mutex<Option<(Catalog, BackupKind)>> = Mutex::new(None);

    let plan = |metas: &[SetMeta]| -> Result<Go, SqlError> {
        check_media_set(devices, metas)?;
        let m = &metas[0];
        check_sizes(&devices[0].name, metas, dir.root())?;
        if o.file.is_some_and(|f| f != 1) {
            // A virtual device stream holds one backup set: FILE = 1.
            let n = o.file.unwrap_or(1);
            return Err(SqlError::msg(
                4038,
                format!("Cannot find file ID {n} on device '{}'.", devices[0].name),
            ));
        }
        let existing = if dir.exists(database) {
            Some(dir.database(database).map_err(engine_err)?)
        } else {
            None
        };
        // The files this database's own catalog lists (they may be replaced).
        let own: Vec<PathBuf> = existing
            .as_ref()
            .map(|e| e.cat.files.iter().map(|f| f.path.clone()).collect())
            .unwrap_or_default();
        let kind = m.kind;
        match (target, kind) {
            (Target::Log, BackupKind::Log) => {}
            (Target::Log, _) => {
                return Err(SqlError::msg(
                    3154,
                    "The backup set holds a database backup; use RESTORE DATABASE.",
                ))
            }
            (Target::Database, BackupKind::Log) => {
                return Err(SqlError::msg(
                    3154,
                    "The backup set holds a log backup; use RESTORE LOG.",
                ))
            }
            _ => {}
        }
        let cat = match kind {
            BackupKind::Full => plan_full(engine, database, m, o, existing.as_ref())?,
            BackupKind::Differential => {
                let ex = existing.ok_or_else(msg::nothing_to_rollforward)?;
                let r = ex
                    .cat
                    .restore
                    .clone()
                    .filter(|_| ex.cat.state == DbState::Restoring)
                    .ok_or_else(msg::nothing_to_rollforward)?;
                // SQL Server takes any differential of the restored full (its
                // DatabaseBackupLSN is that full's CheckpointLSN, and an openvdi
                // one names its GUID) that does not lie before what is already
                // restored: after the full, after another differential of the
                // same base (full → diff → diff), or after log backups (full → log
                // … → diff → log …). Differentials are cumulative, so a later one
                // holds every page an earlier one did.
                let guid_differs = m.openvdi
                    && m.differential_base_guid
                        .as_ref()
                        .is_some_and(|g| !r.base_guid.is_empty() && *g != r.base_guid);
                if m.database_backup_lsn != r.base_checkpoint_lsn
                    || guid_differs
                    || m.last_lsn < r.redo_lsn
                {
                    return Err(msg::diff_wrong_base());
                }
                ex.cat
            }
            BackupKind::Log => {
                let ex = existing.ok_or_else(msg::nothing_to_rollforward)?;
                let r = ex
                    .cat
                    .restore
                    .clone()
                    .filter(|_| ex.cat.state == DbState::Restoring)
                    .ok_or_else(msg::nothing_to_rollforward)?;
                if m.first_lsn > r.redo_lsn {
                    return Err(msg::log_too_recent(
                        &m.first_lsn.to_string(),
                        &r.redo_lsn.to_string(),
                    ));
                }
                if m.last_lsn <= r.redo_lsn {
                    return Err(msg::log_too_early(
                        &m.last_lsn.to_string(),
                        &r.redo_lsn.to_string(),
                    ));
                }
                ex.cat
            }
        };
        // Target paths: for a full restore from the plan, else the existing files.
        let mut files = Vec::new();
        for f in &m.files {
            let path = match cat.files.iter().find(|c| c.file_id == f.file_id) {
                Some(c) => c.path.clone(),
                None => default_target(engine, f),
            };
            files.push((f.clone(), path));
        }
        // The files this database's own catalog lists may be replaced; any other
        // target must be new. Each is opened without following a link and locked
        // before anything is truncated or written.
        let mut handles = open_targets(engine, &files, &own, kind == BackupKind::Full, o.replace)?;
        if kind == BackupKind::Full {
            // Crash ordering: the catalog says RESTORING (durably: fsynced, and its
            // directory) before any file is truncated or written, so a crash from
            // here on leaves a database that is RESTORING, never ONLINE with partial
            // files. It cannot be recovered until a full restore completes (as SQL
            // Server leaves a database whose restore failed).
            let mut interim = cat.clone();
            interim.state = DbState::Restoring;
            interim.restore = None;
            interim.save(dir.root()).map_err(engine_err)?;
            // A full restore replaces the files: start from empty files. They get
            // their recorded sizes only at the end, once the stream has delivered
            // its pages (finish_file), so a damaged size field never leaves a huge
            // file behind a stream that did not fill it.
            // A file that holds data is replaced by an empty one rather than
            // truncated (see `db::replace_with_empty`): the old one is closed, and
            // its blocks freed, by a thread of its own while the reads flow.
            let mut retired = Vec::new();
            for (f, _) in &files {
                if let Some((h, path)) = handles.get_mut(&f.file_id) {
                    let len = h.metadata().map_err(|e| write_error(path, &e))?.len();
                    if len > 0 {
                        let fresh = db::replace_with_empty(h, path).map_err(engine_err)?;
                        retired.push(std::mem::replace(h, fresh));
                    }
                }
            }
            if !retired.is_empty() {
                let freeing = std::thread::Builder::new()
                    .name("free-old-files".into())
                    .spawn(move || drop(retired));
                // Without a thread, the files are closed here: slower, not wrong.
                drop(freeing);
            }
        }
        // The data file's changed pages are collected as they are written (for
        // the differential bitmap at recovery) instead of read back afterwards.
        let data_id = cat
            .files
            .iter()
            .find(|f| f.kind == FileKind::Data)
            .map(|f| f.file_id);
        let track = match kind {
            BackupKind::Full => data_id.map(|id| (id, m.checkpoint_lsn)),
            BackupKind::Differential => cat
                .restore
                .as_ref()
                .and_then(|r| data_id.map(|id| (id, r.base_checkpoint_lsn))),
            BackupKind::Log => None,
        };
        targets
            .set(Targets {
                files,
                write_locks: handles
                    .keys()
                    .map(|&id| (id, Mutex::new(WriteBehind::default())))
                    .collect(),
                handles,
                enospc_after: engine.fault().enospc_after(),
                written: AtomicU64::new(0),
                track,
                changed: Mutex::new(Some(Vec::new())),
            })
            .map_err(|_| msg::damaged("restore targets planned twice"))?;
        *decided.lock().map_err(|_| msg::damaged("lock poisoned"))? = Some((cat, kind));
        Ok(Go::Write)
    };

    let (metas, results) = run_restore_threads(
        &session,
        devices,
        plan,
        &targets,
        &progress,
        o.checksum == Some(true),
        &Credentials {
            media: o.media_password.clone(),
            set: o.password.clone(),
            check_set: true,
        },
    );
    let metas = match metas {
        Ok(m) => m,
        Err(e) => {
            session.abort_and_close();
            return Err(e);
        }
    };
    let mut written = Written::default();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(w) => {
                written.data_pages += w.data_pages;
                written.log_pages += w.log_pages;
                written.bytes += w.bytes;
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = root_cause(errors) {
        session.abort_and_close();
        return Err(e);
    }
    session.close();
    let m = &metas[0];
    let (mut cat, kind) = decided
        .lock()
        .ok()
        .and_then(|mut d| d.take())
        .ok_or_else(|| msg::damaged("no restore plan"))?;
    let tg = targets
        .into_inner()
        .ok_or_else(|| msg::damaged("no restore targets"))?;
    // An openvdi stream's page counts are only claims until delivered: check the
    // recorded sizes against what came before any file is given its size. (A SQL
    // Server stream's files are bounded by free space instead: see check_sizes.)
    let delivered = (written.data_pages + written.log_pages) * PAGE_SIZE as u64;
    for (f, _) in tg.files.iter().filter(|_| m.openvdi) {
        if f.size_bytes > delivered.saturating_add(UNFILLED_SLACK) {
            return Err(size_refused(&devices[0].name, f, delivered));
        }
    }
    // Files keep the size the backup recorded; a grown log gets empty log pages.
    for (f, path) in &tg.files {
        if let Some((h, _)) = tg.handles.get(&f.file_id) {
            finish_file(h, f, path, m.openvdi, kind == BackupKind::Full)?;
        }
    }

    // Chain state.
    let mut dbh = Database::from_catalog(dir.root(), cat.clone());
    // STOPAT past the end of this log: redo all of it, stay RESTORING (as SQL Server).
    let mut stop_beyond = false;
    match kind {
        BackupKind::Full => {
            dbh.cat.restore = Some(RestoreProgress {
                base_checkpoint_lsn: m.checkpoint_lsn,
                base_guid: m.backup_set_guid.clone(),
                base_first_lsn: m.first_lsn,
                base_last_lsn: m.last_lsn,
                redo_lsn: m.last_lsn,
                last_backup_type: 1,
                diff_applied: false,
                foreign: !m.openvdi,
                data_reflects: (!m.openvdi).then(|| ("database".to_string(), m.last_lsn)),
                unapplied_logs: 0,
                changed: tg.changed_ranges(),
            });
        }
        BackupKind::Differential => {
            if let Some(r) = dbh.cat.restore.as_mut() {
                r.redo_lsn = m.last_lsn;
                r.last_backup_type = 5;
                r.diff_applied = true;
                r.changed = union_changed(r.changed.take(), tg.changed_ranges());
                if !m.openvdi {
                    r.data_reflects = Some(("differential".to_string(), m.last_lsn));
                    r.unapplied_logs = 0;
                }
            }
        }
        BackupKind::Log => {
            let redo_from = dbh.cat.restore.as_ref().map_or(m.first_lsn, |r| r.redo_lsn);
            let mut end = m.last_lsn;
            if m.openvdi {
                if let (Some(a), Some(b)) = (redo_from.record(), m.last_lsn.record()) {
                    let until = match &o.stop {
                        Some(sp) => stop_record(&dbh, m, a, b, sp)?,
                        None => b,
                    };
                    dbh.cat.next_record = b;
                    let mut redone = dbh.redo(a, until).map_err(engine_err)?;
                    redone.retain(|p| *p >= 4);
                    redone.sort_unstable();
                    redone.dedup();
                    if let Some(r) = dbh.cat.restore.as_mut() {
                        r.changed =
                            union_changed(r.changed.take(), Some(catalog::compress(&redone)));
                    }
                    if until < b {
                        // Stopped inside this log: its later records never happened.
                        dbh.truncate_log(until, b).map_err(engine_err)?;
                        dbh.cat.next_record = until;
                        end = Lsn::of_record(until);
                    } else if o.stop.is_some() {
                        stop_beyond = true;
                    }
                }
            } else if let Some(sp) = &o.stop {
                // A SQL Server log's records are not openvdi's: it is restored whole.
                let inside = match sp {
                    StopPoint::At(ms) => m.finish_unix == 0 || *ms / 1000 < m.finish_unix,
                    StopPoint::AtMark(l) | StopPoint::BeforeMark(l) => *l < m.last_lsn.to_numeric(),
                };
                if inside {
                    outs.push(Output::Message(Message::info(
                        4360,
                        "The stop point lies inside this log backup, which was written by \
                         another server: openvdi-engine does not replay SQL Server log \
                         records, so the database is restored to the end of this log backup, \
                         not to the stop point.",
                    )));
                } else {
                    stop_beyond = true;
                }
            }
            if let Some(r) = dbh.cat.restore.as_mut() {
                r.redo_lsn = end;
                r.last_backup_type = 2;
                if !m.openvdi {
                    r.unapplied_logs += 1;
                }
            }
        }
    }
    if kind == BackupKind::Full {
        // The data file's header page holds the seed its pages were made from;
        // the catalog must agree, or the next `modify` writes pages that redo of
        // its log would not reproduce.
        dbh.cat.seed = if m.openvdi {
            dbh.header_seed().map_err(engine_err)?.unwrap_or(0)
        } else {
            0
        };
    }
    // openvdi cannot replay SQL Server's log records: say so rather than let a
    // "successfully processed" stand alone.
    let mut notes = Vec::new();
    if kind == BackupKind::Log && !m.openvdi {
        notes.push(Message::info(
            50000,
            format!(
                "The log records of this backup (LSN {} to {}) were stored in the log file but were not applied: openvdi cannot replay SQL Server's log records.",
                m.first_lsn, m.last_lsn
            ),
        ));
    }
    if stop_beyond {
        outs.push(Output::Message(Message::info(
            4322,
            "This backup set contains records that were logged before the designated point \
             in time. The database is being left in the restoring state so that more roll \
             forward can be performed.",
        )));
    }
    dbh.cat.state = DbState::Restoring;
    if o.recovers() && !stop_beyond {
        notes.extend(recovery_note(&dbh));
        finish_recovery(&mut dbh)?;
    }
    dbh.save().map_err(engine_err)?;
    // The files' locks are held until the catalog says what the files now are.
    drop(tg);
    cat = dbh.cat.clone();
    let secs = start.elapsed().as_secs_f64();

    outs.extend(progress.take().into_iter().map(Output::Message));
    let mut files_out = Vec::new();
    for f in &m.files {
        let pages = match f.kind {
            FileKind::Data => written.data_pages,
            FileKind::Log => written.log_pages,
        };
        if kind == BackupKind::Log && f.kind == FileKind::Data {
            continue;
        }
        let path = cat
            .file(f.file_id)
            .map(|c| c.path.clone())
            .unwrap_or_default();
        outs.push(Output::Message(Message::info(
            4035,
            format!(
                "Processed {pages} pages for database '{database}', file '{}' on file 1.",
                f.logical_name
            ),
        )));
        files_out.push((f.logical_name.clone(), path, pages));
    }
    outs.extend(notes.into_iter().map(Output::Message));
    let pages = written.data_pages + written.log_pages;
    let what = if kind == BackupKind::Log {
        "RESTORE LOG"
    } else {
        "RESTORE DATABASE"
    };
    let text = format!(
        "{what} successfully processed {pages} pages in {}.",
        rate_text(pages, secs)
    );
    outs.push(Output::Message(Message::info(3014, text.clone())));
    Ok(Some(RestoreReport {
        database: database.to_string(),
        kind,
        files: files_out,
        pages,
        bytes: written.bytes,
        seconds: secs,
        recovered: cat.state == DbState::Online,
        message: text,
    }))
}

/// The recorded file sizes must be ones this restore can honour, checked while
/// planning, before any file is created, so a size field of 2^40 in a 3 MB backup
/// creates nothing.
///
/// An openvdi stream carries every page of its files (its chunk tables cover them;
/// the set carries their sum), so a file may exceed its pages by at most
/// [`UNFILLED_SLACK`]: anything more is damage (3241). A SQL Server stream carries
/// only allocated extents, so its files are legitimately far larger than its pages
/// (a 100 GB data file with 5 GB used, a log file of which one page is backed up);
/// refusing them would refuse real restores. There the engine does what SQL Server
/// does: the files must fit in the free space of the volume they go to (3257), so a
/// hostile size field cannot claim more than the disk has.
fn check_sizes(dev: &str, metas: &[SetMeta], volume: &Path) -> Result<(), SqlError> {
    let m = &metas[0];
    if m.openvdi {
        let carried: u64 = metas.iter().map(|x| x.carried_bytes).sum();
        for f in &m.files {
            if f.size_bytes > carried.saturating_add(UNFILLED_SLACK) {
                return Err(size_refused(dev, f, carried));
            }
        }
        return Ok(());
    }
    let need = m
        .files
        .iter()
        .fold(0u64, |a, f| a.saturating_add(f.size_bytes));
    match free_bytes(volume) {
        Some(avail) if need > avail => Err(msg::insufficient_space(
            &volume.display().to_string(),
            need,
            avail,
        )),
        Some(_) => Ok(()),
        // No answer from the file system: fall back to the strict bound.
        None => {
            let carried = metas.iter().map(|x| x.carried_bytes).max().unwrap_or(0);
            match m
                .files
                .iter()
                .find(|f| f.size_bytes > carried.saturating_add(UNFILLED_SLACK))
            {
                Some(f) => Err(size_refused(dev, f, carried)),
                None => Ok(()),
            }
        }
    }
}

/// Bytes an unprivileged writer may still use on the volume holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// 3241 for a file size the stream cannot fill.
fn size_refused(dev: &str, f: &FileMeta, carried: u64) -> SqlError {
    msg::bad_family(
        dev,
        &format!(
            "file '{}' records a size of {} bytes, but the backup set carries only {carried} bytes of pages",
            f.logical_name, f.size_bytes
        ),
    )
}

/// Open (and lock) the target files of a restore. `own`: the files the database's
/// own catalog lists, which may be replaced (opened with `O_NOFOLLOW`, created if
/// missing). Every other target of a full restore is created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`; if a file is already there, WITH REPLACE may take it
/// over only inside the data directory (a leftover of a failed restore or a
/// dropped database), never elsewhere, since a file outside could belong to
/// another engine's database (SQL Server would overwrite it; refusing is the
/// deliberate difference). On failure, files this call created are removed again.
fn open_targets(
    engine: &Engine,
    files: &[(FileMeta, PathBuf)],
    own: &[PathBuf],
    full: bool,
    replace: bool,
) -> Result<HashMap<u16, (File, PathBuf)>, SqlError> {
    let mut handles = HashMap::new();
    let mut created: Vec<PathBuf> = Vec::new();
    let res = (|| -> Result<(), SqlError> {
        for (f, path) in files {
            let shown = path.display().to_string();
            let mapped = |e: crate::error::EngineError| match e {
                crate::error::EngineError::FileExists(_) => {
                    msg::file_exists(&f.logical_name, &shown)
                }
                other => engine_err(other),
            };
            let h = if !full || own.contains(path) {
                db::open_or_create_file(path).map_err(mapped)?
            } else {
                match db::create_file(path) {
                    Ok(h) => {
                        created.push(path.clone());
                        h
                    }
                    Err(crate::error::EngineError::FileExists(_))
                        if replace && path.parent() == Some(engine.data_dir()) =>
                    {
                        db::open_file(path, true).map_err(mapped)?
                    }
                    Err(e) => return Err(mapped(e)),
                }
            };
            db::lock(&h, path).map_err(engine_err)?;
            handles.insert(f.file_id, (h, path.clone()));
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(handles),
        Err(e) => {
            drop(handles);
            for p in created {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// Plan a full restore: REPLACE, MOVE and file-conflict checks; the new catalog.
fn plan_full(
    engine: &Engine,
    database: &str,
    m: &SetMeta,
    o: &RestoreOptions,
    existing: Option<&Database>,
) -> Result<Catalog, SqlError> {
    if let Some(ex) = existing {
        if ex.cat.state == DbState::Online && !o.replace {
            if !ex.cat.name.eq_ignore_ascii_case(&m.database_name) {
                return Err(msg::other_database(database));
            }
            return Err(msg::tail_not_backed_up(database));
        }
    }
    for (logical, _) in &o.moves {
        if !m
            .files
            .iter()
            .any(|f| f.logical_name.eq_ignore_ascii_case(logical))
        {
            return Err(msg::not_a_logical_file(logical, &m.database_name));
        }
    }
    let mut files = Vec::new();
    let mut problems: Vec<Message> = Vec::new();
    for f in &m.files {
        let path = match o
            .moves
            .iter()
            .rev()
            .find(|(l, _)| l.eq_ignore_ascii_case(&f.logical_name))
        {
            Some((_, p)) => {
                let p = PathBuf::from(p);
                // MOVE names where a file goes, in full: a relative path would
                // depend on the engine's working directory, and a name ending in
                // `.openvdi.json` would pose as a catalog. SQL Server's message for
                // an unusable physical name is 5105 (then 3156).
                let bad = if !p.is_absolute() {
                    Some("WITH MOVE needs an absolute path")
                } else if p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .to_ascii_lowercase()
                        .ends_with(".openvdi.json")
                }) {
                    Some("the name of an openvdi catalog file")
                } else if p.file_name().is_none() {
                    Some("no file name")
                } else {
                    None
                };
                if let Some(why) = bad {
                    let shown = p.display().to_string();
                    problems.extend(msg::bad_physical_name(&shown, why).messages);
                    problems.extend(msg::cannot_restore_file(&f.logical_name, &shown).messages);
                }
                p
            }
            None => match existing.and_then(|ex| ex.cat.file(f.file_id)) {
                Some(c) => c.path.clone(),
                None => default_target(engine, f),
            },
        };
        if let Some(other) = files
            .iter()
            .find(|x: &&FileInfo| db::normalize(&x.path) == db::normalize(&path))
        {
            problems.extend(
                msg::file_claimed_twice(
                    &path.display().to_string(),
                    &other.logical_name,
                    &f.logical_name,
                )
                .messages,
            );
        }
        if let Some(owner) = engine.dir().owner_of(&path, database) {
            problems.extend(msg::file_in_use(&path.display().to_string(), &owner).messages);
            problems.extend(
                msg::cannot_restore_file(&f.logical_name, &path.display().to_string()).messages,
            );
        }
        if path
            .parent()
            .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            problems.extend(
                SqlError::msg(5133, format!("Directory lookup for the file \"{}\" failed with the operating system error 2(The system cannot find the file specified.).", path.display())).messages,
            );
            problems.extend(
                msg::cannot_restore_file(&f.logical_name, &path.display().to_string()).messages,
            );
        }
        files.push(FileInfo {
            file_id: f.file_id,
            logical_name: f.logical_name.clone(),
            path,
            kind: f.kind,
        });
    }
    if !problems.is_empty() {
        problems.push(Message::error(3119, "Problems were identified while planning for the RESTORE statement. Previous messages provide details."));
        return Err(SqlError {
            messages: problems,
            info: Vec::new(),
        });
    }
    if !files.iter().any(|f| f.kind == FileKind::Data)
        || !files.iter().any(|f| f.kind == FileKind::Log)
    {
        return Err(msg::damaged(
            "the backup set lists no data file or no log file",
        ));
    }
    Ok(Catalog {
        version: catalog::VERSION,
        name: database.to_string(),
        database_guid: existing.map_or_else(catalog::new_guid, |e| e.cat.database_guid.clone()),
        seed: 0,
        state: DbState::Restoring,
        files,
        next_record: m.last_lsn.record().unwrap_or(0),
        created_unix: catalog::now_unix(),
        last_full: None,
        changed_pages: Vec::new(),
        log_backup_lsn: None,
        restore: None,
        origin: if m.openvdi {
            None
        } else {
            Some(m.server_name.clone())
        },
    })
}

/// Give a restored file the size its backup recorded; pages of a log file that the
/// backup did not carry are written as empty log pages (what the source has).
/// After a full restore (`full`), the file was empty before the stream: pages the
/// stream did not carry stay zero (holes), as they did when the file was sized
/// before writing.
fn finish_file(
    h: &File,
    f: &FileMeta,
    path: &Path,
    openvdi: bool,
    full: bool,
) -> Result<(), SqlError> {
    let err = |e: std::io::Error| write_error(path, &e);
    let len = h.metadata().map_err(err)?.len();
    if f.size_bytes == 0 {
        return h.sync_all().map_err(err);
    }
    if full {
        let size = if openvdi {
            f.size_bytes
        } else {
            f.size_bytes.max(len)
        };
        h.set_len(size).map_err(err)?;
        return h.sync_all().map_err(err);
    }
    if f.kind == FileKind::Log && openvdi && len < f.size_bytes {
        let mut p = vec![0u8; PAGE_SIZE];
        for pg in (len / PAGE_SIZE as u64)..(f.size_bytes / PAGE_SIZE as u64) {
            page::empty_log_page(&mut p, f.file_id, pg as u32);
            h.write_all_at(&p, pg * PAGE_SIZE as u64).map_err(err)?;
        }
    }
    // A foreign backup's recorded size is only a lower bound here (not every file's
    // size could be read from its metadata): never cut off pages that were written.
    let size = if openvdi {
        f.size_bytes
    } else {
        f.size_bytes.max(len)
    };
    h.set_len(size).map_err(err)?;
    h.sync_all().map_err(err)
}

// ---------------------------------------------------------------------------
// HEADERONLY, FILELISTONLY, LABELONLY, VERIFYONLY
// ---------------------------------------------------------------------------

fn info(
    engine: &Engine,
    kind: InfoKind,
    devices: &[Device],
    o: &RestoreOptions,
    outs: &mut Vec<Output>,
) -> Result<(), SqlError> {
    let topts = transfer_options(engine, o.block_size, o.max_transfer_size, o.buffer_count);
    let session = Media::open(devices, Direction::Read, &topts, engine.fault(), false)?;
    let targets: OnceLock<Targets> = OnceLock::new();
    let progress = Progress::new(0, None);
    let plan = |metas: &[SetMeta]| -> Result<Go, SqlError> {
        match kind {
            InfoKind::VerifyOnly => {
                check_media_set(devices, metas)?;
                Ok(Go::Verify)
            }
            InfoKind::HeaderOnly => Ok(Go::Trailer),
            _ => Ok(Go::Stop),
        }
    };
    let (metas, results) = run_restore_threads(
        &session,
        devices,
        plan,
        &targets,
        &progress,
        o.checksum == Some(true),
        &Credentials {
            media: o.media_password.clone(),
            set: o.password.clone(),
            // LABELONLY reads the media header only.
            check_set: kind != InfoKind::LabelOnly,
        },
    );
    let metas = match metas {
        Ok(m) => m,
        Err(e) => {
            session.abort_and_close();
            return Err(e);
        }
    };
    let mut trailers = Vec::new();
    for r in results {
        match r {
            Ok(w) => trailers.push(w.trailer),
            Err(e) => {
                session.abort_and_close();
                return Err(e);
            }
        }
    }
    session.close();
    let mut m = metas[0].clone();
    // BackupSize is the set's bytes over every family; known only if every
    // family's end was read.
    m.backup_size = trailers
        .iter()
        .map(|t| t.set_bytes)
        .sum::<Option<u64>>()
        .filter(|_| !trailers.is_empty());
    let finish = trailers.iter().filter_map(|t| t.finish_unix).max();
    m.finish_unix = finish.unwrap_or(0);
    let m = &m;
    match kind {
        InfoKind::HeaderOnly => outs.push(Output::ResultSet(headeronly(m))),
        InfoKind::FileListOnly => outs.push(Output::ResultSet(filelistonly(m))),
        InfoKind::LabelOnly => outs.push(Output::ResultSet(labelonly(&metas))),
        InfoKind::VerifyOnly => outs.push(Output::Message(Message::info(
            3262,
            "The backup set on file 1 is valid.",
        ))),
    }
    Ok(())
}

fn date_text(unix: u64) -> Option<String> {
    if unix == 0 {
        return None;
    }
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    Some(format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

fn lsn_text(l: Lsn) -> Option<String> {
    (l != Lsn::ZERO).then(|| l.to_string())
}

/// The collation facts of a SQL Server stream's five collation bytes (`LCID` in the
/// low 20 bits of the first four, comparison flags in the next 8, then the SQL
/// sort id): (name, SortOrder, UnicodeLocaleId, UnicodeComparisonStyle). The name
/// is given only for the collations the engine can name (sort id 52, and the
/// Windows collations of LCIDs 1033 and 3082, which the fixtures use); NULL
/// otherwise rather than a guess.
fn collation_facts(c: &[u8; 5]) -> (Option<String>, u32, u32, u32) {
    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let lcid = v & 0xF_FFFF;
    let flags = (v >> 20) & 0xFF;
    let sort = u32::from(c[4]);
    // Flags: 1 ignore case, 2 ignore accents, 4 ignore kana, 8 ignore width.
    let style = (flags & 1) | (flags & 2) | ((flags & 4) << 14) | ((flags & 8) << 14);
    let cs = if flags & 1 != 0 { "CI" } else { "CS" };
    let accent = if flags & 2 != 0 { "AI" } else { "AS" };
    let mut tail = format!("{cs}_{accent}");
    if flags & 4 == 0 {
        tail.push_str("_KS");
    }
    if flags & 8 == 0 {
        tail.push_str("_WS");
    }
    let name = match (sort, lcid) {
        (52, 1033) => Some("SQL_Latin1_General_CP1_CI_AS".to_string()),
        (0, 1033) => Some(format!("Latin1_General_{tail}")),
        (0, 3082) => Some(format!("Modern_Spanish_{tail}")),
        _ => None,
    };
    (name, sort, lcid, style)
}

/// RESTORE HEADERONLY's row, in SQL Server's column order. Values come from the
/// stream where it holds them; what a real stream does not say (or the engine
/// cannot read) is NULL, never a constant standing in for a fact. For openvdi's
/// own streams the engine knows its facts (its collation, the FULL recovery
/// model, the flags it never sets).
fn headeronly(m: &SetMeta) -> ResultSet {
    let b = |v: bool| Some(if v { "1" } else { "0" }.to_string());
    let s = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let n = |v: u64| Some(v.to_string());
    let own = |v: Option<String>| if m.openvdi { v } else { None };
    let diff = m.kind == BackupKind::Differential;
    let (collation, sort, lcid, style, code_page) = match &m.collation {
        Some(c) => {
            let (name, sort, lcid, style) = collation_facts(c);
            (
                name,
                n(u64::from(sort)),
                n(u64::from(lcid)),
                n(u64::from(style)),
                None,
            )
        }
        None => (
            s("SQL_Latin1_General_CP1_CI_AS"),
            n(52),
            n(1033),
            n(196_609),
            n(1252),
        ),
    };
    let cols: Vec<(&str, Option<String>)> = vec![
        ("BackupName", m.name.clone()),
        ("BackupDescription", m.description.clone()),
        ("BackupType", n(u64::from(m.kind.type_number()))),
        ("ExpirationDate", None),
        ("Compressed", b(false)),
        ("Position", n(1)),
        ("DeviceType", n(7)),
        ("UserName", s(&m.user_name)),
        ("ServerName", s(&m.server_name)),
        ("DatabaseName", s(&m.database_name)),
        (
            "DatabaseVersion",
            (m.database_version > 0).then(|| m.database_version.to_string()),
        ),
        ("DatabaseCreationDate", date_text(m.database_creation_unix)),
        ("BackupSize", m.backup_size.map(|v| v.to_string())),
        ("FirstLSN", lsn_text(m.first_lsn)),
        ("LastLSN", lsn_text(m.last_lsn)),
        ("CheckpointLSN", lsn_text(m.checkpoint_lsn)),
        (
            "DatabaseBackupLSN",
            Some(m.database_backup_lsn.to_numeric().to_string()),
        ),
        ("BackupStartDate", date_text(m.start_unix)),
        ("BackupFinishDate", date_text(m.finish_unix)),
        ("SortOrder", sort),
        ("CodePage", code_page),
        ("UnicodeLocaleId", lcid),
        ("UnicodeComparisonStyle", style),
        ("CompatibilityLevel", None),
        ("SoftwareVendorId", n(4608)),
        ("SoftwareVersionMajor", n(u64::from(m.software_version.0))),
        ("SoftwareVersionMinor", n(u64::from(m.software_version.1))),
        ("SoftwareVersionBuild", n(u64::from(m.software_version.2))),
        ("MachineName", s(&m.machine_name)),
        ("Flags", own(n(if m.checksum { 16 } else { 0 }))),
        ("BindingID", None),
        ("RecoveryForkID", None),
        ("Collation", collation),
        ("FamilyGUID", None),
        ("HasBulkLoggedData", own(b(false))),
        ("IsSnapshot", own(b(false))),
        ("IsReadOnly", own(b(false))),
        ("IsSingleUser", own(b(false))),
        ("HasBackupChecksums", b(m.checksum)),
        ("IsDamaged", own(b(false))),
        (
            "BeginsLogChain",
            // An openvdi log backup begins the chain when it starts at the full
            // backup's checkpoint (the first log backup after that full).
            own(b(
                m.kind == BackupKind::Log && m.first_lsn == m.database_backup_lsn
            )),
        ),
        ("HasIncompleteMetaData", own(b(false))),
        ("IsForceOffline", own(b(false))),
        ("IsCopyOnly", own(b(m.copy_only))),
        ("FirstRecoveryForkID", None),
        ("ForkPointLSN", None),
        ("RecoveryModel", own(s("FULL"))),
        (
            "DifferentialBaseLSN",
            if diff {
                lsn_text(m.database_backup_lsn)
            } else {
                None
            },
        ),
        ("DifferentialBaseGUID", m.differential_base_guid.clone()),
        (
            "BackupTypeDescription",
            s(match m.kind {
                BackupKind::Full => "Database",
                BackupKind::Differential => "Database Differential",
                BackupKind::Log => "Transaction Log",
            }),
        ),
        ("BackupSetGUID", s(&m.backup_set_guid)),
        ("CompressedBackupSize", m.backup_size.map(|v| v.to_string())),
        ("Containment", own(n(0))),
        ("KeyAlgorithm", None),
        ("EncryptorThumbprint", None),
        ("EncryptorType", None),
    ];
    let columns: Vec<String> = cols.iter().map(|c| c.0.to_string()).collect();
    ResultSet {
        types: typed(&columns, HEADERONLY_TYPES),
        columns,
        rows: vec![cols.into_iter().map(|c| c.1).collect()],
        nocount: false,
    }
}

use crate::ColumnType as T;

/// The types SQL Server gives HEADERONLY's columns (Microsoft's documentation of
/// RESTORE HEADERONLY); columns not listed are nvarchar.
const HEADERONLY_TYPES: &[(&str, T)] = &[
    ("BackupType", T::SmallInt),
    ("ExpirationDate", T::DateTime),
    ("Compressed", T::Bit),
    ("Position", T::SmallInt),
    ("DeviceType", T::TinyInt),
    ("DatabaseVersion", T::Int),
    ("DatabaseCreationDate", T::DateTime),
    ("BackupSize", T::Numeric(20, 0)),
    ("FirstLSN", T::Numeric(25, 0)),
    ("LastLSN", T::Numeric(25, 0)),
    ("CheckpointLSN", T::Numeric(25, 0)),
    ("DatabaseBackupLSN", T::Numeric(25, 0)),
    ("BackupStartDate", T::DateTime),
    ("BackupFinishDate", T::DateTime),
    ("SortOrder", T::SmallInt),
    ("CodePage", T::SmallInt),
    ("UnicodeLocaleId", T::Int),
    ("UnicodeComparisonStyle", T::Int),
    ("CompatibilityLevel", T::TinyInt),
    ("SoftwareVendorId", T::Int),
    ("SoftwareVersionMajor", T::Int),
    ("SoftwareVersionMinor", T::Int),
    ("SoftwareVersionBuild", T::Int),
    ("Flags", T::Int),
    ("BindingID", T::UniqueIdentifier),
    ("RecoveryForkID", T::UniqueIdentifier),
    ("FamilyGUID", T::UniqueIdentifier),
    ("HasBulkLoggedData", T::Bit),
    ("IsSnapshot", T::Bit),
    ("IsReadOnly", T::Bit),
    ("IsSingleUser", T::Bit),
    ("HasBackupChecksums", T::Bit),
    ("IsDamaged", T::Bit),
    ("BeginsLogChain", T::Bit),
    ("HasIncompleteMetaData", T::Bit),
    ("IsForceOffline", T::Bit),
    ("IsCopyOnly", T::Bit),
    ("FirstRecoveryForkID", T::UniqueIdentifier),
    ("ForkPointLSN", T::Numeric(25, 0)),
    ("DifferentialBaseLSN", T::Numeric(25, 0)),
    ("DifferentialBaseGUID", T::UniqueIdentifier),
    ("BackupSetGUID", T::UniqueIdentifier),
    ("CompressedBackupSize", T::BigInt),
    ("Containment", T::TinyInt),
];

/// FILELISTONLY's column types (as HEADERONLY_TYPES).
const FILELISTONLY_TYPES: &[(&str, T)] = &[
    ("Size", T::Numeric(20, 0)),
    ("MaxSize", T::Numeric(20, 0)),
    ("FileId", T::BigInt),
    ("CreateLSN", T::Numeric(25, 0)),
    ("DropLSN", T::Numeric(25, 0)),
    ("UniqueId", T::UniqueIdentifier),
    ("ReadOnlyLSN", T::Numeric(25, 0)),
    ("ReadWriteLSN", T::Numeric(25, 0)),
    ("BackupSizeInBytes", T::BigInt),
    ("SourceBlockSize", T::Int),
    ("FileGroupId", T::Int),
    ("LogGroupGUID", T::UniqueIdentifier),
    ("DifferentialBaseLSN", T::Numeric(25, 0)),
    ("DifferentialBaseGUID", T::UniqueIdentifier),
    ("IsReadOnly", T::Bit),
    ("IsPresent", T::Bit),
];

/// LABELONLY's column types (as HEADERONLY_TYPES).
const LABELONLY_TYPES: &[(&str, T)] = &[
    ("MediaSetId", T::UniqueIdentifier),
    ("FamilyCount", T::Int),
    ("FamilySequenceNumber", T::Int),
    ("MediaFamilyId", T::UniqueIdentifier),
    ("MediaSequenceNumber", T::Int),
    ("MediaLabelPresent", T::TinyInt),
    ("SoftwareVendorId", T::Int),
    ("MediaDate", T::DateTime),
    ("MirrorCount", T::Int),
    ("IsCompressed", T::Bit),
];

fn typed(columns: &[String], table: &[(&str, T)]) -> Vec<T> {
    columns
        .iter()
        .map(|c| {
            table
                .iter()
                .find(|(n, _)| n == c)
                .map_or(T::NVarChar, |(_, t)| *t)
        })
        .collect()
}

/// RESTORE FILELISTONLY's rows, in SQL Server's column order (NULL where the
/// stream does not say).
fn filelistonly(m: &SetMeta) -> ResultSet {
    let columns = [
        "LogicalName",
        "PhysicalName",
        "Type",
        "FileGroupName",
        "Size",
        "MaxSize",
        "FileId",
        "CreateLSN",
        "DropLSN",
        "UniqueId",
        "ReadOnlyLSN",
        "ReadWriteLSN",
        "BackupSizeInBytes",
        "SourceBlockSize",
        "FileGroupId",
        "LogGroupGUID",
        "DifferentialBaseLSN",
        "DifferentialBaseGUID",
        "IsReadOnly",
        "IsPresent",
        "TDEThumbprint",
        "SnapshotUrl",
    ];
    let diff = m.kind == BackupKind::Differential;
    let own = |v: &str| m.openvdi.then(|| v.to_string());
    let rows = m
        .files
        .iter()
        .map(|f| {
            let data = f.kind == FileKind::Data;
            vec![
                Some(f.logical_name.clone()),
                Some(f.physical_name.clone()),
                Some(if data { "D" } else { "L" }.to_string()),
                f.filegroup.clone(),
                Some(f.size_bytes.to_string()),
                own("35184372080640"),
                Some(f.file_id.to_string()),
                own("0"),
                own("0"),
                None,
                own("0"),
                own("0"),
                f.backup_bytes.map(|v| v.to_string()),
                f.source_block_size.map(|v| v.to_string()),
                f.filegroup_id.map(|v| v.to_string()),
                None,
                if diff && data {
                    lsn_text(m.database_backup_lsn)
                } else {
                    None
                },
                if data {
                    m.differential_base_guid.clone()
                } else {
                    None
                },
                own("0"),
                Some("1".to_string()),
                None,
                None,
            ]
        })
        .collect();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    ResultSet {
        types: typed(&columns, FILELISTONLY_TYPES),
        columns,
        rows,
        nocount: false,
    }
}

/// RESTORE LABELONLY's rows (one per media family read), in SQL Server's order.
fn labelonly(metas: &[SetMeta]) -> ResultSet {
    let columns = [
        "MediaName",
        "MediaSetId",
        "FamilyCount",
        "FamilySequenceNumber",
        "MediaFamilyId",
        "MediaSequenceNumber",
        "MediaLabelPresent",
        "MediaDescription",
        "SoftwareName",
        "SoftwareVendorId",
        "MediaDate",
        "MirrorCount",
        "IsCompressed",
    ];
    let rows = metas
        .iter()
        .map(|m| {
            vec![
                None,
                Some(m.media_set_guid.clone()),
                Some(m.family_count.to_string()),
                Some(m.family_number.to_string()),
                None,
                Some("1".to_string()),
                Some("1".to_string()),
                None,
                Some("Microsoft SQL Server".to_string()),
                Some("4608".to_string()),
                date_text(m.start_unix),
                Some("1".to_string()),
                Some("0".to_string()),
            ]
        })
        .collect();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    ResultSet {
        types: typed(&columns, LABELONLY_TYPES),
        columns,
        rows,
        nocount: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stripes' writes interleave anywhere in a file: the range handed to the
    /// write-back covers every byte written since the last one, once 32 MiB gathered.
    #[test]
    fn write_behind_covers_what_was_written() {
        let mut wb = WriteBehind::default();
        let mib = 1u64 << 20;
        assert_eq!(wb.wrote(100 * mib, 8 * mib), None);
        assert_eq!(wb.wrote(10 * mib, 8 * mib), None);
        assert_eq!(wb.wrote(200 * mib, 8 * mib), None);
        assert_eq!(wb.wrote(50 * mib, 8 * mib), Some((10 * mib, 198 * mib)));
        // Started afresh.
        assert_eq!(wb.wrote(300 * mib, 31 * mib), None);
        assert_eq!(wb.wrote(331 * mib, mib), Some((300 * mib, 32 * mib)));
    }

    #[test]
    fn dates_and_rates() {
        assert_eq!(date_text(0), None);
        assert_eq!(
            date_text(86400 * 365).as_deref(),
            Some("1971-01-01 00:00:00.000")
        );
        assert_eq!(
            date_text(1_700_000_000).as_deref(),
            Some("2023-11-14 22:13:20.000")
        );
        assert_eq!(rate_text(128, 1.0), "1.000 seconds (1.000 MB/sec)");
    }

    #[test]
    fn one_statement_per_database_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(d.path()).unwrap();
        let g = BusyGuard::take(&e, "Db").unwrap();
        assert_eq!(BusyGuard::take(&e, "db").unwrap_err().number(), 3023);
        let other = BusyGuard::take(&e, "other").unwrap();
        drop(g);
        let again = BusyGuard::take(&e, "db").unwrap();
        drop((again, other));
    }

    #[test]
    fn stats_progress() {
        let p = Progress::new(100, Some(25));
        p.add(30);
        p.add(70);
        let t: Vec<String> = p.take().into_iter().map(|m| m.text).collect();
        assert_eq!(
            t,
            vec![
                "25 percent processed.",
                "50 percent processed.",
                "75 percent processed.",
                "100 percent processed."
            ]
        );
    }
}
