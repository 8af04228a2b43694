//! Path-addressed object storage behind one object-safe trait, [`StorageDriver`], and its
//! drivers. A driver knows nothing about registries: it stores byte objects at `/`-separated
//! paths (always absolute, e.g. `/docker/registry/v2/blobs/...`), lists children, moves and
//! deletes. The registry layer owns the layout.
//!
//! Contract every driver keeps (checked by [`testsuite`], which each driver runs):
//! - `put_content` and `move_object` are atomic: a reader sees the old object, the new object,
//!   or nothing — never a partial one. On the filesystem that is temp file + fsync + rename +
//!   fsync of the directory.
//! - An append writer's bytes are durable once `commit` returns, and the object it builds can be
//!   resumed from the state `commit` returned, by any process (see [`AppendWriter`]).
//! - Paths are validated ([`validate_path`]); no driver resolves `..` or empty components.

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub mod filesystem;
pub mod inmemory;
pub mod instrumented;
pub mod s3;
pub mod testsuite;

pub use filesystem::FilesystemDriver;
pub use inmemory::InMemoryDriver;
pub use instrumented::{Instrumented, StorageStats};
pub use s3::{S3Config, S3Driver};

/// What can go wrong in a driver. Callers match on the kind (`NotFound` is routine).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("path not found: {0}")]
    NotFound(String),
    #[error("invalid path: {0:?}")]
    InvalidPath(String),
    #[error("invalid offset {offset} for {path} of size {size}")]
    InvalidOffset {
        path: String,
        offset: u64,
        size: u64,
    },
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The storage did not answer in time, or could not be reached: retrying later may work.
    #[error("storage unavailable on {path}: {reason}")]
    Unavailable { path: String, reason: String },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }

    /// The storage did not answer (a timeout, a refused or broken connection).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }

    pub(crate) fn io(path: &str, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound(path.to_owned())
        } else {
            StorageError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where a [`StorageDriver::list_page`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFrom {
    /// At the first key.
    Start,
    /// At the first key after this one (relative to the listed directory; S3's `StartAfter`).
    /// A rolled-up prefix that sorts at or before it may still be listed: callers skip what
    /// they have already seen.
    After(String),
    /// Where the previous page ended ([`ListPage::next`], opaque).
    Token(String),
}

/// One entry of a [`ListPage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The key relative to the listed directory (`a/b/link`), or for a rolled-up prefix
    /// the key up to and including the first occurrence of the delimiter (`a/b/_`).
    pub key: String,
    /// Whether this entry stands for every key that starts with it (a rolled-up prefix).
    pub rolled: bool,
    /// The object's size (0 for a rolled-up prefix).
    pub size: u64,
    /// The object's modification time, where the listing reports one.
    pub modified: Option<SystemTime>,
}

/// A page of a flat key listing ([`StorageDriver::list_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// In key order: the byte order of the keys, in which `a-b/x` sorts before `a/x`.
    pub entries: Vec<ListEntry>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<String>,
}

/// Metadata of an object or directory.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub is_dir: bool,
    pub modified: SystemTime,
}

/// Appends to a *staged* object: one assembled from chunks that arrive in separate requests,
/// possibly on different processes (an upload session). Each driver stages its own way: the
/// filesystem appends to a file, which is its own state; S3 uploads full parts of a multipart
/// upload and keeps the short tail as a small object, and describes all that in an opaque
/// state that the caller persists and hands back to [`StorageDriver::append`] next time.
#[async_trait]
pub trait AppendWriter: Send {
    /// Appends `data`.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Bytes in the object, including those written before this writer was opened.
    fn size(&self) -> u64;
    /// Makes everything written durable. Returns the state to resume from, or `None` when the
    /// driver needs none (the object itself is its state).
    async fn commit(self: Box<Self>) -> Result<Option<Bytes>>;
}

/// The storage driver contract. Object-safe: backends are chosen at run time.
#[async_trait]
pub trait StorageDriver: Send + Sync + 'static {
    /// Driver name for logs and health checks (`filesystem`, `inmemory`, `s3`).
    fn name(&self) -> &'static str;
    /// The whole content of a small object (links, manifests, hash states).
    async fn get_content(&self, path: &str) -> Result<Bytes>;
    /// Atomically replaces the object at `path` with `content`, creating parents.
    async fn put_content(&self, path: &str, content: Bytes) -> Result<()>;
    /// Streams `len` bytes (or to the end) from `offset`.
    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream>;
    /// Opens (`state == None` and no object yet: creates) the staged object at `path` for
    /// appending, resuming from `state`, what the last commit returned.
    async fn append(&self, path: &str, state: Option<Bytes>) -> Result<Box<dyn AppendWriter>>;
    /// Turns a staged object (all writes committed) into a regular object at `dest`, which
    /// may be `path` itself. Where the driver can, the bytes are written once: a move on the
    /// filesystem, one server-side copy on S3. The staged object at `path` may remain when
    /// `dest` is another path (S3 leaves it rather than pay a request to delete it): the
    /// caller deletes it, as a registry deletes the upload session it belongs to.
    /// A staged object that never received a byte is an empty object.
    async fn finish_append(&self, path: &str, _state: Option<Bytes>, dest: &str) -> Result<()> {
        let done = if path == dest {
            self.stat_object(path).await.map(|_| ())
        } else {
            self.move_object(path, dest).await
        };
        match done {
            Err(e) if e.is_not_found() => self.put_content(dest, Bytes::new()).await,
            other => other,
        }
    }
    /// Frees what `old` held and `new` no longer needs, once the caller has persisted `new`
    /// (best effort; a crash before it only leaves garbage the session's deletion removes).
    async fn release_append(&self, _old: &Bytes, _new: &Bytes) {}
    /// Discards a staged object's driver-side resources (the caller deletes its directory).
    async fn abort_append(&self, _path: &str, _state: Option<Bytes>) -> Result<()> {
        Ok(())
    }
    /// Deletes the directory `dir`, whose objects the caller knows: `names` (base names, some
    /// of which may not exist). Drivers where listing costs a request (S3) delete exactly
    /// those objects in one request, without listing; an object the caller did not name stays
    /// (for the caller's own cleanup to find). Others delete the directory as
    /// [`delete`](Self::delete) does. A directory that is already gone is no error.
    async fn delete_dir_known(&self, dir: &str, _names: &[&str]) -> Result<()> {
        match self.delete(dir).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
    /// A URL the client may fetch the object from directly (a presigned S3 URL), if the
    /// driver has one.
    async fn redirect_url(&self, _path: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// Metadata of an object or directory.
    async fn stat(&self, path: &str) -> Result<FileInfo>;
    /// Metadata of an object; `NotFound` for a directory. Cheaper than [`stat`](Self::stat)
    /// where directories cost a second request (S3: HEAD only, no listing).
    async fn stat_object(&self, path: &str) -> Result<FileInfo> {
        let info = self.stat(path).await?;
        if info.is_dir {
            Err(StorageError::NotFound(path.to_owned()))
        } else {
            Ok(info)
        }
    }
    /// Marks an object as in use now: afterwards [`stat_touched`](Self::stat_touched) reports
    /// a modification time no earlier than the call. The object's bytes do not change.
    /// `NotFound` when there is no such object. Garbage collection's grace period counts from
    /// this time (see `berth_registry::gc`).
    async fn touch(&self, path: &str) -> Result<()>;
    /// [`stat_object`](Self::stat_object) whose `modified` also counts [`touch`](Self::touch)
    /// calls. The same on drivers that touch by setting the modification time; S3 keeps touches
    /// in a marker object beside the object and reports the later of the two.
    async fn stat_touched(&self, path: &str) -> Result<FileInfo> {
        self.stat_object(path).await
    }
    /// Full paths of the direct children of a directory, sorted.
    async fn list(&self, path: &str) -> Result<Vec<String>>;
    /// Base names of the direct children of a directory, in no particular order: what
    /// [`list`](Self::list) says, without building and sorting full paths where a driver can
    /// skip that.
    async fn list_names(&self, path: &str) -> Result<Vec<String>> {
        let mut paths = self.list(path).await?;
        for p in &mut paths {
            if let Some(i) = p.rfind('/') {
                p.drain(..=i);
            }
        }
        Ok(paths)
    }
    /// One page of the objects below `dir` as one flat key space, S3's `ListObjectsV2`:
    /// at most `max` entries (the drivers cap it at 1,000) in key order, from `from`. With a
    /// `delimiter`, every key that contains it after `dir/` is rolled up into one entry, its
    /// key up to and including the first occurrence (`/_` rolls a repository's whole
    /// `_manifests`, `_layers`, `_uploads` into `name/_`). A missing `dir` is an empty page.
    ///
    /// This is what lets a listing cost what it returns rather than what the bucket holds:
    /// one request on S3 for up to 1,000 entries, however deep the keys below them.
    async fn list_page(
        &self,
        dir: &str,
        delimiter: Option<&str>,
        from: ListFrom,
        max: usize,
    ) -> Result<ListPage>;
    /// Atomically moves an object, replacing any object at `to`. The moved object's modified
    /// time is the time of the move (garbage collection's grace period counts from when
    /// content appears at its path; see [`touch`](Self::touch)).
    async fn move_object(&self, from: &str, to: &str) -> Result<()>;
    /// Deletes an object or a whole directory tree.
    async fn delete(&self, path: &str) -> Result<()>;
}

/// The most entries a [`StorageDriver::list_page`] returns (S3's page size).
pub const LIST_PAGE_MAX: usize = 1000;

/// The entry `key` belongs to in a listing rolled up at `delimiter` (S3's rule: up to and
/// including the delimiter's first occurrence), or `None` when the key stands for itself.
pub(crate) fn rolled_up<'a>(key: &'a str, delimiter: Option<&str>) -> Option<&'a str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    key.find(d).map(|i| &key[..i + d.len()])
}

/// Checks a driver path: absolute, `/`-separated, no empty, `.` or `..` components, no NUL.
pub fn validate_path(path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidPath(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(validate_path("/a/b").is_ok());
        for bad in ["", "/", "a", "/a/", "//a", "/a/../b", "/./a", "/a\0"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }
}
