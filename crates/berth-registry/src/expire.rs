//! Removing what the pull-through cache stored once its time is up (`proxy.ttl`), as
//! distribution's scheduler does: a manifest leaves its repository (revision link, and here
//! also the tags pointing at it), a blob leaves its repository (layer link) and, where every
//! repository is a cache, the blob store too. Removing what is already gone is no error, so
//! several replicas may expire the same entry.

use berth_core::{Digest, RepoName};

use crate::{paths, Registry, Result};

impl Registry {
    /// Expires a cached manifest of `name`. Its bytes stay for garbage collection, as in
    /// distribution.
    pub async fn expire_manifest(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        self.unlink_manifest(name, digest).await.map(drop)
    }

    /// Expires a cached blob of `name`: its layer link, and with `remove_data` the blob's
    /// content (distribution's `Vacuum.RemoveBlob`, right only where no hosted repository
    /// can share it).
    pub async fn expire_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        remove_data: bool,
    ) -> Result<()> {
        let link = paths::layer_link(name, digest);
        self.delete_if_exists(link.trim_end_matches("/link"))
            .await?;
        self.cache.forget_repo_blob(name, digest).await;
        if remove_data {
            let data = paths::blob_data(digest);
            self.delete_if_exists(data.trim_end_matches("/data"))
                .await?;
            self.cache.forget_blob(digest).await;
        }
        Ok(())
    }
}
