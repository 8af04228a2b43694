//! The registry's error type: either an OCI error a client caused (with its spec code) or a
//! storage failure the operator must see.

use berth_core::{ErrorCode, OciError};
use berth_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request was wrong or names something unknown; goes to the client as is.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// Storage failed; a 500 for the client and an ERROR log line.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading the request body failed (client went away or sent a malformed body).
    #[error("reading the request body failed: {0}")]
    Body(String),
}

impl RegistryError {
    pub fn code(code: ErrorCode) -> RegistryError {
        RegistryError::Oci(OciError::new(code))
    }

    pub fn msg(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError::Oci(OciError::with_message(code, message))
    }

    /// Maps a storage NotFound to `code`, keeping other storage errors.
    pub(crate) fn not_found_as(e: StorageError, code: ErrorCode) -> RegistryError {
        if e.is_not_found() {
            RegistryError::code(code)
        } else {
            RegistryError::Storage(e)
        }
    }
}
