//! Manifests: validated, stored byte for byte in the blob store (the digest is of the bytes
//! the client sent), linked into the repository under `_manifests/revisions`, optionally
//! tagged, and indexed by subject for the referrers API.

use berth_core::manifest::{self, ManifestInfo};

/// A check of a pushed manifest beyond its validity (the handler's repository-class policy).
pub type ManifestPolicy<'a> =
    dyn Fn(&ManifestInfo) -> std::result::Result<(), OciError> + Sync + 'a;
use berth_core::{Digest, ErrorCode, OciError, Reference, RepoName, Tag};
use bytes::Bytes;

use crate::{paths, Registry, RegistryError, Result};

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// The outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    /// The `subject` the manifest refers to (sent back as `OCI-Subject`).
    pub subject: Option<Digest>,
    /// The tags now pointing at it (the reference's and the `?tag=` ones).
    pub tags: Vec<Tag>,
}

impl Registry {
    /// Validates and stores a manifest, then points at it the reference (when it is a tag) and
    /// every tag of `extra_tags` (the `?tag=` parameters of a push by digest).
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        extra_tags: &[Tag],
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        self.put_manifest_with(name, reference, extra_tags, body, content_type, &|_| Ok(()))
            .await
    }

    /// [`put_manifest`](Self::put_manifest) with a policy (`policy.repository.classes`) that
    /// sees the parsed manifest once its digest is checked and before anything is stored.
    pub async fn put_manifest_with(
        &self,
        name: &RepoName,
        reference: &Reference,
        extra_tags: &[Tag],
        body: Bytes,
        content_type: Option<&str>,
        policy: &ManifestPolicy<'_>,
    ) -> Result<PutManifest> {
        self.store_manifest(
            name,
            reference,
            extra_tags,
            body,
            content_type,
            Some(policy),
        )
        .await
    }

    /// Stores a manifest fetched from an upstream registry (the pull-through cache): validated
    /// like a push, but its blobs need not be here yet (they are fetched when asked for).
    pub async fn cache_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        self.store_manifest(name, reference, &[], body, content_type, None)
            .await
    }

    async fn store_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        extra_tags: &[Tag],
        body: Bytes,
        content_type: Option<&str>,
        // A client's push (references and URL rules checked, and its policy); `None`: content
        // from an upstream.
        push: Option<&ManifestPolicy<'_>>,
    ) -> Result<PutManifest> {
        let check_references = push.is_some();
        // A push follows distribution's rules for the Content-Type; content from an upstream
        // is taken as the upstream serves it.
        let info = if check_references {
            manifest::parse_put(&body, content_type)?
        } else {
            manifest::parse(&body, content_type)?
        };
        let digest = match reference {
            Reference::Digest(d) => {
                let computed = Digest::compute(d.algorithm(), &body);
                if &computed != d {
                    return Err(RegistryError::Oci(
                        OciError::with_message(ErrorCode::DigestInvalid, "manifest digest does not match its content")
                            .detail(serde_json::json!({ "expected": d.to_string(), "computed": computed.to_string() })),
                    ));
                }
                computed
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        if let Some(policy) = push {
            policy(&info)?;
            self.manifest_rules.check_urls(&info)?;
            self.check_references(name, &info).await?;
        }

        // Written without asking first whether it is there (a manifest is one small write):
        // a re-pushed manifest's bytes are the same, and now fresh for garbage collection.
        let blob = paths::blob_data(&digest);
        self.driver.put_content(&blob, body).await?;
        self.landed(&blob);
        self.write_link(&paths::revision_link(name, &digest), &digest)
            .await?;
        let subject = info.subject.clone();
        if let Some(subject) = &subject {
            self.write_link(&paths::referrer_link(name, subject, &digest), &digest)
                .await?;
        }
        let mut tags: Vec<Tag> = match reference {
            Reference::Tag(tag) => vec![tag.clone()],
            Reference::Digest(_) => Vec::new(),
        };
        for t in extra_tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        for tag in &tags {
            self.tag_manifest(name, tag, &digest).await?;
        }
        Ok(PutManifest {
            digest,
            subject,
            tags,
        })
    }

    /// Points `tag` at a stored manifest: `current` first (what readers see), then the tag's
    /// history in `index`.
    async fn tag_manifest(&self, name: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        self.write_link(&paths::tag_current_link(name, tag), digest)
            .await?;
        self.write_link(&paths::tag_index_link(name, tag, digest), digest)
            .await
    }

    /// Every blob a manifest names must be in the repository, and every child of an index
    /// that `validation.manifests.indexes` requires must be a manifest of the repository.
    async fn check_references(&self, name: &RepoName, info: &ManifestInfo) -> Result<()> {
        let blob_checks = info
            .blobs
            .iter()
            .map(|d| async move { (d, self.has_blob(name, d).await) });
        for (d, found) in futures_util::future::join_all(blob_checks).await {
            if !found? {
                return Err(RegistryError::Oci(
                    OciError::new(ErrorCode::ManifestBlobUnknown)
                        .detail(serde_json::json!({ "digest": d.to_string() })),
                ));
            }
        }
        // An index child must be a manifest of the repository — or, as distribution also
        // accepts, a blob linked into it: BuildKit's index-form registry cache
        // (`image-manifest=false`, the default before BuildKit 0.21) lists layers and its
        // cache config directly in an image index.
        let child_checks = self
            .manifest_rules
            .required_children(info)
            .map(|d| async move {
                // Refreshed, so that an online garbage collection does not delete a child it
                // found untagged while this index is being stored (see `crate::fresh`).
                let found = match self.refresh(&paths::revision_link(name, d), None).await {
                    Ok(false) => self.has_blob(name, d).await,
                    other => other,
                };
                (d, found)
            });
        for (d, found) in futures_util::future::join_all(child_checks).await {
            if !found? {
                return Err(RegistryError::Oci(
                    // distribution's code for this case too; MANIFEST_UNKNOWN would be a 404,
                    // which clients read as "no such repository" on a PUT.
                    OciError::with_message(
                        ErrorCode::ManifestBlobUnknown,
                        "index references a manifest or blob unknown to the repository",
                    )
                    .detail(serde_json::json!({ "digest": d.to_string() })),
                ));
            }
        }
        Ok(())
    }

    /// The digest a reference names in `name`.
    pub async fn resolve(&self, name: &RepoName, reference: &Reference) -> Result<Digest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.read_link(&paths::tag_current_link(name, t)).await? {
                Some(d) => d,
                None => return Err(self.manifest_unknown(name).await),
            },
        };
        if !self.exists(&paths::revision_link(name, &digest)).await? {
            return Err(self.manifest_unknown(name).await);
        }
        Ok(digest)
    }

    /// `NAME_UNKNOWN` for a repository that does not exist, `MANIFEST_UNKNOWN` otherwise.
    async fn manifest_unknown(&self, name: &RepoName) -> RegistryError {
        match self.repository_exists(name).await {
            Ok(false) => RegistryError::code(ErrorCode::NameUnknown),
            Ok(true) => RegistryError::code(ErrorCode::ManifestUnknown),
            Err(e) => e,
        }
    }

    /// Reads a manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let digest = self.resolve(name, reference).await?;
        let body = self
            .driver
            .get_content(&paths::blob_data(&digest))
            .await
            .map_err(|e| RegistryError::not_found_as(e, ErrorCode::ManifestUnknown))?;
        let media_type = manifest::stored_media_type(&body);
        Ok(StoredManifest {
            digest,
            media_type,
            body,
        })
    }

    /// Deletes a tag (reference is a tag) or a manifest and every tag pointing at it
    /// (reference is a digest). The manifest's bytes stay until garbage collection.
    /// Deletes a tag, or a manifest by digest with the tags that pointed at it (returned, in
    /// name order, for notifications).
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Vec<Tag>> {
        if !self.options.delete_enabled {
            return Err(RegistryError::msg(
                ErrorCode::Unsupported,
                "deletes are disabled (storage.delete.enabled)",
            ));
        }
        match reference {
            Reference::Tag(tag) => {
                if self
                    .read_link(&paths::tag_current_link(name, tag))
                    .await?
                    .is_none()
                {
                    return Err(self.manifest_unknown(name).await);
                }
                self.delete_if_exists(&paths::tag_dir(name, tag)).await?;
                Ok(Vec::new())
            }
            Reference::Digest(digest) => {
                if !self.exists(&paths::revision_link(name, digest)).await? {
                    return Err(self.manifest_unknown(name).await);
                }
                self.unlink_manifest(name, digest).await
            }
        }
    }

    /// Removes a manifest from a repository: the tags pointing at it, its referrer link and
    /// its revision link (the bytes stay for garbage collection). Nothing there is no error.
    /// Returns the tags removed.
    pub(crate) async fn unlink_manifest(
        &self,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<Tag>> {
        let link = paths::revision_link(name, digest);
        // Tags first, so no tag ever points at a manifest that is gone.
        let tags = match self.all_tags(name).await {
            Ok(t) => t,
            Err(RegistryError::Oci(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut removed = Vec::new();
        for tag in tags {
            if self
                .read_link(&paths::tag_current_link(name, &tag))
                .await?
                .as_ref()
                == Some(digest)
            {
                self.delete_if_exists(&paths::tag_dir(name, &tag)).await?;
                removed.push(tag);
            }
        }
        if let Ok(body) = self.driver.get_content(&paths::blob_data(digest)).await {
            if let Ok(info) = manifest::parse(&body, None) {
                if let Some(subject) = info.subject {
                    let rl = paths::referrer_link(name, &subject, digest);
                    self.delete_if_exists(rl.trim_end_matches("/link")).await?;
                }
            }
        }
        self.delete_if_exists(link.trim_end_matches("/link"))
            .await?;
        Ok(removed)
    }
}

impl Registry {
    /// When the pull-through cache last confirmed `tag` with its upstream.
    pub async fn proxy_checked_at(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<std::time::SystemTime>> {
        match self
            .driver
            .get_content(&paths::proxy_tag_checked(name, tag))
            .await
        {
            Ok(b) => Ok(std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that the upstream confirmed `tag` now.
    pub async fn mark_proxy_checked(&self, name: &RepoName, tag: &Tag) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.driver
            .put_content(
                &paths::proxy_tag_checked(name, tag),
                Bytes::from(now.to_string()),
            )
            .await?;
        Ok(())
    }
}
