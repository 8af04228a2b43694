//! The referrers API's data: manifests whose `subject` is a given digest, indexed at push time
//! under `_berth_referrers/<subject>/` (see [`crate::paths`]).

use berth_core::manifest;
use berth_core::{Descriptor, Digest, RepoName};

use crate::{paths, Registry, Result};

impl Registry {
    /// Descriptors of the manifests in `name` that refer to `subject`, optionally only those of
    /// one artifact type. An unknown subject has no referrers (not an error).
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let dir = paths::referrers_dir(name, subject);
        let mut out = Vec::new();
        let algs = match self.driver.list(&dir).await {
            Ok(a) => a,
            Err(e) if e.is_not_found() => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for alg_dir in algs {
            let entries = match self.driver.list(&alg_dir).await {
                Ok(e) => e,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let Some(digest) = self.read_link(&format!("{entry}/link")).await? else {
                    continue;
                };
                // A deleted manifest drops out even if its index entry survived a crash.
                if !self.exists(&paths::revision_link(name, &digest)).await? {
                    continue;
                }
                let body = match self.driver.get_content(&paths::blob_data(&digest)).await {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                let Ok(info) = manifest::parse(&body, None) else {
                    continue;
                };
                if artifact_type.is_some_and(|t| info.artifact_type.as_deref() != Some(t)) {
                    continue;
                }
                out.push(Descriptor {
                    media_type: info.media_type.as_str().to_owned(),
                    digest,
                    size: body.len() as u64,
                    artifact_type: info.artifact_type,
                    annotations: info.annotations,
                    urls: Vec::new(),
                    platform: None,
                });
            }
        }
        Ok(out)
    }
}
