//! The filesystem driver: objects are files under a root directory, exactly where
//! distribution's filesystem driver puts them, so one directory serves both.
//!
//! Where the work runs: reads of small objects (links, manifests, small blobs: up to
//! [`INLINE_READ`] bytes) and metadata calls (stat, touch) run on the request's own thread by
//! default. On a local filesystem they are page-cache hits that take microseconds, while a
//! hand-off to the blocking pool costs two thread wake-ups, which under load was most of the
//! CPU a manifest or small-blob GET used. Large reads, every write (they fsync) and listings go
//! to the blocking pool. [`FilesystemDriver::inline_io`] turns the inline path off for a root
//! on a network filesystem, where a stat can stall for long.
//!
//! Durability: `put_content` writes a temporary file, fsyncs it, renames it over the target
//! and fsyncs the directory; `move_object` renames and fsyncs the destination directory. A
//! crash leaves either the old or the new object, never a torn one.
//!
//! Temporaries (files being written, directory trees being built or deleted) live in
//! [`SCRATCH_DIR`] under the root: on the same filesystem, so a rename moves them into place,
//! and outside `docker/`, the only tree distribution (catalog, garbage collector, upload purger)
//! or any layout tool reads. Each process has its own directory there, held by an advisory lock
//! on a sibling `.lock` file for the life of the process; [`FilesystemDriver::clean_scratch`]
//! removes the directories whose lock is free (their process died), so replicas sharing a root
//! never remove each other's work. Berth before this layout wrote temporaries beside their
//! target as `.berth-tmp-*`: listings still hide that name and
//! [`FilesystemDriver::sweep_legacy_temporaries`] removes such leftovers once per root. Where
//! the scratch directory cannot be used (a mount point inside the root: the rename crosses
//! filesystems), a write falls back to such a sibling.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::{
    rolled_up, validate_path, AppendWriter, ByteStream, FileInfo, ListEntry, ListFrom, ListPage,
    Result, StorageDriver, StorageError, LIST_PAGE_MAX,
};

/// Reads are issued in blocks of this size (large reads, few syscalls).
const READ_CHUNK: usize = 1 << 20;
/// Objects up to this size are read whole in one call (inline unless turned off).
const INLINE_READ: u64 = 256 << 10;
/// Writes are gathered to this size before one blocking write.
const WRITE_BUFFER: usize = 4 << 20;

/// Berth's own directory under the root, beside `docker/` (never inside it).
pub const BERTH_DIR: &str = ".berth";
/// Where temporaries live, relative to the root: one directory per process.
pub const SCRATCH_DIR: &str = ".berth/tmp";
/// The name older Berth gave temporaries beside their target (still hidden and cleaned).
const LEGACY_PREFIX: &str = ".berth-tmp-";
/// Written once every legacy temporary of the root has been removed: later starts skip the walk.
const LEGACY_SWEPT: &str = ".berth/legacy-temporaries-swept";

#[derive(Debug, Clone)]
pub struct FilesystemDriver {
    root: PathBuf,
    inline: bool,
    scratch: Arc<Scratch>,
}

/// This process's scratch directory, created on the first write.
#[derive(Debug, Default)]
struct Scratch {
    /// The directory and its lock file, open (and locked) while the directory is in use.
    active: Mutex<Option<(PathBuf, std::fs::File)>>,
}

impl Scratch {
    /// A fresh temporary path in this process's directory (created on first use, and again
    /// after [`Scratch::lost`]).
    fn path(&self, root: &Path) -> std::io::Result<PathBuf> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let dir = match &*active {
            Some((dir, _)) => dir.clone(),
            None => {
                let (dir, lock) = create_scratch(root)?;
                *active = Some((dir.clone(), lock));
                dir
            }
        };
        Ok(dir.join(uuid::Uuid::new_v4().simple().to_string()))
    }

    /// The directory `dir` has vanished (someone removed it: a cleaner on a host whose locks
    /// this one cannot see, as on an NFS mount with `nolock`): the next write makes a new one.
    fn lost(&self, dir: &Path) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.as_ref().is_some_and(|(d, _)| d == dir) {
            tracing::warn!(dir = %dir.display(), "the scratch directory was removed under this process; making another");
            *active = None;
        }
    }

    /// The directory in use, if any (tests and the cleaner, which must spare it).
    fn dir(&self) -> Option<PathBuf> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.as_ref().map(|(d, _)| d.clone())
    }
}

/// The process is done with its scratch directory (the last clone of the driver is gone):
/// it is removed, so a clean stop leaves nothing for the next start to clean.
impl Drop for Scratch {
    fn drop(&mut self) {
        let active = self.active.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((dir, _lock)) = active.take() {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(dir.with_extension("lock"));
        }
    }
}

/// Creates `<root>/.berth/tmp/<id>/` with its lock `<id>.lock` held: the lock file is locked
/// under another name and renamed into place, so a cleaner never sees an unlocked `.lock` of
/// a live process, and the directory only appears once its lock does.
fn create_scratch(root: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let base = root.join(SCRATCH_DIR);
    std::fs::create_dir_all(&base)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let pending = base.join(format!("{id}.lock.new"));
    let lock = std::fs::File::create(&pending)?;
    lock.try_lock().map_err(std::io::Error::from)?;
    std::fs::rename(&pending, base.join(format!("{id}.lock")))?;
    let dir = base.join(&id);
    std::fs::create_dir(&dir)?;
    Ok((dir, lock))
}

/// What a clean-up removed, and what it left because it may still be in use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub removed: usize,
    pub kept: usize,
}

impl FilesystemDriver {
    pub fn new(root: impl Into<PathBuf>) -> FilesystemDriver {
        FilesystemDriver {
            root: root.into(),
            inline: true,
            scratch: Arc::default(),
        }
    }

    /// Removes the scratch directories of processes that are gone (their lock is free), as a
    /// server does at start. Another live process's directory is left alone.
    pub fn clean_scratch(&self) -> std::io::Result<Cleaned> {
        let base = self.root.join(SCRATCH_DIR);
        let mut done = Cleaned::default();
        let entries = match std::fs::read_dir(&base) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
            Err(e) => return Err(e),
        };
        let own = self.scratch.dir();
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some(id) = name
                .strip_suffix(".lock")
                .or_else(|| name.strip_suffix(".lock.new"))
            else {
                // A directory: cleaned with its lock. One without a lock cannot be a live
                // process's (the lock comes first), so it goes.
                let has_lock = base.join(format!("{name}.lock")).exists();
                if !has_lock && own.as_deref() != Some(path.as_path()) {
                    // Gone already when its lock was handled first.
                    match remove_any(&path) {
                        Ok(()) => done.removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            };
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match f.try_lock() {
                Ok(()) => {
                    // Its process is gone: its work first, then the lock.
                    let dir = base.join(id);
                    if dir.exists() {
                        remove_any(&dir)?;
                    }
                    remove_any(&path)?;
                    done.removed += 1;
                }
                Err(std::fs::TryLockError::WouldBlock) => done.kept += 1,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Removes the `.berth-tmp-*` entries older Berth left inside `docker/` (a crash between
    /// writing and renaming), except those younger than `min_age`, which an older replica
    /// still running on the same root may be using. Once nothing is left, a marker file makes
    /// later calls return at once. Slow on a large root (it walks every directory): run it in
    /// the background.
    pub fn sweep_legacy_temporaries(&self, min_age: Duration) -> std::io::Result<Cleaned> {
        let mut done = Cleaned::default();
        let marker = self.root.join(LEGACY_SWEPT);
        if marker.exists() {
            return Ok(done);
        }
        let now = SystemTime::now();
        let mut stack = vec![self.root.join("docker")];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let is_dir = entry.file_type()?.is_dir();
                if !name.to_string_lossy().starts_with(LEGACY_PREFIX) {
                    if is_dir {
                        stack.push(entry.path());
                    }
                    continue;
                }
                let modified = entry.metadata()?.modified()?;
                if now.duration_since(modified).unwrap_or_default() < min_age {
                    done.kept += 1;
                    continue;
                }
                match remove_any(&entry.path()) {
                    Ok(()) => done.removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if done.kept == 0 {
            std::fs::create_dir_all(self.root.join(BERTH_DIR))?;
            std::fs::write(&marker, b"")?;
        }
        Ok(done)
    }

    /// Whether small reads and metadata calls run on the calling thread (the default) or on
    /// the blocking pool (for roots on network filesystems).
    pub fn inline_io(mut self, inline: bool) -> FilesystemDriver {
        self.inline = inline;
        self
    }

    /// Runs short filesystem work: inline, or on the blocking pool when inline I/O is off.
    async fn quick<T: Send + 'static>(
        &self,
        path: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.inline {
            f().map_err(|e| StorageError::io(path, e))
        } else {
            blocking(path, f).await
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> Result<PathBuf> {
        validate_path(path)?;
        Ok(self.root.join(&path[1..]))
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| StorageError::io(path, e)),
        Err(e) => Err(StorageError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        }),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a file or a whole tree.
fn remove_any(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// A temporary name beside `target`: the fallback where the scratch directory is on another
/// filesystem than the target (or cannot be created).
fn tmp_sibling(target: &Path) -> PathBuf {
    let name = format!("{LEGACY_PREFIX}{}", uuid::Uuid::new_v4().simple());
    target.with_file_name(name)
}

/// Runs `f` with a temporary path in the scratch directory, and again with a sibling of
/// `target` when the scratch directory cannot be used for it.
fn with_temp<T>(
    scratch: &Scratch,
    root: &Path,
    target: &Path,
    f: impl Fn(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let tmp = match scratch.path(root) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "scratch directory unusable; temporary beside the target");
            return f(&tmp_sibling(target));
        }
    };
    match f(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => f(&tmp_sibling(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(dir) = tmp.parent().filter(|d| !d.is_dir()) else {
                return Err(e);
            };
            scratch.lost(dir);
            f(&scratch.path(root)?)
        }
        r => r,
    }
}

/// Writes an object whose directory does not exist yet so that the directories appear with
/// it: the missing part of the tree is built under a temporary name and renamed into place in
/// one step. A crash never leaves a tag, revision or layer-link directory without its link
/// (which a listing would show while a read of it fails). `false` when another writer created
/// the directory meanwhile: the caller then writes into it as usual.
fn write_with_new_dirs(
    scratch: &Scratch,
    root: &Path,
    target: &Path,
    content: &[u8],
) -> std::io::Result<bool> {
    // The highest missing ancestor becomes the temporary tree's root.
    let mut top = target
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    loop {
        match top.parent() {
            Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => top = p,
            Some(p) if !p.as_os_str().is_empty() => break,
            _ => return Ok(false),
        }
    }
    let (Some(parent), Ok(rel)) = (top.parent(), target.strip_prefix(top)) else {
        return Ok(false);
    };
    with_temp(scratch, root, top, |tmp_top| {
        let res = (|| {
            let file = tmp_top.join(rel);
            if let Some(d) = file.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut f = std::fs::File::create(&file)?;
            f.write_all(content)?;
            f.sync_all()?;
            match std::fs::rename(tmp_top, top) {
                Ok(()) => sync_dir(parent).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Err(e),
                // Someone else created it (`rename` refuses to replace a non-empty directory).
                Err(_) if top.is_dir() => Ok(false),
                Err(e) => Err(e),
            }
        })();
        if !matches!(res, Ok(true)) {
            let _ = std::fs::remove_dir_all(tmp_top);
        }
        res
    })
}

fn write_atomic(
    scratch: &Scratch,
    root: &Path,
    target: &Path,
    content: &[u8],
) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    if !dir.is_dir() && write_with_new_dirs(scratch, root, target, content)? {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    with_temp(scratch, root, target, |tmp| {
        let res = (|| {
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
            std::fs::rename(tmp, target)?;
            sync_dir(dir)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        res
    })
}

#[async_trait]
impl StorageDriver for FilesystemDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let full = self.full(path)?;
        match self.quick(path, move || open_range(&full, 0, None)).await? {
            Opened::Whole(data) => Ok(data),
            Opened::Large(mut f, size) => {
                blocking(path, move || read_exact_len(&mut f, size as usize)).await
            }
            Opened::PastEnd(_) => Ok(Bytes::new()),
        }
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let full = self.full(path)?;
        let (scratch, root) = (self.scratch.clone(), self.root.clone());
        blocking(path, move || write_atomic(&scratch, &root, &full, &content)).await
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let full = self.full(path)?;
        let p = path.to_owned();
        // A small range is read in the same call that opens the file: one step, no stream
        // of hand-offs.
        let opened = self
            .quick(path, move || open_range(&full, offset, len))
            .await?;
        match opened {
            Opened::PastEnd(size) => Err(StorageError::InvalidOffset {
                path: p,
                offset,
                size,
            }),
            Opened::Whole(data) => Ok(Box::pin(futures_util::stream::iter([Ok(data)]))),
            Opened::Large(file, remaining) => Ok(read_stream(file, remaining)),
        }
    }

    /// The file is its own state: appends go to its end, whatever `state` says.
    async fn append(&self, path: &str, _state: Option<Bytes>) -> Result<Box<dyn AppendWriter>> {
        let full = self.full(path)?;
        let p = path.to_owned();
        let (file, size) = blocking(path, move || {
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&full)?;
            let size = f.metadata()?.len();
            Ok((f, size))
        })
        .await?;
        Ok(Box::new(FsWriter {
            path: p,
            file: Some(file),
            inflight: None,
            size,
            pending: Vec::new(),
            pending_len: 0,
        }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let full = self.full(path)?;
        let p = path.to_owned();
        let md = self.quick(path, move || std::fs::metadata(full)).await?;
        Ok(FileInfo {
            path: p,
            size: if md.is_dir() { 0 } else { md.len() },
            is_dir: md.is_dir(),
            modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
        })
    }

    /// Sets the file's modification time (the bytes are untouched).
    async fn touch(&self, path: &str) -> Result<()> {
        let full = self.full(path)?;
        self.quick(path, move || {
            let f = std::fs::OpenOptions::new().write(true).open(full)?;
            f.set_modified(std::time::SystemTime::now())
        })
        .await
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let full = if path == "/" {
            self.root.clone()
        } else {
            self.full(path)?
        };
        let at_root = path == "/";
        let prefix = if at_root { "" } else { path }.to_owned();
        let mut names = blocking(path, move || {
            let mut names = read_names(&full)?;
            if at_root {
                names.retain(|n| n != BERTH_DIR);
            }
            Ok(names)
        })
        .await?;
        names.sort_unstable();
        Ok(names.into_iter().map(|n| format!("{prefix}/{n}")).collect())
    }

    async fn list_names(&self, path: &str) -> Result<Vec<String>> {
        let full = self.full(path)?;
        blocking(path, move || read_names(&full)).await
    }

    /// One blocking walk in key order that stops at `max` entries: a directory whose path
    /// already holds the delimiter is one rolled-up entry and is not read, and one that sorts
    /// wholly before the start is skipped.
    async fn list_page(
        &self,
        dir: &str,
        delimiter: Option<&str>,
        from: ListFrom,
        max: usize,
    ) -> Result<ListPage> {
        let full = self.full(dir)?;
        let mut walk = KeyWalk {
            delimiter: delimiter.filter(|d| !d.is_empty()).map(str::to_owned),
            after: match from {
                ListFrom::Start => None,
                ListFrom::After(a) | ListFrom::Token(a) => Some(a),
            },
            max: max.clamp(1, LIST_PAGE_MAX),
            page: ListPage::default(),
        };
        blocking(dir, move || {
            walk.visit(&full, "")?;
            Ok(walk.page)
        })
        .await
    }

    async fn move_object(&self, from: &str, to: &str) -> Result<()> {
        let src = self.full(from)?;
        let dst = self.full(to)?;
        blocking(from, move || {
            let dir = dst
                .parent()
                .ok_or_else(|| std::io::Error::other("no parent directory"))?;
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&src, &dst)?;
            // A rename keeps the source's mtime; the object appeared now.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&dst)?
                .set_modified(std::time::SystemTime::now())?;
            sync_dir(dir)
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let full = self.full(path)?;
        let (scratch, root) = (self.scratch.clone(), self.root.clone());
        blocking(path, move || {
            let md = std::fs::symlink_metadata(&full)?;
            if md.is_dir() {
                // Out of the layout in one step, then removed: a crash midway leaves a tree in
                // the scratch directory (cleaned at the next start), never a half-deleted tag
                // or repository.
                with_temp(&scratch, &root, &full, |doomed| {
                    std::fs::rename(&full, doomed)?;
                    std::fs::remove_dir_all(doomed)
                })
            } else {
                std::fs::remove_file(&full)
            }
        })
        .await
    }
}

/// A file opened for reading a range.
enum Opened {
    /// The range, read whole.
    Whole(Bytes),
    /// The file at the range's start, and the range's length.
    Large(std::fs::File, u64),
    /// The offset is past the end of a file of this size.
    PastEnd(u64),
}

/// Opens `full` for `len` bytes (or to the end) from `offset`, reading them at once when they
/// are at most [`INLINE_READ`].
fn open_range(full: &Path, offset: u64, len: Option<u64>) -> std::io::Result<Opened> {
    let mut f = std::fs::File::open(full)?;
    let size = f.metadata()?.len();
    if offset > size {
        return Ok(Opened::PastEnd(size));
    }
    if offset > 0 {
        f.seek(SeekFrom::Start(offset))?;
    }
    let remaining = len.unwrap_or(size - offset).min(size - offset);
    if remaining <= INLINE_READ {
        Ok(Opened::Whole(read_exact_len(&mut f, remaining as usize)?))
    } else {
        Ok(Opened::Large(f, remaining))
    }
}

/// A directory's entry names, without the temporaries older Berth left beside their target.
/// [`StorageDriver::list_page`] on a directory tree: a depth-first walk in key order.
struct KeyWalk {
    delimiter: Option<String>,
    after: Option<String>,
    max: usize,
    page: ListPage,
}

impl KeyWalk {
    /// Lists `dir`, whose keys start with `rel` (empty or ending in `/`). Stops (with
    /// `page.next` set) once one entry more than `max` is found.
    fn visit(&mut self, dir: &Path, rel: &str) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // Gone since its parent was read, or no such directory: nothing below it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(LEGACY_PREFIX) {
                continue;
            }
            let is_dir = match entry.file_type() {
                Ok(t) => t.is_dir(),
                // Removed since the directory was read (a delete, an upload finishing).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A directory's keys continue with `/`, which decides its place among its
            // siblings (`a-b` before `a/`).
            let key = if is_dir {
                format!("{rel}{name}/")
            } else {
                format!("{rel}{name}")
            };
            children.push((key, is_dir, entry));
        }
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, is_dir, entry) in children {
            if self.page.next.is_some() {
                break;
            }
            if let Some(r) = rolled_up(&key, self.delimiter.as_deref()) {
                let r = r.to_owned();
                self.push(r, true, || Ok((0, None)))?;
            } else if is_dir {
                let before = self
                    .after
                    .as_deref()
                    .is_some_and(|a| key.as_str() <= a && !a.starts_with(&key));
                if !before {
                    self.visit(&entry.path(), &key)?;
                }
            } else if self.after.as_deref().is_none_or(|a| key.as_str() > a) {
                let m = match entry.metadata() {
                    Ok(m) => m,
                    // Removed since the directory was read: not listed, as on S3.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                self.push(key, false, || Ok((m.len(), m.modified().ok())))?;
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        key: String,
        rolled: bool,
        meta: impl FnOnce() -> std::io::Result<(u64, Option<SystemTime>)>,
    ) -> std::io::Result<()> {
        if rolled {
            let seen = self.page.entries.last().is_some_and(|e| e.key == key);
            if seen || self.after.as_deref().is_some_and(|a| key.as_str() <= a) {
                return Ok(());
            }
        }
        if self.page.entries.len() == self.max {
            self.page.next = self.page.entries.last().map(|e| e.key.clone());
            return Ok(());
        }
        let (size, modified) = meta()?;
        self.page.entries.push(ListEntry {
            key,
            rolled,
            size,
            modified,
        });
        Ok(())
    }
}

fn read_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with(LEGACY_PREFIX) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads exactly `len` bytes from the file's position (`UnexpectedEof` if it shrank).
fn read_exact_len(f: &mut std::fs::File, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    f.read_exact(&mut buf)?;
    Ok(buf.freeze())
}

/// Streams `remaining` bytes of `file` from its current position in large blocks, each read on
/// the blocking pool. The next block is read while the caller sends the last one (one block
/// of read-ahead), so disk and network work overlap; memory stays at two blocks.
fn read_stream(file: std::fs::File, remaining: u64) -> ByteStream {
    type Read = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Bytes)>>;
    fn read_block(mut file: std::fs::File, want: usize) -> Read {
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            let mut filled = 0;
            while filled < want {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "object shrank while reading",
                    ));
                }
                filled += n;
            }
            Ok((file, buf.freeze()))
        })
    }
    let block = |left: u64| left.min(READ_CHUNK as u64) as usize;
    let first = (remaining > 0).then(|| (read_block(file, block(remaining)), remaining));
    Box::pin(futures_util::stream::unfold(
        first,
        move |state: Option<(Read, u64)>| async move {
            let (reading, remaining) = state?;
            match reading.await {
                Ok(Ok((file, chunk))) => {
                    let left = remaining - chunk.len() as u64;
                    let next = (left > 0).then(|| (read_block(file, block(left)), left));
                    Some((Ok(chunk), next))
                }
                Ok(Err(e)) => Some((Err(e), None)),
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        },
    ))
}

/// Appends by gathering the caller's chunks (no copy) until [`WRITE_BUFFER`] bytes are pending;
/// they are then written with one vectored write by a blocking task while the next ones
/// gather (the caller hashes while the previous batch goes to disk). At most one batch is in
/// flight, so memory stays at two batches whatever the blob's size.
struct FsWriter {
    path: String,
    file: Option<std::fs::File>,
    inflight: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
    size: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
}

impl FsWriter {
    /// Waits for the write in flight and takes the file back.
    async fn reclaim(&mut self) -> Result<()> {
        if let Some(h) = self.inflight.take() {
            let file = match h.await {
                Ok(r) => r.map_err(|e| StorageError::io(&self.path, e))?,
                Err(e) => return Err(StorageError::io(&self.path, std::io::Error::other(e))),
            };
            self.file = Some(file);
        }
        Ok(())
    }

    async fn flush_pending(&mut self, sync: bool) -> Result<()> {
        self.reclaim().await?;
        let mut file = self.file.take().ok_or_else(|| StorageError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("writer failed earlier"),
        })?;
        let batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            write_all_vectored(&mut file, batch)?;
            if sync {
                file.sync_all()?;
            }
            Ok(file)
        }));
        if sync {
            self.reclaim().await?;
        }
        Ok(())
    }
}

/// Writes every chunk, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut std::fs::File, mut chunks: Vec<Bytes>) -> std::io::Result<()> {
    // The kernel takes at most IOV_MAX (1024) buffers per call.
    const IOV_MAX: usize = 1024;
    let mut first = 0;
    while first < chunks.len() {
        let end = chunks.len().min(first + IOV_MAX);
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..end]
            .iter()
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut written = file.write_vectored(&slices)?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while first < end && written >= chunks[first].len() {
            written -= chunks[first].len();
            first += 1;
        }
        if written > 0 {
            // A short write ended inside this chunk: keep its rest.
            let rest = chunks[first].slice(written..);
            chunks[first] = rest;
        }
    }
    Ok(())
}

#[async_trait]
impl AppendWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.size += data.len() as u64;
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= WRITE_BUFFER {
            self.flush_pending(false).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn commit(mut self: Box<Self>) -> Result<Option<Bytes>> {
        self.flush_pending(true).await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        crate::testsuite::run(&FilesystemDriver::new(dir.path())).await;
    }

    #[tokio::test]
    async fn no_temp_files_left_and_paths_confined() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = FilesystemDriver::new(dir.path().join("root"));
        put(&d, "/a/b", b"x").await;
        let names: Vec<_> = std::fs::read_dir(dir.path().join("root/a"))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.map(|e| e.file_name()).unwrap_or_default())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
        assert!(matches!(
            d.get_content("/../etc/passwd").await,
            Err(StorageError::InvalidPath(_))
        ));
    }

    /// Writers racing to create the same new directories all land, and nothing temporary
    /// is left behind, by writes or by deletes of trees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn new_directories_appear_with_their_objects() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = FilesystemDriver::new(dir.path());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                d.put_content(&format!("/r/tags/t/current/link{i}"), Bytes::from("x"))
                    .await
            }));
        }
        for t in tasks {
            t.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let names = d
            .list_names("/r/tags/t/current")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names.len(), 16, "{names:?}");
        d.delete("/r/tags/t")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<_> = walkdir(dir.path())
            .into_iter()
            .filter(|p| !p.starts_with(dir.path().join(BERTH_DIR)))
            .collect();
        assert_eq!(left, vec![dir.path().join("r"), dir.path().join("r/tags")]);
        assert_eq!(scratch_entries(&d), Vec::<PathBuf>::new());
    }

    /// Stores `data` at `path`, which must succeed.
    async fn put(d: &FilesystemDriver, path: &str, data: &'static [u8]) {
        d.put_content(path, Bytes::from_static(data))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// What this driver's scratch directory holds now.
    fn scratch_entries(d: &FilesystemDriver) -> Vec<PathBuf> {
        d.scratch.dir().map(|p| walkdir(&p)).unwrap_or_default()
    }

    fn age(path: &Path, by: Duration) {
        std::fs::File::open(path)
            .and_then(|f| f.set_modified(SystemTime::now() - by))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Writes and deletes use the scratch directory, outside `docker/`, and leave nothing in
    /// it; the root listing does not show Berth's directory.
    #[tokio::test]
    async fn temporaries_live_outside_the_layout() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = FilesystemDriver::new(dir.path());
        for p in ["/docker/registry/v2/a/b/c", "/docker/registry/v2/a/b/d"] {
            put(&d, p, b"x").await;
        }
        d.delete("/docker/registry/v2/a/b")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(dir.path().join(SCRATCH_DIR).is_dir());
        assert_eq!(scratch_entries(&d), Vec::<PathBuf>::new());
        assert_eq!(
            d.list("/").await.unwrap_or_else(|e| panic!("{e}")),
            vec!["/docker"]
        );
    }

    /// A scratch directory removed under a live process (a cleaner that could not see its
    /// lock) costs no write: the next one makes a new directory.
    #[tokio::test]
    async fn a_removed_scratch_directory_is_made_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = FilesystemDriver::new(dir.path());
        put(&d, "/docker/a", b"1").await;
        let first = d.scratch.dir().unwrap_or_default();
        std::fs::remove_dir_all(dir.path().join(SCRATCH_DIR)).unwrap_or_else(|e| panic!("{e}"));
        put(&d, "/docker/b", b"2").await;
        d.delete("/docker").await.unwrap_or_else(|e| panic!("{e}"));
        let second = d.scratch.dir().unwrap_or_default();
        assert!(second.is_dir() && second != first);
        assert!(!dir.path().join("docker").exists());
    }

    /// A dead process's scratch directory goes; a live one's stays, whoever cleans.
    #[tokio::test]
    async fn clean_scratch_removes_only_dead_processes_work() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let live = FilesystemDriver::new(dir.path());
        put(&live, "/docker/x", b"x").await;
        let live_dir = live.scratch.dir().unwrap_or_default();
        std::fs::write(live_dir.join("in-use"), b"x").unwrap_or_else(|e| panic!("{e}"));
        // A process that died: its lock file is not held by anyone.
        let base = dir.path().join(SCRATCH_DIR);
        std::fs::create_dir_all(base.join("dead/tree")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(base.join("dead.lock"), b"").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(base.join("dead/tree/f"), b"x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(base.join("half.lock.new"), b"").unwrap_or_else(|e| panic!("{e}"));

        let other = FilesystemDriver::new(dir.path());
        let cleaned = other.clean_scratch().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cleaned,
            Cleaned {
                removed: 2,
                kept: 1
            }
        );
        assert!(!base.join("dead").exists() && !base.join("dead.lock").exists());
        assert!(!base.join("half.lock.new").exists());
        assert!(live_dir.join("in-use").exists());
        // A driver dropped (a clean stop) removes its own.
        drop(live);
        assert!(!live_dir.exists() && !live_dir.with_extension("lock").exists());
        let cleaned = other.clean_scratch().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleaned, Cleaned::default());
    }

    /// Old Berth's `.berth-tmp-*` siblings inside the layout: removed once old enough, and
    /// the walk is done once per root.
    #[test]
    fn legacy_temporaries_are_swept_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v2 = dir.path().join("docker/registry/v2");
        let old_dir = v2.join("blobs/sha256/ab/.berth-tmp-1");
        let old_file = v2.join("repositories/r/_manifests/tags/t/current/.berth-tmp-2");
        let young = v2.join("repositories/r/.berth-tmp-3");
        std::fs::create_dir_all(old_dir.join("abcd")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(old_file.parent().unwrap_or(&v2)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&old_file, b"x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&young, b"x").unwrap_or_else(|e| panic!("{e}"));
        age(&old_dir, Duration::from_secs(3600));
        age(&old_file, Duration::from_secs(3600));
        let d = FilesystemDriver::new(dir.path());
        let min = Duration::from_secs(600);
        let swept = d
            .sweep_legacy_temporaries(min)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            swept,
            Cleaned {
                removed: 2,
                kept: 1
            }
        );
        assert!(!old_dir.exists() && !old_file.exists() && young.exists());
        assert!(!dir.path().join(LEGACY_SWEPT).exists());
        age(&young, Duration::from_secs(3600));
        let swept = d
            .sweep_legacy_temporaries(min)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            swept,
            Cleaned {
                removed: 1,
                kept: 0
            }
        );
        assert!(dir.path().join(LEGACY_SWEPT).exists());
        // A later one does not walk: a new leftover stays (listings hide it).
        std::fs::write(v2.join("repositories/.berth-tmp-4"), b"x")
            .unwrap_or_else(|e| panic!("{e}"));
        age(
            &v2.join("repositories/.berth-tmp-4"),
            Duration::from_secs(3600),
        );
        let swept = d
            .sweep_legacy_temporaries(min)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(swept, Cleaned::default());
    }

    /// Every path under `root`, sorted (hidden temporary entries included).
    fn walkdir(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{e}")) {
                let path = e.unwrap_or_else(|e| panic!("{e}")).path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
        out.sort();
        out
    }
}
