//! The registry's hot paths, Berth and distribution 2.8 (Debian's `docker-registry`) side by
//! side in one run, taking turns, on the same kind of storage: pushes and pulls of a large
//! blob, manifest and small-blob GETs under 64 connections (wrk), the same manifest GET with
//! bearer-token auth, a 10,000-tag list and a 10,000-repository catalog, the servers' peak RSS
//! and their RSS while a 4 GiB blob streams in; next to them the machine's limits (single-core
//! SHA-256, a plain file copy on the same storage).
//!
//! ```sh
//! cargo build --release -p berth -p berth-bench
//! target/release/registry [--storage DIR] [--mib 512] [--rounds 3] [--big-gib 4] [--secs 10]
//! ```
//! `--storage` is where both registries keep their data (default: /dev/shm, tmpfs). wrk
//! (Debian's `wrk`) must be installed. Nothing is asserted: the output is a report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_bench::{berth_bin, median, mib_per_s, raw, timed};
use berth_conformance::client::Client;
use berth_conformance::fixtures::{bytes, digest, Image};
use berth_testkit::{Berth, Distribution};
use sha2::{Digest as _, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const SERVICE: &str = "bench.registry";
const ISSUER: &str = "berth-bench";
/// bcrypt of `bench-pw`: the issuer wants one account; the bench pulls anonymously.
const BENCH_USER_HASH: &str = "$2b$12$dnsT.XXF9qpmitr9acQrc.Tut33wpEa7WeuGczY99shVhe.geUPGm";

struct Args {
    storage: PathBuf,
    mib: usize,
    rounds: usize,
    big_gib: u64,
    secs: u32,
}

fn args() -> Args {
    let mut a = Args {
        storage: PathBuf::from("/dev/shm"),
        mib: 512,
        rounds: 3,
        big_gib: 4,
        secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--storage" => a.storage = PathBuf::from(v),
            "--mib" => a.mib = v.parse().unwrap(),
            "--rounds" => a.rounds = v.parse().unwrap(),
            "--big-gib" => a.big_gib = v.parse().unwrap(),
            "--secs" => a.secs = v.parse().unwrap(),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// One registry under test.
struct Server {
    name: &'static str,
    url: String,
    pid: u32,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(900))
        .redirects(0)
        .build()
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn start_upload(a: &ureq::Agent, s: &Server, repo: &str) -> String {
    let r = a
        .post(&format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .call()
        .unwrap();
    assert_eq!(r.status(), 202);
    absolute(&s.url, r.header("location").unwrap())
}

fn with_digest(loc: &str, d: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={d}")
}

/// POST, then one PUT with the whole blob: the spec's monolithic upload.
fn push_monolithic(a: &ureq::Agent, s: &Server, repo: &str, data: &[u8], d: &str) -> Duration {
    let (_, t) = timed(|| {
        let loc = start_upload(a, s, repo);
        let r = raw::exchange(
            "PUT",
            &with_digest(&loc, d),
            &[("Content-Type", "application/octet-stream")],
            data,
        );
        assert_eq!(r.status, 201, "{}", s.name);
    });
    t
}

/// POST, PATCHes of `chunk` bytes with Content-Range, PUT with the digest.
fn push_chunked(
    a: &ureq::Agent,
    s: &Server,
    repo: &str,
    data: &[u8],
    d: &str,
    chunk: usize,
) -> Duration {
    let (_, t) = timed(|| {
        let mut loc = start_upload(a, s, repo);
        for (i, part) in data.chunks(chunk).enumerate() {
            let start = i * chunk;
            let range = format!("{start}-{}", start + part.len() - 1);
            let r = raw::exchange(
                "PATCH",
                &loc,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Range", &range),
                ],
                part,
            );
            assert_eq!(r.status, 202, "{}", s.name);
            loc = absolute(&s.url, r.header("location").unwrap());
        }
        let r = raw::exchange("PUT", &with_digest(&loc, d), &[], b"");
        assert_eq!(r.status, 201, "{}", s.name);
    });
    t
}

fn pull(s: &Server, repo: &str, d: &str, len: usize) -> Duration {
    let (_, t) = timed(|| {
        let r = raw::exchange("GET", &format!("{}/v2/{repo}/blobs/{d}", s.url), &[], b"");
        assert_eq!(r.status, 200, "{}", s.name);
        assert_eq!(r.body_len as usize, len, "{}", s.name);
    });
    t
}

fn delete_blob(a: &ureq::Agent, s: &Server, repo: &str, d: &str) {
    let r = a
        .delete(&format!("{}/v2/{repo}/blobs/{d}", s.url))
        .call()
        .unwrap();
    assert_eq!(r.status(), 202, "{}", s.name);
}

/// A field of `/proc/PID/status` in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS every 20 ms until dropped; `max()` is the highest seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(proc_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            max,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.max.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// A reader of `len` pseudo-random bytes (a 1 MiB pattern, each MiB stamped with its index):
/// a large blob that never sits in the benchmark's memory.
struct Generated {
    pattern: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Generated {
    fn new(len: u64) -> Generated {
        Generated {
            pattern: bytes("big", 1 << 20),
            pos: 0,
            len,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let mib = self.pos >> 20;
        let off = (self.pos & ((1 << 20) - 1)) as usize;
        let n = buf
            .len()
            .min((1 << 20) - off)
            .min((self.len - self.pos) as usize);
        buf[..n].copy_from_slice(&self.pattern[off..off + n]);
        // Stamp the MiB's index over its first 8 bytes so no two MiBs are alike.
        let stamp = mib.to_le_bytes();
        for (i, b) in buf[..n].iter_mut().enumerate() {
            if off + i < 8 {
                *b = stamp[off + i];
            } else {
                break;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn sha256_hex(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let out = h.finalize();
    let mut s = String::from("sha256:");
    for b in out {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Streams a generated blob of `len` bytes in one PUT; returns the server's peak RSS (MiB)
/// during it.
fn push_generated(a: &ureq::Agent, s: &Server, repo: &str, len: u64, d: &str) -> (Duration, f64) {
    let sampler = RssSampler::start(s.pid);
    let (_, t) = timed(|| {
        let loc = start_upload(a, s, repo);
        let r = a
            .put(&with_digest(&loc, d))
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string())
            .send(Generated::new(len))
            .unwrap();
        assert_eq!(r.status(), 201, "{}", s.name);
    });
    (t, sampler.finish())
}

/// One wrk run: requests per second and the 99th percentile latency in ms.
fn wrk(url: &str, headers: &[String], secs: u32) -> (f64, f64) {
    let r = berth_bench::wrk::run(url, headers, secs);
    (r.rps, r.p99_ms)
}

/// Median latency (ms) of `n` sequential GETs, checking the answer has `want` entries in the
/// JSON array `field`.
fn timed_gets(url: &str, n: usize, field: &str, want: usize) -> f64 {
    let a = agent();
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = a.get(url).call().unwrap();
        let body: serde_json::Value = serde_json::from_reader(r.into_reader()).unwrap();
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        let got = body[field].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(got, want, "{url}");
    }
    median(v)
}

/// The hardware: single-core SHA-256 (the same crate and features as Berth) and a plain copy
/// of a file of `len` bytes on `dir`.
fn limits(dir: &Path, data: &[u8]) -> (f64, f64) {
    let (_, t) = timed(|| {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize()
    });
    let sha = mib_per_s(data.len(), t);
    let a = dir.join("copy-src");
    let b = dir.join("copy-dst");
    {
        let mut f = std::fs::File::create(&a).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    let mut copies = Vec::new();
    for _ in 0..3 {
        let (_, t) = timed(|| std::fs::copy(&a, &b).unwrap());
        copies.push(mib_per_s(data.len(), t));
        std::fs::remove_file(&b).unwrap();
    }
    std::fs::remove_file(&a).unwrap();
    (sha, median(copies))
}

/// Writes a tag (`current/link` and the tag's index entry) on disk in distribution's layout.
fn write_tag(root: &Path, repo: &str, tag: &str, d: &str) {
    let hex = d.trim_start_matches("sha256:");
    let base = root.join(format!(
        "docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}"
    ));
    std::fs::create_dir_all(base.join("current")).unwrap();
    std::fs::write(base.join("current/link"), d).unwrap();
    let idx = base.join(format!("index/sha256/{hex}"));
    std::fs::create_dir_all(&idx).unwrap();
    std::fs::write(idx.join("link"), d).unwrap();
}

/// Writes a repository holding one manifest revision, one tag and a layer link (`_layers` is
/// what distribution's catalog looks for), on disk.
fn write_repo(root: &Path, repo: &str, d: &str, layer: &str) {
    let hex = d.trim_start_matches("sha256:");
    let l = root.join(format!(
        "docker/registry/v2/repositories/{repo}/_layers/sha256/{}",
        layer.trim_start_matches("sha256:")
    ));
    std::fs::create_dir_all(&l).unwrap();
    std::fs::write(l.join("link"), layer).unwrap();
    let rev = root.join(format!(
        "docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256/{hex}"
    ));
    std::fs::create_dir_all(&rev).unwrap();
    std::fs::write(rev.join("link"), d).unwrap();
    write_tag(root, repo, "latest", d);
}

/// Collected measurements of one registry.
#[derive(Default)]
struct Samples {
    push: Vec<f64>,
    chunked: Vec<f64>,
    pull: Vec<f64>,
    manifest_rps: Vec<f64>,
    manifest_p99: Vec<f64>,
    blob_rps: Vec<f64>,
    blob_p99: Vec<f64>,
    auth_rps: Vec<f64>,
    auth_p99: Vec<f64>,
    tags_ms: Vec<f64>,
    catalog_ms: Vec<f64>,
    rss_big: f64,
    rss_blob: f64,
    big: f64,
    peak: f64,
}

fn registry_yaml(root: &Path, port_line: &str, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {port_line}\ncatalog:\n  maxentries: 20000\n{extra}",
        root.display()
    )
}

fn main() {
    let args = args();
    let bin = berth_bin();
    std::fs::create_dir_all(&args.storage).unwrap();
    let dir = tempfile::tempdir_in(&args.storage).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let len = args.mib << 20;
    eprintln!(
        "storage: {} ({}), blob {} MiB, {} rounds",
        args.storage.display(),
        fs_type(&args.storage),
        args.mib,
        args.rounds
    );

    // Berth issues the bench's token; both registries trust its certificate.
    let auth_berth = Berth::start_on(
        &bin,
        &keys.path().join("issuer-data"),
        &format!(
            "auth:\n  token:\n    service: {SERVICE}\n    issuer: {ISSUER}\n  issuer:\n    keydir: {}\n    expiration: 2h\n    users: {{ bench: \"{BENCH_USER_HASH}\" }}\n    acl:\n      - {{ name: \"bench/*\", actions: [pull] }}\n",
            keys.path().join("keys").display()
        ),
    );
    let token = {
        let r = ureq::get(&format!(
            "{}/auth/token?service={SERVICE}&scope=repository:bench/m:pull",
            auth_berth.url
        ))
        .call()
        .unwrap();
        let v: serde_json::Value = serde_json::from_reader(r.into_reader()).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let auth_yaml = format!(
        "auth:\n  token:\n    realm: {}/auth/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        auth_berth.url,
        keys.path().join("keys/token.crt").display()
    );

    let broot = dir.path().join("berth");
    let droot = dir.path().join("dist");
    let berth = Berth::start_with_config(&bin, &registry_yaml(&broot, "127.0.0.1:0", ""), &broot);
    let dist = Distribution::start_quiet(&droot, "catalog:\n  maxentries: 20000\n");
    let servers = [
        Server {
            name: "berth",
            url: berth.url.clone(),
            pid: berth.pid(),
        },
        Server {
            name: "distribution 2.8",
            url: dist.url.clone(),
            pid: dist.pid(),
        },
    ];

    // The same small image on both: a manifest to GET by tag, a small blob to GET.
    let small = Image::oci("bench-small", 1, "");
    let small_blob = small.layers[0].clone();
    let small_digest = digest(&small_blob);
    for s in &servers {
        Client::new(&s.url, None)
            .push_image("bench/m", "v1", &small)
            .unwrap();
    }
    let manifest_digest = small.digest();

    let a = agent();
    let data = bytes("bench-large", len);
    let d = digest(&data);
    let mut res: [Samples; 2] = Default::default();
    for round in 0..args.rounds {
        eprintln!("round {}", round + 1);
        for (i, s) in servers.iter().enumerate() {
            let sampler = RssSampler::start(s.pid);
            let t = push_monolithic(&a, s, "bench/large", &data, &d);
            res[i].push.push(mib_per_s(len, t));
            res[i].rss_blob = res[i].rss_blob.max(sampler.finish());
            res[i]
                .pull
                .push(mib_per_s(len, pull(s, "bench/large", &d, len)));
            delete_blob(&a, s, "bench/large", &d);
            let t = push_chunked(&a, s, "bench/large", &data, &d, 32 << 20);
            res[i].chunked.push(mib_per_s(len, t));
            delete_blob(&a, s, "bench/large", &d);
        }
        for (i, s) in servers.iter().enumerate() {
            let accept = format!("Accept: {MANIFEST_TYPE}");
            let (rps, p99) = wrk(
                &format!("{}/v2/bench/m/manifests/v1", s.url),
                std::slice::from_ref(&accept),
                args.secs,
            );
            res[i].manifest_rps.push(rps);
            res[i].manifest_p99.push(p99);
            let (rps, p99) = wrk(
                &format!("{}/v2/bench/m/blobs/{small_digest}", s.url),
                &[],
                args.secs,
            );
            res[i].blob_rps.push(rps);
            res[i].blob_p99.push(p99);
        }
    }
    drop(data);

    // The 4 GiB blob, streamed: RSS must not follow the blob's size.
    let big_len = args.big_gib << 30;
    let big_digest = sha256_hex(Generated::new(big_len));
    for (i, s) in servers.iter().enumerate() {
        let (t, rss) = push_generated(&a, s, "bench/big", big_len, &big_digest);
        res[i].big = mib_per_s(big_len as usize, t);
        res[i].rss_big = rss;
        delete_blob(&a, s, "bench/big", &big_digest);
    }

    // 10,000 tags and 10,000 repositories, written on disk in the shared layout.
    for root in [&broot, &droot] {
        for t in 0..10_000 {
            write_tag(root, "bench/tags", &format!("t{t:05}"), &manifest_digest);
        }
        for r in 0..10_000 {
            write_repo(
                root,
                &format!("cat/r{r:05}"),
                &manifest_digest,
                &small_digest,
            );
        }
    }
    // bench/m, bench/tags, bench/large, bench/big (distribution keeps emptied repositories).
    for (i, s) in servers.iter().enumerate() {
        res[i].tags_ms.push(timed_gets(
            &format!("{}/v2/bench/tags/tags/list", s.url),
            args.rounds.max(5),
            "tags",
            10_000,
        ));
        let cat = {
            let r = a
                .get(&format!("{}/v2/_catalog?n=20000", s.url))
                .call()
                .unwrap();
            let v: serde_json::Value = serde_json::from_reader(r.into_reader()).unwrap();
            v["repositories"].as_array().map(Vec::len).unwrap_or(0)
        };
        assert!(cat >= 10_000, "{}: catalog has {cat}", s.name);
        res[i].catalog_ms.push(timed_gets(
            &format!("{}/v2/_catalog?n=20000", s.url),
            args.rounds.max(5),
            "repositories",
            cat,
        ));
    }
    for (i, s) in servers.iter().enumerate() {
        res[i].peak = proc_kib(s.pid, "VmHWM:") as f64 / 1024.0;
    }
    drop((berth, dist));

    // Bearer-token auth on: the same manifest GET; both registries restarted on the same data.
    let berth = Berth::start_with_config(
        &bin,
        &registry_yaml(&broot, "127.0.0.1:0", &auth_yaml),
        &broot,
    );
    let dist = Distribution::start_quiet(&droot, &auth_yaml);
    let authed = [
        Server {
            name: "berth",
            url: berth.url.clone(),
            pid: berth.pid(),
        },
        Server {
            name: "distribution 2.8",
            url: dist.url.clone(),
            pid: dist.pid(),
        },
    ];
    for _ in 0..args.rounds {
        for (i, s) in authed.iter().enumerate() {
            let (rps, p99) = wrk(
                &format!("{}/v2/bench/m/manifests/v1", s.url),
                &[
                    format!("Accept: {MANIFEST_TYPE}"),
                    format!("Authorization: Bearer {token}"),
                ],
                args.secs,
            );
            res[i].auth_rps.push(rps);
            res[i].auth_p99.push(p99);
        }
    }
    // Peak RSS over the whole run: the high-water marks of both processes of each registry.
    for (i, s) in authed.iter().enumerate() {
        res[i].peak = res[i].peak.max(proc_kib(s.pid, "VmHWM:") as f64 / 1024.0);
    }
    drop((berth, dist));

    let (sha, copy) = limits(dir.path(), &bytes("limits", len));
    report(&args, &res, sha, copy);
}

fn fs_type(p: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn report(args: &Args, r: &[Samples; 2], sha: f64, copy: f64) {
    let (b, d) = (&r[0], &r[1]);
    let m = |v: &Vec<f64>| median(v.clone());
    println!(
        "\nStorage: {} ({}); {} MiB blob; median of {} rounds; wrk -t2 -c64 -d{}s.\n",
        args.storage.display(),
        fs_type(&args.storage),
        args.mib,
        args.rounds,
        args.secs
    );
    println!("| workload | berth | distribution 2.8 | berth/distribution | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let row = |name: &str, bv: f64, dv: f64, unit: &str, target: &str| {
        println!(
            "| {name} | {bv:.1} {unit} | {dv:.1} {unit} | {:.2}x | {target} |",
            bv / dv
        );
    };
    row(
        &format!("monolithic push, {} MiB", args.mib),
        m(&b.push),
        m(&d.push),
        "MiB/s",
        "≥ 5x; ≥ 60% of SHA-256",
    );
    row(
        "chunked push, 32 MiB PATCHes",
        m(&b.chunked),
        m(&d.chunked),
        "MiB/s",
        "≥ 5x; ≥ 60% of SHA-256",
    );
    row(
        &format!("pull, {} MiB", args.mib),
        m(&b.pull),
        m(&d.pull),
        "MiB/s",
        "≥ 1.8x; ≥ file copy",
    );
    row(
        "manifest GET by tag, 64 conns",
        m(&b.manifest_rps),
        m(&d.manifest_rps),
        "req/s",
        "≥ 12x",
    );
    row(
        "manifest GET p99",
        m(&b.manifest_p99),
        m(&d.manifest_p99),
        "ms",
        "≤ 0.1x",
    );
    row(
        "small-blob GET, 64 conns",
        m(&b.blob_rps),
        m(&d.blob_rps),
        "req/s",
        "≥ 15x",
    );
    row(
        "small-blob GET p99",
        m(&b.blob_p99),
        m(&d.blob_p99),
        "ms",
        "≤ 0.1x",
    );
    row(
        "manifest GET with bearer token, 64 conns",
        m(&b.auth_rps),
        m(&d.auth_rps),
        "req/s",
        "",
    );
    row(
        "manifest GET with bearer token, p99",
        m(&b.auth_p99),
        m(&d.auth_p99),
        "ms",
        "",
    );
    row(
        "tag list, 10,000 tags",
        m(&b.tags_ms),
        m(&d.tags_ms),
        "ms",
        "≤ 0.5x (≥ 2x faster)",
    );
    row(
        "catalog, 10,000 repositories",
        m(&b.catalog_ms),
        m(&d.catalog_ms),
        "ms",
        "≤ 0.5x (≥ 2x faster)",
    );
    row(
        &format!("server RSS while pushing {} MiB", args.mib),
        b.rss_blob,
        d.rss_blob,
        "MiB",
        "",
    );
    row(
        &format!("server RSS while pushing {} GiB (streamed)", args.big_gib),
        b.rss_big,
        d.rss_big,
        "MiB",
        "flat in blob size",
    );
    row(
        &format!("push of {} GiB (streamed)", args.big_gib),
        b.big,
        d.big,
        "MiB/s",
        "",
    );
    row(
        "peak server RSS, whole run",
        b.peak,
        d.peak,
        "MiB",
        "≤ 0.2x",
    );
    let loss = |x: &Samples| 100.0 * (1.0 - m(&x.auth_rps) / m(&x.manifest_rps));
    println!(
        "\nbearer-token cost on manifest GETs: berth loses {:.1}% of its req/s, distribution 2.8 {:.1}% (target: berth ≤ 5%)",
        loss(b),
        loss(d)
    );
    println!(
        "machine limits: single-core SHA-256 {sha:.0} MiB/s; plain file copy on this storage {copy:.0} MiB/s"
    );
    println!(
        "berth push / SHA-256: {:.0}% (monolithic), {:.0}% (chunked); berth pull / file copy: {:.2}x",
        100.0 * m(&b.push) / sha,
        100.0 * m(&b.chunked) / sha,
        m(&b.pull) / copy
    );
}
