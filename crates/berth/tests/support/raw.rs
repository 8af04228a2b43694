//! HTTP/1.1 over a bare socket, for requests no well-behaved client would send (malformed
//! request lines, smuggling headers, truncated and stalled bodies, huge headers): the bytes go
//! out exactly as written and whatever comes back is parsed leniently.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What came back on a raw connection.
#[derive(Debug, Clone)]
pub struct RawResp {
    /// `0` when the server closed the connection without answering.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long until the connection ended (or the read gave up).
    pub elapsed: Duration,
    /// Whether the server closed the connection (EOF or reset) within the read timeout.
    pub closed: bool,
    /// Everything the server sent.
    pub raw: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first OCI error code of the body, if it is one.
    pub fn code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }

    pub fn describe(&self) -> String {
        let body: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect();
        format!("{} {:?} {}", self.status, self.code(), body)
    }
}

/// A request with a correct `Content-Length` and `Connection: close`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: berth.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` (write errors are ignored: the server may answer and close early) and reads
/// until the server closes the connection or `wait` passes.
pub fn exchange(addr: &str, bytes: &[u8], wait: Duration) -> RawResp {
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let _ = s.write_all(bytes);
    read_until_closed(&mut s, started, wait)
}

/// Reads what the server sends until it closes the connection or `wait` has passed since
/// `started`.
pub fn read_until_closed(s: &mut TcpStream, started: Instant, wait: Duration) -> RawResp {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let mut closed = false;
    loop {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let mut r = parse(&out);
    r.elapsed = started.elapsed();
    r.closed = closed;
    r
}

/// Parses the first response in `raw` (a chunked body is decoded).
pub fn parse(raw: &[u8]) -> RawResp {
    let mut r = RawResp {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        elapsed: Duration::ZERO,
        closed: false,
        raw: raw.to_vec(),
    };
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return r;
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    r.status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    r.headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    r.body = if r
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        let len = r
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(rest.len());
        rest[..len.min(rest.len())].to_vec()
    };
    r
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}
