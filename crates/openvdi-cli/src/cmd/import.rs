//! `openvdi import FILE.bak…`: takes the stripe files of one existing backup into the
//! repository, stored exactly like a backup made through VDI (same chunk format,
//! checksums and manifest), so `restore`, `verify` and `export` treat both alike.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::Utc;

use super::Ctx;
use crate::chunk;
use crate::cli::ImportArgs;
use crate::codec::Codec;
use crate::exit::{err, Code};
use crate::manifest::{self, EngineInfo, Manifest, Stripe, Timings};
use crate::pipeline::restore::Source;
use crate::repo::Repo;
use crate::storage::{read_chunk, Store};
use crate::{lock, naming, output, progress};

/// Raw chunk size for imports (VDI's largest MAXTRANSFERSIZE).
const CHUNK: usize = 4 << 20;

fn store_file(
    store: &dyn Store,
    path: &PathBuf,
    key: &str,
    codec: Codec,
    enc: Option<chunk::Encryption>,
) -> Result<chunk::Sealed> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let sk = enc.as_ref().map(|e| e.key.clone());
    let mut sink = chunk::Sink::new(store.create(key)?, codec, enc)?;
    let r = (|| -> Result<()> {
        loop {
            let buf = read_chunk(&mut f as &mut dyn Read, CHUNK)
                .with_context(|| format!("reading {}", path.display()))?;
            if buf.is_empty() {
                return Ok(());
            }
            let frame = chunk::encode_for(codec, &buf, sk.as_ref(), sink.next_frame())?;
            sink.append(frame, &buf)?;
        }
    })();
    match r {
        Ok(()) => Ok(sink.seal()?),
        Err(e) => {
            sink.abort();
            Err(e)
        }
    }
}

pub fn run(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let codec = a
        .compress
        .or(ctx.settings.file.compress)
        .unwrap_or(Codec::Zstd { level: 3 });
    // Order and check the files, and read their header through the engine, before
    // touching the repository. An external engine prints text only: then the flags
    // must say what the files are.
    let target = super::inspect::file_target(&a.files)?;
    let files: Vec<PathBuf> = target
        .sources
        .iter()
        .filter_map(|s| match s {
            Source::File(p) => Some(p.clone()),
            Source::Stored { .. } => None,
        })
        .collect();
    let info = super::inspect::header(ctx, &target)?;
    let database = a
        .database
        .clone()
        .or(info.database.clone())
        .ok_or_else(|| {
            err(
                Code::Usage,
                "the files do not name their database: pass --database",
            )
        })?;
    let kind = a.kind.or(info.kind).unwrap_or(manifest::Kind::Full);
    let server = ctx
        .settings
        .engine
        .server
        .clone()
        .or(info.server.clone())
        .unwrap_or_else(lock::hostname);

    // Names from the files' headers are data from outside: checked like a manifest's.
    manifest::check_name("database", &database).map_err(|e| err(Code::Usage, e))?;
    manifest::check_name("server", &server).map_err(|e| err(Code::Usage, e))?;
    let mut repo = Repo::open(&ctx.settings.repo)?;
    repo.require_or_create_default(
        ctx.settings.repo_is_default,
        &crate::secret::Credentials::from_settings(&ctx.settings),
    )?;
    let _lock = lock::acquire(
        &repo.store,
        lock::Mode::Shared,
        "import",
        repo.keys.as_deref(),
    )?;
    let sealing = repo.sealing_keys()?;
    let started = Utc::now();
    let taken = info.backup_start.unwrap_or(started);
    let dir_of = |id: &str| naming::backup_dir(&server, &database, kind, id);
    let id = repo.unique_id(&naming::backup_id(&server, &database, kind, taken), dir_of)?;
    let dir = dir_of(&id);
    let t0 = std::time::Instant::now();
    let results: Vec<Result<Stripe>> = std::thread::scope(|sc| {
        let hs: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = format!(
                    "{dir}/{}",
                    naming::stripe_name(i as u32 + 1, codec.suffix())
                );
                let store = repo.store.as_ref();
                let enc = sealing.map(|k| chunk::Encryption::new(k, &id, i as u32 + 1));
                sc.spawn(move || {
                    let chunk::Sealed {
                        raw_size,
                        stored_size,
                        chunks,
                        blake3,
                    } = store_file(store, f, &key, codec, enc)?;
                    Ok(Stripe {
                        index: i as u32 + 1,
                        key,
                        raw_size,
                        stored_size,
                        chunks,
                        blake3,
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("import thread panicked")))
            })
            .collect()
    });
    let mut stripes = Vec::new();
    for r in results {
        match r {
            Ok(s) => stripes.push(s),
            Err(e) => {
                for s in &stripes {
                    let _ = repo.store.delete(&s.key);
                }
                return Err(e);
            }
        }
    }
    super::check_interrupted(&ctx.stop)?;
    let secs = t0.elapsed().as_secs_f64();
    let raw_size: u64 = stripes.iter().map(|s| s.raw_size).sum();
    let chain = info.chain.clone();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let m = Manifest {
        format: manifest::FORMAT,
        id: manifest::BackupId::new(id.clone()).map_err(anyhow::Error::msg)?,
        server,
        database,
        kind,
        codec,
        block_size: None,
        max_transfer_size: None,
        buffer_count: None,
        stored_size: stripes.iter().map(|s| s.stored_size).sum(),
        raw_size,
        stripes,
        chain,
        engine: EngineInfo {
            kind: "import".into(),
            message: format!("imported from {}", names.join(", ")),
            messages: vec![],
        },
        timings: Timings {
            started,
            finished: Utc::now(),
            seconds: secs,
            raw_bytes_per_second: raw_size as f64 / secs.max(1e-9),
        },
        backup_started: info.backup_start,
        backup_finished: info.backup_finish,
        options: Default::default(),
        vdi_set: String::new(),
        transport: String::new(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    // The parent as far as the repository knows it now (`list` and every reader
    // recompute it over the whole repository: see `chain`).
    let mut m = m;
    m.chain.parent = crate::chain::parent(&repo.backups()?, &m).map(|(p, _)| p.id.to_string());
    repo.publish(&dir, &m)?;
    if ctx.settings.json {
        let mut v = serde_json::to_value(&m)?;
        v["ok"] = true.into();
        output::json(&v);
    } else {
        output::text(&format!(
            "imported {} ({} file(s), {} → {})",
            m.id,
            m.stripes.len(),
            progress::human(m.raw_size as f64),
            progress::human(m.stored_size as f64)
        ));
    }
    Ok(())
}
