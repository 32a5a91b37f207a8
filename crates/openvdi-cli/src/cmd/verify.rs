//! `openvdi verify BACKUP`: without a restore, reads every stored stripe, checks
//! every chunk's crc32c, the trailer, the whole-stripe blake3 against the manifest,
//! and walks the native stream's MTF structure (every block and stream header
//! checksum). `--engine` adds the engine's RESTORE VERIFYONLY over VDI.

use anyhow::Result;

use super::restore::{restore_through_engine, Checked, RestoreOptions};
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
                let (keys, id) = (repo.keys.as_deref(), m.id.as_str());
                sc.spawn(move || -> Result<serde_json::Value> {
                    let mut walker = mtf::Walker::new();
                    super::export::decode_stripe(store, keys, id, s, &mut walker)?;
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

/// The checks an encrypted repository allows without its key: every stripe object
/// (of backup folder `only`, or all) read frame by frame — each frame's crc32c of its
/// ciphertext, the framing, the trailer's checksum. Damage exits 3; otherwise exit 12
/// says the key is needed for the rest (authentication, the manifest, the MTF walk):
/// a verification without the key is never reported as a complete success.
fn verify_without_key(ctx: &Ctx, repo: &Repo, only: Option<&str>) -> Result<()> {
    let mut objects: Vec<String> = repo
        .store
        .list("")?
        .into_iter()
        .map(|e| e.key)
        .filter(|k| {
            let mut parts = k.rsplit('/');
            let name = parts.next().unwrap_or_default();
            let folder = parts.next().unwrap_or_default();
            name.starts_with("stripe")
                && !k.starts_with(crate::lock::PREFIX)
                && only.is_none_or(|o| o == folder)
        })
        .collect();
    objects.sort();
    if objects.is_empty() {
        return Err(err(
            Code::RepoMissing,
            format!(
                "no stored stripes{} in {}",
                only.map(|o| format!(" of {o}")).unwrap_or_default(),
                repo.location()
            ),
        ));
    }
    let mut report = Vec::new();
    let mut bad = 0usize;
    for k in &objects {
        match super::export::check_without_key(repo.store.as_ref(), k) {
            Ok(sum) => {
                if !ctx.settings.json {
                    output::text(&format!(
                        "{k}: stored bytes OK ({} frames; not authenticated)",
                        sum.chunks
                    ));
                }
                report.push(serde_json::json!({"object": k, "ok": true, "frames": sum.chunks}));
            }
            Err(e) => {
                bad += 1;
                if !ctx.settings.json {
                    output::text(&format!("{k}: FAILED: {e:#}"));
                }
                report
                    .push(serde_json::json!({"object": k, "ok": false, "error": format!("{e:#}")}));
            }
        }
    }
    let e = if bad > 0 {
        err(
            Code::Verify,
            format!("{bad} of {} stored stripe(s) are damaged", objects.len()),
        )
    } else {
        err(
            Code::WrongKey,
            format!(
                "the stored bytes of {} stripe(s) check out (each frame's crc32c of its \
                 ciphertext, the framing); the repository's key is needed for the rest \
                 (authentication of every frame, the manifests, the MTF walk): give \
                 OPENVDI_PASSWORD, --password-file or --key-file",
                objects.len()
            ),
        )
    };
    if ctx.settings.json {
        let code = code_of(&e);
        output::json(&serde_json::json!({
            "ok": false, "complete": false, "objects": report,
            "exit_code": code.as_i32(), "error_kind": code.name(), "error": format!("{e:#}"),
        }));
    }
    Err(e)
}

pub fn run(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let mut repo = Repo::open(&ctx.settings.repo)?;
    repo.require()?;
    let creds = crate::secret::Credentials::from_settings(&ctx.settings);
    if repo.encrypted && !creds.available() {
        let only = match (&a.backup, a.all) {
            (Some(b), false) if !b.starts_with("latest") => Some(b.as_str()),
            (None, true) => None,
            (Some(_), false) => {
                return Err(err(
                    Code::WrongKey,
                    "`latest` is known only from the (encrypted) manifests: give the key, \
                     or a backup id (see the object names) or --all",
                ))
            }
            _ => return Err(err(Code::Usage, "give one BACKUP or --all")),
        };
        return verify_without_key(ctx, &repo, only);
    }
    repo.unlock(&creds)?;
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
    let mut checked = Checked::default();
    for m in &targets {
        let mut r = checked.verify(&repo, m);
        if a.engine {
            if let Ok(stripes) = r {
                let opts = RestoreOptions {
                    verify_only: true,
                    ..Default::default()
                };
                r = restore_through_engine(ctx, &repo, m, &opts, "verify", &mut checked).map(|o| {
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
