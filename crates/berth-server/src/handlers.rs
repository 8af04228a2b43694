//! The `/v2/` API handlers, one function per endpoint and method, each a thin translation
//! between HTTP and [`berth_registry::Registry`]. Status codes and headers follow the OCI
//! distribution-spec v1.1 (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md>).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use berth_core::manifest::ManifestInfo;
use berth_core::manifest::{MAX_MANIFEST_SIZE, OCI_INDEX};
use berth_core::{Digest, ErrorCode, OciError, Reference, RepoName, Tag};
use berth_registry::{UploadId, UploadStatus};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::auth::Principal;
use crate::body::{read_to_limit, BodySlot, ReadError};
use crate::endpoint::Endpoint;
use crate::http_util::{
    base_url, has_body, header_str, param, parse_content_range, parse_range, percent_encode, query,
    RangeRequest,
};
use crate::notify::{Action, Notice};
use crate::{ApiError, AppState};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Serves one parsed request. Handlers that read the body take it from `body`; whatever they
/// leave is drained by the caller.
pub async fn handle(
    state: &AppState,
    ep: Endpoint,
    req: &Parts,
    body: &mut BodySlot,
    principal: &Principal,
) -> Result<Response> {
    let method = req.method.clone();
    let writes = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && state.options.read_only {
        return Err(ApiError::msg(
            ErrorCode::Unsupported,
            "the registry is in read-only mode (storage.maintenance.readonly)",
        ));
    }
    if let (Some(proxy), Some(name)) = (&state.proxy, ep.repository()) {
        let ns = query(&req.uri)
            .into_iter()
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v);
        match proxy.route(name, ns.as_deref()) {
            berth_proxy::Route::Hosted => {}
            berth_proxy::Route::Denied(why) => {
                tracing::info!(repository = %name, "pull refused by the proxy's policy: {why}");
                return Err(ApiError::msg(ErrorCode::Denied, why));
            }
            berth_proxy::Route::Proxied {
                upstream,
                remote,
                local,
            } => {
                let target = crate::proxied::Target {
                    proxy,
                    upstream,
                    remote: &remote,
                    local: &local,
                };
                return crate::proxied::handle(state, &target, ep, req).await;
            }
        }
    }
    match (ep, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, b"{}".to_vec()))
        }
        (Endpoint::Catalog, Method::GET | Method::HEAD) => catalog(state, req).await,
        (Endpoint::Tags(name), Method::GET | Method::HEAD) => tags(state, &name, req).await,
        (Endpoint::Manifest(name, r), Method::GET | Method::HEAD) => {
            get_manifest(state, &name, &r).await
        }
        (Endpoint::Manifest(name, r), Method::PUT) => {
            put_manifest(state, &name, &r, req, body.take(), principal).await
        }
        (Endpoint::ManifestBadTag(_, why), Method::GET | Method::HEAD | Method::DELETE) => {
            Err(ApiError::msg(
                ErrorCode::ManifestUnknown,
                format!("no manifest can have this reference: {why}"),
            ))
        }
        (Endpoint::ManifestBadTag(_, why), Method::PUT) => {
            Err(ApiError::msg(ErrorCode::ManifestInvalid, why))
        }
        (Endpoint::Manifest(name, r), Method::DELETE) => {
            let tags = state.registry.delete_manifest(&name, &r).await?;
            Ok(with_notice(state, empty(StatusCode::ACCEPTED), || {
                deleted_notice(&name, &r, tags)
            }))
        }
        (Endpoint::Blob(name, d), Method::GET | Method::HEAD) => {
            get_blob(state, &name, &d, req).await
        }
        (Endpoint::Blob(name, d), Method::DELETE) => {
            state.registry.delete_blob(&name, &d).await?;
            Ok(with_notice(state, empty(StatusCode::ACCEPTED), || {
                Notice::BlobDeleted {
                    repository: name,
                    digest: d,
                }
            }))
        }
        (Endpoint::UploadStart(name), Method::POST) => {
            start_upload(state, &name, req, body.take(), principal).await
        }
        (Endpoint::Upload(name, id), Method::GET | Method::HEAD) => {
            let st = state.registry.upload_status(&name, &id).await?;
            Ok(upload_progress(
                state,
                &name,
                &st,
                StatusCode::NO_CONTENT,
                &req.headers,
            ))
        }
        (Endpoint::Upload(name, id), Method::PATCH) => {
            patch_upload(state, &name, &id, req, body.take()).await
        }
        (Endpoint::Upload(name, id), Method::PUT) => {
            put_upload(state, &name, &id, req, body.take()).await
        }
        (Endpoint::Upload(name, id), Method::DELETE) => {
            state.registry.cancel_upload(&name, &id).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Endpoint::Token | Endpoint::Jwks, _) => Err(ApiError::code(ErrorCode::Unsupported)),
        (Endpoint::Referrers(name, d), Method::GET | Method::HEAD) => {
            referrers(state, &name, &d, req).await
        }
        (_, m) => {
            let mut r = ApiError::msg(
                ErrorCode::Unsupported,
                format!("method {m} is not allowed here"),
            )
            .into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            Ok(r)
        }
    }
}

/// Attaches what the request did, for notification events (see [`crate::notify`]); built
/// only when notifications are configured (an extension costs an allocation per response).
pub(crate) fn with_notice(
    state: &AppState,
    mut r: Response,
    notice: impl FnOnce() -> Notice,
) -> Response {
    if state.notifier.is_some() {
        r.extensions_mut().insert(notice());
    }
    r
}

/// The notice of a manifest or tag delete.
pub(crate) fn deleted_notice(name: &RepoName, r: &Reference, tags: Vec<Tag>) -> Notice {
    match r {
        Reference::Tag(tag) => Notice::TagDeleted {
            repository: name.clone(),
            tag: tag.to_string(),
        },
        Reference::Digest(digest) => Notice::ManifestDeleted {
            repository: name.clone(),
            digest: digest.clone(),
            tags: tags.iter().map(Tag::to_string).collect(),
        },
    }
}

/// The notice of a blob served, pushed or mounted.
pub(crate) fn blob_notice(
    action: Action,
    name: &RepoName,
    digest: &Digest,
    size: u64,
    from: Option<RepoName>,
) -> Notice {
    Notice::Blob {
        action,
        repository: name.clone(),
        digest: digest.clone(),
        size,
        from,
    }
}

pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn set(r: &mut Response, name: &'static str, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        r.headers_mut().insert(name, v);
    }
}

// ---------------------------------------------------------------- blobs

pub(crate) async fn get_blob(
    state: &AppState,
    name: &RepoName,
    digest: &Digest,
    req: &Parts,
) -> Result<Response> {
    let info = state.registry.stat_blob(name, digest).await?;
    let range = parse_range(header_str(&req.headers, header::RANGE), info.size);
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, info.size),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut r = ApiError::msg(
                ErrorCode::RangeNotSatisfiable,
                format!(
                    "requested range not satisfiable: the blob has {} bytes",
                    info.size
                ),
            )
            .into_response();
            set(&mut r, "content-range", format!("bytes */{}", info.size));
            return Ok(r);
        }
    };
    if req.method == Method::GET {
        // Downloads go straight to storage when it can say where (presigned S3 URLs); the
        // client sends its Range there.
        if let Some(url) = state.registry.blob_redirect(digest).await? {
            let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
            set(&mut r, "location", url);
            set(&mut r, "docker-content-digest", digest.to_string());
            let notice = || blob_notice(Action::Pull, name, digest, info.size, None);
            return Ok(with_notice(state, r, notice));
        }
    }
    let body = if req.method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.registry.read_blob(digest, start, Some(len)).await?)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set(&mut r, "content-length", len.to_string());
    set(&mut r, "content-type", "application/octet-stream");
    set(&mut r, "docker-content-digest", digest.to_string());
    set(&mut r, "etag", format!("\"{digest}\""));
    set(&mut r, "accept-ranges", "bytes");
    set(&mut r, "cache-control", "max-age=31536000");
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut r,
            "content-range",
            format!("bytes {}-{}/{}", start, start + len - 1, info.size),
        );
    }
    // distribution reports a HEAD as a pull too (both are its `ServeBlob`).
    let notice = || blob_notice(Action::Pull, name, digest, info.size, None);
    Ok(with_notice(state, r, notice))
}

// ---------------------------------------------------------------- uploads

fn upload_url(state: &AppState, name: &RepoName, id: &UploadId, headers: &HeaderMap) -> String {
    format!(
        "{}/v2/{name}/blobs/uploads/{id}",
        base_url(&state.options, headers)
    )
}

/// 202/204 with where the upload stands: `Location`, `Range`, `Docker-Upload-UUID`.
fn upload_progress(
    state: &AppState,
    name: &RepoName,
    st: &UploadStatus,
    status: StatusCode,
    headers: &HeaderMap,
) -> Response {
    let mut r = empty(status);
    set(&mut r, "location", upload_url(state, name, &st.id, headers));
    // distribution's convention: `0-<last byte>`, and `0-0` before the first byte.
    set(
        &mut r,
        "range",
        format!("0-{}", st.offset.saturating_sub(1)),
    );
    set(&mut r, "docker-upload-uuid", st.id.as_str());
    r
}

fn blob_created(
    state: &AppState,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set(
        &mut r,
        "location",
        format!(
            "{}/v2/{name}/blobs/{digest}",
            base_url(&state.options, headers)
        ),
    );
    set(&mut r, "docker-content-digest", digest.to_string());
    r
}

fn digest_param(q: &[(String, String)]) -> Result<Option<Digest>> {
    match param(q, "digest") {
        None => Ok(None),
        Some(d) => d
            .parse()
            .map(Some)
            .map_err(|e: berth_core::digest::DigestError| {
                ApiError::msg(ErrorCode::DigestInvalid, e.to_string())
            }),
    }
}

/// The chunk's start offset from `Content-Range`, checked against `Content-Length`.
fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(raw) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    // A Content-Range that is present but not text is malformed, not absent (hardening: it
    // used to be ignored, and the chunk appended wherever the upload stood).
    let cr = raw.to_str().unwrap_or("");
    let (start, end) = parse_content_range(cr).ok_or_else(|| {
        ApiError::msg(
            ErrorCode::ChunkOutOfOrder,
            format!("malformed Content-Range {cr:?} (expected <start>-<end>)"),
        )
    })?;
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
    {
        // `end - start + 1` overflows for `0-18446744073709551615` (hardening: that was a
        // panic in debug builds, a wrong comparison in release builds).
        if len.checked_sub(1) != Some(end - start) {
            return Err(ApiError::msg(
                ErrorCode::SizeInvalid,
                format!("Content-Range {cr:?} does not match Content-Length {len}"),
            ));
        }
    }
    Ok(Some(start))
}

async fn start_upload(
    state: &AppState,
    name: &RepoName,
    req: &Parts,
    body: Body,
    principal: &Principal,
) -> Result<Response> {
    let q = query(&req.uri);
    if let Some(mount) = param(&q, "mount") {
        let digest: Digest = mount
            .parse()
            .map_err(|e: berth_core::digest::DigestError| {
                ApiError::msg(ErrorCode::DigestInvalid, e.to_string())
            })?;
        // A `from` that is not a valid name cannot have the blob, and one the requester may
        // not pull from must not lend it: either way, fall back to an upload.
        let from = param(&q, "from")
            .and_then(|f| f.parse::<RepoName>().ok())
            .filter(|f| principal.can(&berth_auth::scope::Access::repository(f.as_str(), "pull")));
        if let Some(from) = from {
            if let Some(info) = state.registry.mount_blob(name, &from, &digest).await? {
                let r = blob_created(state, name, &digest, &req.headers);
                let notice = || blob_notice(Action::Mount, name, &digest, info.size, Some(from));
                return Ok(with_notice(state, r, notice));
            }
        }
    } else if let Some(digest) = digest_param(&q)? {
        // Monolithic upload in one POST: a small blob needs no upload session.
        let info = state
            .registry
            .push_blob(name, &digest, body.into_data_stream())
            .await?;
        let r = blob_created(state, name, &digest, &req.headers);
        return Ok(with_notice(state, r, || {
            blob_notice(Action::Push, name, &digest, info.size, None)
        }));
    }
    let st = state.registry.start_upload(name).await?;
    Ok(upload_progress(
        state,
        name,
        &st,
        StatusCode::ACCEPTED,
        &req.headers,
    ))
}

async fn patch_upload(
    state: &AppState,
    name: &RepoName,
    id: &UploadId,
    req: &Parts,
    body: Body,
) -> Result<Response> {
    let headers = &req.headers;
    let result = async {
        let start = chunk_start(headers)?;
        let body = body.into_data_stream();
        let st = state.registry.append_upload(name, id, start, body).await?;
        Ok(upload_progress(
            state,
            name,
            &st,
            StatusCode::ACCEPTED,
            headers,
        ))
    }
    .await;
    with_upload_position(state, name, id, headers, result).await
}

async fn put_upload(
    state: &AppState,
    name: &RepoName,
    id: &UploadId,
    req: &Parts,
    body: Body,
) -> Result<Response> {
    let headers = &req.headers;
    let result = async {
        let q = query(&req.uri);
        let digest = digest_param(&q)?.ok_or_else(|| {
            ApiError::msg(
                ErrorCode::DigestInvalid,
                "the digest query parameter is required",
            )
        })?;
        let start = chunk_start(headers)?;
        let body = has_body(headers).then(|| body.into_data_stream());
        let info = state
            .registry
            .complete_upload(name, id, &digest, start, body)
            .await?;
        let r = blob_created(state, name, &digest, headers);
        Ok(with_notice(state, r, || {
            blob_notice(Action::Push, name, &digest, info.size, None)
        }))
    }
    .await;
    with_upload_position(state, name, id, headers, result).await
}

/// A chunk refused with 416 tells the client where the upload stands (`Location`, `Range`),
/// so it can resume from there; for a session that does not exist the answer is the 404.
async fn with_upload_position(
    state: &AppState,
    name: &RepoName,
    id: &UploadId,
    headers: &HeaderMap,
    result: Result<Response>,
) -> Result<Response> {
    match result {
        Err(ApiError::Oci(e)) if e.code == ErrorCode::ChunkOutOfOrder => {
            let st = state.registry.upload_status(name, id).await?;
            let position = upload_progress(state, name, &st, StatusCode::NO_CONTENT, headers);
            let mut r = ApiError::Oci(e).into_response();
            for key in ["location", "range", "docker-upload-uuid"] {
                if let Some(v) = position.headers().get(key) {
                    r.headers_mut().insert(key, v.clone());
                }
            }
            Ok(r)
        }
        other => other,
    }
}

// ---------------------------------------------------------------- manifests

async fn get_manifest(
    state: &AppState,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response> {
    let m = state.registry.get_manifest(name, reference).await?;
    Ok(manifest_response(state, name, reference, m))
}

/// A manifest as the API serves it (GET and HEAD, both pulls for notifications).
pub(crate) fn manifest_response(
    state: &AppState,
    name: &RepoName,
    reference: &Reference,
    m: berth_registry::manifests::StoredManifest,
) -> Response {
    let mut r = Response::new(Body::from(m.body.clone()));
    set(&mut r, "content-type", &m.media_type);
    set(&mut r, "content-length", m.body.len().to_string());
    set(&mut r, "docker-content-digest", m.digest.to_string());
    set(&mut r, "etag", format!("\"{}\"", m.digest));
    with_notice(state, r, || {
        manifest_notice(
            Action::Pull,
            name,
            reference,
            m.digest,
            m.media_type,
            m.body,
        )
    })
}

/// The notice of a manifest pushed or served; `tag` when it was named by tag.
fn manifest_notice(
    action: Action,
    name: &RepoName,
    reference: &Reference,
    digest: Digest,
    media_type: String,
    body: Bytes,
) -> Notice {
    Notice::Manifest {
        action,
        repository: name.clone(),
        digest,
        media_type,
        body,
        tag: match reference {
            Reference::Tag(t) => Some(t.to_string()),
            Reference::Digest(_) => None,
        },
    }
}

/// Reads a manifest body up to the size limit (manifests are small and must be parsed whole).
async fn read_manifest_body(body: Body) -> Result<Bytes> {
    match read_to_limit(body, MAX_MANIFEST_SIZE).await {
        Ok(b) => Ok(b),
        Err(ReadError::TooLarge) => Err(ApiError::msg(
            ErrorCode::ManifestTooLarge,
            format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
        )),
        Err(ReadError::Body(e)) => Err(ApiError::msg(
            ErrorCode::ManifestInvalid,
            format!("reading the manifest failed: {e}"),
        )),
    }
}

/// The most `?tag=` parameters one manifest PUT may carry (the spec asks for at least 10).
const MAX_TAG_PARAMS: usize = 100;

/// The `tag` query parameters of a manifest PUT, validated.
fn tag_params(q: &[(String, String)]) -> Result<Vec<Tag>> {
    let tags: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    if tags.len() > MAX_TAG_PARAMS {
        return Err(ApiError::msg(
            ErrorCode::TooManyTags,
            format!("at most {MAX_TAG_PARAMS} tag parameters per request"),
        ));
    }
    tags.into_iter()
        .map(|t| {
            t.parse::<Tag>()
                .map_err(|e| ApiError::msg(ErrorCode::ManifestInvalid, e.to_string()))
        })
        .collect()
}

async fn put_manifest(
    state: &AppState,
    name: &RepoName,
    reference: &Reference,
    req: &Parts,
    body: Body,
    principal: &Principal,
) -> Result<Response> {
    let headers = &req.headers;
    let extra_tags = tag_params(&query(&req.uri))?;
    let body = read_manifest_body(body).await?;
    let allowed = &state.options.manifest_classes;
    let policy = |info: &ManifestInfo| check_class(allowed, name, info, principal);
    let put = state
        .registry
        .put_manifest_with(
            name,
            reference,
            &extra_tags,
            body.clone(),
            header_str(headers, header::CONTENT_TYPE),
            &policy,
        )
        .await?;
    let mut r = empty(StatusCode::CREATED);
    set(
        &mut r,
        "location",
        format!(
            "{}/v2/{name}/manifests/{}",
            base_url(&state.options, headers),
            put.digest
        ),
    );
    set(&mut r, "docker-content-digest", put.digest.to_string());
    if let Some(subject) = put.subject {
        set(&mut r, "oci-subject", subject.to_string());
    }
    if !extra_tags.is_empty() {
        // Every tag the manifest now has, as the spec's `?tag=` extension reports them.
        let list: Vec<&str> = put.tags.iter().map(Tag::as_str).collect();
        set(&mut r, "oci-tag", list.join(", "));
    }
    Ok(with_notice(state, r, || {
        let media_type = berth_core::manifest::stored_media_type(&body);
        manifest_notice(Action::Push, name, reference, put.digest, media_type, body)
    }))
}

/// distribution's `policy.repository.classes`: with classes configured, a pushed manifest's
/// class (by its config media type) must be one of them, and a token that names the
/// repository must grant it for that class (`repository(plugin):name:push`; no class is
/// `image`). A body the store refuses anyway (invalid, or not matching its digest) gets the
/// store's error: distribution applies the policy after those checks.
fn check_class(
    allowed: &[String],
    name: &RepoName,
    info: &ManifestInfo,
    principal: &Principal,
) -> std::result::Result<(), OciError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let denied = |m: String| Err(OciError::with_message(ErrorCode::Denied, m));
    let class = match info.class() {
        Ok(None) => return Ok(()),
        Ok(Some(c)) => c,
        Err(config) => return denied(format!("unknown manifest class for {config}")),
    };
    if !allowed.iter().any(|a| a == class) {
        return denied(format!("registry does not allow {class} manifest"));
    }
    if let Principal::Token(t) = principal {
        let mut granted = t.classes.iter().filter(|(n, _)| n == name.as_str());
        if granted.clone().next().is_some() && !granted.any(|(_, c)| c == class) {
            return denied(format!("repository not authorized for {class} manifest"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- listings

/// `n` from the query: absent (or empty), or a non-negative integer (Go's `Atoi`: a sign
/// is allowed, `-0` is 0); anything else is `PAGINATION_NUMBER_INVALID`, as in distribution.
fn page_size(q: &[(String, String)]) -> Result<Option<usize>> {
    match param(q, "n") {
        None | Some("") => Ok(None),
        Some(n) => n
            .parse::<i64>()
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::msg(
                    ErrorCode::PaginationNumberInvalid,
                    format!("n={n:?} is not a non-negative integer"),
                )
            }),
    }
}

/// The `Link` to the next page: the request's own path (with `http.prefix`), `n` and `last`.
fn link_next(r: &mut Response, path: &str, n: Option<usize>, last: Option<&String>) {
    if let Some(last) = last {
        let n = n.map(|n| format!("n={n}&")).unwrap_or_default();
        set(
            r,
            "link",
            format!("<{path}?{n}last={}>; rel=\"next\"", percent_encode(last)),
        );
    }
}

/// `GET /v2/<name>/tags/list`, as distribution 3.1: without `n` every tag; a larger `n` than
/// `tags.maxtags` is clamped to it (the `Link` says how to go on); `n=0` is an empty list.
async fn tags(state: &AppState, name: &RepoName, req: &Parts) -> Result<Response> {
    let q = query(&req.uri);
    let n = page_size(&q)?.map(|n| n.min(state.options.tags_max_entries));
    let page = if n == Some(0) {
        berth_registry::tags::Page {
            entries: Vec::new(),
            more: false,
        }
    } else {
        state.registry.list_tags(name, n, param(&q, "last")).await?
    };
    #[derive(serde::Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    let body = TagList {
        name: name.as_str(),
        tags: &page.entries,
    };
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    if page.more {
        link_next(&mut r, req.uri.path(), n, page.entries.last());
    }
    Ok(r)
}

/// `GET /v2/_catalog`, as distribution 3.1: 100 names by default (at most
/// `catalog.maxentries`); an `n` above `catalog.maxentries` is refused with
/// `PAGINATION_NUMBER_INVALID`; `n=0` is an empty list.
async fn catalog(state: &AppState, req: &Parts) -> Result<Response> {
    /// distribution's page size when the client names none.
    const DEFAULT_ENTRIES: usize = 100;
    let q = query(&req.uri);
    let max = state.options.catalog_max_entries;
    let n = match page_size(&q)? {
        Some(n) if n > max => {
            return Err(ApiError::msg(
                ErrorCode::PaginationNumberInvalid,
                format!("n={n} is above catalog.maxentries ({max})"),
            ))
        }
        Some(n) => n,
        None => DEFAULT_ENTRIES.min(max),
    };
    let page = if n == 0 {
        berth_registry::tags::Page {
            entries: Vec::new(),
            more: false,
        }
    } else {
        state.registry.catalog(Some(n), param(&q, "last")).await?
    };
    #[derive(serde::Serialize)]
    struct Catalog<'a> {
        repositories: &'a [String],
    }
    let body = Catalog {
        repositories: &page.entries,
    };
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    if page.more {
        link_next(&mut r, req.uri.path(), Some(n), page.entries.last());
    }
    Ok(r)
}

pub(crate) async fn referrers(
    state: &AppState,
    name: &RepoName,
    subject: &Digest,
    req: &Parts,
) -> Result<Response> {
    let q = query(&req.uri);
    let artifact_type = param(&q, "artifactType").filter(|t| !t.is_empty());
    let manifests = state
        .registry
        .referrers(name, subject, artifact_type)
        .await?;
    let body =
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    set(&mut r, "content-type", OCI_INDEX);
    if artifact_type.is_some() {
        set(&mut r, "oci-filters-applied", "artifactType");
    }
    Ok(r)
}
