//! The OCI distribution-spec error codes
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes>) and the
//! JSON body every error response carries. The HTTP status of each code lives here, in one
//! exhaustive `match`, so every layer agrees on it.
//!
//! The spec allows only its fourteen codes in a 4xx JSON body. A few situations need a status
//! the spec's codes do not carry (416 for a chunk out of order, 413 for an oversize manifest);
//! they have their own variants here, which are sent with the closest spec code.

use serde::Serialize;

/// Why a request failed: the spec's codes, plus variants for the statuses the spec asks for
/// that its codes do not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// An upload chunk whose `Content-Range` does not continue the upload (416,
    /// `BLOB_UPLOAD_INVALID`).
    ChunkOutOfOrder,
    /// A blob `Range` past the end of the blob (416, `SIZE_INVALID`).
    RangeNotSatisfiable,
    /// A manifest over the size limit (413, `MANIFEST_INVALID`).
    ManifestTooLarge,
    /// More `?tag=` parameters on a manifest PUT than the registry takes (414, `UNSUPPORTED`).
    TooManyTags,
    /// A bad `n` in a paginated listing (distribution's `PAGINATION_NUMBER_INVALID`, which is
    /// not a spec code: sent as 400 `UNSUPPORTED`).
    PaginationNumberInvalid,
    /// Not in the spec; distribution uses it for server-side failures.
    Unknown,
    /// The pull-through cache's upstream failed (502, `UNKNOWN`).
    UpstreamUnavailable,
    /// The storage did not answer in time (503, distribution's `UNAVAILABLE`).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::ChunkOutOfOrder => "BLOB_UPLOAD_INVALID",
            ErrorCode::RangeNotSatisfiable => "SIZE_INVALID",
            ErrorCode::ManifestTooLarge => "MANIFEST_INVALID",
            ErrorCode::TooManyTags => "UNSUPPORTED",
            ErrorCode::PaginationNumberInvalid => "UNSUPPORTED",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::UpstreamUnavailable => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status this code is sent with (the spec's and distribution's choice).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown => 404,
            ErrorCode::BlobUploadInvalid => 400,
            ErrorCode::BlobUploadUnknown => 404,
            ErrorCode::DigestInvalid => 400,
            ErrorCode::ManifestBlobUnknown => 400,
            ErrorCode::ManifestInvalid => 400,
            ErrorCode::ManifestUnknown => 404,
            ErrorCode::NameInvalid => 400,
            ErrorCode::NameUnknown => 404,
            ErrorCode::SizeInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::ChunkOutOfOrder => 416,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::ManifestTooLarge => 413,
            ErrorCode::TooManyTags => 414,
            ErrorCode::PaginationNumberInvalid => 400,
            ErrorCode::Unknown => 500,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The spec's generic message for the code.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::ChunkOutOfOrder => "chunk does not continue the upload",
            ErrorCode::RangeNotSatisfiable => "requested range not satisfiable",
            ErrorCode::ManifestTooLarge => "manifest too large",
            ErrorCode::TooManyTags => "too many tags in one request",
            ErrorCode::PaginationNumberInvalid => "invalid number of results requested",
            ErrorCode::Unknown => "unknown error",
            ErrorCode::UpstreamUnavailable => "the upstream registry is unavailable",
            ErrorCode::Unavailable => "service unavailable",
        }
    }
}

/// One error as sent to clients: a code, a human message and optional detail.
#[derive(Debug, Clone, PartialEq)]
pub struct OciError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

impl OciError {
    pub fn new(code: ErrorCode) -> OciError {
        OciError {
            code,
            message: code.default_message().to_owned(),
            detail: None,
        }
    }

    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> OciError {
        self.detail = Some(detail);
        self
    }

    /// The `{"errors":[...]}` body.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Entry<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a serde_json::Value>,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            errors: [Entry<'a>; 1],
        }
        let body = Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#.to_vec()
        })
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for OciError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = OciError::new(ErrorCode::DigestInvalid).detail(serde_json::json!({"digest": "x"}));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap_or_default();
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(v["errors"][0]["detail"]["digest"], "x");
        assert_eq!(ErrorCode::DigestInvalid.status(), 400);
        assert_eq!(ErrorCode::Unsupported.status(), 405);
    }

    /// Every code sent in a 4xx body is one of the spec's fourteen.
    #[test]
    fn client_errors_use_spec_codes() {
        const SPEC: [&str; 14] = [
            "BLOB_UNKNOWN",
            "BLOB_UPLOAD_INVALID",
            "BLOB_UPLOAD_UNKNOWN",
            "DIGEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "MANIFEST_INVALID",
            "MANIFEST_UNKNOWN",
            "NAME_INVALID",
            "NAME_UNKNOWN",
            "SIZE_INVALID",
            "UNAUTHORIZED",
            "DENIED",
            "UNSUPPORTED",
            "TOOMANYREQUESTS",
        ];
        use ErrorCode::*;
        for c in [
            BlobUnknown,
            BlobUploadInvalid,
            BlobUploadUnknown,
            DigestInvalid,
            ManifestBlobUnknown,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            TooManyRequests,
            ChunkOutOfOrder,
            RangeNotSatisfiable,
            ManifestTooLarge,
            TooManyTags,
            PaginationNumberInvalid,
        ] {
            assert!((400..500).contains(&c.status()), "{c:?}");
            assert!(SPEC.contains(&c.as_str()), "{c:?} sends {}", c.as_str());
        }
    }
}
