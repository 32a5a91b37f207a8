//! A repository in an object store (S3, Azure Blob, GCS) through `object_store`.
//!
//! Credentials come from each provider's standard environment variables (read by
//! the builders' `from_env`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT` (S3-compatible servers), `AWS_ALLOW_HTTP`;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …;
//! `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, ….

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::TryStreamExt;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use super::s3admin::S3Admin;
use super::{Entry, Incomplete, ObjectWriter, Result, Store, StoreError};
use crate::redact;

/// Upload part size: large enough for S3's 10,000-part limit to allow 160 GB per
/// stripe, small enough to keep memory bounded (parts × concurrency).
const PART_SIZE: usize = 16 << 20;
/// Parts uploaded at once per stripe.
const PART_CONCURRENCY: usize = 4;

/// How long one request may keep retrying (object_store's default is 3 minutes): a
/// server that is gone fails the run within about a minute instead of hanging it.
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Once the store has failed a data request, clean-up requests (aborting uploads,
/// deleting unpublished objects, releasing the lock) get this long each instead of
/// a full retry budget: the run is failing already, and what they leave behind is
/// swept by `openvdi prune` (stale locks are also cleared by the next run).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

fn retry() -> RetryConfig {
    RetryConfig {
        retry_timeout: RETRY_TIMEOUT,
        ..RetryConfig::default()
    }
}

/// The process's I/O runtime (object stores, and the TDS engine).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("openvdi-io")
            .enable_all()
            .build()
            .expect("cannot start the I/O runtime")
    })
}

fn obj_err(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> StoreError {
    let context = context.into();
    move |source| match source {
        object_store::Error::NotFound { .. } => StoreError::NotFound(context),
        source => StoreError::Object {
            context,
            cause: source,
        },
    }
}

#[derive(Debug)]
pub struct ObjectStoreBackend {
    /// The URL for display (credentials masked, see `redact`).
    shown: String,
    store: Arc<dyn ObjectStore>,
    /// Direct S3 requests object_store has no API for (listing unfinished uploads).
    s3: Option<S3Admin>,
    /// The key prefix inside the bucket (`""` or `a/b/`).
    prefix: String,
    /// Set once a data request failed (see [`CLEANUP_TIMEOUT`]).
    degraded: Arc<AtomicBool>,
}

/// Applies `?key=value` options of a repository URL to a builder; an unknown key is a
/// usage error naming the key (never the value, which may be a secret).
fn apply_query<B, K>(
    mut b: B,
    query: Option<&str>,
    bad: &dyn Fn(&str) -> StoreError,
    set: impl Fn(B, K, String) -> B,
) -> Result<B>
where
    K: std::str::FromStr,
{
    for (k, v) in query.into_iter().flat_map(redact::query_pairs) {
        let key: K = k
            .parse()
            .map_err(|_| bad(&format!("unknown option {k:?} in the query")))?;
        b = set(b, key, redact::percent_decode(v));
    }
    Ok(b)
}

impl ObjectStoreBackend {
    /// `s3://[KEY:SECRET@]bucket/prefix[?option=value&…]`, `az://container/prefix`,
    /// `gs://bucket/prefix`, `memory://`. Query options are the provider's
    /// configuration keys (`region`, `endpoint`, `secret_access_key`, …, as
    /// object_store names them); they override the environment.
    pub fn open(url: &str) -> Result<ObjectStoreBackend> {
        redact::register_url(url);
        let shown = redact::url(url);
        let bad = |why: &str| StoreError::Url(shown.clone(), why.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, bucket) = match authority.rsplit_once('@') {
            Some((u, b)) => (Some(u), b),
            None => (None, authority),
        };
        let creds = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (redact::percent_decode(user), redact::percent_decode(pass))
        });
        let prefix = prefix.trim_matches('/');
        let build_err = |e: object_store::Error| bad(&redact::scrub(&e.to_string()));
        let mut s3 = None;
        let inner: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                if bucket.is_empty() {
                    return Err(bad("no bucket"));
                }
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry());
                if let Some((user, pass)) = creds {
                    b = b.with_access_key_id(user).with_secret_access_key(pass);
                }
                let b = apply_query(b, query, &bad, |b, k: AmazonS3ConfigKey, v| {
                    b.with_config(k, v)
                })?;
                let store = Arc::new(b.clone().build().map_err(build_err)?);
                s3 = Some(S3Admin::new(&b, store.clone()).map_err(build_err)?);
                store
            }
            "az" | "azure" | "abfs" => {
                if bucket.is_empty() {
                    return Err(bad("no container"));
                }
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(retry());
                if let Some((user, pass)) = creds {
                    b = b.with_account(user).with_access_key(pass);
                }
                let b = apply_query(b, query, &bad, |b, k: AzureConfigKey, v| {
                    b.with_config(k, v)
                })?;
                Arc::new(b.build().map_err(build_err)?)
            }
            "gs" | "gcs" => {
                if bucket.is_empty() {
                    return Err(bad("no bucket"));
                }
                if creds.is_some() {
                    return Err(bad(
                        "gs:// takes no user-info; use GOOGLE_SERVICE_ACCOUNT or ?service_account_key=",
                    ));
                }
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry());
                let b = apply_query(b, query, &bad, |b, k: GoogleConfigKey, v| {
                    b.with_config(k, v)
                })?;
                Arc::new(b.build().map_err(build_err)?)
            }
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            inner
        } else {
            Arc::new(PrefixStore::new(inner, prefix))
        };
        Ok(ObjectStoreBackend {
            shown,
            store,
            s3,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            degraded: Arc::default(),
        })
    }

    /// Runs a clean-up request: bounded by [`CLEANUP_TIMEOUT`] once the store has
    /// failed a data request.
    fn cleanup<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        bounded_cleanup(&self.degraded, what, f)
    }
}

fn bounded_cleanup<T>(
    degraded: &AtomicBool,
    what: &str,
    f: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    if !degraded.load(Ordering::Relaxed) {
        return runtime().block_on(f);
    }
    runtime().block_on(async {
        match tokio::time::timeout(CLEANUP_TIMEOUT, f).await {
            Ok(r) => r,
            Err(_) => Err(object_store::Error::Generic {
                store: "openvdi",
                source: format!(
                    "{what}: no answer within {CLEANUP_TIMEOUT:?} after an earlier failure"
                )
                .into(),
            }),
        }
    })
}

struct Upload {
    key: String,
    w: Option<WriteMultipart>,
    written: u64,
    degraded: Arc<AtomicBool>,
}

impl Upload {
    /// Marks the store as failing (see [`CLEANUP_TIMEOUT`]) and wraps the error.
    fn failed(&self, what: &str) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        let ctx = format!("{what} {}", self.key);
        move |e| {
            self.degraded.store(true, Ordering::Relaxed);
            obj_err(ctx)(e)
        }
    }

    fn abort_now(&mut self) {
        if let Some(w) = self.w.take() {
            let _ = bounded_cleanup(&self.degraded, "aborting an upload", w.abort());
        }
    }
}

impl ObjectWriter for Upload {
    fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let w = self.w.as_mut().expect("upload used after finish");
        let r = runtime().block_on(w.wait_for_capacity(PART_CONCURRENCY));
        r.map_err(self.failed("uploading"))?;
        let w = self.w.as_mut().expect("upload used after finish");
        self.written += data.len() as u64;
        // `put` starts a part upload (tokio::spawn) once a part's worth is buffered:
        // it must run inside the runtime. Outside it, it panicked ("there is no reactor
        // running") on the first full 16 MiB part and the backup hung for ever.
        let _rt = runtime().enter();
        w.put(Bytes::from(data));
        Ok(())
    }

    fn write_slice(&mut self, data: &[u8]) -> Result<()> {
        let w = self.w.as_mut().expect("upload used after finish");
        let r = runtime().block_on(w.wait_for_capacity(PART_CONCURRENCY));
        r.map_err(self.failed("uploading"))?;
        let w = self.w.as_mut().expect("upload used after finish");
        self.written += data.len() as u64;
        let _rt = runtime().enter();
        w.write(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Parts in flight are waited for; the buffered tail can only be made durable
        // by completing the upload (S3 has no durable partial object).
        let w = self.w.as_mut().expect("upload used after finish");
        let r = runtime().block_on(w.wait_for_capacity(0));
        r.map_err(self.failed("uploading"))
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        let w = self.w.take().expect("upload finished twice");
        let r = runtime().block_on(w.finish());
        r.map_err(self.failed("completing"))?;
        Ok(self.written)
    }

    /// Aborts the multipart upload (AbortMultipartUpload): the server frees its
    /// parts. If the server cannot be reached, the upload stays behind until
    /// `openvdi prune` sweeps it (after its grace period).
    fn abort(mut self: Box<Self>) {
        self.abort_now();
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A dropped, unfinished upload is aborted so the server frees its parts.
        self.abort_now();
    }
}

/// How much one ranged GET of a stripe fetches (see [`RangedRead`]).
const RANGE_BYTES: u64 = 16 << 20;

/// `Read` over an object fetched in ranges of [`RANGE_BYTES`], the next one
/// requested while the current one is consumed.
///
/// One GET for a whole stripe ties a request to how fast its reader consumes it: a
/// stripe of gigabytes, or a reader held back by the engine or by verification,
/// outlives the HTTP client's request timeout and fails mid-restore ("operation
/// timed out"), and a retry would start the object again. Ranges bound each
/// request's time and size; `If-Match` on the ETag the object had when opened makes
/// an object replaced meanwhile an error instead of a splice of two objects.
struct RangedRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    etag: Option<String>,
    /// Where the next range to request starts.
    next: u64,
    pending: Option<tokio::task::JoinHandle<object_store::Result<Bytes>>>,
    cur: Bytes,
}

impl RangedRead {
    fn request(&mut self) {
        if self.next >= self.size {
            return;
        }
        let end = (self.next + RANGE_BYTES).min(self.size);
        let (store, path) = (self.store.clone(), self.path.clone());
        let opts = GetOptions {
            range: Some(GetRange::Bounded(self.next..end)),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        self.pending =
            Some(runtime().spawn(async move { store.get_opts(&path, opts).await?.bytes().await }));
        self.next = end;
    }
}

impl Read for RangedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cur.is_empty() {
            let Some(h) = self.pending.take() else {
                return Ok(0);
            };
            let b = runtime()
                .block_on(h)
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
            if b.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: a ranged read returned nothing", self.path),
                ));
            }
            self.cur = b;
            self.request();
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

impl Drop for RangedRead {
    fn drop(&mut self) {
        if let Some(h) = self.pending.take() {
            h.abort();
        }
    }
}

impl Store for ObjectStoreBackend {
    fn location(&self) -> String {
        self.shown.clone()
    }

    fn exists(&self, key: &str) -> Result<bool> {
        match runtime().block_on(self.store.head(&Path::from(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(obj_err(key)(e)),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let rt = runtime();
        let r = rt
            .block_on(self.store.get(&Path::from(key)))
            .map_err(obj_err(key))?;
        Ok(rt.block_on(r.bytes()).map_err(obj_err(key))?.to_vec())
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = Path::from(key);
        let meta = runtime()
            .block_on(self.store.head(&path))
            .map_err(obj_err(key))?;
        let mut r = RangedRead {
            store: self.store.clone(),
            path,
            size: meta.size,
            etag: meta.e_tag,
            next: 0,
            pending: None,
            cur: Bytes::new(),
        };
        r.request();
        // No `BufReader` on top: `RangedRead` already holds each ranged response and
        // serves reads of any size out of it, and a buffer over it copied every byte
        // once more (a frame header's 16-byte read filled it with the frame body).
        Ok(Box::new(r))
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let up = runtime()
            .block_on(self.store.put_multipart(&Path::from(key)))
            .map_err(obj_err(format!("starting upload of {key}")))?;
        Ok(Box::new(Upload {
            key: key.to_string(),
            w: Some(WriteMultipart::new_with_chunk_size(up, PART_SIZE)),
            written: 0,
            degraded: self.degraded.clone(),
        }))
    }

    fn put_atomic(&self, key: &str, data: &[u8]) -> Result<()> {
        runtime()
            .block_on(
                self.store
                    .put(&Path::from(key), PutPayload::from(data.to_vec())),
            )
            .map_err(obj_err(format!("writing {key}")))?;
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let p = prefix.trim_matches('/');
        let p = (!p.is_empty()).then(|| Path::from(p));
        let metas: Vec<_> = runtime()
            .block_on(self.store.list(p.as_ref()).try_collect::<Vec<_>>())
            .map_err(obj_err(format!("listing {}", self.shown)))?;
        Ok(metas
            .into_iter()
            .map(|m| Entry {
                key: m.location.to_string(),
                size: m.size,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.cleanup("deleting", self.store.delete(&Path::from(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(obj_err(format!("deleting {key}"))(e)),
        }
    }

    /// A conditional PUT (`If-None-Match: *` on S3, `If-None-Match` on Azure,
    /// `ifGenerationMatch=0` on GCS): exactly one of several racing writers wins.
    fn create_exclusive(&self, key: &str, data: &[u8]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let r = runtime().block_on(self.store.put_opts(
            &Path::from(key),
            PutPayload::from(data.to_vec()),
            opts,
        ));
        match r {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(obj_err(format!("reserving {key}"))(e)),
        }
    }

    fn incomplete(&self) -> Result<Vec<Incomplete>> {
        match &self.s3 {
            Some(s3) => s3.list_uploads(&self.prefix),
            // Azure: uncommitted blocks are discarded by the service after 7 days;
            // GCS and the in-memory store: no listing here (see the README).
            None => Ok(Vec::new()),
        }
    }

    fn discard_incomplete(&self, i: &Incomplete) -> Result<()> {
        match (&self.s3, &i.upload_id) {
            (Some(s3), Some(id)) => s3.abort_upload(&format!("{}{}", self.prefix, i.key), id),
            _ => Ok(()),
        }
    }
}
