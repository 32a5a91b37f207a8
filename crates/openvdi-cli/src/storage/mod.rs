//! Where stored objects live: a local directory or an object store.
//!
//! Both backends offer the same small, synchronous interface, because every caller is
//! a plain thread (a stripe writer, a restore reader); the object-store backend drives
//! `object_store` on a private tokio runtime. Two properties the repository relies on:
//!
//! * an object being written is invisible under its final name until `finish`
//!   (local: a hidden `.partial` file renamed into place after fsync; object store: a
//!   multipart upload completed at `finish`), so a crash never leaves a half stripe
//!   that looks whole;
//! * `put_atomic` replaces an object in one step (local: temp + fsync + rename;
//!   object store: a single PUT), which is how manifests are published last.

mod local;
pub(crate) mod object;
mod s3admin;

use std::io::{self, Read};
use std::sync::Arc;

use thiserror::Error;

pub use local::LocalStore;
pub use object::ObjectStoreBackend;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    // The cause is part of the message, not a `source`: anyhow's `{:#}` would print
    // it a second time.
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    #[error("{context}: {cause}")]
    Object {
        context: String,
        cause: object_store::Error,
    },
    #[error("bad repository URL {0:?}: {1}")]
    Url(String, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound(context)
        } else {
            StoreError::Io {
                context,
                cause: source,
            }
        }
    }
}

/// One stored object from a listing. Keys use `/` separators, relative to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

/// An upload that never finished: a multipart upload (S3) or a partial temp file
/// (local) left by a killed or failed run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Incomplete {
    /// The object it would have become, relative to the repository root (local: the
    /// temp file itself).
    pub key: String,
    /// The multipart upload's id (S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// When it was started (S3: `Initiated`; local: the file's modification time).
    pub started: chrono::DateTime<chrono::Utc>,
}

/// A streaming writer for one object.
pub trait ObjectWriter: Send {
    /// Appends `data` (takes ownership so the object-store backend can upload it
    /// without a copy).
    fn write(&mut self, data: Vec<u8>) -> Result<()>;
    /// Appends borrowed bytes (local: written directly, no copy).
    fn write_slice(&mut self, data: &[u8]) -> Result<()>;
    /// Makes everything written so far as durable as the backend allows before the
    /// object is finished (local: fsync; object store: wait for in-flight parts).
    fn flush(&mut self) -> Result<()>;
    /// Publishes the object under its final name; returns the bytes written.
    fn finish(self: Box<Self>) -> Result<u64>;
    /// Discards the object.
    fn abort(self: Box<Self>);
}

/// A repository's storage backend.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The location, for messages and JSON.
    fn location(&self) -> String;
    /// True when `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Reads a whole (small) object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Streams an object.
    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Starts writing an object (invisible until finished).
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Writes a small object in one atomic step.
    fn put_atomic(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Every finished object under `prefix` (`""` = all), unordered.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Deletes an object (missing is not an error).
    fn delete(&self, key: &str) -> Result<()>;
    /// Creates a small object only if no object has that key; false if one has.
    /// Exactly one of several processes racing for one key gets true (local:
    /// `O_EXCL`; object stores: a conditional PUT).
    fn create_exclusive(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// Uploads that never finished (killed or failed runs), for `prune`: S3
    /// multipart uploads (ListMultipartUploads), local partial temp files. Empty
    /// where the backend cannot list them (see the README).
    fn incomplete(&self) -> Result<Vec<Incomplete>> {
        Ok(Vec::new())
    }
    /// Discards one of [`Store::incomplete`]'s uploads (AbortMultipartUpload; local:
    /// deletes the temp file).
    fn discard_incomplete(&self, _upload: &Incomplete) -> Result<()> {
        Ok(())
    }
    /// A local directory for an flock, when the backend is local.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Opens the backend a repository URL names: a path, `file://`, `s3://`, `az://`
/// (also `azure://`, `abfs://`), `gs://`, or `memory://` (tests).
pub fn open(url: &str) -> Result<Arc<dyn Store>> {
    match url.split_once("://") {
        None => Ok(Arc::new(LocalStore::new(url.into()))),
        Some(("file", rest)) => Ok(Arc::new(LocalStore::new(rest.into()))),
        Some(_) => Ok(Arc::new(ObjectStoreBackend::open(url)?)),
    }
}

/// Reads `reader` to the end into `Vec`s of about `chunk` bytes (import, export).
pub fn read_chunk(reader: &mut dyn Read, chunk: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; chunk];
    let mut n = 0;
    while n < chunk {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}
