//! Request routing as data: the method and raw path of a request are parsed into an
//! [`Endpoint`] before any work, with the repository name, reference, digest and upload id
//! already validated. Repository names contain slashes, so the path is matched from its end
//! (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...), never by a per-depth route table.
//!
//! The path is matched undecoded: a percent-encoded `/` or `:` is not a separator and fails
//! validation as the name or digest it is part of.

use berth_core::{Digest, ErrorCode, OciError, Reference, RepoName};
use berth_registry::UploadId;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    /// A manifest URL whose reference is neither a digest nor a valid tag: no manifest can be
    /// found under it (404 on reads), and none can be stored (400 on PUT).
    ManifestBadTag(RepoName, String),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, UploadId),
    Referrers(RepoName, Digest),
    /// Berth's token issuer: `/auth/token`.
    Token,
    /// The issuer's keys: `/auth/jwks.json`.
    Jwks,
}

/// The route name for logs and metrics (low cardinality).
impl Endpoint {
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) | Endpoint::ManifestBadTag(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
            Endpoint::Token => "token",
            Endpoint::Jwks => "jwks",
        }
    }

    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog | Endpoint::Token | Endpoint::Jwks => None,
            Endpoint::Tags(n)
            | Endpoint::Manifest(n, _)
            | Endpoint::ManifestBadTag(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::UploadStart(n)
            | Endpoint::Upload(n, _)
            | Endpoint::Referrers(n, _) => Some(n),
        }
    }
}

/// Why a path is not an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteError {
    /// Not an API path at all (plain 404).
    NotFound,
    /// An API path with an invalid part (the OCI error to send).
    Invalid(OciError),
}

fn name(segments: &[&str]) -> Result<RepoName, RouteError> {
    segments
        .join("/")
        .parse()
        .map_err(|e: berth_core::name::NameError| {
            RouteError::Invalid(OciError::with_message(
                ErrorCode::NameInvalid,
                e.to_string(),
            ))
        })
}

fn digest(s: &str) -> Result<Digest, RouteError> {
    s.parse().map_err(|e: berth_core::digest::DigestError| {
        RouteError::Invalid(OciError::with_message(
            ErrorCode::DigestInvalid,
            e.to_string(),
        ))
    })
}

/// Parses a request path (without query) below `prefix` (`http.prefix`, default empty).
pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    match path {
        "/auth/token" => return Ok(Endpoint::Token),
        "/auth/jwks.json" => return Ok(Endpoint::Jwks),
        _ => {}
    }
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Endpoint::Base),
        Some(r) => r.strip_prefix('/').ok_or(RouteError::NotFound)?,
        None => return Err(RouteError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    let seg: Vec<&str> = trimmed.split('/').collect();
    let n = seg.len();
    if n >= 3 && seg[n - 2] == "tags" && seg[n - 1] == "list" {
        return Ok(Endpoint::Tags(name(&seg[..n - 2])?));
    }
    if n >= 3 && seg[n - 2] == "blobs" && seg[n - 1] == "uploads" {
        return Ok(Endpoint::UploadStart(name(&seg[..n - 2])?));
    }
    if n >= 4 && seg[n - 3] == "blobs" && seg[n - 2] == "uploads" {
        let id = seg[n - 1]
            .parse()
            .map_err(|_| RouteError::Invalid(OciError::new(ErrorCode::BlobUploadUnknown)))?;
        return Ok(Endpoint::Upload(name(&seg[..n - 3])?, id));
    }
    if n >= 3 && seg[n - 2] == "manifests" {
        let repo = name(&seg[..n - 2])?;
        return match seg[n - 1].parse() {
            Ok(reference) => Ok(Endpoint::Manifest(repo, reference)),
            Err(berth_core::name::ReferenceError::Digest(e)) => Err(RouteError::Invalid(
                OciError::with_message(ErrorCode::DigestInvalid, e.to_string()),
            )),
            Err(berth_core::name::ReferenceError::Tag(e)) => {
                Ok(Endpoint::ManifestBadTag(repo, e.to_string()))
            }
        };
    }
    if n >= 3 && seg[n - 2] == "blobs" {
        let repo = name(&seg[..n - 2])?;
        return Ok(Endpoint::Blob(repo, digest(seg[n - 1])?));
    }
    if n >= 3 && seg[n - 2] == "referrers" {
        let repo = name(&seg[..n - 2])?;
        return Ok(Endpoint::Referrers(repo, digest(seg[n - 1])?));
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code(path: &str) -> Option<ErrorCode> {
        match parse(path) {
            Err(RouteError::Invalid(e)) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert!(
            matches!(parse("/v2/a/b/c/tags/list"), Ok(Endpoint::Tags(n)) if n.as_str() == "a/b/c")
        );
        assert!(matches!(
            parse("/v2/a/manifests/latest"),
            Ok(Endpoint::Manifest(_, Reference::Tag(_)))
        ));
        assert!(matches!(
            parse(&format!("/v2/a/manifests/{D}")),
            Ok(Endpoint::Manifest(_, Reference::Digest(_)))
        ));
        assert!(
            matches!(parse(&format!("/v2/x/y/blobs/{D}")), Ok(Endpoint::Blob(n, _)) if n.as_str() == "x/y")
        );
        assert!(matches!(
            parse("/v2/x/blobs/uploads/"),
            Ok(Endpoint::UploadStart(_))
        ));
        assert!(matches!(
            parse("/v2/x/blobs/uploads"),
            Ok(Endpoint::UploadStart(_))
        ));
        assert!(matches!(
            parse("/v2/x/blobs/uploads/9f1b2c3d-0000-4000-8000-000000000001"),
            Ok(Endpoint::Upload(..))
        ));
        assert!(matches!(
            parse(&format!("/v2/x/referrers/{D}")),
            Ok(Endpoint::Referrers(..))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Ok(Endpoint::ManifestBadTag(..))
        ));
        // A repository may itself be called "manifests" or "blobs".
        assert!(
            matches!(parse("/v2/manifests/manifests/latest"), Ok(Endpoint::Manifest(n, _)) if n.as_str() == "manifests")
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a"), Err(RouteError::NotFound));
        assert_eq!(
            code("/v2/Upper/manifests/latest"),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code("/v2/a//b/manifests/latest"),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code("/v2/a/../b/manifests/latest"),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code("/v2/a%2Fb/manifests/latest"),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code("/v2/a/blobs/sha256:xyz"),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            code("/v2/a/blobs/sha256%3Aabc"),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            code("/v2/a/manifests/sha256:abc"),
            Some(ErrorCode::DigestInvalid)
        );
        assert!(parse("/v2/a/blobs/uploads/../../x").is_err());
        assert_eq!(
            code("/v2/a/blobs/uploads/not-a-uuid"),
            Some(ErrorCode::BlobUploadUnknown)
        );
    }
}
