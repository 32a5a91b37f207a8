//! S3 requests that object_store has no API for: ListMultipartUploads
//! (`GET /?uploads`) and AbortMultipartUpload (`DELETE /key?uploadId=`) of uploads
//! whose writer is gone (a killed process, a server that went away before the abort
//! reached it). Signed with object_store's own SigV4 signer ([`AwsAuthorizer`]) and
//! the store's credential provider, sent with its HTTP client, so they go where and
//! as the store's own requests go (endpoint, path or virtual-hosted style, region).
//!
//! Not covered: S3 Express directory buckets (zonal endpoints).

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    ClientConfigKey, ClientOptions, HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector,
};
use serde::Deserialize;

use super::object::runtime;
use super::{Incomplete, Result, StoreError};
use crate::redact;

#[derive(Debug)]
pub struct S3Admin {
    /// `https://bucket.s3.region.amazonaws.com` or `http://endpoint/bucket`.
    bucket_url: String,
    region: String,
    store: Arc<AmazonS3>,
    client: HttpClient,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: chrono::DateTime<chrono::Utc>,
}

/// RFC 3986 percent-encoding of everything but unreserved characters (and `/` when
/// `path`): the form SigV4's canonical request expects.
fn encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if path => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn err(context: String, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        context,
        cause: std::io::Error::other(redact::scrub(&e.to_string())),
    }
}

impl S3Admin {
    /// From the builder the store was built with (same endpoint, region, style).
    pub fn new(b: &AmazonS3Builder, store: Arc<AmazonS3>) -> object_store::Result<S3Admin> {
        let get = |k: AmazonS3ConfigKey| b.get_config_value(&k).filter(|v| !v.is_empty());
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let bucket = get(AmazonS3ConfigKey::Bucket).unwrap_or_default();
        let virtual_hosted = get(AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint =
            get(AmazonS3ConfigKey::S3Endpoint).or_else(|| get(AmazonS3ConfigKey::Endpoint));
        // As object_store's builder derives it (aws/builder.rs, `bucket_endpoint`).
        let bucket_url = match (endpoint, virtual_hosted) {
            (Some(e), true) => e.trim_end_matches('/').to_string(),
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let allow_http = get(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let client = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))?;
        Ok(S3Admin {
            bucket_url,
            region,
            store,
            client,
        })
    }

    /// Sends one signed request with an empty body; returns the status and body.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
    ) -> std::result::Result<(u16, String), String> {
        let cred = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| e.to_string())?;
        let resp = self.client.execute(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().bytes().await.map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Every unfinished multipart upload under `prefix` (`""` or `a/b/`), with keys
    /// relative to it.
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        let ctx = || "listing unfinished multipart uploads".to_string();
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{}/?uploads&prefix={}",
                self.bucket_url,
                encode(prefix, false)
            );
            if let Some((k, u)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(k, false),
                    encode(u, false)
                ));
            }
            let (status, body) = runtime()
                .block_on(self.send(http::Method::GET, &url))
                .map_err(|e| err(ctx(), e))?;
            if !(200..300).contains(&status) {
                return Err(err(ctx(), format!("HTTP {status}: {}", body.trim())));
            }
            let page: ListResult = quick_xml::de::from_str(&body)
                .map_err(|e| err(ctx(), format!("bad reply: {e}")))?;
            for u in page.uploads {
                let Some(key) = u.key.strip_prefix(prefix) else {
                    continue;
                };
                out.push(Incomplete {
                    key: key.to_string(),
                    upload_id: Some(u.upload_id),
                    started: u.initiated,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u)) if markers.as_ref() != Some(&(k.clone(), u.clone())) => {
                    markers = Some((k, u))
                }
                (true, _, _) => {
                    return Err(err(
                        ctx(),
                        "a truncated listing without a usable next marker",
                    ))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// AbortMultipartUpload of `key` (the full key in the bucket). An upload that is
    /// already gone (404 NoSuchUpload) is not an error.
    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let ctx = || format!("aborting the unfinished upload of {key}");
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            encode(key, true),
            encode(upload_id, false)
        );
        let (status, body) = runtime()
            .block_on(self.send(http::Method::DELETE, &url))
            .map_err(|e| err(ctx(), e))?;
        match status {
            200..=299 | 404 => Ok(()),
            _ => Err(err(ctx(), format!("HTTP {status}: {}", body.trim()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_listing_xml() {
        assert_eq!(encode("SQL1$X/db/FULL/a b", true), "SQL1%24X/db/FULL/a%20b");
        assert_eq!(encode("a/b", false), "a%2Fb");
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/k2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/k1</Key><UploadId>u1</UploadId>
    <Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-01-02T03:04:05.000Z</Initiated></Upload>
  <Upload><Key>p/k2</Key><UploadId>u2</UploadId><Initiated>2026-01-02T03:04:06Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let r: ListResult = quick_xml::de::from_str(xml).unwrap();
        assert!(r.is_truncated);
        assert_eq!(r.uploads.len(), 2);
        assert_eq!(r.uploads[1].upload_id, "u2");
        assert_eq!(r.next_key_marker.as_deref(), Some("p/k2"));
        let empty: ListResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty());
    }
}
