//! A repository in an object store (S3, Azure Blob, GCS) through `object_store`.
//!
//! Credentials come from each provider's standard environment variables (read by
//! the builders' `from_env`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT` (S3-compatible servers), `AWS_ALLOW_HTTP`;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …;
//! `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, ….

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::{Entry, ObjectWriter, Result, Store, StoreError};

/// Upload part size: large enough for S3's 10,000-part limit to allow 160 GB per
/// stripe, small enough to keep memory bounded (parts × concurrency).
const PART_SIZE: usize = 16 << 20;
/// Parts uploaded at once per stripe.
const PART_CONCURRENCY: usize = 4;

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
        source => StoreError::Object { context, source },
    }
}

#[derive(Debug)]
pub struct ObjectStoreBackend {
    url: String,
    store: Arc<dyn ObjectStore>,
}

impl ObjectStoreBackend {
    /// `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`, `memory://`.
    pub fn open(url: &str) -> Result<ObjectStoreBackend> {
        let bad = |why: &str| StoreError::Url(url.to_string(), why.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let build_err = |e: object_store::Error| bad(&e.to_string());
        let inner: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                if bucket.is_empty() {
                    return Err(bad("no bucket"));
                }
                Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .build()
                        .map_err(build_err)?,
                )
            }
            "az" | "azure" | "abfs" => {
                if bucket.is_empty() {
                    return Err(bad("no container"));
                }
                Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .build()
                        .map_err(build_err)?,
                )
            }
            "gs" | "gcs" => {
                if bucket.is_empty() {
                    return Err(bad("no bucket"));
                }
                Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .build()
                        .map_err(build_err)?,
                )
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
            url: url.to_string(),
            store,
        })
    }
}

struct Upload {
    key: String,
    w: Option<WriteMultipart>,
    written: u64,
}

impl ObjectWriter for Upload {
    fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let w = self.w.as_mut().expect("upload used after finish");
        runtime()
            .block_on(w.wait_for_capacity(PART_CONCURRENCY))
            .map_err(obj_err(format!("uploading {}", self.key)))?;
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
        runtime()
            .block_on(w.wait_for_capacity(PART_CONCURRENCY))
            .map_err(obj_err(format!("uploading {}", self.key)))?;
        self.written += data.len() as u64;
        let _rt = runtime().enter();
        w.write(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Parts in flight are waited for; the buffered tail can only be made durable
        // by completing the upload (S3 has no durable partial object).
        let w = self.w.as_mut().expect("upload used after finish");
        runtime()
            .block_on(w.wait_for_capacity(0))
            .map_err(obj_err(format!("uploading {}", self.key)))
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        let w = self.w.take().expect("upload finished twice");
        runtime()
            .block_on(w.finish())
            .map_err(obj_err(format!("completing {}", self.key)))?;
        Ok(self.written)
    }

    fn abort(mut self: Box<Self>) {
        if let Some(w) = self.w.take() {
            let _ = runtime().block_on(w.abort());
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A dropped, unfinished upload is aborted so the server frees its parts.
        if let Some(w) = self.w.take() {
            let _ = runtime().block_on(w.abort());
        }
    }
}

/// `Read` over a streamed GET.
struct StreamRead {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    cur: Bytes,
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match runtime().block_on(self.stream.next()) {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

impl Store for ObjectStoreBackend {
    fn location(&self) -> String {
        self.url.clone()
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
        let r = runtime()
            .block_on(self.store.get(&Path::from(key)))
            .map_err(obj_err(key))?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            StreamRead {
                stream: r.into_stream(),
                cur: Bytes::new(),
            },
        )))
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let up = runtime()
            .block_on(self.store.put_multipart(&Path::from(key)))
            .map_err(obj_err(format!("starting upload of {key}")))?;
        Ok(Box::new(Upload {
            key: key.to_string(),
            w: Some(WriteMultipart::new_with_chunk_size(up, PART_SIZE)),
            written: 0,
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
            .map_err(obj_err(format!("listing {}", self.url)))?;
        Ok(metas
            .into_iter()
            .map(|m| Entry {
                key: m.location.to_string(),
                size: m.size,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        match runtime().block_on(self.store.delete(&Path::from(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(obj_err(format!("deleting {key}"))(e)),
        }
    }
}
