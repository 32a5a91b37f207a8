//! A repository in a local directory (or any mounted file system).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{io_err, Entry, Incomplete, ObjectWriter, Result, Store};

/// Marks names of objects still being written; listings skip them.
pub const PARTIAL: &str = ".partial-";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}{PARTIAL}{}-{seq}", std::process::id()))
}

/// fsync of a directory makes a rename in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates the folders above `target`, fsyncing the parent of each new one: they
    /// must survive a crash as surely as the object later fsynced into the last one.
    fn make_parents(&self, target: &Path) -> Result<()> {
        if let Some(dir) = target.parent() {
            let mut missing = Vec::new();
            let mut d = Some(dir);
            while let Some(p) = d.filter(|p| !p.is_dir()) {
                missing.push(p.to_path_buf());
                d = p.parent();
            }
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
            for m in &missing {
                if let Some(parent) = m.parent() {
                    sync_dir(parent).map_err(io_err(format!("fsync {}", parent.display())))?;
                }
            }
        }
        Ok(())
    }

    fn walk(&self, dir: &Path, rel: &str, partial: bool, out: &mut Vec<Entry>) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type().map_err(io_err(key.clone()))?;
            if ft.is_dir() {
                self.walk(&ent.path(), &key, partial, out)?;
            } else if ft.is_file() && name.contains(PARTIAL) == partial {
                let size = ent.metadata().map_err(io_err(key.clone()))?.len();
                out.push(Entry { key, size });
            }
        }
        Ok(())
    }
}

struct LocalWriter {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    written: u64,
    /// Bytes up to which write-back has been started.
    kicked: u64,
}

/// Start write-back every this many bytes, so the fsync before publishing waits for
/// the tail only instead of the whole stripe.
const KICK: u64 = 16 << 20;

impl ObjectWriter for LocalWriter {
    fn write(&mut self, data: Vec<u8>) -> Result<()> {
        self.write_slice(&data)
    }

    fn write_slice(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(io_err(format!("writing {}", self.temp.display())))?;
        self.written += data.len() as u64;
        if self.written - self.kicked >= KICK {
            // POSIX_FADV_DONTNEED starts asynchronous write-back of the range on Linux
            // (and drops its clean pages: a backup should not evict the database's
            // cache). Advisory: a failure changes nothing but speed.
            let len = std::num::NonZeroU64::new(self.written - self.kicked);
            let _ = rustix::fs::fadvise(&self.file, self.kicked, len, rustix::fs::Advice::DontNeed);
            self.kicked = self.written;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(io_err(format!("fsync {}", self.temp.display())))
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        let ctx = format!("finishing {}", self.target.display());
        self.file.sync_all().map_err(io_err(ctx.clone()))?;
        fs::rename(&self.temp, &self.target).map_err(io_err(ctx.clone()))?;
        if let Some(dir) = self.target.parent() {
            sync_dir(dir).map_err(io_err(ctx))?;
        }
        Ok(self.written)
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.temp);
    }
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key).is_file())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        fs::read(self.path(key)).map_err(io_err(key))
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        // O_NOFOLLOW: a symbolic link planted in the repository under a stored
        // object's name is refused (ELOOP), never followed out of the repository.
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.path(key))
            .map_err(io_err(key))?;
        // A buffer for the 16-byte frame headers and what follows them, far smaller
        // than a frame (about a MAXTRANSFERSIZE): a read of a frame's body drains the
        // little that is buffered, then goes from the file straight into the
        // caller's buffer (`BufReader` passes reads at least its capacity through).
        // With a 1 MiB buffer every stored byte was copied twice, kernel to buffer
        // and buffer to chunk: the largest single cost of an uncompressed restore.
        Ok(Box::new(std::io::BufReader::with_capacity(64 << 10, f)))
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let target = self.path(key);
        self.make_parents(&target)?;
        let temp = temp_path(&target);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_err(format!("creating {}", temp.display())))?;
        Ok(Box::new(LocalWriter {
            file,
            temp,
            target,
            written: 0,
            kicked: 0,
        }))
    }

    fn put_atomic(&self, key: &str, data: &[u8]) -> Result<()> {
        let mut w = self.create(key)?;
        w.write(data.to_vec())?;
        w.finish().map(|_| ())
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let prefix = prefix.trim_end_matches('/');
        let mut out = Vec::new();
        self.walk(&self.path(prefix), prefix, false, &mut out)?;
        Ok(out)
    }

    fn create_exclusive(&self, key: &str, data: &[u8]) -> Result<bool> {
        let target = self.path(key);
        self.make_parents(&target)?;
        // O_CREAT|O_EXCL: the kernel lets exactly one creator through. The object is
        // written in place (not renamed into place): its existence is what counts,
        // and a crash leaves a short but present reservation, which is what we want.
        let ctx = format!("reserving {}", target.display());
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(ctx)(e)),
        };
        f.write_all(data).map_err(io_err(ctx.clone()))?;
        f.sync_all().map_err(io_err(ctx.clone()))?;
        if let Some(dir) = target.parent() {
            sync_dir(dir).map_err(io_err(ctx))?;
        }
        Ok(true)
    }

    fn incomplete(&self) -> Result<Vec<Incomplete>> {
        let mut out = Vec::new();
        self.walk(&self.root, "", true, &mut out)?;
        let mut found = Vec::new();
        for e in out {
            let started = match fs::symlink_metadata(self.path(&e.key)).and_then(|m| m.modified()) {
                Ok(t) => chrono::DateTime::<chrono::Utc>::from(t),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err(e.key)(err)),
            };
            found.push(Incomplete {
                key: e.key,
                upload_id: None,
                started,
            });
        }
        Ok(found)
    }

    fn discard_incomplete(&self, upload: &Incomplete) -> Result<()> {
        self.delete(&upload.key)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("deleting {}", p.display()))(e)),
        }
        // Remove directories left empty, up to the root (best effort: a concurrent
        // writer may have just created a file in one of them).
        let mut dir = p.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_objects_are_invisible_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf());
        let mut w = s.create("a/b/obj").unwrap();
        w.write(b"hello".to_vec()).unwrap();
        assert!(s.list("").unwrap().is_empty());
        assert!(!s.exists("a/b/obj").unwrap());
        w.finish().unwrap();
        assert_eq!(
            s.list("a").unwrap(),
            vec![Entry {
                key: "a/b/obj".into(),
                size: 5
            }]
        );
        let w = s.create("a/c").unwrap();
        w.abort();
        assert_eq!(s.list("").unwrap().len(), 1);
        s.delete("a/b/obj").unwrap();
        assert!(s.list("").unwrap().is_empty());
        assert!(matches!(
            s.get("a/b/obj"),
            Err(super::super::StoreError::NotFound(_))
        ));
    }
}
