//! Robot tokens' records (the JSON of a [`RobotToken`]: its secret's SHA-256, never the
//! secret), in one of two places:
//!
//! - the storage driver (the default), so every replica sees the same ones:
//!   `/docker/registry/v2/_berth/tokens/<id>`. distribution never reads `_berth/`. A replica
//!   trusts a record it read for [`RECHECK`] at most, so a revocation (the record deleted)
//!   takes effect on every replica within that time, and a token in use costs one small read
//!   per interval;
//! - a file (`auth.issuer.robottokens`), for records kept in Git or a Kubernetes Secret: one
//!   JSON record per line, `#` comments. The file is looked at (one `stat`) on each use and
//!   read again when it changed (and every [`RECHECK`] regardless), so an edit, or a Secret the
//!   kubelet swapped, counts at once.
//!   `berth tokens` rewrites it atomically (a new file renamed over the old).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use berth_auth::robot::RobotToken;
use berth_storage::{ListFrom, StorageDriver, StorageError, LIST_PAGE_MAX};
use bytes::Bytes;

/// Where the records live in the storage driver.
pub const DIR: &str = "/docker/registry/v2/_berth/tokens";
/// How long a record read from the storage driver is trusted.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Records remembered before the memory starts over (a bound, not a target).
const CAPACITY: usize = 10_000;
/// The first line `berth tokens` writes into a records file.
const FILE_HEADER: &str = "# Berth robot tokens: one JSON record per line, a secret's SHA-256 and never the secret.\n# `berth tokens create|list|revoke --config ...` edit this file; a line removed is a token revoked.\n";

fn path(id: &str) -> String {
    format!("{DIR}/{id}")
}

/// Where `berth tokens` finds the records.
pub enum Records {
    Storage(Arc<dyn StorageDriver>),
    File(PathBuf),
}

impl Records {
    /// Where the records are, for messages.
    pub fn describe(&self) -> String {
        match self {
            Records::Storage(_) => format!("the storage driver ({DIR})"),
            Records::File(p) => format!("auth.issuer.robottokens {}", p.display()),
        }
    }

    pub async fn save(&self, t: &RobotToken) -> Result<(), String> {
        match self {
            Records::Storage(d) => save(d.as_ref(), t).await.map_err(|e| e.to_string()),
            Records::File(p) => {
                let mut all = read_file(p)?;
                all.retain(|o| o.id != t.id);
                all.push(t.clone());
                write_file(p, &all)
            }
        }
    }

    /// Every token's record, oldest first.
    pub async fn list(&self) -> Result<Vec<RobotToken>, String> {
        let mut out = match self {
            Records::Storage(d) => list(d.as_ref()).await.map_err(|e| e.to_string())?,
            Records::File(p) => read_file(p)?,
        };
        out.sort_by(|a: &RobotToken, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Deletes token `id`'s record; whether there was one.
    pub async fn revoke(&self, id: &str) -> Result<bool, String> {
        match self {
            Records::Storage(d) => revoke(d.as_ref(), id).await.map_err(|e| e.to_string()),
            Records::File(p) => {
                let mut all = read_file(p)?;
                let before = all.len();
                all.retain(|t| t.id != id);
                if all.len() == before {
                    return Ok(false);
                }
                write_file(p, &all)?;
                Ok(true)
            }
        }
    }
}

async fn load(driver: &dyn StorageDriver, id: &str) -> Result<Option<RobotToken>, StorageError> {
    match driver.get_content(&path(id)).await {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn save(driver: &dyn StorageDriver, t: &RobotToken) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(t).unwrap_or_default();
    driver.put_content(&path(&t.id), Bytes::from(body)).await
}

async fn list(driver: &dyn StorageDriver) -> Result<Vec<RobotToken>, StorageError> {
    let mut out = Vec::new();
    let mut from = ListFrom::Start;
    loop {
        let page = driver.list_page(DIR, None, from, LIST_PAGE_MAX).await?;
        for e in &page.entries {
            if let Some(t) = load(driver, &e.key).await? {
                out.push(t);
            }
        }
        match page.next {
            Some(t) => from = ListFrom::Token(t),
            None => break,
        }
    }
    Ok(out)
}

async fn revoke(driver: &dyn StorageDriver, id: &str) -> Result<bool, StorageError> {
    match driver.delete(&path(id)).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The records in file `p`: none when it does not exist; an error names the line that is not
/// a record (a file half understood would hide which tokens it holds).
pub fn read_file(p: &Path) -> Result<Vec<RobotToken>, String> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    parse_file(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn parse_file(text: &str) -> Result<Vec<RobotToken>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t: RobotToken = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not a robot token record: {e}", n + 1))?;
        if t.id.is_empty() || t.sha256.len() != 64 {
            return Err(format!("line {}: a record needs an id and a sha256", n + 1));
        }
        out.push(t);
    }
    Ok(out)
}

/// Replaces file `p` with `tokens` (written beside it, then renamed: a reader sees the old file
/// or the new one, never half). A new file is readable by its owner only.
fn write_file(p: &Path, tokens: &[RobotToken]) -> Result<(), String> {
    use std::io::Write as _;
    let mut text = FILE_HEADER.to_owned();
    for t in tokens {
        text += &serde_json::to_string(t).map_err(|e| e.to_string())?;
        text.push('\n');
    }
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = p.with_file_name(format!(
        ".{}.{}.tmp",
        name.as_deref().unwrap_or("robottokens"),
        std::process::id()
    ));
    let io = |e: std::io::Error| format!("{}: {e}", p.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let perms = match std::fs::metadata(p) {
        Ok(m) => m.permissions(),
        Err(_) => std::os::unix::fs::PermissionsExt::from_mode(0o600),
    };
    let written = f
        .set_permissions(perms)
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, p));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// What identifies one version of a file: a rewrite (rename) changes the inode, an edit in
/// place the length or the modification time.
type Stamp = (u64, u64, Option<SystemTime>);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    (m.ino(), m.len(), m.modified().ok())
}

type ById = HashMap<String, RobotToken>;

/// The records of `auth.issuer.robottokens`, parsed once per version of the file.
struct FileRecords {
    path: PathBuf,
    /// The version read last, when, and its records.
    seen: Mutex<Option<(Stamp, Instant, Arc<ById>)>>,
}

impl FileRecords {
    async fn get(&self, id: &str) -> Result<Option<RobotToken>, String> {
        let now = match tokio::fs::metadata(&self.path).await {
            Ok(m) => stamp(&m),
            // No file: no tokens (every one revoked).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let known = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // Read again after RECHECK even when the stamp is the same: on a filesystem with
            // coarse timestamps a rewrite of the same length could reuse the inode.
            seen.as_ref()
                .filter(|(s, at, _)| *s == now && at.elapsed() < RECHECK)
                .map(|(_, _, m)| m.clone())
        };
        let records = match known {
            Some(m) => m,
            None => {
                let path = self.path.clone();
                let all = tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|e| e.to_string())??;
                let m: Arc<ById> = Arc::new(all.into_iter().map(|t| (t.id.clone(), t)).collect());
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((now, Instant::now(), m.clone()));
                m
            }
        };
        Ok(records.get(id).cloned())
    }
}

/// The token endpoint's view of the records: the file's, or storage records read recently, by
/// id (a missing record too).
#[derive(Default)]
pub struct RobotCache {
    file: Option<FileRecords>,
    storage: Mutex<HashMap<String, (Option<RobotToken>, Instant)>>,
}

impl RobotCache {
    /// Records from `file` (`auth.issuer.robottokens`), or else from the storage driver. A file
    /// that exists must parse: Berth does not start on one it would half understand.
    pub fn new(file: Option<&str>) -> Result<RobotCache, String> {
        let Some(f) = file else {
            return Ok(RobotCache::default());
        };
        let path = PathBuf::from(f);
        let n = read_file(&path)
            .map_err(|e| format!("auth.issuer.robottokens {e}"))?
            .len();
        if path.exists() {
            tracing::info!(file = %path.display(), tokens = n, "robot tokens from a file");
        } else {
            tracing::warn!(
                file = %path.display(),
                "auth.issuer.robottokens does not exist yet: no robot token logs in until `berth tokens create` writes it"
            );
        }
        Ok(RobotCache {
            file: Some(FileRecords {
                path,
                seen: Mutex::new(None),
            }),
            storage: Mutex::default(),
        })
    }

    /// Where the records are, for log lines.
    pub fn place(&self) -> &'static str {
        if self.file.is_some() {
            "auth.issuer.robottokens"
        } else {
            "the storage"
        }
    }

    /// Token `id`'s record: from the file as it is now, or from the storage driver, read again
    /// once [`RECHECK`] has passed.
    pub async fn get(
        &self,
        driver: &dyn StorageDriver,
        id: &str,
    ) -> Result<Option<RobotToken>, String> {
        if let Some(f) = &self.file {
            return f.get(id).await;
        }
        {
            let map = self.storage.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, at)) = map.get(id) {
                if at.elapsed() < RECHECK {
                    return Ok(t.clone());
                }
            }
        }
        let t = load(driver, id).await.map_err(|e| e.to_string())?;
        let mut map = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(id.to_owned(), (t.clone(), Instant::now()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str) -> RobotToken {
        RobotToken {
            id: id.to_owned(),
            account: "ci".into(),
            scopes: vec!["repository:ci/*:pull,push".into()],
            created: 1,
            expires: None,
            sha256: "ab".repeat(32),
        }
    }

    #[tokio::test]
    async fn a_file_is_rewritten_whole_and_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("robots");
        let records = Records::File(p.clone());
        assert!(
            records.list().await.unwrap().is_empty(),
            "no file: no tokens"
        );
        records.save(&token("a")).await.unwrap();
        records.save(&token("b")).await.unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# Berth robot tokens"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with('{')).count(), 2);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let cache = RobotCache::new(Some(p.to_str().unwrap())).unwrap();
        let driver = berth_storage::FilesystemDriver::new(dir.path().join("unused"));
        assert_eq!(cache.get(&driver, "b").await.unwrap(), Some(token("b")));
        assert!(records.revoke("b").await.unwrap());
        assert!(!records.revoke("b").await.unwrap());
        assert_eq!(
            cache.get(&driver, "b").await.unwrap(),
            None,
            "revoked at once"
        );
        assert_eq!(cache.get(&driver, "a").await.unwrap(), Some(token("a")));

        // A hand edit that breaks a line is an error, not a file half read.
        std::fs::write(
            &p,
            format!(
                "{}\nnot json\n",
                serde_json::to_string(&token("a")).unwrap()
            ),
        )
        .unwrap();
        let e = cache.get(&driver, "a").await.unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(RobotCache::new(Some(p.to_str().unwrap())).is_err());
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            cache.get(&driver, "a").await.unwrap(),
            None,
            "no file: no tokens"
        );
    }
}
