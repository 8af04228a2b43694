//! The test harness of the `berth` crate's integration tests: `berth-testkit`'s processes,
//! with `Berth` constructors that start this crate's own binary.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod raw;

use std::ops::{Deref, DerefMut};
use std::path::Path;

pub use berth_testkit::{free_port, Distribution, Moto, Redis, DISTRIBUTION_BIN};

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

/// A running `berth serve` of this crate's binary (see [`berth_testkit::Berth`]).
pub struct Berth(pub berth_testkit::Berth);

impl Deref for Berth {
    type Target = berth_testkit::Berth;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Berth {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Berth {
    /// On a fresh temporary filesystem root with deletes enabled.
    pub fn start() -> Berth {
        Berth(berth_testkit::Berth::start(bin()))
    }

    /// On `root`; `extra_yaml` adds top-level sections.
    pub fn start_on(root: &Path, extra_yaml: &str) -> Berth {
        Berth(berth_testkit::Berth::start_on(bin(), root, extra_yaml))
    }

    /// With a whole configuration (listening on 127.0.0.1:0).
    pub fn start_with_config(config_yaml: &str, root: &Path) -> Berth {
        Berth(berth_testkit::Berth::start_with_config(
            bin(),
            config_yaml,
            root,
        ))
    }

    /// On a bucket of `moto`.
    pub fn start_s3(moto: &Moto, bucket: &str, storage_extra: &str, extra: &str) -> Berth {
        Berth(berth_testkit::Berth::start_s3(
            bin(),
            moto,
            bucket,
            storage_extra,
            extra,
        ))
    }
}
