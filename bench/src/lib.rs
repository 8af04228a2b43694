//! Shared pieces of the benchmarks: where the `berth` binary is, timing, medians, tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `berth` binary to measure: `$BERTH_BIN`, or the one built beside this benchmark
/// (`cargo build --release -p berth -p berth-bench` puts both in `target/release`).
pub fn berth_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe.with_file_name("berth");
    assert!(
        candidate.exists(),
        "{} is missing: build it (cargo build --release -p berth) or set BERTH_BIN",
        candidate.display()
    );
    candidate
}

/// Runs `f` and returns how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// A bare HTTP/1.1 exchange for the large transfers: the body goes out in one `write_all` and
/// comes back through a 1 MiB buffer, so the client costs as little CPU as it can (the
/// benchmark shares two cores with the server; a general client copying through 8 KiB buffers
/// measured itself more than the registry).
pub mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A response: status, headers (names lower-case) and how many body bytes arrived.
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body_len: u64,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends `method url` with `headers` and `body` (Content-Length), reads the answer and
    /// discards its body. One connection per call.
    pub fn exchange(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut s = TcpStream::connect(host).unwrap();
        s.set_nodelay(true).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_response(&mut s)
    }

    fn read_response(s: &mut TcpStream) -> Response {
        let mut buf = vec![0u8; 1 << 20];
        let mut filled = 0;
        let end = loop {
            let n = s.read(&mut buf[filled..]).unwrap();
            assert!(n > 0, "connection closed before the response head");
            filled += n;
            if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body_len = (filled - end) as u64;
        // Connection: close, so the body ends where the stream does.
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            body_len += n as u64;
        }
        Response {
            status,
            headers,
            body_len,
        }
    }
}

/// wrk (Debian's `wrk`): `-t2 -c64` against one URL, parsed.
pub mod wrk {
    use std::process::Command;

    /// One run: requests per second, the 99th percentile latency (ms), and how many requests
    /// completed (wrk does not count those still in flight when it stops).
    pub struct Run {
        pub rps: f64,
        pub p99_ms: f64,
        pub requests: u64,
    }

    /// Runs `wrk -t2 -c64 -d<secs>s --latency` with `headers`; panics on non-2xx answers (the
    /// workload would be wrong, not fast).
    pub fn run(url: &str, headers: &[String], secs: u32) -> Run {
        let mut cmd = Command::new("wrk");
        cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"]);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
        let p99_ms = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("99%"))
            .map(|v| parse_time(v.trim()))
            .unwrap_or_else(|| panic!("no 99% in wrk output:\n{text}"));
        // "  170450 requests in 10.00s, 95.10MB read"
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
        if let Some(l) = text.lines().find(|l| l.contains("Non-2xx")) {
            panic!("{url}: {l}\n{text}");
        }
        Run {
            rps,
            p99_ms,
            requests,
        }
    }

    /// wrk's durations: `850.00us`, `12.34ms`, `1.20s`, `2.00m`.
    pub fn parse_time(v: &str) -> f64 {
        let (num, unit) = v
            .find(|c: char| c.is_ascii_alphabetic())
            .map(|i| v.split_at(i))
            .unwrap_or((v, "ms"));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => f64::NAN,
        }
    }
}

/// One blob pushed as Docker pushes it: `HEAD` (absent), `POST`, one `PATCH` with the whole
/// body (chunked transfer encoding when `chunked`, as Docker streams it), `PUT ?digest=`.
pub fn docker_push_blob(
    c: &berth_conformance::client::Client,
    repo: &str,
    blob: &[u8],
    chunked: bool,
) {
    use berth_conformance::client::{with_query, Body};
    use berth_conformance::fixtures::{digest, expect_status, location, OCTET};
    let d = digest(blob);
    let r = c.head(&format!("/v2/{repo}/blobs/{d}")).unwrap();
    assert_eq!(r.status, 404, "{}", r.describe());
    let loc = c.start_upload(repo).unwrap();
    let body = if chunked {
        Body::Chunked(blob)
    } else {
        Body::Bytes(blob)
    };
    let r = c
        .send("PATCH", &loc, &[("Content-Type", OCTET)], body)
        .unwrap();
    expect_status(&r, &[202]).unwrap();
    let loc = location(&r).unwrap();
    let r = c
        .send(
            "PUT",
            &with_query(&loc, "digest", &d),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    expect_status(&r, &[201]).unwrap();
}
