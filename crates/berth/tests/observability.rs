//! What an operator sees of a running Berth: the Prometheus metrics on the debug listener
//! (requests, bytes, uploads, cache, storage, refused tokens, upstream requests and quota),
//! the health endpoints (`/livez`, `/readyz`, `/debug/health` with distribution's checks), and
//! the logs (one access line per request with its fields, `log.fields`, JSON, no secrets).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use berth_conformance::client::{Body, Client};
use berth_conformance::fixtures::{expect_status, Image};
use support::{basic, debug_url, get, Berth, Redis, SERVICE};

/// `name{labels}` → value, from the text exposition.
fn scrape(url: &str) -> BTreeMap<String, f64> {
    let (status, text) = get(url);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let near: Vec<&String> = m
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap()))
            .collect();
        panic!("no {key}; have {near:#?}")
    })
}

fn hash(pw: &str) -> String {
    bcrypt::hash(pw, 4).unwrap()
}

/// A token from Berth's issuer for `scope`.
fn token(url: &str, user: &str, pw: &str, scope: &str) -> String {
    let c = Client::new(url, Some(basic(user, pw)));
    let r = c
        .get(&format!("/auth/token?service={SERVICE}&scope={scope}"), &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    r.json().unwrap()["token"].as_str().unwrap().to_owned()
}

/// Berth with its issuer (alice owns `alice/*`), the in-memory cache and the debug listener.
fn berth_with_metrics(dir: &Path, log_extra: &str, metrics_path: &str) -> Berth {
    let yaml = format!(
        r#"version: 0.1
log:
  level: info
{log_extra}storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:0
  debug:
    addr: 127.0.0.1:0
    prometheus:
      enabled: true
      path: {metrics_path}
auth:
  token:
    service: {SERVICE}
    issuer: berth-issuer
  issuer:
    keydir: {keys}
    users:
      alice: "{alice}"
    acl:
      - account: "*"
        name: "${{account}}/*"
        actions: ["*"]
"#,
        root = dir.join("data").display(),
        keys = dir.join("keys").display(),
        alice = hash("alice-pw"),
    );
    Berth::start_with_config(&yaml, &dir.join("data"))
}

#[test]
fn metrics_count_requests_bytes_uploads_cache_storage_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_with_metrics(dir.path(), "", "/custom-metrics");
    let debug = debug_url(&berth);
    let tok = token(
        &berth.url,
        "alice",
        "alice-pw",
        "repository:alice/app:pull,push",
    );
    let c = Client::new(&berth.url, Some(format!("Bearer {tok}")));
    let img = Image::oci("metrics", 2, "");
    c.push_image("alice/app", "v1", &img).unwrap();
    let blob_bytes: usize = img.blobs().map(Vec::len).sum();
    let n_blobs = img.blobs().count();
    // Pull twice: the second HEADs are answered by the cache.
    for _ in 0..2 {
        let r = c.get("/v2/alice/app/manifests/v1", &[]).unwrap();
        expect_status(&r, &[200]).unwrap();
        for b in img.blobs() {
            let d = berth_conformance::fixtures::digest(b);
            expect_status(
                &c.head(&format!("/v2/alice/app/blobs/{d}")).unwrap(),
                &[200],
            )
            .unwrap();
            let r = c.get(&format!("/v2/alice/app/blobs/{d}"), &[]).unwrap();
            assert_eq!(r.body, *b);
        }
    }
    // A blob the cache cannot know: a miss.
    let unknown = berth_conformance::fixtures::digest(b"nowhere");
    assert_eq!(
        c.head(&format!("/v2/alice/app/blobs/{unknown}"))
            .unwrap()
            .status,
        404
    );
    // Refusals: a garbage token, a token without the access, wrong issuer credentials.
    let junk = Client::new(&berth.url, Some("Bearer not.a.token".into()));
    assert_eq!(
        junk.get("/v2/alice/app/tags/list", &[]).unwrap().status,
        401
    );
    assert_eq!(c.get("/v2/bob/app/tags/list", &[]).unwrap().status, 401);
    let wrong = Client::new(&berth.url, Some(basic("alice", "nope")));
    assert_eq!(
        wrong
            .get(&format!("/auth/token?service={SERVICE}"), &[])
            .unwrap()
            .status,
        401
    );

    // Metrics live on the debug listener at the configured path only.
    assert_eq!(get(&format!("{}/metrics", berth.url)).0, 404);
    assert_eq!(get(&format!("{debug}/metrics")).0, 404);
    // The access line of the last request is written when its response has been sent; the
    // scrape may race it, so wait for the log first.
    berth.wait_log("the last request", |l| {
        l.matches("route=\"token\"").count() >= 2
    });
    let m = scrape(&format!("{debug}/custom-metrics"));

    let req = |route: &str, method: &str, status: u16| {
        metric(
            &m,
            &format!(
                "berth_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(req("manifest", "PUT", 201), 1.0);
    assert_eq!(req("manifest", "GET", 200), 2.0);
    assert_eq!(req("blob", "GET", 200), (2 * n_blobs) as f64);
    assert_eq!(req("blob", "HEAD", 200), (2 * n_blobs) as f64);
    assert_eq!(req("upload", "PUT", 201), n_blobs as f64);
    assert_eq!(req("tags", "GET", 401), 2.0);
    assert_eq!(
        metric(
            &m,
            "berth_http_response_body_bytes_total{route=\"blob\",method=\"GET\",status=\"200\"}"
        ),
        (2 * blob_bytes) as f64
    );
    assert_eq!(
        metric(
            &m,
            "berth_http_request_body_bytes_total{route=\"upload\",method=\"PUT\",status=\"201\"}"
        ),
        blob_bytes as f64
    );
    assert_eq!(
        metric(
            &m,
            "berth_http_request_body_bytes_total{route=\"manifest\",method=\"PUT\",status=\"201\"}"
        ),
        img.manifest.len() as f64
    );
    assert_eq!(
        metric(
            &m,
            "berth_http_request_duration_seconds_count{route=\"manifest\",method=\"PUT\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"PUT\",le=\"+Inf\"}"
        ),
        1.0
    );
    // Only the scrape itself is in flight, and it is not on the API listener.
    assert_eq!(metric(&m, "berth_http_requests_in_flight"), 0.0);
    assert_eq!(
        metric(&m, "berth_upload_sessions_started_total"),
        n_blobs as f64
    );
    assert_eq!(
        metric(&m, "berth_upload_sessions_completed_total"),
        n_blobs as f64
    );
    assert_eq!(metric(&m, "berth_upload_sessions_cancelled_total"), 0.0);
    assert!(metric(&m, "berth_blob_descriptor_cache_hits_total") >= n_blobs as f64);
    // Uploads fill the cache, so only the unknown blob missed.
    assert_eq!(metric(&m, "berth_blob_descriptor_cache_misses_total"), 1.0);
    for op in ["put_content", "get_content", "reader"] {
        assert!(
            metric(
                &m,
                &format!(
                    "berth_storage_operations_total{{driver=\"filesystem\",operation=\"{op}\"}}"
                )
            ) >= 1.0,
            "{op}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "berth_storage_errors_total{driver=\"filesystem\",operation=\"put_content\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &m,
            "berth_storage_bytes_written_total{driver=\"filesystem\"}"
        ) >= blob_bytes as f64
    );
    let refusal = |kind: &str, reason: &str| {
        metric(
            &m,
            &format!("berth_auth_refusals_total{{kind=\"{kind}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refusal("token", "malformed"), 1.0);
    assert_eq!(refusal("token", "insufficient_scope"), 1.0);
    assert_eq!(refusal("issuer", "bad_credentials"), 1.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&m, "process_open_fds") > 0.0);

    // The same traffic in distribution's series, named and labelled as distribution emits
    // them, so its dashboards keep their panels.
    let dist = |handler: &str, method: &str, code: u16| {
        metric(
            &m,
            &format!(
                "registry_http_requests_total{{code=\"{code}\",handler=\"{handler}\",method=\"{method}\"}}"
            ),
        )
    };
    assert_eq!(dist("manifest", "put", 201), 1.0);
    assert_eq!(dist("manifest", "get", 200), 2.0);
    assert_eq!(dist("blob", "get", 200), (2 * n_blobs) as f64);
    assert_eq!(dist("blob", "head", 200), (2 * n_blobs) as f64);
    assert_eq!(dist("blob", "head", 404), 1.0);
    assert_eq!(dist("blob_upload", "post", 202), n_blobs as f64);
    assert_eq!(dist("blob_upload_chunk", "put", 201), n_blobs as f64);
    assert_eq!(dist("tags", "get", 401), 2.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with("registry_http_") && k.contains("handler=\"token\"")),
        "Berth's own endpoints are not distribution handlers"
    );
    assert_eq!(
        metric(
            &m,
            "registry_http_request_duration_seconds_count{handler=\"manifest\",method=\"put\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "registry_http_request_duration_seconds_bucket{handler=\"manifest\",method=\"put\",le=\"60\"}"
        ),
        1.0
    );
    // Response sizes count the body: the blobs, twice.
    assert_eq!(
        metric(
            &m,
            "registry_http_response_size_bytes_sum{handler=\"blob\"}"
        ),
        (2 * blob_bytes) as f64
    );
    assert_eq!(
        metric(
            &m,
            "registry_http_response_size_bytes_count{handler=\"blob\"}"
        ),
        (4 * n_blobs + 1) as f64
    );
    // Request sizes: the body and the head (URL, method, protocol, headers).
    assert!(
        metric(
            &m,
            "registry_http_request_size_bytes_sum{handler=\"blob_upload_chunk\"}"
        ) > blob_bytes as f64
    );
    assert!(m.contains_key(
        "registry_http_request_size_bytes_bucket{handler=\"manifest\",le=\"1.048576e+06\"}"
    ));
    for handler in [
        "base",
        "blob",
        "blob_upload",
        "blob_upload_chunk",
        "catalog",
        "manifest",
        "tags",
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("registry_http_in_flight_requests{{handler=\"{handler}\"}}")
            ),
            0.0
        );
    }
    for action in ["GetContent", "PutContent", "Stat"] {
        assert!(
            metric(
                &m,
                &format!(
                    "registry_storage_action_seconds_count{{action=\"{action}\",driver=\"filesystem\"}}"
                )
            ) >= 1.0,
            "{action}"
        );
        assert!(m.contains_key(&format!(
            "registry_storage_action_seconds_bucket{{action=\"{action}\",driver=\"filesystem\",le=\"0.005\"}}"
        )));
    }
    let hits = metric(&m, "berth_blob_descriptor_cache_hits_total");
    assert_eq!(metric(&m, "registry_storage_cache_hits_total"), hits);
    assert_eq!(
        metric(&m, "registry_storage_cache_requests_total"),
        hits + 1.0
    );
    assert_eq!(metric(&m, "registry_storage_cache_errors_total"), 0.0);
    assert_eq!(
        metric(&m, "registry_storage_cache_total{type=\"Hit\"}"),
        hits
    );
    assert_eq!(
        metric(&m, "registry_storage_cache_total{type=\"Miss\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "registry_storage_cache_total{type=\"Request\"}"),
        hits + 1.0
    );
}

#[test]
fn proxy_metrics_count_upstream_requests_and_keep_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream says what Docker Hub says about its quota, on every response.
    let upstream = Berth::start_on(
        &dir.path().join("up"),
        "  headers:\n    RateLimit-Limit: [\"100;w=21600\"]\n    RateLimit-Remaining: [\"76;w=21600\"]\n",
    );
    // (`start_on` appends to the `http` section's level: the lines above are under `http`.)
    let img = Image::oci("quota", 1, "");
    Client::new(&upstream.url, None)
        .push_image("library/alpine", "3", &img)
        .unwrap();
    let mirror_yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\nproxy:\n  upstreams:\n    - name: docker.io\n      remoteurl: {}\n",
        dir.path().join("mirror").display(),
        upstream.url
    );
    let mirror = Berth::start_with_config(&mirror_yaml, &dir.path().join("mirror"));
    let debug = debug_url(&mirror);
    let c = Client::new(&mirror.url, None);
    let r = c
        .get("/v2/docker.io/library/alpine/manifests/3", &[])
        .unwrap();
    expect_status(&r, &[200]).unwrap();
    for b in img.blobs() {
        let d = berth_conformance::fixtures::digest(b);
        let r = c
            .get(&format!("/v2/docker.io/library/alpine/blobs/{d}"), &[])
            .unwrap();
        assert_eq!(r.body, *b);
    }
    let m = scrape(&format!("{debug}/metrics"));
    let up = |method: &str, kind: &str, status: u16| {
        m.get(&format!(
            "berth_proxy_upstream_requests_total{{upstream=\"docker.io\",method=\"{method}\",kind=\"{kind}\",status=\"{status}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert!(
        up("GET", "manifest", 200) >= 1.0,
        "{:#?}",
        m.keys()
            .filter(|k| k.contains("upstream"))
            .collect::<Vec<_>>()
    );
    assert_eq!(up("GET", "blob", 200), img.blobs().count() as f64);
    assert_eq!(
        metric(
            &m,
            "berth_proxy_upstream_ratelimit_remaining{upstream=\"docker.io\"}"
        ),
        76.0
    );
    assert_eq!(
        metric(
            &m,
            "berth_proxy_upstream_ratelimit_limit{upstream=\"docker.io\"}"
        ),
        100.0
    );
}

/// Polls `url` until it answers `status` (checks run every second).
fn wait_status(url: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, body) = get(url);
        if s == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} stayed {s} (wanted {status}): {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_endpoints_follow_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let down = dir.path().join("maintenance");
    let mut redis = Redis::start();
    let yaml = format!(
        r#"version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: redis
{redis}http:
  addr: 127.0.0.1:0
  debug:
    addr: 127.0.0.1:0
health:
  storagedriver:
    enabled: true
    interval: 1s
    threshold: 2
  file:
    - file: {down}
      interval: 1s
"#,
        root = root.display(),
        redis = redis.yaml(),
        down = down.display(),
    );
    let berth = Berth::start_with_config(&yaml, &root);
    let debug = debug_url(&berth);
    Client::new(&berth.url, None)
        .push_image("hc/app", "v1", &Image::oci("health", 1, ""))
        .unwrap();

    assert_eq!(get(&format!("{}/livez", berth.url)), (200, "ok\n".into()));
    wait_status(&format!("{}/readyz", berth.url), 200);
    assert_eq!(get(&format!("{debug}/readyz")).0, 200);
    assert_eq!(get(&format!("{debug}/debug/health")), (200, "{}".into()));
    // Health details are not on the API listener.
    assert_eq!(get(&format!("{}/debug/health", berth.url)).0, 404);

    // distribution's file check: down while the file exists.
    std::fs::write(&down, "").unwrap();
    let body = wait_status(&format!("{}/readyz", berth.url), 503);
    assert!(body.contains("maintenance"), "{body}");
    let body = wait_status(&format!("{debug}/debug/health"), 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v[down.display().to_string()].is_string(), "{body}");
    // Liveness never depends on a check.
    assert_eq!(get(&format!("{}/livez", berth.url)).0, 200);
    std::fs::remove_file(&down).unwrap();
    wait_status(&format!("{}/readyz", berth.url), 200);

    // Storage failing (the root's parent replaced by a file): after two failed checks.
    let broken = support::BrokenRoot::new(&root);
    let body = wait_status(&format!("{}/readyz", berth.url), 503);
    assert!(body.contains("storagedriver_filesystem"), "{body}");
    broken.restore();
    wait_status(&format!("{}/readyz", berth.url), 200);

    // Redis down: reported, but the replica stays ready (it serves from storage).
    redis.stop();
    let body = wait_status(&format!("{debug}/debug/health"), 503);
    assert!(body.contains("redis"), "{body}");
    assert_eq!(get(&format!("{}/readyz", berth.url)).0, 200);
    let r = Client::new(&berth.url, None)
        .get("/v2/hc/app/manifests/v1", &[])
        .unwrap();
    assert_eq!(r.status, 200);
    redis.restart();
    wait_status(&format!("{debug}/debug/health"), 200);
    let log = berth.log();
    assert!(log.contains("health check failing"), "{log}");
    assert!(log.contains("health check passes again"), "{log}");
}

#[test]
fn access_log_lines_are_json_with_fields_and_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_with_metrics(
        dir.path(),
        "  formatter: json\n  fields:\n    environment: staging\n    replica: 2\n",
        "/metrics",
    );
    let tok = token(
        &berth.url,
        "alice",
        "alice-pw",
        "repository:alice/app:pull,push",
    );
    let c = Client::new(&berth.url, Some(format!("Bearer {tok}")));
    let img = Image::oci("logs", 1, "");
    c.push_image("alice/app", "v1", &img).unwrap();
    let r = c
        .send(
            "GET",
            "/v2/alice/app/manifests/v1",
            &[("X-Request-Id", "trace-me-42")],
            Body::None,
        )
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("trace-me-42"));
    // A request with credentials in the URL query (some clients do it) and a refused one.
    let r = Client::new(&berth.url, None)
        .get(
            &format!("/v2/alice/app/tags/list?token={tok}&n=5"),
            &[("Authorization", &basic("alice", "alice-pw"))],
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let log = berth.wait_log("the tag list's line", |l| l.contains("tags/list"));

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert_eq!(l["environment"], "staging", "{l}");
        assert_eq!(l["replica"], 2, "{l}");
    }
    let put = lines
        .iter()
        .find(|l| l["message"] == "request" && l["method"] == "PUT" && l["route"] == "manifest")
        .expect("the manifest PUT's access line");
    assert_eq!(put["repository"], "alice/app");
    assert_eq!(put["status"], 201);
    assert_eq!(put["account"], "alice");
    assert_eq!(put["bytes_in"], img.manifest.len());
    assert!(put["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(!put["request_id"].as_str().unwrap().is_empty());
    let get_line = lines
        .iter()
        .find(|l| l["request_id"] == "trace-me-42")
        .expect("the line of the request with X-Request-Id");
    assert_eq!(get_line["bytes_out"], img.manifest.len());
    let tags = lines
        .iter()
        .find(|l| l["route"] == "tags")
        .expect("the tag list's line");
    assert_eq!(tags["status"], 401);
    assert_eq!(tags["query"], "token=REDACTED&n=5");
    // Exactly one line per request: ids are unique.
    let ids: Vec<&str> = lines
        .iter()
        .filter(|l| l["message"] == "request")
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "{ids:?}");
    // Nothing secret anywhere in the log.
    for secret in [
        tok.as_str(),
        "alice-pw",
        &B64.encode("alice:alice-pw"),
        "Bearer",
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}:\n{log}");
    }
}

#[test]
fn access_log_can_be_disabled_and_extra_headers_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nlog:\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        root.display()
    );
    let berth = Berth::start_with_config(&yaml, &root);
    let r = Client::new(&berth.url, None).get("/v2/", &[]).unwrap();
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = berth.log();
    assert!(!log.contains("route="), "{log}");
}
