//! `openvdi verify BACKUP`: without a restore, reads every stored stripe, checks
//! every chunk's crc32c, the trailer, the whole-stripe blake3 against the manifest,
//! and walks the native stream's MTF structure (every block and stream header
//! checksum). `--engine` adds the engine's RESTORE VERIFYONLY over VDI.

use anyhow::Result;

use super::restore::{restore_through_engine, RestoreOptions};
use super::Ctx;
use crate::cli::VerifyArgs;
use crate::exit::{code_of, err, Code};
use crate::manifest::Manifest;
use crate::repo::{Damaged, Repo};
use crate::{mtf, output};

/// Verifies one backup's stored bytes; Err carries exit code 3 for damage.
pub fn verify_stored(repo: &Repo, m: &Manifest) -> Result<Vec<serde_json::Value>> {
    let results: Vec<Result<serde_json::Value>> = std::thread::scope(|sc| {
        let hs: Vec<_> = m
            .stripes
            .iter()
            .map(|s| {
                let store = repo.store.as_ref();
                sc.spawn(move || -> Result<serde_json::Value> {
                    let mut walker = mtf::Walker::new();
                    super::export::decode_stripe(store, s, &mut walker)?;
                    let w = walker
                        .finish()
                        .map_err(|e| err(Code::Verify, format!("{}: MTF walk: {e}", s.key)))?;
                    Ok(serde_json::json!({
                        "stripe": s.index, "key": s.key, "raw_bytes": s.raw_size,
                        "chunks": s.chunks, "blake3": s.blake3, "mtf_blocks": w.blocks,
                    }))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("verify thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

pub fn run(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let repo = Repo::open(&ctx.settings.repo)?;
    repo.require()?;
    let (targets, damaged): (Vec<Manifest>, Vec<Damaged>) = match (&a.backup, a.all) {
        (Some(b), false) => (vec![repo.find(b)?], vec![]),
        (None, true) => {
            let s = repo.scan()?;
            (s.backups, s.damaged)
        }
        _ => return Err(err(Code::Usage, "give one BACKUP or --all")),
    };
    let mut report = Vec::new();
    let mut worst: Option<anyhow::Error> = None;
    for d in &damaged {
        let e = err(
            Code::Verify,
            format!("damaged manifest {}: {}", d.key, d.error),
        );
        if !ctx.settings.json {
            output::text(&format!("{}: FAILED: {e:#}", d.folder));
        }
        report.push(serde_json::json!({
            "backup": d.folder, "ok": false, "error": format!("{e:#}"),
            "exit_code": code_of(&e).as_i32(),
        }));
        worst = Some(e);
    }
    for m in &targets {
        let mut r = verify_stored(&repo, m);
        if a.engine {
            if let Ok(stripes) = r {
                let opts = RestoreOptions {
                    verify_only: true,
                    ..Default::default()
                };
                r = restore_through_engine(ctx, &repo, m, &opts, "verify").map(|o| {
                    let mut v = stripes;
                    v.push(serde_json::json!({"engine": o.completion_message()}));
                    v
                });
            }
        }
        match r {
            Ok(stripes) => {
                if !ctx.settings.json {
                    output::text(&format!("{}: OK ({} stripe(s))", m.id, m.stripes.len()));
                }
                report.push(serde_json::json!({"backup": m.id, "ok": true, "stripes": stripes}));
            }
            Err(e) => {
                if !ctx.settings.json {
                    output::text(&format!("{}: FAILED: {e:#}", m.id));
                }
                report.push(serde_json::json!({
                    "backup": m.id, "ok": false, "error": format!("{e:#}"),
                    "exit_code": code_of(&e).as_i32(),
                }));
                if worst.as_ref().is_none_or(|w| code_of(w) != Code::Verify) {
                    worst = Some(e);
                }
            }
        }
    }
    let failure = worst.map(|e| {
        err(
            code_of(&e),
            format!(
                "{} backup(s) failed verification: {e:#}",
                report.iter().filter(|r| r["ok"] == false).count()
            ),
        )
    });
    if ctx.settings.json {
        // A failure carries the error object's members too (README "Exit codes").
        let mut v = serde_json::json!({"ok": failure.is_none(), "backups": report});
        if let Some(e) = &failure {
            let code = code_of(e);
            v["exit_code"] = code.as_i32().into();
            v["error_kind"] = code.name().into();
            v["error"] = format!("{e:#}").into();
        }
        output::json(&v);
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
