//! Berth's vocabulary: digests, repository names, tags and references, media types, manifest
//! parsing and validation, the OCI error codes, and a resumable SHA-256. No I/O happens here;
//! every identifier that comes off the wire is parsed into one of these types before any work.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;
pub mod sha256;
pub mod time;

pub use digest::{Algorithm, Digest};
pub use error::{ErrorCode, OciError};
pub use manifest::{Descriptor, ManifestInfo, MediaType};
pub use name::{Reference, RepoName, Tag};
pub use sha256::ResumableSha256;
