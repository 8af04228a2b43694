//! The registry domain on top of a [`StorageDriver`]: distribution's storage layout
//! ([`paths`]), blobs, resumable upload sessions, manifests, tags, referrers and the catalog.
//! It never sees HTTP types: handlers translate requests into these calls and
//! [`RegistryError`] into responses.
//!
//! Visibility invariants (what a crash at any point can leave behind):
//! - a blob is at its final path only after its digest was verified (uploads are moved there);
//! - a manifest's revision link is written only after its bytes are stored, and a tag's
//!   `current` link only after the revision link, so a tag never points at nothing;
//! - all small files are written atomically by the driver.

use std::sync::Arc;

use berth_storage::StorageDriver;

pub mod blobs;
pub mod cache;
pub mod catalog;
mod error;
pub mod expire;
mod fresh;
pub mod gc;
mod link;
mod listing;
pub mod manifests;
pub mod paths;
pub mod purge;
pub mod referrers;
mod scan;
pub mod tags;
pub mod uploads;

pub use error::RegistryError;
pub use uploads::{UploadId, UploadStatus};

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Behaviour switches from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// `storage.delete.enabled`: blob and manifest deletes are allowed.
    pub delete_enabled: bool,
    /// How often content a client is told about is touched, so that an online garbage
    /// collection leaves it alone (see [`gc`]); `None` never touches (a read-only registry).
    pub touch_interval: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            delete_enabled: false,
            touch_interval: Some(gc::DEFAULT_TOUCH_INTERVAL),
        }
    }
}

/// A registry over one storage driver. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    driver: Arc<dyn StorageDriver>,
    options: Options,
    locks: Arc<uploads::UploadLocks>,
    cache: Arc<dyn cache::DescriptorCache>,
    fresh: Arc<fresh::Fresh>,
    /// `validation.manifests`: which layer URLs and incomplete indexes a push may carry.
    manifest_rules: Arc<berth_core::manifest::Rules>,
    /// Where blob downloads are redirected instead of the driver's own URLs (distribution's
    /// storage middleware).
    redirect: Option<Arc<dyn blobs::Redirect>>,
}

impl Registry {
    pub fn new(driver: Arc<dyn StorageDriver>, options: Options) -> Registry {
        Registry {
            driver,
            options,
            locks: Arc::default(),
            cache: Arc::new(cache::NoCache::default()),
            fresh: Arc::default(),
            manifest_rules: Arc::default(),
            redirect: None,
        }
    }

    /// The same registry validating pushed manifests with `rules` (the default is
    /// distribution's default configuration).
    pub fn with_manifest_rules(mut self, rules: berth_core::manifest::Rules) -> Registry {
        self.manifest_rules = Arc::new(rules);
        self
    }

    /// The same registry, asking `redirect` where blob downloads go.
    pub fn with_redirect(mut self, redirect: Arc<dyn blobs::Redirect>) -> Registry {
        self.redirect = Some(redirect);
        self
    }

    /// The same registry with a blob-descriptor cache.
    pub fn with_cache(mut self, cache: Arc<dyn cache::DescriptorCache>) -> Registry {
        self.cache = cache;
        self
    }

    pub fn cache(&self) -> &Arc<dyn cache::DescriptorCache> {
        &self.cache
    }

    pub fn driver(&self) -> &Arc<dyn StorageDriver> {
        &self.driver
    }

    pub fn options(&self) -> &Options {
        &self.options
    }
}
