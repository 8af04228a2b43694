//! A client of one upstream registry: the `/v2/` calls the cache needs, and the auth handshake
//! registries expect: on a 401 with a `Bearer` challenge, a token from the challenge's realm
//! (anonymous, or with this upstream's credentials) for the challenge's scope, cached per scope
//! until it expires; on a `Basic` challenge, this upstream's credentials. Credentials go only
//! to this upstream and its token realm; redirects to other hosts (blob storage) never carry
//! them. The credentials are `username`/`password`, or with `proxy.exec` a credential
//! helper's answer (see [`crate::credentials`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use reqwest::{header, Method, StatusCode};

use crate::policy::UpstreamConfig;

/// The manifest types the cache asks for.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Why an upstream call did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused the credentials or the token: {0}")]
    Unauthorized(String),
    #[error("upstream rate limit reached (HTTP 429)")]
    RateLimited,
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

/// A manifest as upstream sent it.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    pub body: Bytes,
    pub media_type: String,
    pub digest: Option<String>,
}

/// Docker Hub's pull quota as last reported (`ratelimit-remaining`), -1 when unknown.
#[derive(Debug)]
pub struct RateLimit {
    pub remaining: AtomicI64,
    pub limit: AtomicI64,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    http: reqwest::Client,
    /// Bearer tokens by scope, with when they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// `proxy.exec`: replaces `username`/`password`.
    exec: Option<crate::credentials::ExecCredentials>,
    pub rate_limit: RateLimit,
    /// Requests sent, for the metrics.
    pub requests: RequestCounts,
}

/// Requests sent upstream since the start, by method, kind (`manifest`, `blob`, `tags`,
/// `token`) and status (0: no answer). Upstream requests are few next to client requests.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<std::collections::BTreeMap<RequestKey, u64>>);

/// `(method, kind, status)`.
pub type RequestKey = (&'static str, &'static str, u16);

impl RequestCounts {
    fn count(&self, key: RequestKey) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(key).or_insert(0) += 1;
    }

    /// Every counter, sorted.
    pub fn snapshot(&self) -> Vec<(RequestKey, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// What an upstream path asks for (a metric label).
fn kind_of(path: &str) -> &'static str {
    if path.contains("/manifests/") {
        "manifest"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.ends_with("/tags/list") || path.contains("/tags/list?") {
        "tags"
    } else {
        "other"
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    }
}

/// `key="value"` pairs of a `WWW-Authenticate` challenge after its scheme.
fn challenge_params(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(k, v.to_owned());
        rest = next.trim_start_matches([',', ' ']).trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Upstream {
            exec: config
                .exec
                .clone()
                .map(crate::credentials::ExecCredentials::new),
            config,
            http,
            tokens: Mutex::new(HashMap::new()),
            rate_limit: RateLimit {
                remaining: AtomicI64::new(-1),
                limit: AtomicI64::new(-1),
            },
            requests: RequestCounts::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    /// The `Basic` header for a request to `url`, when there are credentials: the configured
    /// ones, or the credential helper's for `url`'s host (as distribution asks it: the token
    /// realm's host for a token, the upstream's for Basic).
    async fn basic(&self, url: &str) -> Option<String> {
        let (u, p) = match &self.exec {
            Some(exec) => {
                let host = reqwest::Url::parse(url).ok().map(|u| {
                    let host = u.host_str().unwrap_or("").to_owned();
                    match u.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    }
                })?;
                exec.get(&host).await?
            }
            None => (
                self.config.username.clone().unwrap_or_default(),
                self.config.password.clone().unwrap_or_default(),
            ),
        };
        if u.is_empty() {
            return None;
        }
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// Gets a token from a Bearer challenge's realm for its scope, and caches it under `key`
    /// (the scope this client looks tokens up by).
    async fn token(
        &self,
        params: &HashMap<String, String>,
        key: &str,
    ) -> Result<String, UpstreamError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| UpstreamError::Unavailable("Bearer challenge without realm".into()))?;
        let scope = params.get("scope").cloned().unwrap_or_default();
        let mut req = self.http.get(realm);
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(("service", s));
        }
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", s));
        }
        req = req.query(&query);
        let basic = self.basic(realm).await;
        let with_credentials = basic.is_some();
        if let Some(b) = basic {
            req = req.header(header::AUTHORIZATION, b);
        }
        let sent = req.send().await;
        self.requests.count((
            "GET",
            "token",
            sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0),
        ));
        let resp =
            sent.map_err(|e| UpstreamError::Unavailable(format!("token realm {realm}: {e}")))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(UpstreamError::Unauthorized(format!(
                    "the token realm {realm} refused {}",
                    if with_credentials {
                        "proxy credentials"
                    } else {
                        "an anonymous request"
                    }
                )))
            }
            StatusCode::TOO_MANY_REQUESTS => return Err(UpstreamError::RateLimited),
            s => {
                return Err(UpstreamError::Unavailable(format!(
                    "token realm {realm}: HTTP {s}"
                )))
            }
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("token realm {realm}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Unavailable(format!("token realm {realm}: {e}")))?;
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| {
                UpstreamError::Unavailable(format!("token realm {realm}: no token in the answer"))
            })?
            .to_owned();
        let lifetime = v["expires_in"].as_u64().unwrap_or(60).max(10);
        // Renew a little before it expires.
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(5));
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (token.clone(), until));
        Ok(token)
    }

    /// Sends a request, answering an auth challenge once, in a trace span.
    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        use tracing::Instrument;
        let kind = kind_of(path);
        let span = tracing::info_span!(
            target: "berth::otel",
            "upstream",
            otel.name = format!("upstream {method} {kind}"),
            otel.kind = "client",
            upstream = %self.config.label(),
            http.request.method = %method,
            url.path = path,
            http.response.status_code = tracing::field::Empty,
        );
        let result = self
            .send_inner(method, path, scope, accept)
            .instrument(span.clone())
            .await;
        if let Ok(r) = &result {
            span.record("http.response.status_code", r.status().as_u16());
        }
        result
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let (method_label, kind) = (method_label(&method), kind_of(path));
        let counted = |r: &Result<reqwest::Response, reqwest::Error>| {
            let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
            self.requests.count((method_label, kind, status));
        };
        let build = |auth: Option<String>| {
            let mut r = self.http.request(method.clone(), self.url(path));
            if let Some(a) = accept {
                r = r.header(header::ACCEPT, a);
            }
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            r
        };
        let cached = self.cached_token(scope).map(|t| format!("Bearer {t}"));
        let sent = build(cached).send().await;
        counted(&sent);
        let resp =
            sent.map_err(|e| UpstreamError::Unavailable(format!("{}: {e}", self.url(path))))?;
        self.note_rate_limit(&resp);
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (scheme, params) = challenge_params(&challenge);
        let auth = match scheme.as_str() {
            "bearer" => format!("Bearer {}", self.token(&params, scope).await?),
            "basic" => self.basic(&self.url(path)).await.ok_or_else(|| {
                UpstreamError::Unauthorized(
                    "upstream wants Basic credentials and none are configured".into(),
                )
            })?,
            other => {
                return Err(UpstreamError::Unauthorized(format!(
                    "unsupported challenge {other:?}"
                )))
            }
        };
        let sent = build(Some(auth)).send().await;
        counted(&sent);
        let resp =
            sent.map_err(|e| UpstreamError::Unavailable(format!("{}: {e}", self.url(path))))?;
        self.note_rate_limit(&resp);
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Unauthorized(format!(
                "HTTP {} after authenticating",
                resp.status()
            )));
        }
        Ok(resp)
    }

    /// Docker Hub's `ratelimit-remaining: 76;w=21600`: logged at DEBUG, kept for metrics.
    fn note_rate_limit(&self, resp: &reqwest::Response) {
        let num = |name: &str| -> Option<i64> {
            resp.headers()
                .get(name)?
                .to_str()
                .ok()?
                .split(';')
                .next()?
                .trim()
                .parse()
                .ok()
        };
        if let Some(rem) = num("ratelimit-remaining") {
            self.rate_limit.remaining.store(rem, Ordering::Relaxed);
            if let Some(l) = num("ratelimit-limit") {
                self.rate_limit.limit.store(l, Ordering::Relaxed);
            }
            tracing::debug!(upstream = %self.config.label(), remaining = rem, "upstream rate limit");
        }
    }

    fn status_error(resp: &reqwest::Response) -> UpstreamError {
        match resp.status() {
            StatusCode::NOT_FOUND => UpstreamError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => UpstreamError::RateLimited,
            s => UpstreamError::Unavailable(format!("HTTP {s}")),
        }
    }

    fn scope(remote: &str) -> String {
        format!("repository:{remote}:pull")
    }

    /// The digest a tag (or digest) resolves to upstream, by HEAD (Docker Hub does not count
    /// HEADs against its pull limit).
    pub async fn head_manifest(
        &self,
        remote: &str,
        reference: &str,
    ) -> Result<String, UpstreamError> {
        let resp = self
            .send(
                Method::HEAD,
                &format!("/v2/{remote}/manifests/{reference}"),
                &Self::scope(remote),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(&resp));
        }
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                UpstreamError::Unavailable(
                    "HEAD of a manifest without Docker-Content-Digest".into(),
                )
            })
    }

    pub async fn get_manifest(
        &self,
        remote: &str,
        reference: &str,
    ) -> Result<RemoteManifest, UpstreamError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{remote}/manifests/{reference}"),
                &Self::scope(remote),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(&resp));
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("reading a manifest: {e}")))?;
        Ok(RemoteManifest {
            body,
            media_type,
            digest,
        })
    }

    /// A blob's size, by HEAD.
    pub async fn head_blob(&self, remote: &str, digest: &str) -> Result<u64, UpstreamError> {
        let resp = self
            .send(
                Method::HEAD,
                &format!("/v2/{remote}/blobs/{digest}"),
                &Self::scope(remote),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(&resp));
        }
        resp.content_length().ok_or_else(|| {
            UpstreamError::Unavailable("HEAD of a blob without Content-Length".into())
        })
    }

    /// A blob's bytes as they arrive, with its length when upstream says it.
    pub async fn get_blob(
        &self,
        remote: &str,
        digest: &str,
    ) -> Result<
        (
            Option<u64>,
            impl Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
        ),
        UpstreamError,
    > {
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{remote}/blobs/{digest}"),
                &Self::scope(remote),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(&resp));
        }
        Ok((resp.content_length(), resp.bytes_stream()))
    }

    /// Upstream's tag list (one page).
    pub async fn tags(
        &self,
        remote: &str,
        query: &str,
    ) -> Result<serde_json::Value, UpstreamError> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{remote}/tags/list{q}"),
                &Self::scope(remote),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(&resp));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("tag list: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Unavailable(format!("tag list: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = challenge_params(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
        let (s, p) = challenge_params(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let (_, p) = challenge_params(r#"Bearer realm=https://a/t, service=x"#);
        assert_eq!(
            (p["realm"].as_str(), p["service"].as_str()),
            ("https://a/t", "x")
        );
    }
}
