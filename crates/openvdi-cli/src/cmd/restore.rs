//! `openvdi restore BACKUP`: streams the stored stripes back through `VDC_Read`,
//! verifying every chunk before the engine sees it.

use std::sync::Arc;

use anyhow::Result;
use openvdi::{vdf, VdConfig};

use super::{stop_error, Ctx};
use crate::cli::RestoreArgs;
use crate::engine::{self, ident, literal, Engine};
use crate::exit::{code_of, err, Code};
use crate::manifest::{Kind, Manifest};
use crate::pipeline::{self, Counters, StopReason};
use crate::repo::Repo;
use crate::{output, progress, vdi};

/// Options of the RESTORE statement.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    pub as_name: Option<String>,
    pub moves: Vec<(String, String)>,
    pub norecovery: bool,
    pub replace: bool,
    /// RESTORE VERIFYONLY instead of a restore.
    pub verify_only: bool,
    /// `STOPAT = '…'` or `STOPBEFOREMARK = 'lsn:…'` (the whole option).
    pub stop: Option<String>,
}

pub fn parse_moves(moves: &[String]) -> Result<Vec<(String, String)>> {
    moves
        .iter()
        .map(|m| {
            m.split_once('=')
                .filter(|(l, p)| !l.is_empty() && !p.is_empty())
                .map(|(l, p)| (l.to_string(), p.to_string()))
                .ok_or_else(|| err(Code::Usage, format!("--move {m:?}: expected LOGICAL=PATH")))
        })
        .collect()
}

/// `passwords`: [`engine::password_options`] (none in printed statements).
fn statement(m: &Manifest, o: &RestoreOptions, devices: &[String], passwords: &[String]) -> String {
    let from: Vec<String> = devices
        .iter()
        .map(|d| format!("VIRTUAL_DEVICE = '{}'", d.replace('\'', "''")))
        .collect();
    let mut with = Vec::new();
    if let Some(b) = m.block_size {
        with.push(format!("BLOCKSIZE = {b}"));
    }
    if let Some(n) = m.max_transfer_size {
        with.push(format!("MAXTRANSFERSIZE = {n}"));
    }
    if let Some(n) = m.buffer_count {
        with.push(format!("BUFFERCOUNT = {n}"));
    }
    let head = if o.verify_only {
        "RESTORE VERIFYONLY".to_string()
    } else {
        for (l, p) in &o.moves {
            with.push(format!("MOVE {} TO {}", literal(l), literal(p)));
        }
        if o.replace {
            with.push("REPLACE".into());
        }
        if let Some(stop) = &o.stop {
            with.push(stop.clone());
        }
        with.push(
            if o.norecovery {
                "NORECOVERY"
            } else {
                "RECOVERY"
            }
            .into(),
        );
        let verb = if m.kind == Kind::Log {
            "LOG"
        } else {
            "DATABASE"
        };
        let name = o.as_name.as_deref().unwrap_or(&m.database);
        format!("RESTORE {verb} {}", ident(name))
    };
    with.extend(passwords.iter().cloned());
    let mut sql = format!("{head} FROM {}", from.join(", "));
    if !with.is_empty() {
        sql.push_str(" WITH ");
        sql.push_str(&with.join(", "));
    }
    sql
}

/// Runs one RESTORE (or VERIFYONLY) of stored backup `m` through the engine; in an
/// encrypted repository `m` is authenticated first unless `checked` says it was.
pub fn restore_through_engine(
    ctx: &Ctx,
    repo: &Repo,
    m: &Manifest,
    opts: &RestoreOptions,
    op: &str,
    checked: &mut Checked,
) -> Result<engine::Outcome> {
    checked.authenticate(repo, m)?;
    let sources = m
        .stripes
        .iter()
        .map(|s| pipeline::restore::Source::Stored {
            key: s.key.clone(),
            raw_size: s.raw_size,
            blake3: s.blake3.clone(),
            backup_id: m.id.to_string(),
            index: s.index,
        })
        .collect();
    let totals = m.stripes.iter().map(|s| s.raw_size).collect();
    engine_session(
        ctx,
        repo.store.clone(),
        repo.keys.clone(),
        sources,
        Some(totals),
        op,
        |devices| {
            statement(
                m,
                opts,
                devices,
                &engine::password_options(&ctx.settings.engine),
            )
        },
    )
}

/// One engine statement reading `sources` through a fresh virtual device set (one
/// device per source): the engine runs `stmt(device names)` while this thread feeds
/// the devices. Returns the statement's outcome; verification failures exit 3.
pub fn engine_session(
    ctx: &Ctx,
    store: Arc<dyn crate::storage::Store>,
    keys: Option<Arc<crate::crypto::Keys>>,
    sources: Vec<pipeline::restore::Source>,
    totals: Option<Vec<u64>>,
    op: &str,
    stmt: impl FnOnce(&[String]) -> String,
) -> Result<engine::Outcome> {
    let transport = crate::vdi_lib::transport(
        ctx.settings.engine.vdi_library.as_deref(),
        ctx.settings.engine.vdi_abi,
    )?;
    let engine: Arc<dyn Engine> = engine::open(&ctx.settings.engine, ctx.progress, None)?;
    let n = sources.len() as u32;
    vdi::remove_stale_sets();
    let set_name = vdi::unique_set_name();
    let devices = vdi::device_names(&set_name, n);
    let cfg = VdConfig {
        device_count: n,
        features: vdf::VDF_RequestComplete,
        ..Default::default()
    };
    let sql = stmt(&devices);
    let set = transport
        .create(&set_name, &cfg)
        .map_err(|e| anyhow::anyhow!("creating virtual device set {set_name}: {e}"))?;
    let counters: Vec<Arc<Counters>> = (0..n).map(|_| Arc::default()).collect();
    let mode = if op == "inspect" {
        progress::Mode::Off
    } else {
        ctx.progress
    };
    let reporter = progress::Reporter::start(mode, op, counters.clone(), totals);
    let stop = &ctx.stop;
    let (result, outcome) = std::thread::scope(|s| {
        let eng = s.spawn(|| {
            let o = engine.execute(&sql, stop);
            if !o.ok {
                stop.stop(StopReason::Engine(o.error_text()));
            }
            o
        });
        let r = pipeline::restore::run(pipeline::restore::Plan {
            set: set.as_ref(),
            device_names: devices.clone(),
            store,
            sources,
            keys,
            stop: stop.clone(),
            counters: counters.clone(),
            open_timeout: ctx.settings.engine.open_timeout,
        });
        if r.is_err() {
            set.signal_abort();
        }
        let o = eng.join().unwrap_or_else(|_| engine::Outcome {
            ok: false,
            messages: vec!["the engine thread panicked".into()],
            ..Default::default()
        });
        (r, o)
    });
    reporter.finish(result.is_ok() && outcome.ok && !stop.is_stopped());
    let _ = set.close();
    // The engine thread has been joined, so its message is in: the ranking of
    // StopReason picks the cause (a verification failure outranks the engine's
    // complaint about the abort it caused; the engine's message outranks the bare
    // abort our device threads saw).
    if let Err(reason) = result {
        stop.stop(reason);
        return Err(stop_error(stop.reason().unwrap_or(StopReason::Aborted)));
    }
    if !outcome.ok {
        return Err(stop_error(StopReason::Engine(outcome.error_text())));
    }
    super::check_interrupted(stop)?;
    Ok(outcome)
}

/// The backups one command has checked whole against their authenticated manifests,
/// so that each is read once for that, however many statements the command then
/// sends the engine (`restore --as`: FILELISTONLY, then the RESTORE; `--replace`
/// and `verify --engine`: the full verification, then the statement; a
/// point-in-time restore: every step before the first).
///
/// Checking a backup again just before the next statement would add no safety: the
/// stored objects could change after any pass, one or two, and the streaming reader
/// authenticates every frame and the trailer again as it sends them, so a change
/// after the pass still stops the restore (exit 3) — with the frames before the
/// change already sent, a window a second pass would only move, not close.
/// What each restore reads (docs/PERFORMANCE.md, "Encryption"): a restore once for
/// the pass and once to stream; `--as NEW` adds the head of the backup for
/// FILELISTONLY; `--replace` reads it twice (the full verification, the stream).
#[derive(Debug, Default)]
pub struct Checked(std::collections::HashSet<String>);

impl Checked {
    /// In an encrypted repository, [`authenticate_first`] unless `m` was checked
    /// already; nothing in an unencrypted one (whose frames are checked as they
    /// stream: its backups promise no more).
    pub fn authenticate(&mut self, repo: &Repo, m: &Manifest) -> Result<()> {
        if !repo.encrypted || self.0.contains(m.id.as_str()) {
            return Ok(());
        }
        authenticate_first(repo, m)?;
        self.0.insert(m.id.to_string());
        Ok(())
    }

    /// [`super::verify::verify_stored`]: every stripe decoded (every frame and the
    /// trailer authenticated, the blake3 against the manifest, the MTF walk), which
    /// covers everything [`authenticate_first`] checks, so `m` counts as checked.
    pub fn verify(&mut self, repo: &Repo, m: &Manifest) -> Result<Vec<serde_json::Value>> {
        let r = super::verify::verify_stored(repo, m)?;
        self.0.insert(m.id.to_string());
        Ok(r)
    }
}

/// An encrypted repository promises that a tampered backup is refused before a byte
/// reaches the engine. Frames are authenticated one by one as they stream, but a
/// frame swapped near the end (or a cut-off stripe) would only show after the engine
/// had the frames before it. So first a fast pass over every stripe's stored bytes
/// (in parallel): the framing, each frame's crc32c, the authenticated trailer, and
/// the whole-object blake3 against the authenticated manifest — any change of any
/// stored byte fails it. No decryption or decompression of data frames: it costs one
/// extra read of the stored (compressed) bytes at blake3's speed.
pub fn authenticate_first(repo: &Repo, m: &Manifest) -> Result<()> {
    let results: Vec<Result<()>> = std::thread::scope(|sc| {
        let hs: Vec<_> = m
            .stripes
            .iter()
            .map(|s| {
                let (store, keys, id) = (repo.store.as_ref(), repo.keys.as_deref(), m.id.as_str());
                sc.spawn(move || super::export::check_stripe(store, keys, id, s))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("check thread panicked")))
            })
            .collect()
    });
    for r in results {
        r.map_err(|e| {
            e.context(format!(
                "backup {} failed authentication, so nothing was sent to the engine",
                m.id
            ))
        })?;
    }
    Ok(())
}

/// A damaged backup must not get to replace a live database: the restore would
/// stop half-way and leave it RESTORING.
pub fn verify_first(ctx: &Ctx, repo: &Repo, m: &Manifest, checked: &mut Checked) -> Result<()> {
    checked.verify(repo, m).map_err(|e| {
        e.context(format!(
            "backup {} failed verification, so nothing was restored and the database \
             was not touched",
            m.id
        ))
    })?;
    super::check_interrupted(&ctx.stop)
}

/// `--as NAME`: the MOVE clauses that relocate every file `--move` did not (see
/// [`relocation`]), from the engine's FILELISTONLY of the backup.
pub fn relocate(
    ctx: &Ctx,
    repo: &Repo,
    m: &Manifest,
    opts: &mut RestoreOptions,
    checked: &mut Checked,
) -> Result<()> {
    let Some(name) = opts.as_name.clone() else {
        return Ok(());
    };
    if name.eq_ignore_ascii_case(&m.database) {
        return Ok(());
    }
    crate::manifest::check_name("--as", &name).map_err(|e| err(Code::Usage, e))?;
    // FILELISTONLY hands the head of the backup to the engine: authenticate first
    // (once: the RESTORE that follows relies on the same pass, see `Checked`).
    checked.authenticate(repo, m)?;
    let (tables, msgs) =
        super::inspect::query(ctx, &super::inspect::stored_target(repo, m), "FILELISTONLY")?;
    let Some(files) = tables.first() else {
        return Err(anyhow::anyhow!(
            "--as {name}: the engine printed its file list as text ({}); give a \
             --move for every file",
            msgs.join(" / ")
        ));
    };
    // The embedded engine's files go to its data directory; another server's next
    // to where the backup says the files were.
    let embedded = ctx.settings.engine.engine_cmd.is_none() && ctx.settings.engine.tds.is_none();
    let dir = if embedded {
        let d = std::path::absolute(&ctx.settings.engine.data_dir)?;
        Some(format!("{}/", d.display()))
    } else {
        None
    };
    let extra = relocation(files, &name, dir.as_deref(), &opts.moves)?;
    opts.moves.extend(extra);
    Ok(())
}

/// The RESTORE statement for `m` as it will run, with `<vdi-set>` for the device
/// set's name (a fresh one each run), for `--dry-run`.
pub fn statement_text(m: &Manifest, o: &RestoreOptions) -> String {
    let devices = vdi::device_names("<vdi-set>", m.stripes.len().max(1) as u32);
    statement(m, o, &devices, &[])
}

/// `--move` targets as the engine must get them: absolute (a relative one would be
/// resolved against wherever the engine runs, and stored relative in its catalog).
pub fn absolute_moves(moves: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    moves
        .into_iter()
        .map(|(l, p)| {
            let abs = std::path::absolute(&p)
                .map_err(|e| err(Code::Usage, format!("--move {l}={p}: {e}")))?;
            Ok((l, abs.display().to_string()))
        })
        .collect()
}

/// The directory part of a recorded physical name, Windows or POSIX, with its
/// separator (`C:\Data\x.mdf` → `C:\Data\`); None without one.
fn dir_part(physical: &str) -> Option<&str> {
    physical.rfind(['/', '\\']).map(|i| &physical[..=i])
}

/// `--as NAME` without a `--move` for every file: the MOVE clauses that put each
/// file the backup records next to the server's others, named after NAME as SQL
/// Server's own conventions and dbatools' DestinationDataDirectory do — the first
/// data file NAME.mdf, further ones NAME_2.ndf …, the log NAME_log.ldf, further
/// logs NAME_log2.ldf …, anything else NAME_LOGICAL. `dir` is the directory, with
/// its separator; None takes the one the backup recorded for each file.
fn relocation(
    files: &crate::engine::Table,
    name: &str,
    dir: Option<&str>,
    given: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let col = |c: &str| files.columns.iter().position(|n| n.eq_ignore_ascii_case(c));
    let (Some(li), Some(pi), Some(ti)) = (col("LogicalName"), col("PhysicalName"), col("Type"))
    else {
        return Err(anyhow::anyhow!(
            "the engine's FILELISTONLY gave no LogicalName/PhysicalName/Type: give a --move \
             for every file"
        ));
    };
    let (mut data, mut logs) = (0u32, 0u32);
    let mut out = Vec::new();
    for row in &files.rows {
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (logical, physical, kind) = (cell(li), cell(pi), cell(ti));
        if logical.is_empty() || given.iter().any(|(l, _)| l.eq_ignore_ascii_case(&logical)) {
            continue;
        }
        let file = match kind.trim() {
            "D" => {
                data += 1;
                if data == 1 {
                    format!("{name}.mdf")
                } else {
                    format!("{name}_{data}.ndf")
                }
            }
            "L" => {
                logs += 1;
                if logs == 1 {
                    format!("{name}_log.ldf")
                } else {
                    format!("{name}_log{logs}.ldf")
                }
            }
            _ => format!("{name}_{logical}"),
        };
        let dir = match dir.or_else(|| dir_part(&physical)) {
            Some(d) => d.to_string(),
            None => {
                return Err(err(
                    Code::Usage,
                    format!(
                        "--as {name}: the backup records no directory for {logical} \
                         ({physical:?}); give --move {logical}=PATH"
                    ),
                ))
            }
        };
        out.push((logical, format!("{dir}{file}")));
    }
    Ok(out)
}

pub fn run(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    if a.at.is_some() || a.at_lsn.is_some() {
        return super::pitr::run(ctx, a);
    }
    if a.dry_run || a.from_server.is_some() {
        return Err(err(
            Code::Usage,
            "--dry-run and --from-server go with --at or --at-lsn",
        ));
    }
    let mut opts = RestoreOptions {
        as_name: a.as_name,
        moves: absolute_moves(parse_moves(&a.moves)?)?,
        norecovery: a.norecovery,
        replace: a.replace,
        verify_only: false,
        stop: None,
    };
    let repo = super::open_repo(ctx)?;
    let m = repo.find(&a.backup)?;
    let mut checked = Checked::default();
    if opts.replace && !a.no_verify {
        verify_first(ctx, &repo, &m, &mut checked)?;
    }
    relocate(ctx, &repo, &m, &mut opts, &mut checked)?;
    let t0 = std::time::Instant::now();
    let target = opts.as_name.clone().unwrap_or_else(|| m.database.clone());
    let outcome =
        restore_through_engine(ctx, &repo, &m, &opts, "restore", &mut checked).map_err(|e| {
            // The engine refuses most requests before it writes anything (and says so);
            // a failure of the data path may have stopped it half-way.
            if matches!(code_of(&e), Code::Verify | Code::Interrupted)
                || !format!("{e:#}").contains("Msg ")
            {
                e.context(format!(
                    "restoring {} into {target} did not finish: if the engine had begun writing, \
                 the database is left RESTORING; restore a full backup of it again \
                 (with --replace) to bring it back",
                    m.id
                ))
            } else {
                e
            }
        })?;
    let secs = t0.elapsed().as_secs_f64();
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true, "backup": m.id, "database": target, "raw_bytes": m.raw_size,
            "seconds": secs, "message": outcome.completion_message(), "messages": outcome.messages,
        }));
    } else {
        output::text(&format!(
            "restored {} as {target}: {} in {secs:.1} s\n{}",
            m.id,
            progress::human(m.raw_size as f64),
            outcome.completion_message()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_parse() {
        assert_eq!(
            parse_moves(&["a=/x/y.mdf".into()]).unwrap(),
            vec![("a".to_string(), "/x/y.mdf".to_string())]
        );
        assert!(parse_moves(&["nope".into()]).is_err());
        assert!(parse_moves(&["=x".into()]).is_err());
    }
}
