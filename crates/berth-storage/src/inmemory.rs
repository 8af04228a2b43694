//! The in-memory driver: a sorted map of path to bytes. For tests and throwaway registries;
//! it naturally holds whole objects in memory. Directories exist implicitly as prefixes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::{
    rolled_up, validate_path, AppendWriter, ByteStream, FileInfo, ListEntry, ListFrom, ListPage,
    Result, StorageDriver, StorageError, LIST_PAGE_MAX,
};

type Objects = BTreeMap<String, (Bytes, SystemTime)>;

#[derive(Debug, Clone, Default)]
pub struct InMemoryDriver {
    objects: Arc<RwLock<Objects>>,
}

impl InMemoryDriver {
    pub fn new() -> InMemoryDriver {
        InMemoryDriver::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is still consistent.
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    fn is_dir(objects: &Objects, path: &str) -> bool {
        let prefix = format!("{path}/");
        objects
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

#[async_trait]
impl StorageDriver for InMemoryDriver {
    fn name(&self) -> &'static str {
        "inmemory"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        validate_path(path)?;
        self.read()
            .get(path)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StorageError::NotFound(path.to_owned()))
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        validate_path(path)?;
        self.write()
            .insert(path.to_owned(), (content, SystemTime::now()));
        Ok(())
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let data = self.get_content(path).await?;
        let size = data.len() as u64;
        if offset > size {
            return Err(StorageError::InvalidOffset {
                path: path.to_owned(),
                offset,
                size,
            });
        }
        let end = len.map_or(size, |l| (offset + l).min(size));
        let chunk = data.slice(offset as usize..end as usize);
        Ok(futures_util::stream::iter([Ok(chunk)]).boxed())
    }

    async fn append(&self, path: &str, _state: Option<Bytes>) -> Result<Box<dyn AppendWriter>> {
        validate_path(path)?;
        let mut buf = BytesMut::new();
        if let Some((b, _)) = self.read().get(path) {
            buf.extend_from_slice(b);
        }
        // The object exists (possibly empty) from the moment a writer is opened, as on disk.
        self.write()
            .insert(path.to_owned(), (buf.clone().freeze(), SystemTime::now()));
        Ok(Box::new(MemWriter {
            driver: self.clone(),
            path: path.to_owned(),
            buf,
        }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        validate_path(path)?;
        let objects = self.read();
        if let Some((b, t)) = objects.get(path) {
            return Ok(FileInfo {
                path: path.to_owned(),
                size: b.len() as u64,
                is_dir: false,
                modified: *t,
            });
        }
        if Self::is_dir(&objects, path) {
            return Ok(FileInfo {
                path: path.to_owned(),
                size: 0,
                is_dir: true,
                modified: SystemTime::now(),
            });
        }
        Err(StorageError::NotFound(path.to_owned()))
    }

    async fn touch(&self, path: &str) -> Result<()> {
        validate_path(path)?;
        match self.write().get_mut(path) {
            Some((_, t)) => {
                *t = SystemTime::now();
                Ok(())
            }
            None => Err(StorageError::NotFound(path.to_owned())),
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            validate_path(path)?;
            format!("{path}/")
        };
        let objects = self.read();
        let mut out: Vec<String> = Vec::new();
        for (k, _) in objects.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else {
                break;
            };
            let child = rest.split('/').next().unwrap_or(rest);
            let full = format!("{prefix}{child}");
            if out.last() != Some(&full) {
                out.push(full);
            }
        }
        if out.is_empty() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        Ok(out)
    }

    async fn list_page(
        &self,
        dir: &str,
        delimiter: Option<&str>,
        from: ListFrom,
        max: usize,
    ) -> Result<ListPage> {
        use std::ops::Bound;
        validate_path(dir)?;
        let prefix = format!("{dir}/");
        let max = max.clamp(1, LIST_PAGE_MAX);
        let after = match from {
            ListFrom::Start => None,
            ListFrom::After(a) | ListFrom::Token(a) => Some(a),
        };
        let start = match &after {
            Some(a) => Bound::Excluded(format!("{prefix}{a}")),
            None => Bound::Included(prefix.clone()),
        };
        let objects = self.read();
        let mut page = ListPage::default();
        for (k, (bytes, modified)) in objects.range((start, Bound::Unbounded)) {
            let Some(rel) = k.strip_prefix(&prefix) else {
                break;
            };
            let entry = match rolled_up(rel, delimiter) {
                Some(r) => {
                    let seen = page.entries.last().is_some_and(|e| e.key == r);
                    if seen || after.as_deref().is_some_and(|a| r <= a) {
                        continue;
                    }
                    ListEntry {
                        key: r.to_owned(),
                        rolled: true,
                        size: 0,
                        modified: None,
                    }
                }
                None => ListEntry {
                    key: rel.to_owned(),
                    rolled: false,
                    size: bytes.len() as u64,
                    modified: Some(*modified),
                },
            };
            if page.entries.len() == max {
                page.next = page.entries.last().map(|e| e.key.clone());
                break;
            }
            page.entries.push(entry);
        }
        Ok(page)
    }

    async fn move_object(&self, from: &str, to: &str) -> Result<()> {
        validate_path(from)?;
        validate_path(to)?;
        let mut objects = self.write();
        let (bytes, _) = objects
            .remove(from)
            .ok_or_else(|| StorageError::NotFound(from.to_owned()))?;
        objects.insert(to.to_owned(), (bytes, SystemTime::now()));
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_path(path)?;
        let mut objects = self.write();
        let prefix = format!("{path}/");
        let doomed: Vec<String> = objects
            .keys()
            .filter(|k| k.as_str() == path || k.starts_with(&prefix))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        for k in doomed {
            objects.remove(&k);
        }
        Ok(())
    }
}

struct MemWriter {
    driver: InMemoryDriver,
    path: String,
    buf: BytesMut,
}

#[async_trait]
impl AppendWriter for MemWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    async fn commit(self: Box<Self>) -> Result<Option<Bytes>> {
        self.driver
            .write()
            .insert(self.path, (self.buf.freeze(), SystemTime::now()));
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn contract() {
        crate::testsuite::run(&super::InMemoryDriver::new()).await;
    }
}
