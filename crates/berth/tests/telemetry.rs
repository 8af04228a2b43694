//! Telemetry is strictly opt-in.
//!
//! - With the default configuration (and `OTEL_*` variables that would point an exporter
//!   somewhere), a push and a pull open no connection of Berth's own: listeners on the OTLP
//!   ports 4317/4318 receive nothing, and `strace` shows every `connect()` the process makes
//!   going to the storage and Redis it was configured with.
//! - When enabled, spans reach an OTLP/HTTP receiver run by the test: request spans with their
//!   storage spans as children, upstream spans of the pull-through cache, the caller's trace
//!   continued from `traceparent`, configured and `OTEL_*` headers sent.
//! - A collector that is down costs one WARN per minute, never an ERROR per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_conformance::client::{Body, Client};
use berth_conformance::fixtures::{digest, expect_status, Image};
use prost::Message as _;
use support::{Berth, Garage, Redis};

/// Accepts connections on `addr` and counts them (a would-be collector).
struct Sentinel {
    addr: String,
    hits: Arc<Mutex<usize>>,
}

impl Sentinel {
    fn bind(addr: &str) -> Option<Sentinel> {
        let l = TcpListener::bind(addr).ok()?;
        let addr = l.local_addr().ok()?.to_string();
        let hits = Arc::new(Mutex::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if s.is_ok() {
                    *h.lock().unwrap() += 1;
                }
            }
        });
        Some(Sentinel { addr, hits })
    }

    fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

/// A shell wrapper that runs Berth under `strace`, logging every `connect()` to `log`.
fn straced_berth(dir: &Path, log: &Path) -> PathBuf {
    let wrapper = dir.join("berth-straced");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -qq -e trace=connect -o {} {} \"$@\"\n",
            log.display(),
            support::bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// Stops the traced Berth with SIGTERM (strace then exits by itself) and waits for the trace.
fn stop_traced(b: &mut berth_testkit::Berth) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children", pid = b.pid()))
            .unwrap_or_default();
    for pid in children.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid])
            .status();
    }
    b.wait();
}

/// `(family, port)` of every `connect()` in an strace log, and the raw lines.
fn connects(log: &str) -> Vec<(String, Option<u16>, String)> {
    log.lines()
        .filter(|l| l.contains("connect("))
        .map(|l| {
            let family = l
                .split("sa_family=")
                .nth(1)
                .map(|r| r.split([',', '}']).next().unwrap_or("").to_owned())
                .unwrap_or_default();
            let port = ["sin_port=htons(", "sin6_port=htons("]
                .iter()
                .find_map(|k| l.split(k).nth(1))
                .and_then(|r| r.split(')').next())
                .and_then(|p| p.parse().ok());
            (family, port, l.to_owned())
        })
        .collect()
}

fn push_and_pull(url: &str, seed: &str) {
    let c = Client::new(url, None);
    let img = Image::oci(seed, 2, "");
    c.push_image("tele/app", "v1", &img).unwrap();
    let r = c.get("/v2/tele/app/manifests/v1", &[]).unwrap();
    expect_status(&r, &[200]).unwrap();
    for b in img.blobs() {
        let r = c
            .get(&format!("/v2/tele/app/blobs/{}", digest(b)), &[])
            .unwrap();
        assert_eq!(r.body, *b);
    }
}

/// `OTEL_*` variables that would make an exporter that reads the environment send spans to
/// the sentinels.
fn otel_env(sentinel: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sentinel}")),
        ("OTEL_TRACES_EXPORTER", "otlp".into()),
        ("OTEL_SDK_DISABLED", "false".into()),
        ("OTEL_SERVICE_NAME", "should-not-export".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
    ]
}

#[test]
fn default_config_opens_no_connection_of_its_own() {
    // The OTLP default ports: an exporter on by default would send here. These two ports
    // are fixed by the protocol; nothing else in the suite uses them.
    let grpc = Sentinel::bind("127.0.0.1:4317")
        .expect("127.0.0.1:4317 is taken: this test needs the OTLP ports free");
    let http = Sentinel::bind("127.0.0.1:4318")
        .expect("127.0.0.1:4318 is taken: this test needs the OTLP ports free");
    let grpc6 = Sentinel::bind("[::1]:4317");
    let http6 = Sentinel::bind("[::1]:4318");
    // Where the OTEL_* variables point.
    let env_target = Sentinel::bind("127.0.0.1:0").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("connect.strace");
    let wrapper = straced_berth(dir.path(), &trace);
    let root = dir.path().join("data");
    // distribution's defaults: filesystem storage, nothing else (Berth's default listens on
    // 127.0.0.1:5000; the test takes a free port).
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    let env = otel_env(&env_target.addr);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut b = berth_testkit::Berth::start_with_env(&wrapper, &yaml, &root, &env);
    push_and_pull(&b.url, "quiet");
    // Give a background exporter, if one existed, time to flush (batch delay is 50 ms).
    std::thread::sleep(Duration::from_secs(1));
    stop_traced(&mut b);

    for s in [
        Some(&grpc),
        Some(&http),
        grpc6.as_ref(),
        http6.as_ref(),
        Some(&env_target),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(s.hits(), 0, "something connected to {}", s.addr);
    }
    let log = std::fs::read_to_string(&trace).unwrap();
    let inet: Vec<_> = connects(&log)
        .into_iter()
        .filter(|(f, _, _)| f.starts_with("AF_INET"))
        .collect();
    assert!(
        inet.is_empty(),
        "Berth connected to the network with the default config:\n{inet:#?}"
    );
}

#[test]
fn s3_and_redis_are_the_only_connections() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start();
    garage.create_bucket("quiet");
    let redis = Redis::start();
    let sentinel = Sentinel::bind("127.0.0.1:0").unwrap();
    let trace = dir.path().join("connect.strace");
    let wrapper = straced_berth(dir.path(), &trace);
    let yaml = format!(
        "version: 0.1\n{}http:\n  addr: 127.0.0.1:0\n{}",
        garage.storage_yaml("quiet", "", "  cache:\n    blobdescriptor: redis\n"),
        redis.yaml()
    );
    let env = otel_env(&sentinel.addr);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut b = berth_testkit::Berth::start_with_env(&wrapper, &yaml, dir.path(), &env);
    push_and_pull(&b.url, "s3quiet");
    std::thread::sleep(Duration::from_secs(1));
    stop_traced(&mut b);

    assert_eq!(sentinel.hits(), 0);
    let s3_port: u16 = garage.url.rsplit(':').next().unwrap().parse().unwrap();
    let log = std::fs::read_to_string(&trace).unwrap();
    let all = connects(&log);
    let inet: Vec<_> = all
        .iter()
        .filter(|(f, _, _)| f.starts_with("AF_INET"))
        .collect();
    assert!(
        inet.iter().any(|(_, p, _)| *p == Some(s3_port)),
        "no connection to S3 seen: the trace does not work\n{log}"
    );
    assert!(
        inet.iter().any(|(_, p, _)| *p == Some(redis.port)),
        "no connection to Redis seen\n{log}"
    );
    let stray: Vec<_> = inet
        .iter()
        .filter(|(_, p, _)| *p != Some(s3_port) && *p != Some(redis.port))
        .collect();
    assert!(
        stray.is_empty(),
        "connections beyond S3 and Redis:\n{stray:#?}"
    );
}

/// One request the collector received: path, headers, body.
type Received = (String, Vec<(String, String)>, Vec<u8>);

/// An OTLP/HTTP receiver: answers every POST with 200 and keeps the requests.
struct Collector {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start() -> Collector {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let reqs = reqs.clone();
                std::thread::spawn(move || serve_otlp(s, &reqs));
            }
        });
        Collector { url, requests }
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        let mut out = Vec::new();
        for (_, _, body) in self.requests.lock().unwrap().iter() {
            let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push((service.clone(), s));
                    }
                }
            }
        }
        out
    }
}

fn serve_otlp(s: TcpStream, reqs: &Mutex<Vec<Received>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        reqs.lock().unwrap().push((path, headers, body));
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

fn attr(s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[test]
fn enabled_export_sends_request_storage_and_upstream_spans() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let upstream = Berth::start_on(&dir.path().join("up"), "");
    let img = Image::oci("upstream", 1, "");
    Client::new(&upstream.url, None)
        .push_image("library/busybox", "1", &img)
        .unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        r#"version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:0
proxy:
  upstreams:
    - name: docker.io
      remoteurl: {up}
telemetry:
  traces:
    enabled: true
    endpoint: {collector}
    servicename: berth-under-test
    headers:
      x-api-key: key-from-config
"#,
        root = root.display(),
        up = upstream.url,
        collector = collector.url,
    );
    let berth = Berth(berth_testkit::Berth::start_with_env(
        support::bin(),
        &yaml,
        &root,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-from-env=yes"),
        ],
    ));
    push_and_pull(&berth.url, "traced");
    // Through the mirror: upstream spans.
    let c = Client::new(&berth.url, None);
    expect_status(
        &c.get("/v2/docker.io/library/busybox/manifests/1", &[])
            .unwrap(),
        &[200],
    )
    .unwrap();
    // The caller's trace continues.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = c
        .send(
            "GET",
            "/v2/tele/app/manifests/v1",
            &[("traceparent", &format!("00-{trace_id}-{parent}-01"))],
            Body::None,
        )
        .unwrap();
    assert_eq!(r.status, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collector.spans();
        let has = |pred: &dyn Fn(&opentelemetry_proto::tonic::trace::v1::Span) -> bool| {
            spans.iter().any(|(_, s)| pred(s))
        };
        if has(&|s| s.name == "PUT manifest")
            && has(&|s| s.name.starts_with("upstream GET"))
            && has(&|s| hex(&s.trace_id) == trace_id)
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing; got {:?}\n{}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>(),
            berth.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (service, _) in &spans {
        assert!(service.contains("berth-under-test"), "{service}");
    }
    let put = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "PUT manifest")
        .unwrap();
    assert_eq!(attr(put, "http.route").as_deref(), Some("manifest"));
    assert_eq!(
        attr(put, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(attr(put, "repository").as_deref(), Some("tele/app"));
    // Storage spans are children of request spans.
    let request_ids: Vec<&Vec<u8>> = spans
        .iter()
        .filter(|(_, s)| s.name.contains(' ') && !s.name.starts_with("upstream"))
        .map(|(_, s)| &s.span_id)
        .collect();
    let storage: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| attr(s, "storage.driver").as_deref() == Some("filesystem"))
        .collect();
    assert!(!storage.is_empty());
    assert!(storage
        .iter()
        .any(|s| s.name == "put_content" && request_ids.contains(&&s.parent_span_id)));
    // The upstream span belongs to the mirror request's trace.
    let upstream_span = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name.starts_with("upstream GET"))
        .unwrap();
    assert!(request_ids.contains(&&upstream_span.parent_span_id));
    // The traceparent request: same trace, the caller's span as parent.
    let continued = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| hex(&s.trace_id) == trace_id && s.name == "GET manifest")
        .unwrap();
    assert_eq!(hex(&continued.parent_span_id), parent);
    // Headers: the configured one and the one from OTEL_EXPORTER_OTLP_HEADERS.
    let reqs = collector.requests.lock().unwrap();
    let (path, headers, _) = &reqs[0];
    assert_eq!(path, "/v1/traces");
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(header("x-api-key").as_deref(), Some("key-from-config"));
    assert_eq!(header("x-from-env").as_deref(), Some("yes"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    // `config check` hides the API key.
    let out = std::process::Command::new(support::bin())
        .args(["config", "check"])
        .arg(&berth.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("key-from-config"), "{text}");
    assert!(text.contains("x-api-key"), "{text}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_collector_that_is_down_costs_one_warning_not_an_error_per_request() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\ntelemetry:\n  traces:\n    enabled: true\n    endpoint: http://{closed}\n    timeout: 1s\n",
        root.display()
    );
    let berth = berth_testkit::Berth::start_with_env(
        support::bin(),
        &yaml,
        &root,
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let c = Client::new(&berth.url, None);
    let started = Instant::now();
    for i in 0..30 {
        let r = c.get("/v2/", &[]).unwrap();
        assert_eq!(r.status, 200);
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // Requests are not held up by the exporter.
    assert!(started.elapsed() < Duration::from_secs(10));
    berth.wait_log("the export warning", |l| l.contains("trace export failed"));
    // More batches fail meanwhile (every 50 ms); none of them may log again.
    std::thread::sleep(Duration::from_secs(1));
    let log = berth.log();
    assert_eq!(
        log.matches("trace export failed").count(),
        1,
        "one WARN per minute at most:\n{log}"
    );
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("trace export failed"))
            .all(|l| l.contains(" WARN ")),
        "{log}"
    );
}
