//! The `/v2/` API for repositories an upstream owns (the pull-through cache): pulls are
//! answered by [`berth_proxy::Proxy`], pushes are refused (`UNSUPPORTED`), deletes evict from
//! the cache. Everything local happens under the cache's repository name (`local`), which may
//! differ from the name the client asked for (`docker.io/library/alpine` for `library/alpine`).

use axum::body::Body;
use axum::response::Response;
use berth_core::{Digest, ErrorCode, OciError, RepoName};
use berth_proxy::{BlobSource, Proxy, ProxyError};
use http::request::Parts;
use http::{header, Method, StatusCode};

use crate::endpoint::Endpoint;
use crate::handlers::{
    blob_notice, deleted_notice, empty, get_blob, json_response, manifest_response, referrers, set,
    with_notice,
};
use crate::http_util::{header_str, parse_range, RangeRequest};
use crate::notify::{Action, Notice};
use crate::{ApiError, AppState};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A proxied repository: which upstream, its name there, its name in the cache.
pub struct Target<'a> {
    pub proxy: &'a Proxy,
    pub upstream: usize,
    pub remote: &'a str,
    pub local: &'a RepoName,
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Oci(e) => ApiError::Oci(e),
            ProxyError::Registry(e) => e.into(),
        }
    }
}

fn refused_push(t: &Target<'_>) -> ApiError {
    ApiError::msg(
        ErrorCode::Unsupported,
        format!(
            "{} is a pull-through cache of {}: pushes are not accepted there",
            t.local,
            t.proxy.upstreams()[t.upstream].config.label()
        ),
    )
}

pub async fn handle(
    state: &AppState,
    t: &Target<'_>,
    ep: Endpoint,
    req: &Parts,
) -> Result<Response> {
    let read = matches!(req.method, Method::GET | Method::HEAD);
    match ep {
        Endpoint::Manifest(name, reference) if read => {
            let m = t
                .proxy
                .manifest(t.upstream, t.remote, t.local, &reference)
                .await?;
            Ok(manifest_response(state, &name, &reference, m))
        }
        Endpoint::Manifest(name, reference) if req.method == Method::DELETE => {
            let tags = state.registry.delete_manifest(t.local, &reference).await?;
            let notice = || deleted_notice(&name, &reference, tags);
            Ok(with_notice(state, empty(StatusCode::ACCEPTED), notice))
        }
        Endpoint::Blob(name, digest) if read => {
            let (r, size) = blob(state, t, &digest, req).await?;
            // Events name the repository as the client asked for it (as distribution does).
            let notice = || blob_notice(Action::Pull, &name, &digest, size, None);
            Ok(with_notice(state, r, notice))
        }
        Endpoint::Blob(name, digest) if req.method == Method::DELETE => {
            state.registry.delete_blob(t.local, &digest).await?;
            let notice = || Notice::BlobDeleted {
                repository: name,
                digest,
            };
            Ok(with_notice(state, empty(StatusCode::ACCEPTED), notice))
        }
        Endpoint::Tags(name) if read => {
            let query = req.uri.query().unwrap_or("");
            let tags = t.proxy.tags(t.upstream, t.remote, t.local, query).await?;
            let body = serde_json::json!({ "name": name.as_str(), "tags": tags });
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&body).unwrap_or_default(),
            ))
        }
        Endpoint::Referrers(_, subject) if read => referrers(state, t.local, &subject, req).await,
        Endpoint::ManifestBadTag(..) if read => Err(ApiError::code(ErrorCode::ManifestUnknown)),
        Endpoint::Manifest(..)
        | Endpoint::ManifestBadTag(..)
        | Endpoint::UploadStart(_)
        | Endpoint::Upload(..) => Err(refused_push(t)),
        _ => Err(ApiError::Oci(OciError::with_message(
            ErrorCode::Unsupported,
            format!("method {} is not allowed here", req.method),
        ))),
    }
}

/// A blob from the cache, or streaming in from upstream, and its size (0 when upstream did
/// not say).
async fn blob(
    state: &AppState,
    t: &Target<'_>,
    digest: &Digest,
    req: &Parts,
) -> Result<(Response, u64)> {
    if req.method == Method::HEAD {
        let size = t
            .proxy
            .blob_size(t.upstream, t.remote, t.local, digest)
            .await?;
        let mut r = empty(StatusCode::OK);
        set(&mut r, "content-length", size.to_string());
        set(&mut r, "content-type", "application/octet-stream");
        set(&mut r, "docker-content-digest", digest.to_string());
        return Ok((r, size));
    }
    let fetch = match t.proxy.blob(t.upstream, t.remote, t.local, digest).await? {
        BlobSource::Local(_) => {
            let mut r = get_blob(state, t.local, digest, req).await?;
            // Its notice names the cache's repository; the caller's names the client's.
            let size = match r.extensions_mut().remove::<Notice>() {
                Some(Notice::Blob { size, .. }) => size,
                _ => 0,
            };
            return Ok((r, size));
        }
        BlobSource::Fetching(f) => f,
    };
    let (status, start, len) = match fetch.size {
        // Without a known size a range cannot be answered: the whole blob.
        None => (StatusCode::OK, 0, None),
        Some(size) => match parse_range(header_str(&req.headers, header::RANGE), size) {
            RangeRequest::Full => (StatusCode::OK, 0, Some(size)),
            RangeRequest::Partial { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, Some(end - start + 1))
            }
            RangeRequest::Unsatisfiable => {
                return Err(ApiError::msg(
                    ErrorCode::RangeNotSatisfiable,
                    format!("requested range not satisfiable: the blob has {size} bytes"),
                ))
            }
        },
    };
    let mut r = Response::new(Body::from_stream(fetch.reader(start, len)));
    *r.status_mut() = status;
    if let Some(len) = len {
        set(&mut r, "content-length", len.to_string());
    }
    if let (StatusCode::PARTIAL_CONTENT, Some(size), Some(len)) = (status, fetch.size, len) {
        set(
            &mut r,
            "content-range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    set(&mut r, "content-type", "application/octet-stream");
    set(&mut r, "docker-content-digest", digest.to_string());
    Ok((r, fetch.size.unwrap_or(0)))
}
