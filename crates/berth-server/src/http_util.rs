//! Small HTTP helpers: header access, `Range`/`Content-Range` parsing, query strings and
//! `Location` URLs.

use http::{header, HeaderMap};

use crate::ServerOptions;

pub fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a request carries a body (a non-zero `Content-Length` or a chunked body).
pub fn has_body(headers: &HeaderMap) -> bool {
    match header_str(headers, header::CONTENT_LENGTH) {
        Some(l) => l.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Query parameters, percent-decoded. Repeated keys keep the first value.
pub fn query(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Query keys whose values the access log shows; any other value (an upload state token, a
/// presigned-URL signature, a token a client put in the URL) is logged as `REDACTED`.
const LOGGED_QUERY_KEYS: &[&str] = &[
    "digest",
    "mount",
    "from",
    "n",
    "last",
    "tag",
    "artifactType",
    "ns",
    "service",
    "scope",
    "account",
    "offline_token",
    "client_id",
];

/// The query string as the access log shows it.
pub fn loggable_query(q: &str) -> String {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if LOGGED_QUERY_KEYS.contains(&k) => format!("{k}={v}"),
            Some((k, _)) => format!("{k}=REDACTED"),
            None => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Minimal percent-encoding for query values we put into `Link` headers.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A byte range a client asked for, resolved against the object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) Range header: the whole object.
    Full,
    /// Inclusive `start..=end`.
    Partial { start: u64, end: u64 },
    /// Cannot be satisfied (416).
    Unsatisfiable,
}

/// Parses a `Range: bytes=...` header (single range; several ranges are served as the full
/// object, which RFC 9110 allows).
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last `b` bytes.
        return match b.parse::<u64>() {
            Ok(0) | Err(_) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeRequest::Unsatisfiable;
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    let end = if b.is_empty() {
        size - 1
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size - 1),
            _ => return RangeRequest::Unsatisfiable,
        }
    };
    RangeRequest::Partial { start, end }
}

/// Parses an upload `Content-Range` (`<start>-<end>`, also accepting `bytes <start>-<end>[/total]`
/// and `bytes=<start>-<end>` as some clients send). Returns inclusive `(start, end)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = b.trim().parse().ok()?;
    (end >= start).then_some((start, end))
}

/// The scheme a proxy says the client used: the first entry of `X-Forwarded-Proto` (a chain
/// of proxies sends a list).
pub fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, "x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The base of the API's URLs (`/v2/` follows): `http.host` as configured (as in
/// distribution, it names the prefix itself when there is one), or the scheme and host the
/// client used followed by `http.prefix`, or only the prefix with `http.relativeurls`.
pub fn base_url(opts: &ServerOptions, headers: &HeaderMap) -> String {
    if let Some(ext) = &opts.external_url {
        return ext.trim_end_matches('/').to_owned();
    }
    if opts.relative_urls {
        return opts.prefix.clone();
    }
    let proto = forwarded_proto(headers).unwrap_or(if opts.https { "https" } else { "http" });
    let host = header_str(headers, "x-forwarded-host")
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .or_else(|| header_str(headers, header::HOST))
        .unwrap_or("localhost");
    format!("{proto}://{host}{}", opts.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "reg.local:5000".parse().unwrap());
        let mut o = ServerOptions::default();
        assert_eq!(base_url(&o, &h), "http://reg.local:5000");
        o.https = true;
        assert_eq!(base_url(&o, &h), "https://reg.local:5000");
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        assert_eq!(base_url(&o, &h), "http://reg.local:5000");
        o.prefix = "/registry".to_owned();
        assert_eq!(base_url(&o, &h), "http://reg.local:5000/registry");
        o.relative_urls = true;
        assert_eq!(base_url(&o, &h), "/registry");
        o.external_url = Some("https://registry.example.com/".to_owned());
        assert_eq!(base_url(&o, &h), "https://registry.example.com");
        o.prefix = String::new();
        o.relative_urls = false;
        assert_eq!(base_url(&o, &h), "https://registry.example.com");
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("a-b"), None);
    }

    #[test]
    fn logged_query_hides_unknown_values() {
        assert_eq!(
            loggable_query("digest=sha256:ab&_state=secret&n=5&token=t0p"),
            "digest=sha256:ab&_state=REDACTED&n=5&token=REDACTED"
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("sha256%3Aab"), "sha256:ab");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_encode("a b:c"), "a%20b%3Ac");
    }
}
