//! Link files: a digest as text (`sha256:<hex>`, no newline), distribution's way of pointing
//! from a repository to content.

use berth_core::Digest;
use bytes::Bytes;

use crate::{Registry, RegistryError, Result};

impl Registry {
    /// Reads a link; `None` when it does not exist.
    pub(crate) async fn read_link(&self, path: &str) -> Result<Option<Digest>> {
        match self.driver.get_content(path).await {
            Ok(b) => {
                let text = std::str::from_utf8(&b).unwrap_or("").trim();
                match text.parse::<Digest>() {
                    Ok(d) => Ok(Some(d)),
                    Err(e) => Err(RegistryError::Storage(berth_storage::StorageError::Io {
                        path: path.to_owned(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("corrupt link: {e}"),
                        ),
                    })),
                }
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn write_link(&self, path: &str, d: &Digest) -> Result<()> {
        self.driver
            .put_content(path, Bytes::from(d.to_string()))
            .await?;
        Ok(())
    }

    /// Whether an object (a link, a blob) exists.
    pub(crate) async fn exists(&self, path: &str) -> Result<bool> {
        match self.driver.stat_object(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a directory (a repository) exists.
    pub(crate) async fn exists_dir(&self, path: &str) -> Result<bool> {
        match self.driver.stat(path).await {
            Ok(i) => Ok(i.is_dir),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes, treating "already gone" as success.
    pub(crate) async fn delete_if_exists(&self, path: &str) -> Result<()> {
        match self.driver.delete(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
