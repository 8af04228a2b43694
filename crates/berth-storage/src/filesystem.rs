//! The filesystem driver: objects are files under a root directory, exactly where
//! distribution's filesystem driver puts them, so one directory serves both.
//!
//! Durability: `put_content` writes a temporary sibling, fsyncs it, renames it over the
//! target and fsyncs the directory; `move_object` renames and fsyncs the destination
//! directory. A crash leaves either the old or the new object, never a torn one. Temporary
//! names start with `.berth-tmp-` so they never look like layout entries.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::{
    validate_path, AppendWriter, ByteStream, FileInfo, Result, StorageDriver, StorageError,
};

/// Reads are issued in blocks of this size (large reads, few syscalls).
const READ_CHUNK: usize = 1 << 20;
/// Writes are gathered to this size before one blocking write.
const WRITE_BUFFER: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct FilesystemDriver {
    root: PathBuf,
}

impl FilesystemDriver {
    pub fn new(root: impl Into<PathBuf>) -> FilesystemDriver {
        FilesystemDriver { root: root.into() }
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

fn tmp_sibling(target: &Path) -> PathBuf {
    let name = format!(".berth-tmp-{}", uuid::Uuid::new_v4().simple());
    target.with_file_name(name)
}

fn write_atomic(target: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = tmp_sibling(target);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[async_trait]
impl StorageDriver for FilesystemDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let full = self.full(path)?;
        let data = blocking(path, move || std::fs::read(full)).await?;
        Ok(Bytes::from(data))
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let full = self.full(path)?;
        blocking(path, move || write_atomic(&full, &content)).await
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let full = self.full(path)?;
        let p = path.to_owned();
        let (file, size) = blocking(path, move || {
            let mut f = std::fs::File::open(full)?;
            let size = f.metadata()?.len();
            if offset <= size {
                f.seek(SeekFrom::Start(offset))?;
            }
            Ok((f, size))
        })
        .await?;
        if offset > size {
            return Err(StorageError::InvalidOffset {
                path: p,
                offset,
                size,
            });
        }
        let remaining = len.unwrap_or(size - offset).min(size - offset);
        Ok(read_stream(file, remaining))
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
            buf: BytesMut::new(),
        }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let full = self.full(path)?;
        let p = path.to_owned();
        let md = blocking(path, move || std::fs::metadata(full)).await?;
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
        blocking(path, move || {
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
        let prefix = if path == "/" {
            String::new()
        } else {
            path.to_owned()
        };
        let mut names = blocking(path, move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(full)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if !name.starts_with(".berth-tmp-") {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .await?;
        names.sort_unstable();
        Ok(names.into_iter().map(|n| format!("{prefix}/{n}")).collect())
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
        blocking(path, move || {
            let md = std::fs::symlink_metadata(&full)?;
            if md.is_dir() {
                std::fs::remove_dir_all(&full)
            } else {
                std::fs::remove_file(&full)
            }
        })
        .await
    }
}

/// Streams `remaining` bytes of `file` from its current position in large blocks, each read on
/// the blocking pool.
fn read_stream(file: std::fs::File, remaining: u64) -> ByteStream {
    let state = Some((file, remaining));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut file, remaining) = state?;
        if remaining == 0 {
            return None;
        }
        let want = remaining.min(READ_CHUNK as u64) as usize;
        let res = tokio::task::spawn_blocking(move || {
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
        .await;
        match res {
            Ok(Ok((file, chunk))) => {
                let left = remaining - chunk.len() as u64;
                Some((Ok(chunk), Some((file, left))))
            }
            Ok(Err(e)) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    }))
    .boxed()
}

/// Appends through a buffer; a full buffer is written by a blocking task while the next one
/// fills (the caller hashes while the previous buffer goes to disk). At most one write is in
/// flight, so memory stays at two buffers whatever the blob's size.
struct FsWriter {
    path: String,
    file: Option<std::fs::File>,
    inflight: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
    size: u64,
    buf: BytesMut,
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

    async fn flush_buf(&mut self, sync: bool) -> Result<()> {
        self.reclaim().await?;
        let mut file = self.file.take().ok_or_else(|| StorageError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("writer failed earlier"),
        })?;
        let data = self.buf.split().freeze();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            file.write_all(&data)?;
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

#[async_trait]
impl AppendWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        self.buf.extend_from_slice(&data);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush_buf(false).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn commit(mut self: Box<Self>) -> Result<Option<Bytes>> {
        self.flush_buf(true).await?;
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
        d.put_content("/a/b", Bytes::from_static(b"x"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
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
}
