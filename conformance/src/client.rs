//! A small blocking HTTP client for the checks: every response (2xx or not) comes back as a
//! [`Resp`] with status, headers and body; only transport failures are errors. Redirects are
//! not followed, so the checks see exactly what the registry answered.

use std::io::Read;
use std::time::Duration;

/// The largest response body the runner reads (manifests, listings, test blobs).
const MAX_BODY: u64 = 256 << 20;

/// The codes a 4xx JSON error body may carry (distribution-spec v1.1, "Error Codes").
pub const SPEC_ERROR_CODES: &[&str] = &[
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

/// The manifest types a pulling client accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A response as the checks see it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `code`s of an OCI error body (empty when the body is not one).
    pub fn error_codes(&self) -> Vec<String> {
        self.json()
            .and_then(|v| {
                v.get("errors")?.as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e.get("code")?.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// A one-line description for failure messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(300).collect();
        format!(
            "{} {} -> {} {}",
            self.method,
            self.url,
            self.status,
            body.trim()
        )
    }
}

/// What to send as a request body.
pub enum Body<'a> {
    /// No body at all (GET, HEAD, DELETE).
    None,
    /// A body with `Content-Length` (an empty slice sends `Content-Length: 0`).
    Bytes(&'a [u8]),
    /// A body sent with `Transfer-Encoding: chunked` (no `Content-Length`).
    Chunked(&'a [u8]),
}

/// The registry under test.
pub struct Client {
    agent: ureq::Agent,
    /// `http://host:port`, no trailing slash.
    pub base: String,
    authorization: Option<String>,
    /// 4xx JSON error bodies whose codes are not the spec's, seen so far (one line each).
    pub(crate) code_violations: std::cell::RefCell<Vec<String>>,
}

impl Client {
    pub fn new(base: &str, authorization: Option<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build();
        Client {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            authorization,
            code_violations: Default::default(),
        }
    }

    /// An absolute URL for a path (`/v2/...`) or a `Location` value (absolute or relative).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            format!("{}/{path_or_url}", self.base)
        }
    }

    /// Sends one request; `Err` only when no HTTP response arrived. A blob GET answered with a
    /// redirect (the spec allows 307 to storage) is followed, without `Authorization`, as
    /// clients do; the response is the final one.
    pub fn send(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Resp, String> {
        let is_blob_get = method == "GET" && path_or_url.contains("/blobs/sha");
        let mut resp = self.send_once(method, path_or_url, headers, body, true)?;
        let mut hops = 0;
        while is_blob_get && matches!(resp.status, 301 | 302 | 303 | 307 | 308) && hops < 3 {
            let Some(next) = resp.header("location").map(str::to_owned) else {
                break;
            };
            let next = self.url(&next);
            resp = self.send_once("GET", &next, headers, Body::None, false)?;
            hops += 1;
        }
        Ok(resp)
    }

    fn send_once(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        with_auth: bool,
    ) -> Result<Resp, String> {
        let url = self.url(path_or_url);
        let mut req = self.agent.request(method, &url);
        if let (Some(a), true) = (&self.authorization, with_auth) {
            req = req.set("Authorization", a);
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        // Real clients always say which manifest types they take; distribution hides OCI
        // manifests from a request without Accept. Checks that care set their own.
        let has_accept = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"));
        if !has_accept && matches!(method, "GET" | "HEAD") && url.contains("/manifests/") {
            req = req.set("Accept", MANIFEST_ACCEPT);
        }
        let result = match body {
            Body::None => req.call(),
            Body::Bytes(b) => req.send_bytes(b),
            Body::Chunked(b) => req.send(std::io::Cursor::new(b.to_vec())),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(format!("{method} {url}: no response: {e}")),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_owned())))
            .collect();
        let mut body = Vec::new();
        if method != "HEAD" {
            resp.into_reader()
                .take(MAX_BODY)
                .read_to_end(&mut body)
                .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        }
        let resp = Resp {
            method: method.to_owned(),
            url,
            status,
            headers,
            body,
        };
        if (400..500).contains(&status) {
            let bad: Vec<String> = resp
                .error_codes()
                .into_iter()
                .filter(|c| !SPEC_ERROR_CODES.contains(&c.as_str()))
                .collect();
            if !bad.is_empty() {
                self.code_violations.borrow_mut().push(format!(
                    "{} {} -> {} with code(s) {}",
                    resp.method,
                    resp.url,
                    status,
                    bad.join(",")
                ));
            }
        }
        Ok(resp)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        self.send("GET", path, headers, Body::None)
    }

    pub fn head(&self, path: &str) -> Result<Resp, String> {
        self.send("HEAD", path, &[], Body::None)
    }

    pub fn delete(&self, path: &str) -> Result<Resp, String> {
        self.send("DELETE", path, &[], Body::None)
    }
}

/// Appends a query parameter to a URL that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode_query(value))
}

/// Percent-encodes a query value (digests keep their ':' readable, as clients send them).
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
