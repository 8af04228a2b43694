//! What notifications cost: small-image pushes, a large streamed blob push and manifest GETs
//! by tag on Berth with 0, 1 and 3 webhook endpoints, and on distribution 2.8 (Debian's
//! `docker-registry`) with 0 and 1 for context. Each configuration gets a fresh server on fresh
//! storage; the configurations take turns, round after round. Every endpoint points at a
//! listener inside this program (one path per endpoint) that answers 200 to each POST and
//! counts the events it receives by id; after each workload the benchmark waits until every
//! expected event arrived at every endpoint and reports how long after the workload's end the
//! last one came (the time the queue took to drain), and any duplicates.
//!
//! ```sh
//! apt-get install -y wrk
//! cargo build --release -p berth -p berth-bench
//! target/release/notify [--storage DIR] [--rounds 3] [--secs 6] [--clients 8] [--mib 256] [--maxbatch 1]
//! ```
//! `--storage` is where the registries keep their data (default: /dev/shm, tmpfs). Nothing is
//! asserted but event delivery: the output is a report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_bench::{berth_bin, median, mib_per_s, raw, timed, wrk};
use berth_conformance::client::Client;
use berth_conformance::fixtures::{bytes, digest, Image};
use berth_testkit::{Berth, Distribution};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Streamed blob pushes per configuration and round.
const BIG_PUSHES: usize = 2;
/// The most endpoints a configuration has (one listener path each).
const MAX_ENDPOINTS: usize = 3;
/// How long the listener must have been quiet before a drain counts as finished.
const QUIET: Duration = Duration::from_millis(500);
/// How long to wait for the queue to drain before reporting the events as missing.
const DRAIN_MAX: Duration = Duration::from_secs(180);

/// `--maxbatch`, for every Berth endpoint.
static MAXBATCH: AtomicUsize = AtomicUsize::new(1);

struct Args {
    storage: PathBuf,
    rounds: usize,
    secs: u32,
    clients: usize,
    mib: usize,
    layer_kib: usize,
    /// Berth's `maxbatch` on every endpoint (1: distribution's one event per POST).
    maxbatch: usize,
}

fn args() -> Args {
    let mut a = Args {
        storage: PathBuf::from("/dev/shm"),
        rounds: 3,
        secs: 6,
        clients: 8,
        mib: 256,
        layer_kib: 4,
        maxbatch: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--storage" => a.storage = PathBuf::from(v),
            "--rounds" => a.rounds = v.parse().unwrap(),
            "--secs" => a.secs = v.parse().unwrap(),
            "--clients" => a.clients = v.parse().unwrap(),
            "--mib" => a.mib = v.parse().unwrap(),
            "--layer-kib" => a.layer_kib = v.parse().unwrap(),
            "--maxbatch" => a.maxbatch = v.parse().unwrap(),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// The webhook listener: a small hyper server on a runtime of its own, answering 200 to every
/// POST to `/e<N>` and counting what endpoint N received.
struct Sink {
    url: String,
    state: Arc<SinkState>,
    _rt: tokio::runtime::Runtime,
}

struct SinkState {
    start: Instant,
    slots: Vec<Slot>,
    /// When the last event arrived (ns since `start`; 0: none since the last reset).
    last_ns: AtomicU64,
}

#[derive(Default)]
struct Slot {
    posts: AtomicU64,
    events: AtomicU64,
    /// POSTs whose body was not an event envelope.
    bad: AtomicU64,
    ids: Mutex<HashSet<String>>,
}

/// What the listener reads of an envelope: the events' ids (the rest is skipped by serde).
#[derive(serde::Deserialize)]
struct Envelope {
    events: Vec<EventId>,
}

#[derive(serde::Deserialize)]
struct EventId {
    id: String,
}

async fn handle(
    state: Arc<SinkState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let slot = req
        .uri()
        .path()
        .strip_prefix("/e")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|i| state.slots.get(i));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Some(s) = slot {
        s.posts.fetch_add(1, Ordering::Relaxed);
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(env) => {
                s.events
                    .fetch_add(env.events.len() as u64, Ordering::Relaxed);
                let mut ids = s.ids.lock().unwrap();
                for e in env.events {
                    ids.insert(e.id);
                }
            }
            Err(_) => {
                s.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ns = state.start.elapsed().as_nanos() as u64;
        state.last_ns.fetch_max(ns.max(1), Ordering::Relaxed);
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

/// How the events of one workload arrived (the fewest over the endpoints).
#[derive(Clone, Copy, Default)]
struct Delivery {
    expected: u64,
    /// Distinct event ids at the endpoint that got the fewest.
    received: u64,
    /// Events received more than once, over all endpoints.
    duplicates: u64,
    /// POSTs that were not event envelopes.
    bad: u64,
    /// From the end of the workload to the last event; `None`: not all arrived in time.
    drain: Option<Duration>,
}

impl Sink {
    fn start() -> Sink {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(SinkState {
            start: Instant::now(),
            slots: (0..MAX_ENDPOINTS).map(|_| Slot::default()).collect(),
            last_ns: AtomicU64::new(0),
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| handle(st.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Sink {
            url,
            state,
            _rt: rt,
        }
    }

    fn reset(&self) {
        for s in &self.state.slots {
            s.posts.store(0, Ordering::Relaxed);
            s.events.store(0, Ordering::Relaxed);
            s.bad.store(0, Ordering::Relaxed);
            s.ids.lock().unwrap().clear();
        }
        self.state.last_ns.store(0, Ordering::Relaxed);
    }

    fn last_event(&self) -> Option<Instant> {
        match self.state.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.state.start + Duration::from_nanos(ns)),
        }
    }

    /// Waits until each of the first `n` endpoints received `expected` distinct events and
    /// nothing more came for [`QUIET`] (or [`DRAIN_MAX`] passed).
    fn wait(&self, n: usize, expected: u64, end: Instant) -> Delivery {
        if n == 0 {
            return Delivery {
                expected,
                ..Delivery::default()
            };
        }
        let deadline = Instant::now() + DRAIN_MAX;
        loop {
            let slots = &self.state.slots[..n];
            let distinct: Vec<u64> = slots
                .iter()
                .map(|s| s.ids.lock().unwrap().len() as u64)
                .collect();
            let all = distinct.iter().all(|&d| d >= expected);
            let last = self.last_event();
            let quiet = last.is_none_or(|t| t.elapsed() >= QUIET);
            if (all && quiet) || Instant::now() >= deadline {
                let events: u64 = slots.iter().map(|s| s.events.load(Ordering::Relaxed)).sum();
                return Delivery {
                    expected,
                    received: distinct.iter().copied().min().unwrap_or(0),
                    duplicates: events.saturating_sub(distinct.iter().sum()),
                    bad: slots.iter().map(|s| s.bad.load(Ordering::Relaxed)).sum(),
                    drain: all.then(|| {
                        last.map(|t| t.saturating_duration_since(end))
                            .unwrap_or_default()
                    }),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Berth,
    Distribution,
}

/// One configuration under test.
struct Config {
    kind: Kind,
    endpoints: usize,
}

impl Config {
    fn label(&self) -> String {
        let name = match self.kind {
            Kind::Berth => "berth",
            Kind::Distribution => "distribution 2.8",
        };
        let unit = if self.endpoints == 1 {
            "endpoint"
        } else {
            "endpoints"
        };
        format!("{name}, {} {unit}", self.endpoints)
    }
}

enum Server {
    Berth(Berth),
    Distribution(Distribution),
}

impl Server {
    fn url(&self) -> &str {
        match self {
            Server::Berth(b) => &b.url,
            Server::Distribution(d) => &d.url,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Berth(b) => b.pid(),
            Server::Distribution(d) => d.pid(),
        }
    }
}

/// The `notifications:` section: `n` endpoints, each a path of the listener. Berth's queue
/// bound is raised: a GET run queues ~150,000 pull events per endpoint within seconds, and
/// dropping the oldest past the default `maxpending` (100,000) is not what this measures.
fn notifications_yaml(kind: Kind, sink: &str, n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let mut s = String::from("notifications:\n  endpoints:\n");
    for i in 0..n {
        s.push_str(&format!("    - name: sink{i}\n      url: {sink}/e{i}\n"));
        if kind == Kind::Berth {
            s.push_str("      maxpending: 10000000\n");
            let batch = MAXBATCH.load(Ordering::Relaxed);
            s.push_str(&format!("      maxbatch: {batch}\n"));
        }
    }
    s
}

fn start(cfg: &Config, root: &Path, sink: &str) -> Server {
    let notifications = notifications_yaml(cfg.kind, sink, cfg.endpoints);
    match cfg.kind {
        Kind::Berth => {
            let yaml = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{notifications}",
                root.display()
            );
            Server::Berth(Berth::start_with_config(&berth_bin(), &yaml, root))
        }
        Kind::Distribution => Server::Distribution(Distribution::start_quiet(root, &notifications)),
    }
}

/// CPU time (user + system) a process used so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks: u64 = f.iter().sum();
    // The kernel reports in USER_HZ, 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn with_digest(loc: &str, d: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={d}")
}

/// POST, then one PUT with the whole blob (the spec's monolithic upload), through the bare
/// client.
fn push_blob(url: &str, repo: &str, data: &[u8], d: &str) {
    let r = raw::exchange("POST", &format!("{url}/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(r.status, 202, "{url}: starting an upload");
    let loc = absolute(url, r.header("location").unwrap());
    let r = raw::exchange(
        "PUT",
        &with_digest(&loc, d),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(r.status, 201, "{url}: finishing an upload");
}

/// What the push clients did.
struct Pushed {
    images: u64,
    /// Push events the registry owes each endpoint: one per blob and one per manifest.
    events: u64,
    elapsed: Duration,
}

/// `clients` threads push distinct small images (a `layer_kib` KiB layer, a config and a
/// manifest by tag, each client to its own repository) until `secs` have passed; an image
/// begun is finished.
fn push_images(url: &str, clients: usize, secs: u32, layer_kib: usize) -> Pushed {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(u64::from(secs));
    let images = AtomicU64::new(0);
    std::thread::scope(|s| {
        for c in 0..clients {
            let images = &images;
            s.spawn(move || {
                let repo = format!("bench/p{c}");
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let seed = format!("notify-{c}-{i}");
                    let img = Image::with_layers(&seed, vec![bytes(&seed, layer_kib << 10)], "");
                    for b in img.blobs() {
                        push_blob(url, &repo, b, &digest(b));
                    }
                    let r = raw::exchange(
                        "PUT",
                        &format!("{url}/v2/{repo}/manifests/t{i}"),
                        &[("Content-Type", img.media_type)],
                        &img.manifest,
                    );
                    assert_eq!(r.status, 201, "{url}: manifest PUT");
                    images.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    let images = images.into_inner();
    Pushed {
        images,
        events: images * 3,
        elapsed: start.elapsed(),
    }
}

/// One configuration's measurements in one round.
struct Sample {
    push_rate: f64,
    /// Server CPU per image while the clients push, and until the events are delivered.
    push_cpu_load_ms: f64,
    push_cpu_ms: f64,
    push_delivery: Delivery,
    big: Vec<f64>,
    get_rps: f64,
    get_p99: f64,
    /// Server CPU per GET while wrk runs, and until the events are delivered.
    get_cpu_load_us: f64,
    get_cpu_us: f64,
    get_delivery: Delivery,
    /// This program's CPU per delivered GET event (the listener; wrk is another process).
    sink_cpu_us: f64,
}

fn run(args: &Args, cfg: &Config, big: &mut [u8], stamp: &mut u64) -> Sample {
    let sink = Sink::start();
    let dir = tempfile::tempdir_in(&args.storage).unwrap();
    let root = dir.path().join("data");
    let server = start(cfg, &root, &sink.url);
    let (url, pid, n) = (server.url().to_owned(), server.pid(), cfg.endpoints);

    // Small images from N clients; the server's CPU counts until their events are delivered.
    let cpu0 = cpu(pid);
    let pushed = push_images(&url, args.clients, args.secs, args.layer_kib);
    let push_cpu_load = cpu(pid).saturating_sub(cpu0);
    let push_delivery = sink.wait(n, pushed.events, Instant::now());
    let push_cpu = cpu(pid).saturating_sub(cpu0);

    // A large blob streamed in one PUT (distinct content each time).
    let mut big_rates = Vec::new();
    for _ in 0..BIG_PUSHES {
        *stamp += 1;
        big[..8].copy_from_slice(&stamp.to_le_bytes());
        let d = digest(big);
        let (_, t) = timed(|| push_blob(&url, "bench/big", big, &d));
        big_rates.push(mib_per_s(big.len(), t));
    }
    let big_delivery = sink.wait(n, pushed.events + BIG_PUSHES as u64, Instant::now());
    assert!(
        n == 0 || big_delivery.drain.is_some(),
        "{}: the streamed pushes' events did not all arrive",
        cfg.label()
    );

    // The manifest to GET, then wrk on it by tag.
    sink.reset();
    Client::new(&url, None)
        .push_image("bench/m", "v1", &Image::oci("notify-get", 1, ""))
        .unwrap();
    sink.wait(n, 3, Instant::now());
    sink.reset();
    let (cpu0, self0) = (cpu(pid), cpu(std::process::id()));
    let w = wrk::run(
        &format!("{url}/v2/bench/m/manifests/v1"),
        &[format!("Accept: {MANIFEST_TYPE}")],
        args.secs,
    );
    let get_cpu_load = cpu(pid).saturating_sub(cpu0);
    let get_delivery = sink.wait(n, w.requests, Instant::now());
    let get_cpu = cpu(pid).saturating_sub(cpu0);
    let sink_cpu = cpu(std::process::id()).saturating_sub(self0);
    drop(server);
    eprintln!(
        "  {}: {:.0} pushes/s, {:.0} GET/s, push drain {:?}, GET drain {:?}",
        cfg.label(),
        pushed.images as f64 / pushed.elapsed.as_secs_f64(),
        w.rps,
        push_delivery.drain,
        get_delivery.drain
    );
    Sample {
        push_rate: pushed.images as f64 / pushed.elapsed.as_secs_f64(),
        push_cpu_load_ms: push_cpu_load.as_secs_f64() * 1000.0 / pushed.images.max(1) as f64,
        push_cpu_ms: push_cpu.as_secs_f64() * 1000.0 / pushed.images.max(1) as f64,
        push_delivery,
        big: big_rates,
        get_rps: w.rps,
        get_p99: w.p99_ms,
        get_cpu_load_us: get_cpu_load.as_secs_f64() * 1e6 / w.requests.max(1) as f64,
        get_cpu_us: get_cpu.as_secs_f64() * 1e6 / w.requests.max(1) as f64,
        get_delivery,
        sink_cpu_us: if n == 0 {
            f64::NAN
        } else {
            sink_cpu.as_secs_f64() * 1e6 / (w.requests as f64 * n as f64)
        },
    }
}

fn main() {
    let args = args();
    MAXBATCH.store(args.maxbatch, Ordering::Relaxed);
    std::fs::create_dir_all(&args.storage).unwrap();
    let configs = [
        Config {
            kind: Kind::Berth,
            endpoints: 0,
        },
        Config {
            kind: Kind::Berth,
            endpoints: 1,
        },
        Config {
            kind: Kind::Berth,
            endpoints: 3,
        },
        Config {
            kind: Kind::Distribution,
            endpoints: 0,
        },
        Config {
            kind: Kind::Distribution,
            endpoints: 1,
        },
    ];
    eprintln!(
        "storage: {}, {} rounds of {} s per workload, {} push clients, {} MiB streamed blob",
        args.storage.display(),
        args.rounds,
        args.secs,
        args.clients,
        args.mib
    );
    let mut big = bytes("notify-big", args.mib << 20);
    let mut stamp = 0u64;
    let mut res: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
    let began = Instant::now();
    let load_before = loadavg();
    for round in 0..args.rounds {
        eprintln!("round {}", round + 1);
        for (i, cfg) in configs.iter().enumerate() {
            res[i].push(run(&args, cfg, &mut big, &mut stamp));
        }
    }
    println!(
        "\nTook {:.0} s; load average (1, 5, 15 min) before: {load_before}, after: {} (other work on the machine shares its cores).",
        began.elapsed().as_secs_f64(),
        loadavg()
    );
    report(&args, &configs, &res);
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn report(args: &Args, configs: &[Config], res: &[Vec<Sample>]) {
    let m = |i: usize, f: &dyn Fn(&Sample) -> f64| median(res[i].iter().map(f).collect());
    let bigm = |i: usize| median(res[i].iter().flat_map(|s| s.big.iter().copied()).collect());
    println!(
        "\nStorage: {}; median of {} rounds; {} s per workload; {} push clients, {} KiB layer; {} MiB streamed blob ({} per round); wrk -t2 -c64 -d{}s.\n",
        args.storage.display(),
        args.rounds,
        args.secs,
        args.clients,
        args.layer_kib,
        args.mib,
        BIG_PUSHES,
        args.secs
    );
    // Columns: berth 0, 1, 3 (indices 0-2), distribution 0, 1 (3-4).
    println!("| workload | berth, 0 endpoints | berth, 1 | berth, 3 | berth 1/0 | berth 3/0 | distribution 2.8, 0 | distribution, 1 | distribution 1/0 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, v: [f64; 5], unit: &str, digits: usize| {
        println!(
            "| {name} | {:.d$} {unit} | {:.d$} {unit} | {:.d$} {unit} | {:.3}x | {:.3}x | {:.d$} {unit} | {:.d$} {unit} | {:.3}x |",
            v[0],
            v[1],
            v[2],
            v[1] / v[0],
            v[2] / v[0],
            v[3],
            v[4],
            v[4] / v[3],
            d = digits
        );
    };
    let all = |f: &dyn Fn(&Sample) -> f64| -> [f64; 5] { std::array::from_fn(|i| m(i, f)) };
    row(
        &format!(
            "small-image push ({} KiB layer + config + manifest), {} clients",
            args.layer_kib, args.clients
        ),
        all(&|s| s.push_rate),
        "pushes/s",
        1,
    );
    row(
        &format!("streamed blob push, {} MiB", args.mib),
        std::array::from_fn(bigm),
        "MiB/s",
        1,
    );
    row(
        "manifest GET by tag, 64 conns",
        all(&|s| s.get_rps),
        "req/s",
        0,
    );
    row("manifest GET p99", all(&|s| s.get_p99), "ms", 2);
    row(
        "server CPU per small-image push, during the pushes",
        all(&|s| s.push_cpu_load_ms),
        "ms",
        2,
    );
    row(
        "server CPU per small-image push, until its events are delivered",
        all(&|s| s.push_cpu_ms),
        "ms",
        2,
    );
    row(
        "server CPU per manifest GET, during the wrk run",
        all(&|s| s.get_cpu_load_us),
        "µs",
        1,
    );
    row(
        "server CPU per manifest GET, until its event is delivered",
        all(&|s| s.get_cpu_us),
        "µs",
        1,
    );

    println!("\nDelivery (all rounds; received = distinct event ids at the endpoint that got the fewest; drain = from the workload's end to the last event, median and max):\n");
    println!("| configuration | push events received / expected | drain after pushes | GET events received / expected | drain after GETs | duplicates | listener CPU per GET event |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, cfg) in configs.iter().enumerate() {
        if cfg.endpoints == 0 {
            continue;
        }
        let sum = |f: &dyn Fn(&Sample) -> Delivery| -> (u64, u64, u64, u64, Vec<Option<Duration>>) {
            let ds: Vec<Delivery> = res[i].iter().map(f).collect();
            (
                ds.iter().map(|d| d.received).sum(),
                ds.iter().map(|d| d.expected).sum(),
                ds.iter().map(|d| d.duplicates).sum(),
                ds.iter().map(|d| d.bad).sum(),
                ds.iter().map(|d| d.drain).collect(),
            )
        };
        let drains = |v: &[Option<Duration>]| -> String {
            if v.iter().any(Option::is_none) {
                return format!(
                    "not drained in {}s in {} of {} rounds",
                    DRAIN_MAX.as_secs(),
                    v.iter().filter(|d| d.is_none()).count(),
                    v.len()
                );
            }
            let s: Vec<f64> = v.iter().flatten().map(Duration::as_secs_f64).collect();
            let max = s.iter().copied().fold(0.0, f64::max);
            format!("{:.2} s (max {max:.2} s)", median(s))
        };
        let (pr, pe, pdup, pbad, pdr) = sum(&|s| s.push_delivery);
        let (gr, ge, gdup, gbad, gdr) = sum(&|s| s.get_delivery);
        let bad = if pbad + gbad > 0 {
            format!(" ({} POSTs not envelopes)", pbad + gbad)
        } else {
            String::new()
        };
        println!(
            "| {} | {pr} / {pe} | {} | {gr} / {ge} | {} | {}{bad} | {:.1} µs |",
            cfg.label(),
            drains(&pdr),
            drains(&gdr),
            pdup + gdup,
            m(i, &|s| s.sink_cpu_us)
        );
    }
    println!("\n(GETs: \"expected\" is wrk's count of completed requests; requests still in flight when wrk stops are served and notified too, so up to 64 more per round may arrive.)");
    let cost = |a: f64, b: f64| 100.0 * (1.0 - a / b);
    println!(
        "\nberth's cost of notifications: pushes {:.1}% (1 endpoint), {:.1}% (3); streamed push {:.1}%, {:.1}%; manifest GETs {:.1}%, {:.1}% (target: under 5%)",
        cost(m(1, &|s| s.push_rate), m(0, &|s| s.push_rate)),
        cost(m(2, &|s| s.push_rate), m(0, &|s| s.push_rate)),
        cost(bigm(1), bigm(0)),
        cost(bigm(2), bigm(0)),
        cost(m(1, &|s| s.get_rps), m(0, &|s| s.get_rps)),
        cost(m(2, &|s| s.get_rps), m(0, &|s| s.get_rps)),
    );
    println!(
        "distribution 2.8's: pushes {:.1}%, streamed push {:.1}%, manifest GETs {:.1}% (1 endpoint)",
        cost(m(4, &|s| s.push_rate), m(3, &|s| s.push_rate)),
        cost(bigm(4), bigm(3)),
        cost(m(4, &|s| s.get_rps), m(3, &|s| s.get_rps)),
    );
}
