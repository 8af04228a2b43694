//! Upload sessions, kept entirely in storage under `_uploads/<id>/` as distribution keeps
//! them, so any process (a restart, another replica, even distribution itself) can continue
//! one:
//! - `startedat`: RFC 3339 start time;
//! - `data`: the bytes received so far, appended in order;
//! - `hashstates/sha256/<offset>`: the SHA-256 state after `offset` bytes, in Go's format.
//!
//! Each request streams its body through the hasher into the data object; nothing holds a
//! whole blob in memory. A chunk resumes from the saved state at the current offset, so
//! received data is never re-read to hash it (only if a state is missing, e.g. after a crash
//! between writing data and saving the state, is the data re-hashed once).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};

use berth_core::{Algorithm, Digest, ErrorCode, RepoName, ResumableSha256};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::blobs::BlobInfo;
use crate::{paths, Registry, RegistryError, Result};

/// An upload session id: a UUID, validated before it is used in a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for UploadId {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        match uuid::Uuid::try_parse(s) {
            Ok(u) => Ok(UploadId(u.hyphenated().to_string())),
            Err(_) => Err(RegistryError::code(ErrorCode::BlobUploadUnknown)),
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob sent whole in one request up to this size is stored without staging.
pub const SMALL_BLOB: usize = 8 << 20;

/// Where a session stands.
struct Cursor {
    offset: u64,
    hasher: ResumableSha256,
    /// The driver's staging state, on drivers that have one.
    driver: Option<Bytes>,
}

/// Berth's per-chunk record on drivers that stage with state: one JSON object, so offset, hash
/// state and driver state change together.
struct Record {
    offset: u64,
    hasher: ResumableSha256,
    driver: Bytes,
}

impl Record {
    fn encode(&self) -> Bytes {
        let v = serde_json::json!({
            "offset": self.offset,
            "sha256": berth_core::digest::hex(&self.hasher.save()),
            "driver": berth_core::digest::hex(&self.driver),
        });
        Bytes::from(v.to_string())
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let hasher = ResumableSha256::restore(&unhex(v["sha256"].as_str()?)?).ok()?;
        let offset = v["offset"].as_u64()?;
        if hasher.len() != offset {
            return None;
        }
        Some(Record {
            offset,
            hasher,
            driver: Bytes::from(unhex(v["driver"].as_str()?)?),
        })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A chunk's `Content-Range` start must be the session's offset.
fn check_start(start: Option<u64>, offset: u64) -> Result<()> {
    match start {
        Some(s) if s != offset => Err(RegistryError::msg(
            ErrorCode::ChunkOutOfOrder,
            format!("chunk starts at {s} but the upload has {offset} bytes"),
        )),
        _ => Ok(()),
    }
}

type Staged<E> = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<Bytes, E>> + Send>>;

enum Small<E> {
    Stored(BlobInfo),
    TooLarge(Staged<E>),
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received so far.
    pub offset: u64,
}

/// Serializes requests on one upload session within this process, so two concurrent PATCHes
/// cannot interleave their bytes.
#[derive(Default)]
pub(crate) struct UploadLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl UploadLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

impl Registry {
    /// Opens a new upload session in `name`.
    pub async fn start_upload(&self, name: &RepoName) -> Result<UploadStatus> {
        let id = UploadId::new();
        let now = berth_core::time::rfc3339(std::time::SystemTime::now());
        // The session exists from `startedat`; `data` appears with the first bytes.
        self.driver
            .put_content(&paths::upload_startedat(name, &id), Bytes::from(now))
            .await?;
        Ok(UploadStatus { id, offset: 0 })
    }

    /// The session's progress; `BLOB_UPLOAD_UNKNOWN` when there is no such session.
    pub async fn upload_status(&self, name: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let offset = match self.read_record(name, id).await? {
            Some(r) => r.offset,
            None => self.data_size(name, id).await?,
        };
        Ok(UploadStatus {
            id: id.clone(),
            offset,
        })
    }

    /// The received size on a driver without staging state: the data object's, or 0 when
    /// the session exists (`startedat`) and nothing arrived yet.
    async fn data_size(&self, name: &RepoName, id: &UploadId) -> Result<u64> {
        match self.driver.stat_object(&paths::upload_data(name, id)).await {
            Ok(st) => Ok(st.size),
            Err(e) if e.is_not_found() => {
                if self.exists(&paths::upload_startedat(name, id)).await? {
                    Ok(0)
                } else {
                    Err(RegistryError::code(ErrorCode::BlobUploadUnknown))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Berth's record of the session, on drivers that stage with state.
    async fn read_record(&self, name: &RepoName, id: &UploadId) -> Result<Option<Record>> {
        match self
            .driver
            .get_content(&paths::upload_berth_state(name, id))
            .await
        {
            Ok(b) => Record::decode(&b).map(Some).ok_or_else(|| {
                RegistryError::Storage(berth_storage::StorageError::Io {
                    path: paths::upload_berth_state(name, id),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "corrupt upload record",
                    ),
                })
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the session stands: offset, hash state, driver state.
    async fn cursor(&self, name: &RepoName, id: &UploadId) -> Result<Cursor> {
        if let Some(r) = self.read_record(name, id).await? {
            return Ok(Cursor {
                offset: r.offset,
                hasher: r.hasher,
                driver: Some(r.driver),
            });
        }
        let offset = self.data_size(name, id).await?;
        Ok(Cursor {
            offset,
            hasher: self.load_hash(name, id, offset).await?,
            driver: None,
        })
    }

    /// Appends a chunk. `start` is the first byte's offset from `Content-Range`, if the client
    /// sent one: it must equal the current offset (416 otherwise).
    pub async fn append_upload<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: fmt::Display,
    {
        let _guard = self.locks.lock(format!("{name}/{id}")).await;
        let cursor = self.cursor(name, id).await?;
        check_start(start, cursor.offset)?;
        let cursor = self.receive(name, id, cursor, body).await?;
        Ok(UploadStatus {
            id: id.clone(),
            offset: cursor.offset,
        })
    }

    /// Finishes an upload with an optional last chunk: verifies `digest`, moves the data to
    /// its blob path and links it into `name`. On a mismatch the session is discarded and
    /// nothing becomes visible.
    ///
    /// A blob that arrives whole in this request and is small is hashed in memory and stored
    /// at its blob path in one write, without staging.
    pub async fn complete_upload<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        body: Option<S>,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
    {
        let _guard = self.locks.lock(format!("{name}/{id}")).await;
        let mut cursor = self.cursor(name, id).await?;
        check_start(start, cursor.offset)?;
        if let Some(body) = body {
            let body = match self.small_blob(name, id, digest, &cursor, body).await? {
                Small::Stored(info) => return Ok(info),
                Small::TooLarge(rest) => rest,
            };
            cursor = self.receive(name, id, cursor, body).await?;
        }
        let data = paths::upload_data(name, id);
        let blob = paths::blob_data(digest);
        match digest.algorithm() {
            Algorithm::Sha256 => {
                let computed = cursor.hasher.digest();
                if &computed != digest {
                    return Err(self
                        .discard_mismatch(name, id, cursor.driver, digest, &computed)
                        .await);
                }
                if self.refresh(&blob, None).await? {
                    // Already stored (by another repository, or a concurrent push).
                    self.driver
                        .abort_append(&data, cursor.driver.clone())
                        .await?;
                } else {
                    self.driver
                        .finish_append(&data, cursor.driver.clone(), &blob)
                        .await?;
                    self.landed(&blob);
                }
            }
            Algorithm::Sha512 => {
                // Only SHA-256 is hashed while streaming; SHA-512 digests are rare: the data
                // is finished in place and read once.
                self.driver
                    .finish_append(&data, cursor.driver.clone(), &data)
                    .await?;
                let computed = self.sha512_of_stored(name, id).await?;
                if &computed != digest {
                    return Err(self
                        .discard_mismatch(name, id, None, digest, &computed)
                        .await);
                }
                if !self.refresh(&blob, None).await? {
                    self.driver.move_object(&data, &blob).await?;
                    self.landed(&blob);
                }
            }
        }
        self.write_link(&paths::layer_link(name, digest), digest)
            .await?;
        self.cache.set_repo_blob(name, digest, cursor.offset).await;
        self.delete_if_exists(&paths::upload_dir(name, id)).await?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size: cursor.offset,
        })
    }

    /// The session after a digest mismatch: gone, with the error to send.
    async fn discard_mismatch(
        &self,
        name: &RepoName,
        id: &UploadId,
        driver_state: Option<Bytes>,
        digest: &Digest,
        computed: &Digest,
    ) -> RegistryError {
        let data = paths::upload_data(name, id);
        if let Err(e) = self.driver.abort_append(&data, driver_state).await {
            tracing::warn!(upload = %id, "discarding a failed upload: {e}");
        }
        if let Err(e) = self.delete_if_exists(&paths::upload_dir(name, id)).await {
            return e;
        }
        RegistryError::Oci(berth_core::OciError::new(ErrorCode::DigestInvalid).detail(
            serde_json::json!({ "expected": digest.to_string(), "computed": computed.to_string() }),
        ))
    }

    /// When the whole blob arrives in one request at offset 0 and fits in
    /// [`SMALL_BLOB`] bytes: verified in memory and written to its blob path at once (one
    /// storage write, which on S3 is a single PutObject). Otherwise the body, with what was
    /// read of it, goes back to be staged as usual.
    async fn small_blob<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        digest: &Digest,
        cursor: &Cursor,
        mut body: S,
    ) -> Result<Small<E>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
    {
        let mut read: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        if cursor.offset == 0 {
            loop {
                match body.next().await {
                    None => {
                        let data = Bytes::from(read.concat());
                        let computed = Digest::compute(digest.algorithm(), &data);
                        if &computed != digest {
                            return Err(self
                                .discard_mismatch(
                                    name,
                                    id,
                                    cursor.driver.clone(),
                                    digest,
                                    &computed,
                                )
                                .await);
                        }
                        let blob = paths::blob_data(digest);
                        if !self.refresh(&blob, None).await? {
                            self.driver.put_content(&blob, data).await?;
                            self.landed(&blob);
                        }
                        self.write_link(&paths::layer_link(name, digest), digest)
                            .await?;
                        self.cache.set_repo_blob(name, digest, len as u64).await;
                        self.delete_if_exists(&paths::upload_dir(name, id)).await?;
                        return Ok(Small::Stored(BlobInfo {
                            digest: digest.clone(),
                            size: len as u64,
                        }));
                    }
                    Some(Ok(chunk)) => {
                        len += chunk.len();
                        read.push(chunk);
                        if len > SMALL_BLOB {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        // Broke off: stage what arrived, as any chunk that breaks off.
                        let rest: Staged<E> = Box::pin(
                            futures_util::stream::iter(read.into_iter().map(Ok))
                                .chain(futures_util::stream::once(async move { Err(e) })),
                        );
                        return Ok(Small::TooLarge(rest));
                    }
                }
            }
        }
        let rest: Staged<E> =
            Box::pin(futures_util::stream::iter(read.into_iter().map(Ok)).chain(body));
        Ok(Small::TooLarge(rest))
    }

    /// Cancels a session and discards what it received.
    pub async fn cancel_upload(&self, name: &RepoName, id: &UploadId) -> Result<()> {
        let _guard = self.locks.lock(format!("{name}/{id}")).await;
        let record = self.read_record(name, id).await?;
        if record.is_none() {
            self.data_size(name, id).await?;
        }
        self.driver
            .abort_append(&paths::upload_data(name, id), record.map(|r| r.driver))
            .await?;
        self.delete_if_exists(&paths::upload_dir(name, id)).await
    }

    /// Streams `body` into the session's data and returns where the session stands after it.
    /// If the body breaks off, what arrived is kept (and its state saved) so the client can
    /// ask for the offset and resume.
    async fn receive<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        cursor: Cursor,
        mut body: S,
    ) -> Result<Cursor>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: fmt::Display,
    {
        let Cursor {
            offset,
            mut hasher,
            driver: old_state,
        } = cursor;
        let mut writer = self
            .driver
            .append(&paths::upload_data(name, id), old_state.clone())
            .await?;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    writer.write(chunk).await?;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let size = writer.size();
        let new_state = writer.commit().await?;
        if size != offset {
            match &new_state {
                Some(state) => {
                    let record = Record {
                        offset: size,
                        hasher: hasher.clone(),
                        driver: state.clone(),
                    };
                    self.driver
                        .put_content(&paths::upload_berth_state(name, id), record.encode())
                        .await?;
                    if let Some(old) = &old_state {
                        self.driver.release_append(old, state).await;
                    }
                }
                None => {
                    self.driver
                        .put_content(
                            &paths::upload_hashstate(name, id, size),
                            Bytes::from(hasher.save()),
                        )
                        .await?;
                }
            }
        }
        match failure {
            Some(e) => Err(RegistryError::Body(e)),
            None => Ok(Cursor {
                offset: size,
                hasher,
                driver: new_state.or(old_state),
            }),
        }
    }

    /// The hash state after `offset` bytes: saved, or rebuilt from the data if it is missing.
    async fn load_hash(
        &self,
        name: &RepoName,
        id: &UploadId,
        offset: u64,
    ) -> Result<ResumableSha256> {
        if offset == 0 {
            return Ok(ResumableSha256::new());
        }
        match self
            .driver
            .get_content(&paths::upload_hashstate(name, id, offset))
            .await
        {
            Ok(saved) => {
                if let Ok(h) = ResumableSha256::restore(&saved) {
                    if h.len() == offset {
                        return Ok(h);
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(upload = %id, offset, "no hash state at this offset; re-hashing received data");
        let mut h = ResumableSha256::new();
        let mut s = self
            .driver
            .reader(&paths::upload_data(name, id), 0, Some(offset))
            .await?;
        while let Some(chunk) = s
            .try_next()
            .await
            .map_err(|e| berth_storage::StorageError::Io {
                path: paths::upload_data(name, id),
                source: e,
            })?
        {
            h.update(&chunk);
        }
        Ok(h)
    }

    /// SHA-512 of the received data. Such digests are rare, so instead of hashing every chunk
    /// twice the data object is streamed once at completion.
    async fn sha512_of_stored(&self, name: &RepoName, id: &UploadId) -> Result<Digest> {
        use sha2::Digest as _;
        let path = paths::upload_data(name, id);
        let mut s = self.driver.reader(&path, 0, None).await?;
        let mut h = sha2::Sha512::new();
        while let Some(chunk) = s
            .try_next()
            .await
            .map_err(|e| berth_storage::StorageError::Io {
                path: path.clone(),
                source: e,
            })?
        {
            h.update(&chunk);
        }
        format!("sha512:{}", berth_core::digest::hex(&h.finalize()))
            .parse()
            .map_err(|_| RegistryError::code(ErrorCode::DigestInvalid))
    }
}

/// A blob written by a caller that verifies its digest itself (the pull-through cache, which
/// hashes the bytes as they arrive for its own readers): staged like an upload, never
/// hashed a second time. Nothing is visible until [`commit`](BlobWriter::commit), which the
/// caller calls only after its own check passed; [`abort`](BlobWriter::abort) otherwise.
pub struct BlobWriter {
    registry: Registry,
    name: RepoName,
    id: UploadId,
    writer: Box<dyn berth_storage::AppendWriter>,
}

impl Registry {
    /// Starts a blob whose digest the caller checks.
    pub async fn blob_writer(&self, name: &RepoName) -> Result<BlobWriter> {
        let session = self.start_upload(name).await?;
        let writer = self
            .driver
            .append(&paths::upload_data(name, &session.id), None)
            .await?;
        Ok(BlobWriter {
            registry: self.clone(),
            name: name.clone(),
            id: session.id,
            writer,
        })
    }
}

impl BlobWriter {
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        Ok(self.writer.write(data).await?)
    }

    /// Stores the bytes as the blob `digest` (which the caller verified) and links it.
    pub async fn commit(self, digest: &Digest) -> Result<BlobInfo> {
        let BlobWriter {
            registry,
            name,
            id,
            writer,
        } = self;
        let size = writer.size();
        let state = writer.commit().await?;
        let data = paths::upload_data(&name, &id);
        let blob = paths::blob_data(digest);
        if registry.refresh(&blob, None).await? {
            registry.driver.abort_append(&data, state).await?;
        } else {
            registry.driver.finish_append(&data, state, &blob).await?;
            registry.landed(&blob);
        }
        registry
            .write_link(&paths::layer_link(&name, digest), digest)
            .await?;
        registry.cache.set_repo_blob(&name, digest, size).await;
        registry
            .delete_if_exists(&paths::upload_dir(&name, &id))
            .await?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size,
        })
    }

    /// Discards what was written.
    pub async fn abort(self) {
        let data = paths::upload_data(&self.name, &self.id);
        match self.writer.commit().await {
            Ok(state) => {
                let _ = self.registry.driver.abort_append(&data, state).await;
            }
            Err(e) => tracing::debug!("discarding a blob: {e}"),
        }
        let _ = self
            .registry
            .delete_if_exists(&paths::upload_dir(&self.name, &self.id))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids() {
        assert!("../../etc".parse::<UploadId>().is_err());
        let id = UploadId::new();
        assert_eq!(id.as_str().parse::<UploadId>().ok(), Some(id));
    }
}
