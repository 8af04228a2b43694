//! Blobs as a repository sees them: content in the global blob store, visible in a
//! repository only through its `_layers` link.

use berth_core::{Digest, ErrorCode, RepoName};
use berth_storage::{ByteStream, StorageDriver, StorageError};

use crate::{paths, Registry, RegistryError, Result};

/// What a client learns from `HEAD` on a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// Decides the URL a blob download is redirected to, in place of the driver's own
/// (distribution's storage middleware: a CDN, another host, a rewritten presigned URL).
#[async_trait::async_trait]
pub trait Redirect: Send + Sync {
    /// The URL for the object at `path` of `driver`; `None` serves it directly.
    async fn redirect_url(
        &self,
        driver: &dyn StorageDriver,
        path: &str,
    ) -> std::result::Result<Option<String>, StorageError>;
}

impl Registry {
    /// Size of a blob linked into `name`; `BLOB_UNKNOWN` otherwise. Answered from the
    /// blob-descriptor cache when it knows. The blob is refreshed for garbage collection
    /// (see `crate::fresh`): a client that learns it exists may push a manifest naming it.
    pub async fn stat_blob(&self, name: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        let data = paths::blob_data(digest);
        if let Some(size) = self.cache.repo_blob(name, digest).await {
            if self.refresh(&data, None).await? {
                return Ok(BlobInfo {
                    digest: digest.clone(),
                    size,
                });
            }
            // The content is gone (collected): the cache was stale.
            self.cache.forget_repo_blob(name, digest).await;
            return Err(RegistryError::code(ErrorCode::BlobUnknown));
        }
        if !self.exists(&paths::layer_link(name, digest)).await? {
            return Err(RegistryError::code(ErrorCode::BlobUnknown));
        }
        let st = self.stat_blob_data(digest).await?;
        if !self.refresh(&data, Some(st.modified)).await? {
            return Err(RegistryError::code(ErrorCode::BlobUnknown));
        }
        self.cache.set_repo_blob(name, digest, st.size).await;
        Ok(BlobInfo {
            digest: digest.clone(),
            size: st.size,
        })
    }

    /// Whether `name` links `digest` (the cache, or its link) and its content is stored; the
    /// content is refreshed for garbage collection.
    pub(crate) async fn has_blob(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        let linked = self.cache.repo_blob(name, digest).await.is_some()
            || self.exists(&paths::layer_link(name, digest)).await?;
        Ok(linked && self.refresh(&paths::blob_data(digest), None).await?)
    }

    async fn stat_blob_data(&self, digest: &Digest) -> Result<berth_storage::FileInfo> {
        self.driver
            .stat_object(&paths::blob_data(digest))
            .await
            .map_err(|e| RegistryError::not_found_as(e, ErrorCode::BlobUnknown))
    }

    /// Streams `len` bytes (or to the end) of a blob from `offset`. The caller has checked
    /// the range against [`stat_blob`](Self::stat_blob).
    pub async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream> {
        self.driver
            .reader(&paths::blob_data(digest), offset, len)
            .await
            .map_err(|e| RegistryError::not_found_as(e, ErrorCode::BlobUnknown))
    }

    /// A URL the client may download the blob from directly, if storage offers one.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>> {
        let path = paths::blob_data(digest);
        Ok(match &self.redirect {
            Some(r) => r.redirect_url(self.driver.as_ref(), &path).await?,
            None => self.driver.redirect_url(&path).await?,
        })
    }

    /// Unlinks a blob from a repository. The content stays until garbage collection, since
    /// other repositories may link it.
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        if !self.options.delete_enabled {
            return Err(RegistryError::msg(
                ErrorCode::Unsupported,
                "deletes are disabled (storage.delete.enabled)",
            ));
        }
        let link = paths::layer_link(name, digest);
        if !self.exists(&link).await? {
            self.cache.forget_repo_blob(name, digest).await;
            return Err(RegistryError::code(ErrorCode::BlobUnknown));
        }
        // The link's directory (`_layers/<alg>/<hex>`) goes, as distribution does.
        let dir = link.trim_end_matches("/link");
        self.delete_if_exists(dir).await?;
        self.cache.forget_repo_blob(name, digest).await;
        Ok(())
    }

    /// Cross-repository mount: links a blob that `from` has into `name`. Returns `None` when
    /// the blob cannot be mounted (the caller then opens an upload session instead).
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobInfo>> {
        let info = match self.stat_blob(from, digest).await {
            Ok(i) => i,
            Err(RegistryError::Oci(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.write_link(&paths::layer_link(name, digest), digest)
            .await?;
        self.cache.set_repo_blob(name, digest, info.size).await;
        Ok(Some(info))
    }

    /// Links a blob that is already stored (for another repository) into `name`; `None`
    /// when it is not stored at all.
    pub async fn adopt_blob(&self, name: &RepoName, digest: &Digest) -> Result<Option<BlobInfo>> {
        let st = match self.stat_blob_data(digest).await {
            Ok(i) => i,
            Err(RegistryError::Oci(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !self
            .refresh(&paths::blob_data(digest), Some(st.modified))
            .await?
        {
            return Ok(None);
        }
        self.write_link(&paths::layer_link(name, digest), digest)
            .await?;
        self.cache.set_repo_blob(name, digest, st.size).await;
        Ok(Some(BlobInfo {
            digest: digest.clone(),
            size: st.size,
        }))
    }

    /// Whether the repository exists at all (has manifests or layers).
    pub async fn repository_exists(&self, name: &RepoName) -> Result<bool> {
        self.exists_dir(&paths::repo(name)).await
    }
}
