//! `openvdi export BACKUP DIR`: re-materialises the native `.bak` stripe files,
//! byte for byte what the engine wrote (each chunk's raw crc32c, the sizes and the
//! stored blake3 are checked on the way).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Ctx;
use crate::chunk::{ChunkError, StripeReader};
use crate::cli::ExportArgs;
use crate::exit::{err, Code};
use crate::manifest::{Manifest, Stripe};
use crate::output;
use crate::repo::Repo;
use crate::storage::Store;

/// The file name of stripe `s` of `m`: a [`BackupId`](crate::manifest::BackupId) is
/// one plain path segment, so this never names anything outside the target folder.
pub fn file_name(m: &Manifest, s: &Stripe) -> String {
    if m.stripes.len() == 1 {
        format!("{}.bak", m.id)
    } else {
        format!("{}_{}of{}.bak", m.id, s.index, m.stripes.len())
    }
}

/// Decodes one stored stripe into `w`, verifying it against the manifest.
pub fn decode_stripe(store: &dyn Store, s: &Stripe, w: &mut dyn Write) -> Result<u64> {
    let input = match store.open_read(&s.key) {
        Ok(i) => i,
        // A symbolic link where a stored object should be: the backup is damaged.
        Err(crate::storage::StoreError::Io { cause: source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
        {
            return Err(err(
                Code::Verify,
                format!("{}: not a regular file (a symbolic link)", s.key),
            ));
        }
        Err(crate::storage::StoreError::NotFound(_)) => {
            return Err(err(
                Code::Verify,
                format!(
                    "stripe {} ({}) is missing from the repository",
                    s.index, s.key
                ),
            ));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("opening a stripe")),
    };
    let corrupt = |e: ChunkError| match e {
        ChunkError::Corrupt(m) => err(Code::Verify, format!("{}: {m}", s.key)),
        ChunkError::Io(e) => anyhow::Error::new(e).context(format!("reading {}", s.key)),
    };
    let mut r = StripeReader::new(input).map_err(corrupt)?;
    let mut buf = Vec::new();
    let mut n = 0u64;
    while r.next_chunk(&mut buf).map_err(corrupt)? {
        w.write_all(&buf)?;
        n += buf.len() as u64;
    }
    let sum = r.summary().expect("verified end");
    if sum.blake3 != s.blake3 || n != s.raw_size {
        return Err(err(
            Code::Verify,
            format!("{}: does not match its manifest", s.key),
        ));
    }
    Ok(n)
}

fn export_one(store: &dyn Store, m: &Manifest, s: &Stripe, dir: &Path) -> Result<PathBuf> {
    let target = dir.join(file_name(m, s));
    let temp = dir.join(format!(
        ".{}.partial-{}",
        file_name(m, s),
        std::process::id()
    ));
    let r = (|| -> Result<()> {
        // create_new + O_NOFOLLOW: never write through a file or symlink planted at
        // the temporary name; the rename then replaces only a directory entry of `dir`.
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        decode_stripe(store, s, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&temp, &target)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = fs::remove_file(&temp);
    }
    r.map(|()| target)
}

pub fn run(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let repo = Repo::open(&ctx.settings.repo)?;
    repo.require()?;
    let m = repo.find(&a.backup)?;
    fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let results: Vec<Result<PathBuf>> = std::thread::scope(|sc| {
        let hs: Vec<_> = m
            .stripes
            .iter()
            .map(|s| {
                let (store, m, dir) = (repo.store.as_ref(), &m, a.dir.as_path());
                sc.spawn(move || export_one(store, m, s, dir))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("export thread panicked")))
            })
            .collect()
    });
    let mut files = Vec::new();
    for r in results {
        files.push(r?);
    }
    if ctx.settings.json {
        output::json(&serde_json::json!({"ok": true, "backup": m.id, "files": files}));
    } else {
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        output::text(&format!("exported {}:\n{}", m.id, list.join("\n")));
    }
    Ok(())
}
