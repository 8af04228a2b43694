//! Robot tokens' records in the storage driver, so every replica sees the same ones:
//! `/docker/registry/v2/_berth/tokens/<id>`, the JSON of a [`RobotToken`] (its secret's
//! SHA-256, never the secret). distribution never reads `_berth/`. A replica trusts a record it
//! read for [`RECHECK`] at most, so a revocation (the record deleted) takes effect on every
//! replica within that time, and a token in use costs one small read per interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_auth::robot::RobotToken;
use berth_storage::{ListFrom, StorageDriver, StorageError, LIST_PAGE_MAX};
use bytes::Bytes;

/// Where the records live.
pub const DIR: &str = "/docker/registry/v2/_berth/tokens";
/// How long a record read is trusted.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Records remembered before the memory starts over (a bound, not a target).
const CAPACITY: usize = 10_000;

fn path(id: &str) -> String {
    format!("{DIR}/{id}")
}

/// The record of token `id`, if there is one (revoked: none).
pub async fn load(
    driver: &dyn StorageDriver,
    id: &str,
) -> Result<Option<RobotToken>, StorageError> {
    match driver.get_content(&path(id)).await {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn save(driver: &dyn StorageDriver, t: &RobotToken) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(t).unwrap_or_default();
    driver.put_content(&path(&t.id), Bytes::from(body)).await
}

/// Every token's record, oldest first.
pub async fn list(driver: &dyn StorageDriver) -> Result<Vec<RobotToken>, StorageError> {
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
    out.sort_by(|a: &RobotToken, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(out)
}

/// Deletes token `id`'s record; whether there was one.
pub async fn revoke(driver: &dyn StorageDriver, id: &str) -> Result<bool, StorageError> {
    match driver.delete(&path(id)).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records read recently, by id (a missing record too).
#[derive(Default)]
pub struct RobotCache(Mutex<HashMap<String, (Option<RobotToken>, Instant)>>);

impl RobotCache {
    /// Token `id`'s record, read again once [`RECHECK`] has passed.
    pub async fn get(
        &self,
        driver: &dyn StorageDriver,
        id: &str,
    ) -> Result<Option<RobotToken>, StorageError> {
        {
            let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, at)) = map.get(id) {
                if at.elapsed() < RECHECK {
                    return Ok(t.clone());
                }
            }
        }
        let t = load(driver, id).await?;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(id.to_owned(), (t.clone(), Instant::now()));
        Ok(t)
    }
}
