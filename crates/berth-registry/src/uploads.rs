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
//!
//! On S3 every request is a round trip and a line on the bill, so each session operation
//! asks storage only what it must (see "What a push costs" in docs/ARCHITECTURE.md): a
//! session is found by its record, or, for what is probably its first chunk, by one listing
//! of its directory; a blob small enough to be written in one request is written without
//! asking first whether it exists (rewriting identical bytes is harmless, and makes the blob
//! fresh for garbage collection as a touch would); and a finished session whose objects are
//! all known is deleted without listing it.

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

/// The objects of a session on a driver that stages with state, by base name: `startedat`,
/// Berth's record, and `data` (on S3 only for the moment a multipart upload is completed
/// before it is copied to its blob path).
const SESSION_FILES: &[&str] = &["startedat", "berthstate", "data"];

/// Where a session stands.
struct Cursor {
    offset: u64,
    hasher: ResumableSha256,
    /// The driver's staging state, on drivers that have one.
    driver: Option<Bytes>,
    /// Every object the session may hold, when that is known: it is then deleted without
    /// listing it ([`berth_storage::StorageDriver::delete_dir_known`]).
    files: Option<&'static [&'static str]>,
}

/// Where a session stands, without its hash state.
struct Position {
    offset: u64,
    record: Option<Record>,
    files: Option<&'static [&'static str]>,
}

impl Position {
    fn of_record(r: Record) -> Position {
        Position {
            offset: r.offset,
            // A record of the older form may name a tail object of the driver's.
            files: (!r.legacy).then_some(SESSION_FILES),
            record: Some(r),
        }
    }
}

/// Berth's per-chunk record on drivers that stage with state: one object, so offset, hash
/// state and driver state change together. A JSON line (offset, hash state), then the driver's
/// state as it is (on S3 that includes the bytes after the last part, up to `chunksize`). The
/// older form, one JSON object with the driver state in hex, is still read.
struct Record {
    offset: u64,
    hasher: ResumableSha256,
    driver: Bytes,
    /// Read from the older form.
    legacy: bool,
}

impl Record {
    fn encode(&self) -> Bytes {
        let head = serde_json::json!({
            "offset": self.offset,
            "sha256": berth_core::digest::hex(&self.hasher.save()),
        })
        .to_string();
        let mut out = Vec::with_capacity(head.len() + 1 + self.driver.len());
        out.extend_from_slice(head.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.driver);
        Bytes::from(out)
    }

    fn decode(b: &Bytes) -> Option<Record> {
        let (head, driver) = match b.iter().position(|&c| c == b'\n') {
            Some(i) => (b.slice(..i), Some(b.slice(i + 1..))),
            None => (b.clone(), None),
        };
        let v: serde_json::Value = serde_json::from_slice(&head).ok()?;
        let hasher = ResumableSha256::restore(&unhex(v["sha256"].as_str()?)?).ok()?;
        let offset = v["offset"].as_u64()?;
        if hasher.len() != offset {
            return None;
        }
        let legacy = driver.is_none();
        let driver = match driver {
            Some(d) => d,
            None => Bytes::from(unhex(v["driver"].as_str()?)?),
        };
        Some(Record {
            offset,
            hasher,
            driver,
            legacy,
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

/// `DIGEST_INVALID` with both digests.
fn digest_invalid(expected: &Digest, computed: &Digest) -> RegistryError {
    RegistryError::Oci(berth_core::OciError::new(ErrorCode::DigestInvalid).detail(
        serde_json::json!({ "expected": expected.to_string(), "computed": computed.to_string() }),
    ))
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
        let offset = self.locate(name, id, false).await?.offset;
        Ok(UploadStatus {
            id: id.clone(),
            offset,
        })
    }

    /// Finds a session. A later chunk finds its record (one read). For what is probably the
    /// session's first chunk (`first`), one listing of its directory says at once whether
    /// the session exists and whether it has a record yet, where reads would need two (the
    /// record, then `startedat`). A listing that finds no session is confirmed by reads, so
    /// a listing that lags behind a write (on a store with eventually consistent listings)
    /// cannot lose a session.
    async fn locate(&self, name: &RepoName, id: &UploadId, first: bool) -> Result<Position> {
        if first {
            if let Some(p) = self.locate_by_listing(name, id).await? {
                return Ok(p);
            }
        }
        if let Some(r) = self.read_record(name, id).await? {
            return Ok(Position::of_record(r));
        }
        Ok(Position {
            offset: self.data_size(name, id).await?,
            record: None,
            files: None,
        })
    }

    /// [`locate`](Self::locate) by listing; `None` when the listing shows no session.
    async fn locate_by_listing(&self, name: &RepoName, id: &UploadId) -> Result<Option<Position>> {
        let entries = match self.driver.list_names(&paths::upload_dir(name, id)).await {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let has = |n: &str| entries.iter().any(|e| e == n);
        if has("berthstate") {
            if let Some(r) = self.read_record(name, id).await? {
                return Ok(Some(Position::of_record(r)));
            }
        }
        let offset = if has("data") {
            // The filesystem's data file is its own state.
            match self.driver.stat_object(&paths::upload_data(name, id)).await {
                Ok(st) => Some(st.size),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let offset = match offset {
            Some(o) => o,
            None if has("startedat") => 0,
            None => return Ok(None),
        };
        Ok(Some(Position {
            offset,
            record: None,
            files: entries
                .iter()
                .all(|e| SESSION_FILES.contains(&e.as_str()))
                .then_some(SESSION_FILES),
        }))
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

    /// Deletes a finished session: without listing it when its objects are known.
    async fn end_session(
        &self,
        name: &RepoName,
        id: &UploadId,
        files: Option<&[&str]>,
    ) -> Result<()> {
        let dir = paths::upload_dir(name, id);
        match files {
            Some(f) => Ok(self.driver.delete_dir_known(&dir, f).await?),
            None => self.delete_if_exists(&dir).await,
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

    /// Where the session stands: offset, hash state, driver state (`first`: see
    /// [`locate`](Self::locate)).
    async fn cursor(&self, name: &RepoName, id: &UploadId, first: bool) -> Result<Cursor> {
        let p = self.locate(name, id, first).await?;
        if let Some(r) = p.record {
            return Ok(Cursor {
                offset: r.offset,
                hasher: r.hasher,
                driver: Some(r.driver),
                files: p.files,
            });
        }
        Ok(Cursor {
            offset: p.offset,
            hasher: self.load_hash(name, id, p.offset).await?,
            driver: None,
            files: p.files,
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
        // A chunk at 0 (or without a range: Docker's one PATCH) probably opens the session.
        let first = matches!(start, None | Some(0));
        let cursor = self.cursor(name, id, first).await?;
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
        // A body at 0 is probably the whole blob, in the session's first request
        // (containerd's POST then PUT); a PUT without one follows chunks (Docker's).
        let first = body.is_some() && matches!(start, None | Some(0));
        let cursor = self.cursor(name, id, first).await?;
        check_start(start, cursor.offset)?;
        self.finish_upload(name, id, digest, cursor, body).await
    }

    /// A whole blob in one request (`POST ?digest=` with a body): when it is at most
    /// [`SMALL_BLOB`] bytes, verified in memory and stored without an upload session (on S3
    /// two writes: the blob and its link); a larger one is staged in a session of its own, as
    /// [`start_upload`](Self::start_upload) then [`complete_upload`](Self::complete_upload)
    /// would. A body that breaks off leaves nothing (the client never learnt of a session).
    pub async fn push_blob<S, E>(
        &self,
        name: &RepoName,
        digest: &Digest,
        mut body: S,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
    {
        let mut read: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        while len <= SMALL_BLOB {
            match body.next().await {
                None => {
                    let data = Bytes::from(read.concat());
                    let computed = Digest::compute(digest.algorithm(), &data);
                    if &computed != digest {
                        return Err(digest_invalid(digest, &computed));
                    }
                    return self.store_small(name, digest, data).await;
                }
                Some(Ok(chunk)) => {
                    len += chunk.len();
                    read.push(chunk);
                }
                Some(Err(e)) => return Err(RegistryError::Body(e.to_string())),
            }
        }
        let st = self.start_upload(name).await?;
        let _guard = self.locks.lock(format!("{name}/{}", st.id)).await;
        // Nobody else knows the session yet: it is empty, no storage call needed to say so.
        let cursor = Cursor {
            offset: 0,
            hasher: ResumableSha256::new(),
            driver: None,
            files: Some(SESSION_FILES),
        };
        let rest: Staged<E> =
            Box::pin(futures_util::stream::iter(read.into_iter().map(Ok)).chain(body));
        self.finish_upload(name, &st.id, digest, cursor, Some(rest))
            .await
    }

    /// Stores a verified blob held in memory at its blob path and links it into `name`.
    /// Written without asking first whether it exists: one request either way, and a blob
    /// that was there is now fresh for garbage collection, as a touch would make it.
    async fn store_small(&self, name: &RepoName, digest: &Digest, data: Bytes) -> Result<BlobInfo> {
        let size = data.len() as u64;
        let blob = paths::blob_data(digest);
        self.driver.put_content(&blob, data).await?;
        self.landed(&blob);
        self.write_link(&paths::layer_link(name, digest), digest)
            .await?;
        self.cache.set_repo_blob(name, digest, size).await;
        Ok(BlobInfo {
            digest: digest.clone(),
            size,
        })
    }

    /// [`complete_upload`](Self::complete_upload) from where the session stands (its lock
    /// held).
    async fn finish_upload<S, E>(
        &self,
        name: &RepoName,
        id: &UploadId,
        digest: &Digest,
        mut cursor: Cursor,
        body: Option<S>,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
    {
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
                // A blob that is written in one or a few requests is written without asking
                // first (it is usually new: the client asked the repository before pushing);
                // a larger one is looked for first, as its server-side copy costs more.
                if cursor.offset > SMALL_BLOB as u64 && self.refresh(&blob, None).await? {
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
        self.end_session(name, id, cursor.files).await?;
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
        digest_invalid(digest, computed)
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
                        let info = self.store_small(name, digest, data).await?;
                        self.end_session(name, id, cursor.files).await?;
                        return Ok(Small::Stored(info));
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
        let p = self.locate(name, id, false).await?;
        self.driver
            .abort_append(&paths::upload_data(name, id), p.record.map(|r| r.driver))
            .await?;
        // Listed and deleted whole: a cancel (or the purger's) is rare, and also removes what
        // a failed request may have left in the session.
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
            mut files,
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
                        legacy: false,
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
                    files = None;
                }
            }
        }
        match failure {
            Some(e) => Err(RegistryError::Body(e)),
            None => Ok(Cursor {
                offset: size,
                hasher,
                driver: new_state.or(old_state),
                files,
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
        // As a completed upload: small blobs are written without asking first.
        if size > SMALL_BLOB as u64 && registry.refresh(&blob, None).await? {
            registry.driver.abort_append(&data, state).await?;
        } else {
            registry.driver.finish_append(&data, state, &blob).await?;
            registry.landed(&blob);
        }
        registry
            .write_link(&paths::layer_link(&name, digest), digest)
            .await?;
        registry.cache.set_repo_blob(&name, digest, size).await;
        // Only `startedat` and the staged data: never a record or hash states.
        registry
            .end_session(&name, &id, Some(SESSION_FILES))
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::convert::Infallible;

    use berth_storage::{InMemoryDriver, StorageDriver};

    use super::*;

    #[test]
    fn upload_ids() {
        assert!("../../etc".parse::<UploadId>().is_err());
        let id = UploadId::new();
        assert_eq!(id.as_str().parse::<UploadId>().ok(), Some(id));
    }

    /// Records round-trip, driver state byte for byte (newlines included), and the older
    /// form (driver state in hex) is still read.
    #[test]
    fn records() {
        let mut hasher = ResumableSha256::new();
        hasher.update(b"abc");
        let r = Record {
            offset: 3,
            hasher: hasher.clone(),
            driver: Bytes::from_static(b"{\"s3\":1}\n\x00tail\nbytes"),
            legacy: false,
        };
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!((back.offset, back.legacy), (3, false));
        assert_eq!(back.driver, r.driver);
        assert_eq!(back.hasher.digest(), hasher.digest());
        let old = serde_json::json!({
            "offset": 3,
            "sha256": berth_core::digest::hex(&hasher.save()),
            "driver": berth_core::digest::hex(b"state"),
        })
        .to_string();
        let back = Record::decode(&Bytes::from(old)).unwrap();
        assert!(back.legacy);
        assert_eq!(&back.driver[..], b"state");
        // An offset the hash state disagrees with is no record.
        let bad = Record { offset: 4, ..r };
        assert!(Record::decode(&bad.encode()).is_none());
    }

    fn body(parts: Vec<Vec<u8>>) -> impl Stream<Item = std::result::Result<Bytes, Infallible>> {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
    }

    /// A whole blob in one request: stored and linked without a session when small, through
    /// a session (then deleted) when large; a wrong digest stores nothing.
    #[tokio::test]
    async fn blobs_pushed_whole() {
        let driver = Arc::new(InMemoryDriver::new());
        let reg = Registry::new(driver.clone(), crate::Options::default());
        let name: RepoName = "whole/app".parse().unwrap();
        let uploads = format!("{}/_uploads", paths::repo(&name));
        for len in [0, 1000, SMALL_BLOB + 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let d = Digest::sha256_of(&data);
            let halves = vec![data[..len / 2].to_vec(), data[len / 2..].to_vec()];
            let info = reg.push_blob(&name, &d, body(halves)).await.unwrap();
            assert_eq!(info.size, len as u64);
            assert_eq!(reg.stat_blob(&name, &d).await.unwrap().size, len as u64);
            let stored = driver.get_content(&paths::blob_data(&d)).await.unwrap();
            assert!(stored == data, "{len} bytes stored as sent");
            assert!(
                driver.list(&uploads).await.is_err(),
                "no session left after {len} bytes"
            );
        }
        let wrong = Digest::sha256_of(b"something else");
        let e = reg
            .push_blob(&name, &wrong, body(vec![b"data".to_vec()]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::Oci(o) if o.code == ErrorCode::DigestInvalid),
            "{e:?}"
        );
        assert!(driver
            .stat(&paths::blob_data(&wrong))
            .await
            .unwrap_err()
            .is_not_found());
        assert!(driver
            .stat(&paths::blob_data(&Digest::sha256_of(b"data")))
            .await
            .unwrap_err()
            .is_not_found());
    }
}
