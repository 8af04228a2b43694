//! The S3 driver (aws-sdk-s3), configured with distribution's `storage.s3` keys. Keys are
//! `<rootdirectory><path>` without the leading `/`, exactly as distribution's driver computes
//! them, so a bucket written by one is served by the other.
//!
//! Staged objects (uploads) never depend on `ListMultipartUploads`: a writer buffers up to
//! `chunksize`, uploads full buffers as parts of a multipart upload (several at once), and
//! keeps the bytes that do not fill a part, the *tail*, in the state itself. The upload id,
//! the parts and the tail's bytes are the state [`AppendWriter::commit`] returns; the caller
//! persists it (one object write that it makes anyway), and any process resumes from it. So a
//! commit costs no request of its own, and a crash before the caller persisted the new state
//! leaves the previous one intact. Finishing a staged object without parts writes the tail
//! to its destination (one PutObject); with parts, the tail is uploaded as the last part, the
//! upload completed, and the object copied to its destination server-side (multipart above
//! `multipartcopythresholdsize`). States written before tails were kept inline name a tail
//! *object* instead; they are still read, and that object is released as before.
//!
//! Every request is counted per operation ([`S3Driver::request_counts`]), to measure what a
//! push or a pull costs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream as AwsStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{
    rolled_up, validate_path, AppendWriter, ByteStream, FileInfo, ListEntry, ListFrom, ListPage,
    Result, StorageDriver, StorageError, LIST_PAGE_MAX,
};

/// The smallest part S3 accepts (except the last).
pub const MIN_CHUNK_SIZE: u64 = 5 << 20;
/// Parts of one writer uploading at once.
const PARTS_IN_FLIGHT: usize = 4;
/// How long a presigned download URL is valid (distribution uses 20 minutes).
const PRESIGN_FOR: Duration = Duration::from_secs(20 * 60);

/// distribution's `storage.s3` options.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub region: String,
    /// A custom endpoint (MinIO, moto, Ceph, ...): `host[:port]` or a URL.
    pub region_endpoint: Option<String>,
    pub bucket: String,
    pub root_directory: String,
    /// Static credentials; without them the AWS environment/profile/instance chain is used.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    /// `https` (true) or `http` for an endpoint given without a scheme.
    pub secure: bool,
    pub force_path_style: bool,
    pub chunk_size: u64,
    pub multipart_copy_chunk_size: u64,
    pub multipart_copy_max_concurrency: usize,
    pub multipart_copy_threshold_size: u64,
    pub storage_class: Option<String>,
    pub encrypt: bool,
    pub key_id: Option<String>,
    /// Presigned redirects for downloads (`storage.redirect.disable` turns them off).
    pub redirect: bool,
    /// Deadlines of every call (Berth's `storage.s3` keys): establishing a connection...
    pub connect_timeout: Duration,
    /// ...the first byte of an answer once the request is sent...
    pub response_timeout: Duration,
    /// ...and the next bytes of a download.
    pub idle_timeout: Duration,
    /// Attempts per call, the first included (the SDK retries timeouts, refused connections,
    /// throttling and 5xx; S3's calls are idempotent).
    pub max_attempts: u32,
}

/// The deadlines' defaults: generous enough for S3's slowest calls (a large copy answers its
/// headers early), short enough that a stalled S3 is a 503 within about three minutes at most.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            region: "us-east-1".into(),
            region_endpoint: None,
            bucket: String::new(),
            root_directory: String::new(),
            access_key: None,
            secret_key: None,
            session_token: None,
            secure: true,
            force_path_style: false,
            chunk_size: 10 << 20,
            multipart_copy_chunk_size: 32 << 20,
            multipart_copy_max_concurrency: 100,
            multipart_copy_threshold_size: 32 << 20,
            storage_class: None,
            encrypt: false,
            key_id: None,
            redirect: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// S3 requests made, by operation.
#[derive(Debug, Default)]
pub struct RequestCounts(std::sync::Mutex<BTreeMap<&'static str, u64>>, AtomicU64);

impl RequestCounts {
    fn add(&self, op: &'static str) {
        self.1.fetch_add(1, Ordering::Relaxed);
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
    }

    /// Requests by operation name (`GetObject`, `PutObject`, ...).
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }
}

struct Inner {
    client: aws_sdk_s3::Client,
    config: S3Config,
    /// `rootdirectory` without slashes at either end ("" for the bucket's root).
    root: String,
    counts: RequestCounts,
    /// The one WARN about a server that ignores listing delimiters was logged.
    warned_delimiter: std::sync::atomic::AtomicBool,
}

/// The S3 driver. Cheap to clone.
#[derive(Clone)]
pub struct S3Driver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("bucket", &self.inner.config.bucket)
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// The HTTP status of a failed call, when the service answered.
fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Driver {
    /// Connects (no request is made until the first operation).
    pub async fn new(config: S3Config) -> std::result::Result<S3Driver, String> {
        if config.bucket.is_empty() {
            return Err("storage.s3.bucket is required".into());
        }
        if config.chunk_size < MIN_CHUNK_SIZE {
            return Err(format!(
                "storage.s3.chunksize must be at least {MIN_CHUNK_SIZE} (S3's minimum part size)"
            ));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = Region::new(config.region.clone());
        // Credentials in the configuration are used as they are; otherwise the usual AWS
        // chain (environment, profile, web identity, container and instance metadata).
        let base = match (&config.access_key, &config.secret_key) {
            (Some(ak), Some(sk)) if !ak.is_empty() => aws_sdk_s3::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .http_client(http)
                .region(region)
                .credentials_provider(Credentials::new(
                    ak.clone(),
                    sk.clone(),
                    config.session_token.clone(),
                    None,
                    "storage.s3",
                )),
            _ => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http)
                    .region(region)
                    .load()
                    .await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
        };
        let mut b = base
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .read_timeout(config.response_timeout)
                    .build(),
            )
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(config.max_attempts.max(1)),
            )
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(ep) = config.region_endpoint.as_deref().filter(|e| !e.is_empty()) {
            let url = if ep.contains("://") {
                ep.to_owned()
            } else if config.secure {
                format!("https://{ep}")
            } else {
                format!("http://{ep}")
            };
            b = b.endpoint_url(url);
        }
        let root = config.root_directory.trim_matches('/').to_owned();
        Ok(S3Driver {
            inner: Arc::new(Inner {
                client: aws_sdk_s3::Client::from_conf(b.build()),
                config,
                root,
                counts: RequestCounts::default(),
                warned_delimiter: Default::default(),
            }),
        })
    }

    /// Checks the bucket at start-up: a missing bucket or refused credentials are errors
    /// worth stopping for; a network error is only reported (S3 may come back).
    pub async fn check_bucket(&self) -> std::result::Result<(), String> {
        self.count("HeadBucket");
        match self
            .inner
            .client
            .head_bucket()
            .bucket(&self.inner.config.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match status_of(&e) {
                Some(404) => Err(format!("S3 bucket {:?} does not exist", self.inner.config.bucket)),
                Some(401 | 403) => Err(format!(
                    "S3 refused access to bucket {:?} (HTTP {}): check storage.s3.accesskey/secretkey or the AWS credentials",
                    self.inner.config.bucket,
                    status_of(&e).unwrap_or(403)
                )),
                _ => {
                    tracing::warn!(
                        bucket = %self.inner.config.bucket,
                        "S3 is not reachable at start-up ({}); serving anyway, requests will fail until it is",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    );
                    Ok(())
                }
            },
        }
    }

    /// Whether the server has answered a listing with a delimiter other than `/` with every
    /// key, ignoring the delimiter.
    pub fn delimiter_ignored(&self) -> bool {
        self.inner.warned_delimiter.load(Ordering::Relaxed)
    }

    /// Requests made so far, by operation.
    pub fn request_counts(&self) -> &RequestCounts {
        &self.inner.counts
    }

    fn key(&self, path: &str) -> Result<String> {
        validate_path(path)?;
        Ok(if self.inner.root.is_empty() {
            path[1..].to_owned()
        } else {
            format!("{}{path}", self.inner.root)
        })
    }

    /// The driver path of a key.
    fn path_of(&self, key: &str) -> String {
        let rest = if self.inner.root.is_empty() {
            key
        } else {
            key.strip_prefix(&self.inner.root).unwrap_or(key)
        };
        let rest = rest.trim_end_matches('/');
        if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        }
    }

    /// An I/O error that says what S3 said: `NoSuchBucket: The specified bucket does not
    /// exist (HTTP 404)` for a service error, the cause chain for a connection failure (the
    /// SDK's own Display says only "service error").
    fn io<E>(
        path: &str,
        what: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let unavailable = match &e {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(d) => d.is_timeout() || d.is_io(),
            SdkError::ResponseError(_) => true,
            _ => false,
        };
        let text = match &e {
            SdkError::ServiceError(se) => {
                let err = se.err();
                format!(
                    "{}: {} (HTTP {})",
                    err.code().unwrap_or("error"),
                    err.message().unwrap_or("no message"),
                    se.raw().status().as_u16()
                )
            }
            other => aws_smithy_types::error::display::DisplayErrorContext(other).to_string(),
        };
        if unavailable {
            return StorageError::Unavailable {
                path: path.to_owned(),
                reason: format!("S3 {what}: {text}"),
            };
        }
        StorageError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("S3 {what}: {text}")),
        }
    }

    fn io_msg(path: &str, what: &str, msg: impl std::fmt::Display) -> StorageError {
        StorageError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("S3 {what}: {msg}")),
        }
    }

    fn count(&self, op: &'static str) {
        self.inner.counts.add(op);
    }

    fn storage_class(&self) -> Option<StorageClass> {
        self.inner
            .config
            .storage_class
            .as_deref()
            .filter(|c| !c.eq_ignore_ascii_case("none") && !c.is_empty())
            .map(StorageClass::from)
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        match (self.inner.config.encrypt, &self.inner.config.key_id) {
            (false, _) => None,
            (true, Some(_)) => Some(ServerSideEncryption::AwsKms),
            (true, None) => Some(ServerSideEncryption::Aes256),
        }
    }

    async fn head(&self, key: &str, path: &str) -> Result<Option<(u64, SystemTime)>> {
        self.count("HeadObject");
        match self
            .inner
            .client
            .head_object()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => {
                let size = o.content_length().unwrap_or(0).max(0) as u64;
                let modified = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Ok(Some((size, modified)))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(Self::io(path, "HeadObject", e)),
        }
    }

    async fn put(&self, key: &str, path: &str, body: Bytes) -> Result<()> {
        self.count("PutObject");
        self.inner
            .client
            .put_object()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.inner.config.key_id.clone())
            .body(AwsStream::from(body))
            .send()
            .await
            .map_err(|e| Self::io(path, "PutObject", e))?;
        Ok(())
    }

    /// Every key under `prefix` (a "directory").
    async fn keys_under(&self, prefix: &str, path: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            self.count("ListObjectsV2");
            let out = self
                .inner
                .client
                .list_objects_v2()
                .bucket(&self.inner.config.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| Self::io(path, "ListObjectsV2", e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    async fn delete_keys(&self, keys: &[String], path: &str) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Self::io_msg(path, "DeleteObjects", e))?;
            self.count("DeleteObjects");
            self.inner
                .client
                .delete_objects()
                .bucket(&self.inner.config.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| Self::io(path, "DeleteObjects", e))?;
        }
        Ok(())
    }

    async fn delete_key(&self, key: &str, path: &str) -> Result<()> {
        self.count("DeleteObject");
        self.inner
            .client
            .delete_object()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Self::io(path, "DeleteObject", e))?;
        Ok(())
    }

    fn copy_source(&self, key: &str) -> String {
        let mut out = format!("{}/", self.inner.config.bucket);
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// Server-side copy of `from` (of `size` bytes) to `to`: one CopyObject, or a multipart
    /// copy of concurrent UploadPartCopy requests above the threshold.
    async fn copy(&self, from: &str, to: &str, size: u64, path: &str) -> Result<()> {
        let cfg = &self.inner.config;
        if size <= cfg.multipart_copy_threshold_size {
            self.count("CopyObject");
            self.inner
                .client
                .copy_object()
                .bucket(&cfg.bucket)
                .key(to)
                .copy_source(self.copy_source(from))
                .set_storage_class(self.storage_class())
                .set_server_side_encryption(self.sse())
                .set_ssekms_key_id(cfg.key_id.clone())
                .send()
                .await
                .map_err(|e| Self::io(path, "CopyObject", e))?;
            return Ok(());
        }
        let upload_id = self.create_multipart(to, path).await?;
        let chunk = cfg.multipart_copy_chunk_size.max(MIN_CHUNK_SIZE);
        let sem = Arc::new(Semaphore::new(cfg.multipart_copy_max_concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut n = 0;
        let mut start = 0;
        while start < size {
            let end = (start + chunk).min(size) - 1;
            n += 1;
            let (me, source, upload_id, sem, to) = (
                self.clone(),
                self.copy_source(from),
                upload_id.clone(),
                sem.clone(),
                to.to_owned(),
            );
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                me.count("UploadPartCopy");
                let out = me
                    .inner
                    .client
                    .upload_part_copy()
                    .bucket(&me.inner.config.bucket)
                    .key(&to)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "UploadPartCopy: {}",
                            aws_smithy_types::error::display::DisplayErrorContext(&e)
                        )
                    })?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_owned();
                Ok::<Part, String>(Part {
                    n,
                    etag,
                    size: end + 1 - start,
                })
            });
            start = end + 1;
        }
        let mut parts = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(p) => parts.push(p),
                Err(e) => {
                    let _ = self.abort_multipart(to, &upload_id).await;
                    return Err(Self::io_msg(path, "multipart copy", e));
                }
            }
        }
        self.complete_multipart(to, &upload_id, parts, path).await
    }

    async fn create_multipart(&self, key: &str, path: &str) -> Result<String> {
        self.count("CreateMultipartUpload");
        let out = self
            .inner
            .client
            .create_multipart_upload()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.inner.config.key_id.clone())
            .send()
            .await
            .map_err(|e| Self::io(path, "CreateMultipartUpload", e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Self::io_msg(path, "CreateMultipartUpload", "no upload id"))
    }

    /// Uploads a staged object's tail as its last part and completes the multipart upload.
    async fn complete_staged(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<Part>,
        inline: Bytes,
        tail: Option<(String, u64)>,
        path: &str,
    ) -> Result<()> {
        let n = parts.iter().map(|p| p.n).max().unwrap_or(0) + 1;
        if !inline.is_empty() {
            let part = self
                .upload_part(key, upload_id, n, inline)
                .await
                .map_err(|e| Self::io_msg(path, "part upload", e))?;
            parts.push(part);
        } else if let Some((tail_key, size)) = tail {
            self.count("UploadPartCopy");
            let out = self
                .inner
                .client
                .upload_part_copy()
                .bucket(&self.inner.config.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n)
                .copy_source(self.copy_source(&tail_key))
                .send()
                .await
                .map_err(|e| Self::io(path, "UploadPartCopy", e))?;
            let etag = out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_owned();
            parts.push(Part { n, etag, size });
        }
        self.complete_multipart(key, upload_id, parts, path).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<Part>,
        path: &str,
    ) -> Result<()> {
        parts.sort_by_key(|p| p.n);
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.n)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        self.count("CompleteMultipartUpload");
        self.inner
            .client
            .complete_multipart_upload()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Self::io(path, "CompleteMultipartUpload", e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.count("AbortMultipartUpload");
        match self
            .inner
            .client
            .abort_multipart_upload()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(Self::io(key, "AbortMultipartUpload", e)),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: i32,
        data: Bytes,
    ) -> std::result::Result<Part, String> {
        let size = data.len() as u64;
        self.count("UploadPart");
        let out = self
            .inner
            .client
            .upload_part()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .body(AwsStream::from(data))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "UploadPart {n}: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )
            })?;
        Ok(Part {
            n,
            etag: out.e_tag().unwrap_or_default().to_owned(),
            size,
        })
    }
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    n: i32,
    etag: String,
    size: u64,
}

/// A staged object's state, as persisted by the caller: its JSON, a newline, then the tail's
/// bytes (JSON never contains a raw newline). A state without the newline is the older form,
/// whose tail is an object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Staging {
    /// The multipart upload, once the first full part was uploaded.
    upload_id: Option<String>,
    parts: Vec<Part>,
    /// The older form's tail object: (key, size).
    tail: Option<(String, u64)>,
    size: u64,
    /// The bytes after the last part.
    #[serde(skip)]
    inline: Bytes,
}

impl Staging {
    fn encode(&self) -> std::result::Result<Bytes, serde_json::Error> {
        let mut out = serde_json::to_vec(self)?;
        out.push(b'\n');
        out.extend_from_slice(&self.inline);
        Ok(Bytes::from(out))
    }

    fn decode(state: Option<&Bytes>) -> Result<Staging> {
        let invalid = |msg: String| StorageError::Io {
            path: String::new(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("S3 staging state: {msg}"),
            ),
        };
        let Some(b) = state else {
            return Ok(Staging::default());
        };
        let (json, inline) = match b.iter().position(|&c| c == b'\n') {
            Some(i) => (b.slice(..i), b.slice(i + 1..)),
            None => (b.clone(), Bytes::new()),
        };
        let mut s: Staging = serde_json::from_slice(&json).map_err(|e| invalid(e.to_string()))?;
        s.inline = inline;
        let staged: u64 = s.parts.iter().map(|p| p.size).sum::<u64>()
            + s.tail.as_ref().map_or(0, |t| t.1)
            + s.inline.len() as u64;
        if staged != s.size {
            return Err(invalid(format!(
                "parts and tail hold {staged} bytes, not {}",
                s.size
            )));
        }
        Ok(s)
    }
}

#[async_trait]
impl StorageDriver for S3Driver {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let key = self.key(path)?;
        self.count("GetObject");
        let out = match self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.config.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(StorageError::NotFound(path.to_owned()))
            }
            Err(e) => return Err(Self::io(path, "GetObject", e)),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| Self::io_msg(path, "GetObject body", e))?;
        Ok(data.into_bytes())
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let key = self.key(path)?;
        self.put(&key, path, content).await
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let key = self.key(path)?;
        let range = match len {
            Some(0) => {
                return match self.head(&key, path).await? {
                    Some((size, _)) if offset <= size => {
                        Ok(Box::pin(futures_util::stream::empty()))
                    }
                    Some((size, _)) => Err(StorageError::InvalidOffset {
                        path: path.to_owned(),
                        offset,
                        size,
                    }),
                    None => Err(StorageError::NotFound(path.to_owned())),
                };
            }
            Some(n) => Some(format!("bytes={offset}-{}", offset + n - 1)),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        self.count("GetObject");
        let out = match self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.config.bucket)
            .key(&key)
            .set_range(range)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return match status_of(&e) {
                    Some(404) => Err(StorageError::NotFound(path.to_owned())),
                    // A range at or past the end: empty at the end, an error beyond it.
                    Some(416) => match self.head(&key, path).await? {
                        Some((size, _)) if offset == size => {
                            Ok(Box::pin(futures_util::stream::empty()))
                        }
                        Some((size, _)) => Err(StorageError::InvalidOffset {
                            path: path.to_owned(),
                            offset,
                            size,
                        }),
                        None => Err(StorageError::NotFound(path.to_owned())),
                    },
                    _ => Err(Self::io(path, "GetObject", e)),
                };
            }
        };
        let body = out.body;
        let idle = self.inner.config.idle_timeout;
        let stream = futures_util::stream::unfold(Some(body), move |body| async move {
            let mut body = body?;
            match tokio::time::timeout(idle, body.try_next()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(body))),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(std::io::Error::other(e)), None)),
                // A download that stalls is cut: the client sees a short body, not a hang.
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("S3 sent nothing for {idle:?}"),
                    )),
                    None,
                )),
            }
        });
        Ok(stream.boxed())
    }

    async fn append(&self, path: &str, state: Option<Bytes>) -> Result<Box<dyn AppendWriter>> {
        let key = self.key(path)?;
        let staging = Staging::decode(state.as_ref())?;
        let mut buf = BytesMut::from(&staging.inline[..]);
        if let Some((tail, size)) = &staging.tail {
            let data = self.get_content(&self.path_of(tail)).await?;
            if data.len() as u64 != *size {
                return Err(Self::io_msg(
                    path,
                    "tail",
                    format!("{tail} has {} bytes, not {size}", data.len()),
                ));
            }
            buf.extend_from_slice(&data);
        }
        let next = staging.parts.iter().map(|p| p.n).max().unwrap_or(0) + 1;
        Ok(Box::new(S3Append {
            driver: self.clone(),
            path: path.to_owned(),
            key,
            upload_id: staging.upload_id,
            parts: staging.parts,
            next,
            buf,
            size: staging.size,
            tasks: JoinSet::new(),
            sem: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
        }))
    }

    async fn finish_append(&self, path: &str, state: Option<Bytes>, dest: &str) -> Result<()> {
        let key = self.key(path)?;
        let dest_key = self.key(dest)?;
        let s = Staging::decode(state.as_ref())?;
        match (s.upload_id, s.tail) {
            // Smaller than one part: the tail is the object (empty if nothing was committed),
            // written once where it goes.
            (None, None) => self.put(&dest_key, dest, s.inline).await,
            // The same from an older state, whose tail is an object: copied once.
            (None, Some((tail, size))) => self.copy(&tail, &dest_key, size, path).await,
            (Some(upload_id), tail) => {
                let completed = self
                    .complete_staged(&key, &upload_id, s.parts, s.inline, tail, path)
                    .await;
                if let Err(e) = completed {
                    // Completed already, by an earlier attempt whose answer was lost (the SDK
                    // retries a completion after a timeout, and S3 then says NoSuchUpload; a
                    // client retries its PUT after a 503): the object of the full size is
                    // that success. One HEAD, on this path only.
                    match self.head(&key, path).await? {
                        Some((size, _)) if size == s.size => {}
                        _ => return Err(e),
                    }
                }
                if key != dest_key {
                    // The multipart object's key was fixed when the upload began; the final
                    // path is known only now. One server-side copy; the staged object is left
                    // for the caller, which deletes it with the rest of the session (see the
                    // trait) in the request it makes anyway.
                    self.copy(&key, &dest_key, s.size, path).await?;
                }
                Ok(())
            }
        }
    }

    async fn stat_object(&self, path: &str) -> Result<FileInfo> {
        let key = self.key(path)?;
        match self.head(&key, path).await? {
            Some((size, modified)) => Ok(FileInfo {
                path: path.to_owned(),
                size,
                is_dir: false,
                modified,
            }),
            None => Err(StorageError::NotFound(path.to_owned())),
        }
    }

    async fn release_append(&self, old: &Bytes, new: &Bytes) {
        let (Ok(old), Ok(new)) = (Staging::decode(Some(old)), Staging::decode(Some(new))) else {
            return;
        };
        if let Some((tail, _)) = old.tail {
            if new.tail.as_ref().map(|t| &t.0) != Some(&tail) {
                if let Err(e) = self.delete_key(&tail, &tail).await {
                    tracing::debug!("releasing a staged tail: {e}");
                }
            }
        }
    }

    /// One DeleteObjects of the named objects (and touch markers, should any exist): no
    /// listing first.
    async fn delete_dir_known(&self, dir: &str, names: &[&str]) -> Result<()> {
        let key = self.key(dir)?;
        let keys: Vec<String> = names
            .iter()
            .flat_map(|n| {
                let k = format!("{key}/{n}");
                [touch_key(&k), k]
            })
            .collect();
        self.delete_keys(&keys, dir).await
    }

    async fn abort_append(&self, path: &str, state: Option<Bytes>) -> Result<()> {
        let key = self.key(path)?;
        if let Some(upload_id) = Staging::decode(state.as_ref())?.upload_id {
            self.abort_multipart(&key, &upload_id).await?;
        }
        Ok(())
    }

    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        if !self.inner.config.redirect {
            return Ok(None);
        }
        let key = self.key(path)?;
        let presign = aws_sdk_s3::presigning::PresigningConfig::expires_in(PRESIGN_FOR)
            .map_err(|e| Self::io_msg(path, "presign", e))?;
        let req = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.config.bucket)
            .key(key)
            .presigned(presign)
            .await
            .map_err(|e| Self::io(path, "presign", e))?;
        Ok(Some(req.uri().to_owned()))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let key = self.key(path)?;
        if let Some((size, modified)) = self.head(&key, path).await? {
            return Ok(FileInfo {
                path: path.to_owned(),
                size,
                is_dir: false,
                modified,
            });
        }
        self.count("ListObjectsV2");
        let out = self
            .inner
            .client
            .list_objects_v2()
            .bucket(&self.inner.config.bucket)
            .prefix(format!("{key}/"))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| Self::io(path, "ListObjectsV2", e))?;
        if out.key_count().unwrap_or(0) > 0 || !out.contents().is_empty() {
            Ok(FileInfo {
                path: path.to_owned(),
                size: 0,
                is_dir: true,
                modified: SystemTime::UNIX_EPOCH,
            })
        } else {
            Err(StorageError::NotFound(path.to_owned()))
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let prefix = if path == "/" {
            if self.inner.root.is_empty() {
                String::new()
            } else {
                format!("{}/", self.inner.root)
            }
        } else {
            format!("{}/", self.key(path)?)
        };
        let mut out = Vec::new();
        let mut token = None;
        loop {
            self.count("ListObjectsV2");
            let page = self
                .inner
                .client
                .list_objects_v2()
                .bucket(&self.inner.config.bucket)
                .prefix(&prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| Self::io(path, "ListObjectsV2", e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|k| self.path_of(k)),
            );
            out.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(|k| self.path_of(k)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        if out.is_empty() && path != "/" {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// One `ListObjectsV2`. A server that ignores a delimiter other than `/` (S3 allows any
    /// string; some S3-compatible servers do not) answers with every key: the page is then
    /// rolled up here, still correct but as costly as the keys below, with one WARN.
    async fn list_page(
        &self,
        dir: &str,
        delimiter: Option<&str>,
        from: ListFrom,
        max: usize,
    ) -> Result<ListPage> {
        let prefix = format!("{}/", self.key(dir)?);
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut req = self
            .inner
            .client
            .list_objects_v2()
            .bucket(&self.inner.config.bucket)
            .prefix(&prefix)
            .max_keys(max.clamp(1, LIST_PAGE_MAX) as i32)
            .set_delimiter(delimiter.map(str::to_owned));
        req = match from {
            ListFrom::Start => req,
            ListFrom::After(a) => req.start_after(format!("{prefix}{a}")),
            ListFrom::Token(t) => req.continuation_token(t),
        };
        self.count("ListObjectsV2");
        let out = req
            .send()
            .await
            .map_err(|e| Self::io(dir, "ListObjectsV2", e))?;
        let mut entries = Vec::new();
        let mut ignored = false;
        for o in out.contents() {
            let Some(rel) = o.key().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            if let Some(r) = rolled_up(rel, delimiter) {
                ignored = true;
                if entries.last().is_some_and(|e: &ListEntry| e.key == r) {
                    continue;
                }
                entries.push(ListEntry {
                    key: r.to_owned(),
                    rolled: true,
                    size: 0,
                    modified: None,
                });
                continue;
            }
            entries.push(ListEntry {
                key: rel.to_owned(),
                rolled: false,
                size: o.size().unwrap_or(0).max(0) as u64,
                modified: o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            });
        }
        for p in out.common_prefixes() {
            if let Some(rel) = p.prefix().and_then(|k| k.strip_prefix(&prefix)) {
                entries.push(ListEntry {
                    key: rel.to_owned(),
                    rolled: true,
                    size: 0,
                    modified: None,
                });
            }
        }
        if ignored && !self.inner.warned_delimiter.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                bucket = %self.inner.config.bucket,
                delimiter = delimiter.unwrap_or(""),
                "the S3 server ignored a listing delimiter other than \"/\" and listed every key: catalog pages cost as many requests as the keys below them; AWS S3 and Garage support them"
            );
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries.dedup_by(|b, a| a.rolled && b.rolled && a.key == b.key);
        let next = match out.next_continuation_token() {
            Some(t) if out.is_truncated().unwrap_or(false) => Some(t.to_owned()),
            _ => None,
        };
        Ok(ListPage { entries, next })
    }

    /// A marker object beside the object (`<key>.berth-touched`): one small PutObject, where
    /// refreshing the object's own LastModified would mean copying all its bytes onto itself.
    async fn touch(&self, path: &str) -> Result<()> {
        let key = self.key(path)?;
        if self.head(&key, path).await?.is_none() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        self.put(&touch_key(&key), path, Bytes::new()).await
    }

    async fn stat_touched(&self, path: &str) -> Result<FileInfo> {
        let key = self.key(path)?;
        let marker = touch_key(&key);
        let (object, touched) = tokio::join!(self.head(&key, path), self.head(&marker, path));
        let (size, modified) = object?.ok_or_else(|| StorageError::NotFound(path.to_owned()))?;
        let modified = match touched? {
            Some((_, t)) => modified.max(t),
            None => modified,
        };
        Ok(FileInfo {
            path: path.to_owned(),
            size,
            is_dir: false,
            modified,
        })
    }

    async fn move_object(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.key(from)?, self.key(to)?);
        let (size, _) = self
            .head(&src, from)
            .await?
            .ok_or_else(|| StorageError::NotFound(from.to_owned()))?;
        self.copy(&src, &dst, size, from).await?;
        self.delete_key(&src, from).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path)?;
        // A path is a directory (objects under it) or an object, never both in the layout.
        let keys = self.keys_under(&format!("{key}/"), path).await?;
        if !keys.is_empty() {
            return self.delete_keys(&keys, path).await;
        }
        if self.head(&key, path).await?.is_none() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        self.delete_key(&key, path).await?;
        // The object's touch marker, if any (no error when there is none).
        self.delete_key(&touch_key(&key), path).await
    }
}

/// The key of an object's touch marker (see [`S3Driver::touch`]). Registry paths end in
/// `/data` or `/link`, so no layout entry ends like this.
fn touch_key(key: &str) -> String {
    format!("{key}.berth-touched")
}

/// A writer of a staged object (see the module documentation).
struct S3Append {
    driver: S3Driver,
    path: String,
    key: String,
    upload_id: Option<String>,
    parts: Vec<Part>,
    next: i32,
    /// The bytes not yet in a part (the old tail first).
    buf: BytesMut,
    size: u64,
    tasks: JoinSet<std::result::Result<Part, String>>,
    sem: Arc<Semaphore>,
}

impl S3Append {
    /// Uploads one full part in the background, at most [`PARTS_IN_FLIGHT`] at once.
    async fn spawn_part(&mut self, data: Bytes) -> Result<()> {
        let upload_id = match &self.upload_id {
            Some(u) => u.clone(),
            None => {
                let u = self.driver.create_multipart(&self.key, &self.path).await?;
                self.upload_id = Some(u.clone());
                u
            }
        };
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| S3Driver::io_msg(&self.path, "part upload", e))?;
        let (driver, key, n) = (self.driver.clone(), self.key.clone(), self.next);
        self.next += 1;
        self.tasks.spawn(async move {
            let r = driver.upload_part(&key, &upload_id, n, data).await;
            drop(permit);
            r
        });
        // Collect finished parts as we go, so a failure surfaces early.
        while let Some(done) = self.tasks.try_join_next() {
            self.parts.push(Self::joined(done, &self.path)?);
        }
        Ok(())
    }

    fn joined(
        r: std::result::Result<std::result::Result<Part, String>, tokio::task::JoinError>,
        path: &str,
    ) -> Result<Part> {
        r.map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| S3Driver::io_msg(path, "part upload", e))
    }
}

#[async_trait]
impl AppendWriter for S3Append {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        self.buf.extend_from_slice(&data);
        let chunk = self.driver.inner.config.chunk_size as usize;
        while self.buf.len() >= chunk {
            let part = self.buf.split_to(chunk).freeze();
            self.spawn_part(part).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn commit(mut self: Box<Self>) -> Result<Option<Bytes>> {
        while let Some(done) = self.tasks.join_next().await {
            let part = Self::joined(done, &self.path)?;
            self.parts.push(part);
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.n);
        let state = Staging {
            upload_id: self.upload_id.take(),
            parts,
            tail: None,
            size: self.size,
            // The bytes that do not fill a part travel in the state: no object of their own.
            inline: self.buf.split().freeze(),
        };
        state
            .encode()
            .map(Some)
            .map_err(|e| S3Driver::io_msg(&self.path, "staging state", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The state carries the tail's bytes as they are (newlines too); the older form, whose
    /// tail is an object, is still read; a state whose sizes disagree is refused.
    #[test]
    fn staging_states() {
        let s = Staging {
            upload_id: Some("up".into()),
            parts: vec![Part {
                n: 1,
                etag: "\"e\"".into(),
                size: 5,
            }],
            tail: None,
            size: 9,
            inline: Bytes::from_static(b"a\nb\n"),
        };
        let back = Staging::decode(Some(&s.encode().unwrap())).unwrap();
        assert_eq!(back.upload_id.as_deref(), Some("up"));
        assert_eq!(&back.inline[..], b"a\nb\n");
        assert_eq!(back.size, 9);
        let old = Bytes::from_static(
            br#"{"upload_id":null,"parts":[],"tail":["root/x/data.tail-3",3],"size":3}"#,
        );
        let back = Staging::decode(Some(&old)).unwrap();
        assert_eq!(back.tail, Some(("root/x/data.tail-3".to_owned(), 3)));
        assert!(back.inline.is_empty());
        let wrong = Staging { size: 10, ..s };
        assert!(Staging::decode(Some(&wrong.encode().unwrap())).is_err());
        assert_eq!(Staging::decode(None).unwrap().size, 0);
    }
}
