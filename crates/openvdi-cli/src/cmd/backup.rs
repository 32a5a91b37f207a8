//! `openvdi backup DATABASE`: one virtual device per stripe, the engine's BACKUP
//! statement on its own thread, the data pipeline on this one, the manifest last.

use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Utc};
use openvdi::{vdf, VdConfig};

use super::{default_workers, stop_error, Ctx};
use crate::cli::BackupArgs;
use crate::codec::Codec;
use crate::engine::{self, ident, Engine};
use crate::exit::{err, Code};
use crate::manifest::{self, Chain, EngineInfo, Kind, Manifest, Stripe, Timings};
use crate::pipeline::{self, Counters, StopReason};
use crate::repo::Repo;
use crate::{lock, naming, output, progress, vdi};

/// The engine message of a manifest stored before the engine's completion arrived
/// (replaced by the real one once it does; it stays if the tool died in between).
pub const PENDING: &str =
    "stored before the engine's completion; the engine's facts were not recorded";

/// The validated request.
#[derive(Debug)]
struct Plan {
    database: String,
    kind: Kind,
    stripes: u32,
    codec: Codec,
    buffercount: Option<u32>,
    maxtransfersize: Option<u32>,
    blocksize: Option<u32>,
    workers: usize,
    options: manifest::Options,
}

fn validate(ctx: &Ctx, a: BackupArgs) -> Result<Plan> {
    let f = &ctx.settings.file;
    let usage = |m: String| err(Code::Usage, m);
    let stripes = a.stripes.or(f.stripes).unwrap_or(1);
    if !(1..=openvdi::MAX_DEVICES as u32).contains(&stripes) {
        return Err(usage(format!("--stripes {stripes}: must be 1..=64")));
    }
    let blocksize = a.blocksize.or(f.blocksize);
    if let Some(b) = blocksize {
        if !(512..=65536).contains(&b) || !b.is_power_of_two() {
            return Err(usage(format!(
                "--blocksize {b}: must be a power of two in 512..=65536"
            )));
        }
    }
    let maxtransfersize = a.maxtransfersize.or(f.maxtransfersize);
    if let Some(m) = maxtransfersize {
        if m == 0 || m % 65536 != 0 || m > 4 << 20 {
            return Err(usage(format!(
                "--maxtransfersize {m}: must be a multiple of 65536 up to 4194304"
            )));
        }
    }
    let buffercount = a.buffercount.or(f.buffercount);
    if buffercount == Some(0) {
        return Err(usage("--buffercount must be at least 1".into()));
    }
    manifest::check_name("database", &a.database).map_err(usage)?;
    if a.workers == Some(0) || (a.workers.is_none() && f.workers == Some(0)) {
        return Err(usage("--workers must be at least 1".into()));
    }
    if a.copy_only && a.kind == Kind::Diff {
        return Err(usage(
            "--copy-only with --type diff: a differential cannot be copy-only \
             (SQL Server refuses DIFFERENTIAL with COPY_ONLY)"
                .into(),
        ));
    }
    let options = manifest::Options {
        copy_only: a.copy_only,
        checksum: a.checksum,
        name: a.name,
        description: a.description,
    };
    options
        .check()
        .map_err(|e| usage(format!("--name/--description: {e}")))?;
    Ok(Plan {
        options,
        database: a.database,
        kind: a.kind,
        stripes,
        codec: a
            .compress
            .or(f.compress)
            .unwrap_or(Codec::Zstd { level: 3 }),
        buffercount,
        maxtransfersize,
        blocksize,
        workers: a.workers.or(f.workers).unwrap_or_else(default_workers),
    })
}

/// `BACKUP DATABASE|LOG [db] TO VIRTUAL_DEVICE='set', VIRTUAL_DEVICE='set1', … WITH …`
fn statement(p: &Plan, devices: &[String]) -> String {
    let verb = if p.kind == Kind::Log {
        "LOG"
    } else {
        "DATABASE"
    };
    let to: Vec<String> = devices
        .iter()
        .map(|d| format!("VIRTUAL_DEVICE = '{}'", d.replace('\'', "''")))
        .collect();
    let mut with = Vec::new();
    if p.kind == Kind::Diff {
        with.push("DIFFERENTIAL".to_string());
    }
    if p.options.copy_only {
        with.push("COPY_ONLY".to_string());
    }
    if p.options.checksum {
        with.push("CHECKSUM".to_string());
    }
    if let Some(n) = &p.options.name {
        with.push(format!("NAME = {}", crate::engine::literal(n)));
    }
    if let Some(d) = &p.options.description {
        with.push(format!("DESCRIPTION = {}", crate::engine::literal(d)));
    }
    if let Some(n) = p.buffercount {
        with.push(format!("BUFFERCOUNT = {n}"));
    }
    if let Some(n) = p.maxtransfersize {
        with.push(format!("MAXTRANSFERSIZE = {n}"));
    }
    if let Some(n) = p.blocksize {
        with.push(format!("BLOCKSIZE = {n}"));
    }
    let mut sql = format!("BACKUP {verb} {} TO {}", ident(&p.database), to.join(", "));
    if !with.is_empty() {
        sql.push_str(" WITH ");
        sql.push_str(&with.join(", "));
    }
    sql
}

pub fn run(ctx: &Ctx, a: BackupArgs) -> Result<()> {
    let plan = validate(ctx, a)?;
    let mut repo = Repo::open(&ctx.settings.repo)?;
    repo.require_or_create_default(
        ctx.settings.repo_is_default,
        &crate::secret::Credentials::from_settings(&ctx.settings),
    )?;
    let sealing = repo.sealing_keys()?;
    let _lock = lock::acquire(
        &repo.store,
        lock::Mode::Shared,
        "backup",
        repo.keys.as_deref(),
    )?;
    // The transport first: a library that cannot be loaded fails before any side effect.
    let transport = crate::vdi_lib::transport(
        ctx.settings.engine.vdi_library.as_deref(),
        ctx.settings.engine.vdi_abi,
    )?;
    let engine: Arc<dyn Engine> =
        engine::open(&ctx.settings.engine, ctx.progress, Some(&plan.database))?;
    let server = ctx
        .settings
        .engine
        .server
        .clone()
        .or_else(|| engine.server_name())
        .unwrap_or_else(lock::hostname);

    manifest::check_name("server", &server).map_err(|e| err(Code::Usage, e))?;

    vdi::remove_stale_sets();
    let set_name = vdi::unique_set_name();
    let devices = vdi::device_names(&set_name, plan.stripes);
    let cfg = VdConfig {
        device_count: plan.stripes,
        features: vdf::VDF_RequestComplete,
        ..Default::default()
    };
    let started = Utc::now();
    let dir_of = |id: &str| naming::backup_dir(&server, &plan.database, plan.kind, id);
    let id = repo.unique_id(
        &naming::backup_id(&server, &plan.database, plan.kind, started),
        dir_of,
    )?;
    let dir = dir_of(&id);
    let keys: Vec<String> = (1..=plan.stripes)
        .map(|i| format!("{dir}/{}", naming::stripe_name(i, plan.codec.suffix())))
        .collect();
    let sql = statement(&plan, &devices);
    let t0 = std::time::Instant::now();

    let set = transport
        .create(&set_name, &cfg)
        .map_err(|e| anyhow::anyhow!("creating virtual device set {set_name}: {e}"))?;
    let counters: Vec<Arc<Counters>> = (0..plan.stripes).map(|_| Arc::default()).collect();
    // A full backup streams about the database's size, spread over the stripes: enough
    // for an ETA. Other types (and external engines) show bytes and rate only.
    let totals = (plan.kind == Kind::Full)
        .then(|| engine.size_hint(&plan.database))
        .flatten()
        .map(|t| vec![t.div_ceil(u64::from(plan.stripes)); plan.stripes as usize]);
    let reporter = progress::Reporter::start(ctx.progress, "backup", counters.clone(), totals);
    // The manifest from what the tool knows (external engines print text only: their
    // backups chain by time, not by LSN).
    let make_manifest = |results: &[pipeline::backup::StripeResult],
                         chain: Chain,
                         times: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
                         engine_info: EngineInfo,
                         elapsed: f64|
     -> Result<Manifest> {
        let stripes: Vec<Stripe> = results
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (r, k))| Stripe {
                index: i as u32 + 1,
                key: k.clone(),
                raw_size: r.raw_size,
                stored_size: r.stored_size,
                chunks: r.chunks,
                blake3: r.blake3.clone(),
            })
            .collect();
        let existing: Vec<Manifest> = repo
            .backups()?
            .into_iter()
            .filter(|m| m.id != id.as_str())
            .collect();
        let raw_size: u64 = stripes.iter().map(|s| s.raw_size).sum();
        let mut m = Manifest {
            format: manifest::FORMAT,
            id: manifest::BackupId::new(id.clone()).map_err(anyhow::Error::msg)?,
            server: server.clone(),
            database: plan.database.clone(),
            kind: plan.kind,
            codec: plan.codec,
            block_size: plan.blocksize,
            max_transfer_size: plan.maxtransfersize,
            buffer_count: plan.buffercount,
            stored_size: stripes.iter().map(|s| s.stored_size).sum(),
            raw_size,
            stripes,
            chain,
            engine: engine_info,
            timings: Timings {
                started,
                finished: Utc::now(),
                seconds: elapsed,
                raw_bytes_per_second: raw_size as f64 / elapsed.max(1e-9),
            },
            backup_started: times.0,
            backup_finished: times.1,
            options: plan.options.clone(),
            vdi_set: set_name.clone(),
            transport: transport.describe(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        // The parent as far as the repository knows it now (every reader recomputes
        // it over the whole repository: see `chain`).
        m.chain.parent = crate::chain::parent(&existing, &m).map(|(p, _)| p.id.to_string());
        Ok(m)
    };
    // A backup is stored before the engine hears that it is: this runs when the last
    // stripe is sealed, before its VDC_Complete is completed. The chain facts come
    // from the stream itself (its metadata block); the engine's messages are not
    // known yet (they come with its completion) and are added afterwards.
    let stored_early = std::sync::atomic::AtomicBool::new(false);
    let stream_facts = std::sync::Mutex::new(None::<crate::mtf::HeadFacts>);
    let on_sealed =
        |results: &[pipeline::backup::StripeResult], head: &[u8]| -> Result<(), String> {
            let info = EngineInfo {
                kind: engine.kind().into(),
                message: PENDING.into(),
                messages: vec![],
            };
            let facts = match crate::mtf::facts_of_head(head, &plan.database, plan.kind) {
                Ok(f) => f,
                Err(why) => {
                    eprintln!(
                        "openvdi: warning: the backup's own chain facts could not be read \
                         from its stream ({why}); the engine's messages must supply them"
                    );
                    crate::mtf::HeadFacts::default()
                }
            };
            if let Ok(mut c) = stream_facts.lock() {
                *c = Some(facts.clone());
            }
            let times = (facts.started, facts.finished);
            let m = make_manifest(
                results,
                facts.chain,
                times,
                info,
                t0.elapsed().as_secs_f64(),
            )
            .map_err(|e| format!("{e:#}"))?;
            repo.publish(&dir, &m).map_err(|e| format!("{e:#}"))?;
            stored_early.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        };
    let manifest_key = Repo::manifest_key(&dir);
    let unpublish = || {
        let _ = repo.store.delete(&manifest_key);
    };
    let stop = &ctx.stop;
    let (result, outcome) = std::thread::scope(|s| {
        let eng = s.spawn(|| {
            let o = engine.execute(&sql, stop);
            if !o.ok {
                stop.stop(StopReason::Engine(o.error_text()));
            }
            o
        });
        let r = pipeline::backup::run(pipeline::backup::Plan {
            set: set.as_ref(),
            device_names: devices.clone(),
            store: repo.store.clone(),
            keys: keys.clone(),
            codec: plan.codec,
            workers: plan.workers,
            stop: stop.clone(),
            counters: counters.clone(),
            open_timeout: ctx.settings.engine.open_timeout,
            on_sealed: Some(&on_sealed),
            encryption: (1..=plan.stripes)
                .map(|i| sealing.map(|k| crate::chunk::Encryption::new(k, &id, i)))
                .collect(),
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
    let elapsed = t0.elapsed().as_secs_f64();
    let results = match result {
        Ok(r) => r,
        Err(reason) => {
            unpublish();
            for k in &keys {
                let _ = repo.store.delete(k);
            }
            // The engine thread has been joined: its message is in now, ranked
            // against ours (see StopReason).
            stop.stop(reason);
            return Err(stop_error(stop.reason().unwrap_or(StopReason::Aborted)));
        }
    };
    if !outcome.ok {
        unpublish();
        for k in &keys {
            let _ = repo.store.delete(k);
        }
        return Err(stop_error(StopReason::Engine(outcome.error_text())));
    }
    // No interruption check from here on: the engine has declared the BACKUP done
    // (its differential base and log chain moved) and the manifest is stored, so
    // the backup must stay listed; a late Ctrl-C only loses the engine's facts.

    // The engine confirmed: record its facts (LSNs, GUIDs, messages) in the manifest
    // already stored before its VDC_Complete. The backup is durable and listed either
    // way; failing to add the facts leaves it chained by time only.
    // The engine's report when it gave one, else what the stream said about itself.
    let facts = stream_facts
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .unwrap_or_default();
    let chain = outcome.chain.clone().unwrap_or(facts.chain);
    let times = (facts.started, facts.finished);
    let info = EngineInfo {
        kind: engine.kind().into(),
        message: outcome.completion_message(),
        messages: outcome.messages.clone(),
    };
    let m = make_manifest(&results, chain, times, info, t0.elapsed().as_secs_f64())?;
    if let Err(e) = repo.publish(&dir, &m) {
        if !stored_early.load(std::sync::atomic::Ordering::Relaxed) {
            // No VDC_Complete was negotiated, so nothing was stored before the
            // engine finished: the backup is not in the repository.
            for k in &keys {
                let _ = repo.store.delete(k);
            }
            return Err(e.context("publishing the backup"));
        }
        eprintln!(
            "openvdi: warning: backup {id} is stored, but the engine's facts could not be added \
             to its manifest ({e:#}); it chains by time only"
        );
    }
    if ctx.settings.json {
        let mut v = serde_json::to_value(&m)?;
        v["ok"] = true.into();
        output::json(&v);
    } else {
        output::text(&format!(
            "backup {} done: {} stripe(s), {} → {} ({}), {:.1} s, {}/s\n{}",
            m.id,
            m.stripes.len(),
            progress::human(m.raw_size as f64),
            progress::human(m.stored_size as f64),
            m.codec,
            elapsed,
            progress::human(m.timings.raw_bytes_per_second),
            m.engine.message
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_text() {
        let p = Plan {
            database: "my]db".into(),
            kind: Kind::Diff,
            stripes: 2,
            codec: Codec::None,
            buffercount: Some(4),
            maxtransfersize: Some(1 << 20),
            blocksize: None,
            workers: 1,
            options: Default::default(),
        };
        assert_eq!(
            statement(&p, &["s".into(), "s1".into()]),
            "BACKUP DATABASE [my]]db] TO VIRTUAL_DEVICE = 's', VIRTUAL_DEVICE = 's1' \
             WITH DIFFERENTIAL, BUFFERCOUNT = 4, MAXTRANSFERSIZE = 1048576"
        );
        let p = Plan {
            kind: Kind::Log,
            buffercount: None,
            maxtransfersize: None,
            options: manifest::Options {
                copy_only: true,
                checksum: true,
                name: Some("it's".into()),
                description: Some("d".into()),
            },
            ..p
        };
        assert_eq!(
            statement(&p, &["s".into()]),
            "BACKUP LOG [my]]db] TO VIRTUAL_DEVICE = 's' \
             WITH COPY_ONLY, CHECKSUM, NAME = N'it''s', DESCRIPTION = N'd'"
        );
    }
}
