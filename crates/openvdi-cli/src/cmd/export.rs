//! `openvdi export BACKUP DIR`: re-materialises the native `.bak` stripe files,
//! byte for byte what the engine wrote (each chunk's raw crc32c, the sizes and the
//! stored blake3 are checked on the way).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Ctx;
use crate::chunk::{self, ChunkError, StripeCtx, StripeReader};
use crate::cli::ExportArgs;
use crate::crypto::Keys;
use crate::exit::{err, Code};
use crate::manifest::{Manifest, Stripe};
use crate::output;
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

/// Opens a stored stripe for reading; a missing one (or a symbolic link where it
/// should be) is damage, exit 3.
fn open_stripe(store: &dyn Store, s: &Stripe) -> Result<Box<dyn std::io::Read + Send>> {
    Ok(match store.open_read(&s.key) {
        Ok(i) => i,
        // A symbolic link where a stored object should be: the backup is damaged.
        Err(crate::storage::StoreError::Io { cause: source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
        {
            return Err(err(
                Code::Verify,
                format!("{}: not a regular file (a symbolic link)", s.key),
            ))
        }
        Err(crate::storage::StoreError::NotFound(_)) => {
            return Err(err(
                Code::Verify,
                format!(
                    "stripe {} ({}) is missing from the repository",
                    s.index, s.key
                ),
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("opening a stripe")),
    })
}

fn corrupt(key: &str) -> impl Fn(ChunkError) -> anyhow::Error + '_ {
    move |e: ChunkError| match e {
        ChunkError::Corrupt(m) => err(Code::Verify, format!("{key}: {m}")),
        ChunkError::Io(e) => anyhow::Error::new(e).context(format!("reading {key}")),
        e @ ChunkError::KeyNeeded => err(Code::WrongKey, format!("{key}: {e}")),
    }
}

/// The stripe context of an encrypted repository's stripe `s` of backup `id`.
fn ctx_of<'a>(keys: Option<&'a Keys>, id: &'a str, s: &Stripe) -> Option<StripeCtx<'a>> {
    keys.map(|keys| StripeCtx {
        keys,
        backup_id: id,
        index: s.index,
    })
}

/// Checks one stored stripe without decoding it: every frame's crc32c of its stored
/// bytes, the structure, and (with the keys, or for an unencrypted stripe) the
/// authenticated trailer and the whole-object blake3 against the manifest. This is
/// the fast pass an encrypted repository's restore makes before the engine gets a
/// byte: any change of the stored bytes fails the blake3 the authenticated manifest
/// records.
pub fn check_stripe(store: &dyn Store, keys: Option<&Keys>, id: &str, s: &Stripe) -> Result<()> {
    let input = open_stripe(store, s)?;
    let corrupt = corrupt(&s.key);
    let mut r = StripeReader::open(input, ctx_of(keys, id, s), false).map_err(&corrupt)?;
    let mut buf = Vec::new();
    while r.next_chunk(&mut buf).map_err(&corrupt)? {}
    let sum = r.summary().expect("verified end");
    if sum.blake3 != s.blake3 || sum.raw_size != s.raw_size || sum.stored_size != s.stored_size {
        return Err(err(
            Code::Verify,
            format!("{}: does not match its manifest", s.key),
        ));
    }
    Ok(())
}

/// Checks a stored object by its stored bytes alone (no manifest, no key): what
/// `verify` can do in an encrypted repository without its key.
pub fn check_without_key(store: &dyn Store, key: &str) -> Result<chunk::Summary> {
    let input = store
        .open_read(key)
        .map_err(|e| anyhow::Error::new(e).context(format!("opening {key}")))?;
    let corrupt = corrupt(key);
    let mut r = StripeReader::open(input, None, false).map_err(&corrupt)?;
    let mut buf = Vec::new();
    while r.next_chunk(&mut buf).map_err(&corrupt)? {}
    Ok(r.summary().expect("verified end").clone())
}

/// Decodes one stored stripe into `w`, verifying it against the manifest (and, in
/// an encrypted repository, authenticating every frame and the trailer).
pub fn decode_stripe(
    store: &dyn Store,
    keys: Option<&Keys>,
    id: &str,
    s: &Stripe,
    w: &mut dyn Write,
) -> Result<u64> {
    let input = open_stripe(store, s)?;
    let corrupt = corrupt(&s.key);
    let mut r = StripeReader::open(input, ctx_of(keys, id, s), true).map_err(&corrupt)?;
    let mut buf = Vec::new();
    let mut n = 0u64;
    while r.next_chunk(&mut buf).map_err(&corrupt)? {
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

fn export_one(
    store: &dyn Store,
    keys: Option<&Keys>,
    m: &Manifest,
    s: &Stripe,
    dir: &Path,
) -> Result<PathBuf> {
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
        decode_stripe(store, keys, &m.id, s, &mut w)?;
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
    let repo = super::open_repo(ctx)?;
    let m = repo.find(&a.backup)?;
    fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let results: Vec<Result<PathBuf>> = std::thread::scope(|sc| {
        let hs: Vec<_> = m
            .stripes
            .iter()
            .map(|s| {
                let (store, m, dir) = (repo.store.as_ref(), &m, a.dir.as_path());
                let keys = repo.keys.as_deref();
                sc.spawn(move || export_one(store, keys, m, s, dir))
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
