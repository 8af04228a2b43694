//! Purging abandoned upload sessions (`storage.maintenance.uploadpurging`): every
//! `_uploads/<id>` whose last write is older than the configured age is cancelled, which also
//! aborts the session's S3 multipart upload. distribution looks at the session's start time
//! (`startedat`); Berth looks at the newest object of the session, so a long upload that is
//! still receiving chunks is never cut off.

use std::time::{Duration, SystemTime};

use berth_core::RepoName;

use crate::uploads::UploadId;
use crate::{Registry, Result};

/// What one purge pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Upload sessions looked at.
    pub sessions: u64,
    /// Sessions purged (in a dry run: that would be).
    pub purged: u64,
    /// Bytes those sessions held in storage.
    pub bytes: u64,
    /// Sessions that could not be examined or purged (logged).
    pub errors: u64,
}

impl Registry {
    /// Purges the upload sessions of every repository whose last write is older than `age`.
    /// With `dry_run`, only counts them. One flat listing of the repositories finds every
    /// session with its newest write and size ([`crate::scan`]).
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<PurgeReport> {
        let cutoff = SystemTime::now() - age;
        let mut report = PurgeReport::default();
        let root = crate::paths::repositories();
        for (name, keys) in self.scan_repositories().await? {
            for (id, (last, bytes)) in keys.uploads {
                report.sessions += 1;
                if last >= cutoff {
                    continue;
                }
                let session = format!("{root}/{name}/_uploads/{id}");
                report.purged += 1;
                report.bytes += bytes;
                if dry_run {
                    tracing::info!(session = %session, "upload purging (dry run): would purge");
                    continue;
                }
                if let Err(e) = self.purge_session(&name, &session).await {
                    tracing::warn!("upload purging: purging {session}: {e}");
                    report.errors += 1;
                    report.purged -= 1;
                    report.bytes -= bytes;
                }
            }
        }
        Ok(report)
    }

    /// Cancels a session as a client's DELETE would (aborting driver-side staging); a
    /// session directory that is not a well-formed session is simply removed.
    async fn purge_session(&self, name: &str, dir: &str) -> Result<()> {
        let id = dir.rsplit('/').next().unwrap_or("");
        if let (Ok(repo), Ok(id)) = (name.parse::<RepoName>(), id.parse::<UploadId>()) {
            if crate::paths::upload_dir(&repo, &id) == dir
                && self.cancel_upload(&repo, &id).await.is_ok()
            {
                return Ok(());
            }
        }
        self.delete_if_exists(dir).await
    }
}
