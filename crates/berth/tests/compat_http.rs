//! HTTP behaviours that operators of distribution rely on, through real `berth serve`
//! processes (and Debian's distribution 2.8 where its answer is the reference): health checks
//! that close the API with distribution's 503 (file, HTTP and TCP targets started here, the
//! storage driver), `GET /`, `auth.token.autoredirect`, `http.prefix`, `http.net: unix`, the
//! catalog and tags limits of distribution 3.1, and the WARN lines for `log.hooks` and
//! `reporting`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_conformance::client::Client;
use berth_conformance::fixtures::{digest, Image};
use support::raw::{self, RawResp};
use support::{Berth, Distribution};

/// distribution's body while a health check fails (`health.Handler`), byte for byte.
const UNAVAILABLE_BODY: &str = "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"service unavailable\",\"detail\":\"health check failed: please see /debug/health\"}]}\n";

/// One request over TCP with the given `Host` (and other headers), `Connection: close`.
fn send(addr: &str, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> RawResp {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    raw::exchange(addr, r.as_bytes(), Duration::from_secs(10))
}

fn get(b: &Berth, path: &str) -> RawResp {
    send(&b.host, "GET", path, &b.host, &[])
}

/// Polls `path` until it answers `status` (the checks below run every second).
fn wait_status(b: &Berth, path: &str, status: u16) -> RawResp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(b, path);
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {} (wanted {status}): {}",
            r.status,
            r.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that the API is closed the way distribution closes it.
fn assert_closed(b: &Berth) {
    for (method, path) in [
        ("GET", "/v2/"),
        ("GET", "/v2/_catalog"),
        ("GET", "/v2/hc/app/manifests/v1"),
        ("POST", "/v2/hc/app/blobs/uploads/"),
        ("GET", "/"),
    ] {
        let r = send(&b.host, method, path, &b.host, &[("Content-Length", "0")]);
        assert_eq!(r.status, 503, "{method} {path}: {}", r.describe());
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            UNAVAILABLE_BODY,
            "{method} {path}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Berth's probes answer before the gate: alive, not ready.
    assert_eq!(get(b, "/livez").status, 200);
    assert_eq!(get(b, "/readyz").status, 503);
}

/// An HTTP health target: answers every request with the status in `status`, and records
/// each request's head.
struct HttpTarget {
    addr: String,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpTarget {
    fn start() -> HttpTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (status.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                sn.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let code = st.load(Ordering::SeqCst);
                let _ = conn.write_all(
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        HttpTarget { addr, status, seen }
    }
}

#[test]
fn failing_health_checks_close_the_api_with_distributions_503() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let down = dir.path().join("maintenance");
    let target = HttpTarget::start();
    // A TCP target: the kernel completes connections in the backlog, nothing needs to accept.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let yaml = format!(
        r#"version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:0
health:
  storagedriver:
    enabled: true
    interval: 1s
    threshold: 2
  file:
    - file: {down}
      interval: 1s
  http:
    - uri: http://{http}/health
      headers:
        X-Probe: [berth]
      statuscode: 200
      interval: 1s
      threshold: 2
      timeout: 2s
  tcp:
    - addr: {tcp}
      interval: 1s
      timeout: 1s
      threshold: 1
"#,
        root = root.display(),
        down = down.display(),
        http = target.addr,
        tcp = tcp_addr,
    );
    let berth = Berth::start_with_config(&yaml, &root);
    let client = Client::new(&berth.url, None);
    let img = Image::oci("health-gate", 1, "");
    client.push_image("hc/app", "v1", &img).unwrap();
    wait_status(&berth, "/v2/", 200);
    assert_eq!(get(&berth, "/").status, 200);

    // The file check: a maintenance switch.
    std::fs::write(&down, "").unwrap();
    wait_status(&berth, "/v2/", 503);
    assert_closed(&berth);
    std::fs::remove_file(&down).unwrap();
    wait_status(&berth, "/v2/", 200);
    assert_eq!(get(&berth, "/v2/hc/app/manifests/v1").status, 200);

    // The HTTP check: a HEAD with the configured headers; a wrong status closes the API.
    {
        let seen = target.seen.lock().unwrap();
        let last = seen.last().expect("the HTTP target was never asked");
        assert!(last.starts_with("HEAD /health HTTP/1.1"), "{last}");
        assert!(
            last.to_ascii_lowercase().contains("x-probe: berth"),
            "{last}"
        );
    }
    target.status.store(500, Ordering::SeqCst);
    wait_status(&berth, "/v2/", 503);
    assert_closed(&berth);
    target.status.store(200, Ordering::SeqCst);
    wait_status(&berth, "/v2/", 200);

    // The TCP check: the target goes away, then comes back on the same port.
    drop(tcp);
    wait_status(&berth, "/v2/", 503);
    assert_closed(&berth);
    let _tcp = TcpListener::bind(tcp_addr).unwrap();
    wait_status(&berth, "/v2/", 200);

    // The storage driver check: the root's place taken by a file.
    let broken = support::BrokenRoot::new(&root);
    wait_status(&berth, "/v2/", 503);
    assert_closed(&berth);
    broken.restore();
    wait_status(&berth, "/v2/", 200);

    // Everything pushed before is still served.
    for blob in img.blobs() {
        let r = get(&berth, &format!("/v2/hc/app/blobs/{}", digest(blob)));
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, blob);
    }
    let log = berth.log();
    assert!(log.contains("the API answers 503 until it passes"), "{log}");
    assert!(log.contains("health check passes again"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_503_and_get_root_are_distributions() {
    // distribution 2.8 with a failing file check is the reference for the 503.
    let dir = tempfile::tempdir().unwrap();
    let down = dir.path().join("down");
    let extra = format!(
        "health:\n  file:\n    - file: {}\n      interval: 1s\n",
        down.display()
    );
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), &extra);
    let dist_host = dist.host.clone();
    let r = send(&dist_host, "GET", "/", &dist_host, &[]);
    assert_eq!(r.status, 200, "distribution: {}", r.describe());
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.body.is_empty());
    std::fs::write(&down, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reference = loop {
        let r = send(&dist_host, "GET", "/v2/", &dist_host, &[]);
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "distribution never closed");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(String::from_utf8_lossy(&reference.body), UNAVAILABLE_BODY);
    // distribution closes `/` too: its `alive` handler sits inside the health gate.
    assert_eq!(send(&dist_host, "GET", "/", &dist_host, &[]).status, 503);

    // Berth, with htpasswd auth: `GET /` answers before auth, as distribution's does.
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let berth_down = dir.path().join("berth-down");
    let extra = format!(
        "auth:\n  htpasswd:\n    realm: r\n    path: {}\nhealth:\n  file:\n    - file: {}\n      interval: 1s\n",
        htpasswd.display(),
        berth_down.display()
    );
    let berth = Berth::start_on(&dir.path().join("berth"), &extra);
    for method in ["GET", "HEAD", "POST"] {
        let r = send(
            &berth.host,
            method,
            "/",
            &berth.host,
            &[("Content-Length", "0")],
        );
        assert_eq!(r.status, 200, "{method} /: {}", r.describe());
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert!(r.body.is_empty());
    }
    assert_eq!(get(&berth, "/v2/").status, 401);
    std::fs::write(&berth_down, "").unwrap();
    let r = wait_status(&berth, "/v2/", 503);
    assert_eq!(r.body, reference.body);
    // 2.8 adds `; charset=utf-8`; 3.x sends this, as Berth's other error bodies.
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Closed before auth: no credentials needed to learn that the registry is down.
    assert_eq!(get(&berth, "/").status, 503);
}

#[test]
fn autoredirect_builds_the_realm_from_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let g = berth_auth::signer::generate(berth_auth::keys::Alg::RS256, "issuer", 30).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &g.cert_pem).unwrap();
    let token = |extra: &str| {
        format!(
            "auth:\n  token:\n    realm: https://auth.example.com/token\n    service: reg\n    issuer: iss\n    rootcertbundle: {}\n{extra}",
            bundle.display()
        )
    };
    let realm = |r: &RawResp| -> String {
        let h = r.header("www-authenticate").unwrap_or_default();
        h.split("realm=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    let host = "registry.example.com:5000";

    // distribution 2.8 and Berth with `autoredirect: true` and no proxy header agree.
    let dist = Distribution::start_with_extra(
        &dir.path().join("dist"),
        &token("    autoredirect: true\n"),
    );
    let r = send(&dist.host, "GET", "/v2/", host, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(realm(&r), "https://registry.example.com:5000/auth/token");

    let berth = Berth::start_on(&dir.path().join("a"), &token("    autoredirect: true\n"));
    let r = send(&berth.host, "GET", "/v2/", host, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(realm(&r), "https://registry.example.com:5000/auth/token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"https://registry.example.com:5000/auth/token\",service=\"reg\"")
    );
    // distribution 3: the scheme follows X-Forwarded-Proto; the scope stays.
    let r = send(
        &berth.host,
        "GET",
        "/v2/a/b/tags/list",
        host,
        &[("X-Forwarded-Proto", "http")],
    );
    assert_eq!(realm(&r), "http://registry.example.com:5000/auth/token");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .ends_with(",scope=\"repository:a/b:pull\""),
        "{:?}",
        r.header("www-authenticate")
    );
    // Another host, another realm.
    let r = send(&berth.host, "GET", "/v2/", "mirror.internal", &[]);
    assert_eq!(realm(&r), "https://mirror.internal/auth/token");

    // autoredirectpath.
    let berth = Berth::start_on(
        &dir.path().join("b"),
        &token("    autoredirect: true\n    autoredirectpath: /custom/token\n"),
    );
    let r = send(&berth.host, "GET", "/v2/", host, &[]);
    assert_eq!(realm(&r), "https://registry.example.com:5000/custom/token");

    // Off: the configured realm, whatever the host.
    let berth = Berth::start_on(&dir.path().join("c"), &token("    autoredirect: false\n"));
    let r = send(&berth.host, "GET", "/v2/", host, &[]);
    assert_eq!(realm(&r), "https://auth.example.com/token");
    assert!(!berth.log().contains("autoredirect"), "{}", berth.log());
}

#[test]
fn prefix_serves_the_api_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  prefix: /registry/\ncatalog:\n  maxentries: 1\n",
        root.display()
    );
    let berth = Berth::start_with_config(&yaml, &root);
    assert!(
        !berth.log().contains("not supported"),
        "http.prefix is supported: {}",
        berth.log()
    );
    let client = Client::new(&format!("{}/registry", berth.url), None);
    let img = Image::oci("prefixed", 2, "");
    // Every Location the client follows carries the prefix.
    let loc = client.start_upload("p/app").unwrap();
    assert!(
        loc.starts_with(&format!("{}/registry/v2/p/app/blobs/uploads/", berth.url)),
        "{loc}"
    );
    let r = client.push_image("p/app", "v1", &img).unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("{}/registry/v2/p/app/manifests/{}", berth.url, img.digest()).as_str())
    );
    client.push_image("p/other", "v1", &img).unwrap();
    let r = client.get("/v2/p/app/manifests/v1", &[]).unwrap();
    assert_eq!((r.status, r.body.clone()), (200, img.manifest.clone()));
    for blob in img.blobs() {
        let r = client
            .get(&format!("/v2/p/app/blobs/{}", digest(blob)), &[])
            .unwrap();
        assert_eq!(&r.body, blob);
    }
    // The catalog's next page is below the prefix too.
    let r = client.get("/v2/_catalog", &[]).unwrap();
    assert_eq!(
        r.header("link"),
        Some("</registry/v2/_catalog?n=1&last=p/app>; rel=\"next\"")
    );

    // Outside the prefix: distribution's router's plain 404; `/` is still alive.
    let outside = [
        "/v2/",
        "/v2/p/app/manifests/v1",
        "/registryx/v2/",
        "/other/v2/",
    ];
    for path in outside {
        let r = get(&berth, path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(String::from_utf8_lossy(&r.body), "404 page not found\n");
    }
    assert_eq!(get(&berth, "/").status, 200);
    assert_eq!(get(&berth, "/registry/v2/").status, 200);
    assert_eq!(get(&berth, "/registry/v2").status, 200);

    // distribution 2.8 with the same prefix answers the same outside it.
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), "  prefix: /registry/\n");
    for path in outside {
        let r = send(&dist.host, "GET", path, &dist.host, &[]);
        assert_eq!(r.status, 404, "distribution {path}");
        assert_eq!(String::from_utf8_lossy(&r.body), "404 page not found\n");
    }
    assert_eq!(
        send(&dist.host, "GET", "/registry/v2/", &dist.host, &[]).status,
        200
    );
}

/// One request over a Unix socket, `Connection: close`.
fn unix_request(sock: &Path, method: &str, path: &str, body: &[u8]) -> RawResp {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&raw::request(method, path, &[], body)).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    raw::parse(&out)
}

#[test]
fn unix_socket_listener() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let sock = dir.path().join("registry.sock");
    // A socket left behind by an earlier run is replaced, as distribution does.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let cfg = dir.path().join("config.yml");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  net: unix\n  addr: {}\n",
        root.display(),
        sock.display()
    );
    std::fs::write(&cfg, &yaml).unwrap();
    let mut child = std::process::Command::new(support::bin())
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "berth never listened on {}: {}",
            sock.display(),
            std::fs::read_to_string(dir.path().join("log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = unix_request(&sock, "GET", "/v2/", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
    let data = b"over a unix socket";
    let d = digest(data);
    let r = unix_request(
        &sock,
        "POST",
        &format!("/v2/u/app/blobs/uploads/?digest={d}"),
        data,
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let r = unix_request(&sock, "GET", &format!("/v2/u/app/blobs/{d}"), b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &data[..]));
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(
        log.contains(&format!("listening on unix:{}", sock.display())),
        "{log}"
    );
    // SIGTERM: the socket file goes with the listener.
    let status = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "the socket file was left behind");

    // A file that is not a socket is never replaced.
    std::fs::write(&sock, "precious").unwrap();
    let out = std::process::Command::new(support::bin())
        .arg("serve")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}

#[test]
fn catalog_and_tags_limits_as_distribution_3_1() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_on(
        &dir.path().join("data"),
        "catalog:\n  maxentries: 3\ntags:\n  maxtags: 2\n",
    );
    let client = Client::new(&berth.url, None);
    let img = Image::oci("limits", 1, "");
    for repo in ["a", "b", "c", "d"] {
        client.push_image(repo, "t1", &img).unwrap();
    }
    for tag in ["t2", "t3", "t4"] {
        client.push_image("a", tag, &img).unwrap();
    }
    let page = |path: &str| -> (u16, serde_json::Value, Option<String>, Option<String>) {
        let r = client.get(path, &[]).unwrap();
        let code = r.error_codes().first().cloned();
        (
            r.status,
            r.json().unwrap_or_default(),
            r.header("link").map(str::to_owned),
            code,
        )
    };

    // Catalog: without n, distribution's 100 capped at maxentries.
    let (s, v, link, _) = page("/v2/_catalog");
    assert_eq!(s, 200);
    assert_eq!(v["repositories"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(
        link.as_deref(),
        Some("</v2/_catalog?n=3&last=c>; rel=\"next\"")
    );
    // n above maxentries is refused (distribution 3.1), n=0 is an empty page. distribution's
    // code is PAGINATION_NUMBER_INVALID; Berth's bodies carry only the spec's codes, so the
    // same 400 says UNSUPPORTED ("invalid number of results requested").
    const PAGINATION: &str = "UNSUPPORTED";
    let (s, _, _, code) = page("/v2/_catalog?n=4");
    assert_eq!((s, code.as_deref()), (400, Some(PAGINATION)));
    for bad in ["-1", "x", "1.5"] {
        let (s, _, _, code) = page(&format!("/v2/_catalog?n={bad}"));
        assert_eq!((s, code.as_deref()), (400, Some(PAGINATION)), "n={bad}");
    }
    let (s, v, link, _) = page("/v2/_catalog?n=0");
    assert_eq!(
        (s, v["repositories"].clone(), link),
        (200, serde_json::json!([]), None)
    );
    let (_, v, link, _) = page("/v2/_catalog?n=2&last=b");
    assert_eq!(
        (v["repositories"].clone(), link),
        (serde_json::json!(["c", "d"]), None)
    );

    // Tags: without n every tag; a larger n is clamped to maxtags, with the Link to go on.
    let (s, v, link, _) = page("/v2/a/tags/list");
    assert_eq!(s, 200);
    assert_eq!(v["tags"], serde_json::json!(["t1", "t2", "t3", "t4"]));
    assert_eq!(link, None);
    let (s, v, link, _) = page("/v2/a/tags/list?n=10");
    assert_eq!(s, 200);
    assert_eq!(v["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(
        link.as_deref(),
        Some("</v2/a/tags/list?n=2&last=t2>; rel=\"next\"")
    );
    let (_, v, link, _) = page("/v2/a/tags/list?n=2&last=t2");
    assert_eq!(
        (v["tags"].clone(), link),
        (serde_json::json!(["t3", "t4"]), None)
    );
    let (s, v, link, _) = page("/v2/a/tags/list?n=0");
    assert_eq!(
        (s, v["tags"].clone(), link),
        (200, serde_json::json!([]), None)
    );
    let (s, _, _, code) = page("/v2/a/tags/list?n=-2");
    assert_eq!((s, code.as_deref()), (400, Some(PAGINATION)));

    // A negative maxtags is refused at start, as distribution refuses it.
    let out = std::process::Command::new(support::bin())
        .args(["config", "check"])
        .arg(write_config(dir.path(), "tags:\n  maxtags: -1\n"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tags.maxtags"), "{text}");
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("check.yml");
    std::fs::write(
        &path,
        format!("version: 0.1\nstorage:\n  inmemory: {{}}\nhttp:\n  addr: 127.0.0.1:0\n{extra}"),
    )
    .unwrap();
    path
}

#[test]
fn log_hooks_and_reporting_are_one_warning_each() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "reporting:\n  bugsnag:\n    apikey: k\n  newrelic:\n    licensekey: l\n";
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nlog:\n  hooks:\n    - type: mail\n      levels: [panic]\n      options:\n        smtp:\n          addr: mail.example.com:25\n        to: [ops@example.com]\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n{extra}",
        root.display()
    );
    let berth = Berth::start_with_config(&yaml, &root);
    let log = berth.log();
    let warn = |what: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    assert_eq!(warn("log.hooks"), 1, "{log}");
    assert_eq!(warn("reporting"), 1, "{log}");
    assert_eq!(get(&berth, "/v2/").status, 200);

    // A disabled hook needs no warning.
    let root = dir.path().join("data2");
    let yaml = format!(
        "version: 0.1\nlog:\n  hooks:\n    - type: mail\n      disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    let berth = Berth::start_with_config(&yaml, &root);
    assert!(!berth.log().contains("log.hooks"), "{}", berth.log());
}

/// systemd socket activation (distribution 3 serves the passed socket instead of `http.addr`),
/// through systemd's own `systemd-socket-activate`, which starts the program at the first
/// connection with the listening socket as fd 3.
#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    if std::process::Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-socket-activate missing: install Debian's systemd (scripts/install-test-deps.sh)");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let port = support::free_port();
    let sock = dir.path().join("activated.sock");
    for (listen, check) in [
        (format!("127.0.0.1:{port}"), None),
        (sock.display().to_string(), Some(sock.clone())),
    ] {
        // http.addr names a port systemd holds: binding it would fail, so only the passed
        // socket can answer.
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("log");
        let mut child = std::process::Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&listen)
            .arg(support::bin())
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        while !text().contains("Listening on") {
            assert!(Instant::now() < deadline, "{}", text());
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first connection starts Berth; it waits in the socket's backlog until served.
        let r = match &check {
            None => send(&format!("127.0.0.1:{port}"), "GET", "/v2/", "x", &[]),
            Some(path) => unix_request(path, "GET", "/v2/", b""),
        };
        assert_eq!(r.status, 200, "{}: {}", r.describe(), text());
        let log_text = text();
        assert!(
            log_text.contains("using systemd socket activation instead of http.addr"),
            "{log_text}"
        );
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        assert!(child.wait().unwrap().success(), "{}", text());
        if let Some(path) = check {
            // systemd owns the socket file: Berth leaves it alone.
            assert!(path.exists());
            std::fs::remove_file(path).unwrap();
        }
    }
}
