//! What listing, garbage collection, a push and a pull cost on S3 as the bucket grows, for
//! Berth and for distribution 2.8 on the same bucket of one Garage (a real S3 server). The
//! bucket is filled directly in distribution's layout with N small images (each a config and
//! two layers, tagged `latest`, under nested names such as `team-07/app-001234`) and one
//! repository with many tags; then each registry in turn (never both at once) is started on
//! it and measured. S3 requests are counted by Garage itself (`api_s3_request_counter` on its
//! admin API), so both registries are counted the same way.
//!
//! ```sh
//! cargo build --release -p berth -p berth-bench && target/release/s3-scale \
//!     [--repos 1000,10000] [--tags 100000] [--timeout 300]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_bench::{berth_bin, timed};
use berth_conformance::client::Client;
use berth_conformance::fixtures::{bytes, digest, expect_status, Image};
use berth_storage::{S3Config, S3Driver, StorageDriver};
use berth_testkit::{Berth, Distribution, Garage, DISTRIBUTION_BIN};

const BUCKET: &str = "scale";
/// The repository holding `--tags` tags.
const BIG: &str = "bigtags/app";
/// Distinct layers the filled images share (each image uses two of them).
const LAYER_POOL: usize = 16;
/// Writes in flight while filling.
const FILL_CONCURRENCY: usize = 64;
const ROOT: &str = "/docker/registry/v2";

struct Args {
    repos: Vec<usize>,
    tags: usize,
    timeout: Duration,
}

fn args() -> Args {
    let mut a = Args {
        repos: vec![1_000, 10_000],
        tags: 100_000,
        timeout: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--repos" => {
                a.repos = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .replace('_', "")
                            .parse()
                            .expect("--repos 1000,10000")
                    })
                    .collect();
                a.repos.sort_unstable();
            }
            "--tags" => a.tags = value.parse().expect("--tags N"),
            "--timeout" => a.timeout = Duration::from_secs(value.parse().expect("--timeout SECS")),
            _ => panic!("usage: s3-scale [--repos 1000,10000] [--tags 100000] [--timeout SECS]"),
        }
    }
    a
}

/// The name of filled repository `i`: mostly `team-NN/app-NNNNNN`, with top-level names, a
/// third level, a repository inside another one, and siblings whose names continue with `-`
/// or `.` (those sort before `/` in S3's key order but after the shorter name in the
/// catalog's, the listing-order edge case).
fn repo_name(i: usize) -> String {
    let t = i % 97;
    match i % 20 {
        0 => format!("lib-{i:06}"),
        1 => format!("team-{t:02}/app.{i:06}"),
        2 => format!("team-{t:02}/sub/app-{i:06}"),
        3 => format!("team-{t:02}-x/app-{i:06}"),
        4 => format!("lib-{:06}/nested", i - 4),
        5 => format!("team-{t:02}.y/app-{i:06}"),
        6 => format!("lib-{:06}-x", i - 6),
        7 => format!("lib-{:06}.z", i - 7),
        _ => format!("team-{t:02}/app-{i:06}"),
    }
}

fn layer(k: usize) -> Vec<u8> {
    bytes(&format!("pool-layer-{k}"), 2048 + k * 512)
}

/// The image of filled repository `i` (its own config, two pool layers).
fn filled_image(seed: &str, i: usize) -> Image {
    let a = i % LAYER_POOL;
    let b = (a + 1 + (i / LAYER_POOL) % (LAYER_POOL - 1)) % LAYER_POOL;
    Image::with_layers(seed, vec![layer(a), layer(b)], "")
}

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn blob_path(d: &str) -> String {
    let h = hex(d);
    format!("{ROOT}/blobs/sha256/{}/{h}/data", &h[..2])
}

/// Every object of one image in repository `name`, in distribution's layout, tagged `tags`.
fn image_objects(name: &str, img: &Image, tags: &[String]) -> Vec<(String, Vec<u8>)> {
    let repo = format!("{ROOT}/repositories/{name}");
    let md = digest(&img.manifest);
    let mut out = vec![
        (blob_path(&digest(&img.config)), img.config.clone()),
        (blob_path(&md), img.manifest.clone()),
        (
            format!("{repo}/_manifests/revisions/sha256/{}/link", hex(&md)),
            md.clone().into_bytes(),
        ),
    ];
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let d = digest(b);
        out.push((
            format!("{repo}/_layers/sha256/{}/link", hex(&d)),
            d.into_bytes(),
        ));
    }
    for t in tags {
        out.extend(tag_objects(name, t, &md));
    }
    out
}

fn tag_objects(name: &str, tag: &str, md: &str) -> [(String, Vec<u8>); 2] {
    let dir = format!("{ROOT}/repositories/{name}/_manifests/tags/{tag}");
    [
        (format!("{dir}/current/link"), md.as_bytes().to_vec()),
        (
            format!("{dir}/index/sha256/{}/link", hex(md)),
            md.as_bytes().to_vec(),
        ),
    ]
}

/// Writes the objects `make(i)` for every `i` in `range`, `FILL_CONCURRENCY` at a time,
/// reporting progress on stderr.
async fn fill(
    driver: &S3Driver,
    what: &str,
    range: std::ops::Range<usize>,
    make: impl Fn(usize) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let make = Arc::new(make);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..FILL_CONCURRENCY {
        let (next, make, driver, end) = (next.clone(), make.clone(), driver.clone(), range.end);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                for (path, data) in make(i) {
                    driver
                        .put_content(&path, data.into())
                        .await
                        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                Some(r) => r.unwrap(),
                None => break,
            },
            _ = tick.tick() => {
                let at = next.load(Ordering::Relaxed).min(range.end);
                eprintln!("  {what}: {} of {} ({:.0?})", at - range.start, range.len(), start.elapsed());
            }
        }
    }
    eprintln!(
        "  {what}: {} written in {:.1?} ({:.0}/s)",
        range.len(),
        start.elapsed(),
        range.len() as f64 / start.elapsed().as_secs_f64()
    );
}

/// One measured operation: S3 requests by call, wall time, and whether it was cut short.
#[derive(Clone, Default)]
struct Measure {
    calls: BTreeMap<String, u64>,
    time: Duration,
    timed_out: bool,
}

impl Measure {
    fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// Garage's counters once they stop moving (nothing in flight: 300 ms without a request).
fn settled(g: &Garage) -> BTreeMap<String, u64> {
    let mut last = g.s3_requests();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = g.s3_requests();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `op` (which says whether it finished in time) between two settled readings.
fn measure(g: &Garage, op: impl FnOnce() -> bool) -> Measure {
    let before = settled(g);
    let (finished, time) = timed(op);
    let after = settled(g);
    Measure {
        calls: delta(&before, &after),
        time,
        timed_out: !finished,
    }
}

/// `GET first`, then the `Link: <...>; rel="next"` pages while `all`, counting the entries of
/// `field` in `seen`; false when `deadline` passed first.
fn walk(
    base: &str,
    first: &str,
    field: &str,
    all: bool,
    deadline: Instant,
    seen: &mut usize,
) -> bool {
    let agent = ureq::AgentBuilder::new().build();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let resp = match agent.get(&format!("{base}{path}")).timeout(left).call() {
            Ok(r) => r,
            Err(ureq::Error::Transport(t)) if Instant::now() >= deadline => {
                eprintln!("    {path}: {t}");
                return false;
            }
            Err(e) => panic!("GET {path}: {e}"),
        };
        let link = resp.header("link").map(str::to_owned);
        let body: serde_json::Value = match resp.into_string() {
            Ok(v) => serde_json::from_str(&v).unwrap_or_else(|e| panic!("GET {path}: {e}: {v}")),
            Err(_) if Instant::now() >= deadline => return false,
            Err(e) => panic!("GET {path}: {e}"),
        };
        *seen += body[field].as_array().map_or(0, Vec::len);
        if all {
            next = link.and_then(|l| {
                let l = l.split('<').nth(1)?.split('>').next()?;
                // An absolute URL (distribution 3) or a path (2.8, Berth).
                Some(match l.find("/v2/") {
                    Some(i) => l[i..].to_owned(),
                    None => l.to_owned(),
                })
            });
        }
    }
    true
}

/// A push as Docker makes it: for each blob HEAD (absent), POST, one PATCH, PUT ?digest=;
/// then the manifest by tag.
fn push(c: &Client, repo: &str, img: &Image) {
    for b in img.blobs() {
        berth_bench::docker_push_blob(c, repo, b, false);
    }
    let r = c
        .put_manifest(repo, "latest", img.media_type, &img.manifest)
        .unwrap();
    expect_status(&r, &[201]).unwrap();
}

/// A pull as containerd makes it: HEAD the tag, GET the manifest by digest, GET every blob.
fn pull(c: &Client, repo: &str, img: &Image) {
    let r = c.head(&format!("/v2/{repo}/manifests/latest")).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = c
        .get(&format!("/v2/{repo}/manifests/{}", img.digest()), &[])
        .unwrap();
    assert_eq!(r.body, img.manifest, "{}", r.describe());
    for b in img.blobs() {
        let r = c
            .get(&format!("/v2/{repo}/blobs/{}", digest(b)), &[])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(&r.body == b);
    }
}

/// Runs a garbage-collection command with a clean environment; false when `timeout` passed
/// first (the process is then killed).
fn run_gc(cmd: &mut Command, timeout: Duration, log: &Path) -> bool {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_")
            || k.starts_with("REGISTRY_")
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn garbage-collect");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(
                st.success(),
                "{cmd:?}: {st}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The measured operations, in table order.
const OPS: &[&str] = &[
    "catalog page (`n=100`)",
    "whole catalog (pages of 1,000)",
    "tag page (`n=1000`)",
    "all tags (pages of 1,000)",
    "GC dry run",
    "GC dry run `--offline` (Berth; distribution has one mode)",
    "push (config + 2 layers, new repository)",
    "pull (HEAD tag, manifest, 3 blobs)",
];

/// A registry process on the bucket.
enum Registry {
    Berth(Berth),
    Distribution(Distribution),
}

impl Registry {
    fn url(&self) -> String {
        match self {
            Registry::Berth(b) => b.url.clone(),
            Registry::Distribution(d) => d.url.clone(),
        }
    }
}

/// What every run shares: the S3 server, the registries' `storage:` section, a scratch
/// directory and the time limit of one operation.
struct Setup<'a> {
    garage: &'a Garage,
    storage: String,
    dir: tempfile::TempDir,
    timeout: Duration,
}

impl Setup<'_> {
    fn config_text(&self) -> String {
        format!(
            "version: 0.1\nlog:\n  level: info\n{}http:\n  addr: 127.0.0.1:0\n",
            self.storage
        )
    }

    /// Starts a registry and waits until its start-up requests are over.
    fn start(&self, berth: bool) -> Registry {
        let r = if berth {
            let root = self.dir.path().join("berth-root");
            Registry::Berth(Berth::start_with_config(
                &berth_bin(),
                &self.config_text(),
                &root,
            ))
        } else {
            Registry::Distribution(Distribution::start_storage(&self.storage))
        };
        settled(self.garage);
        r
    }

    /// Every operation of [`OPS`] against one registry on the bucket as it is; `None` for an
    /// operation that does not apply. Also the number of entries each listing returned.
    fn run(&self, berth: bool, n: usize) -> Vec<Option<(Measure, String)>> {
        let name = if berth { "berth" } else { "distribution" };
        let (g, t) = (self.garage, self.timeout);
        let mut reg = Some(self.start(berth));
        let mut out = Vec::new();
        let report = |op: &str, m: &Measure, note: &str| {
            eprintln!(
                "  {name} {op}: {} S3 requests, {:.2?}{} {note}",
                m.total(),
                m.time,
                if m.timed_out { " (timed out)" } else { "" }
            );
        };
        let tag_path = format!("/v2/{BIG}/tags/list?n=1000");
        let listings = [
            ("/v2/_catalog?n=100", "repositories", false),
            ("/v2/_catalog?n=1000", "repositories", true),
            (tag_path.as_str(), "tags", false),
            (tag_path.as_str(), "tags", true),
        ];
        for (i, (path, field, all)) in listings.into_iter().enumerate() {
            let url = reg.as_ref().unwrap().url();
            let mut seen = 0;
            let m = measure(g, || {
                walk(&url, path, field, all, Instant::now() + t, &mut seen)
            });
            let note = format!("{seen} {field}");
            report(OPS[i], &m, &note);
            if m.timed_out {
                // The server may still be working on the abandoned request.
                reg.take();
                reg = Some(self.start(berth));
            }
            out.push(Some((m, note)));
        }
        let cfg = self.dir.path().join("gc.yml");
        std::fs::write(&cfg, self.config_text()).unwrap();
        let log = self.dir.path().join("gc.log");
        let gc = |offline: bool| {
            let mut cmd = if berth {
                let mut c = Command::new(berth_bin());
                c.args(["garbage-collect", "--dry-run"]);
                if offline {
                    c.arg("--offline");
                }
                c
            } else {
                let mut c = Command::new(DISTRIBUTION_BIN);
                c.args(["garbage-collect", "--dry-run"]);
                c
            };
            cmd.arg(&cfg);
            let m = measure(g, || run_gc(&mut cmd, t, &log));
            report(if offline { OPS[5] } else { OPS[4] }, &m, "");
            Some((m, String::new()))
        };
        out.push(gc(false));
        out.push(if berth { gc(true) } else { None });

        let seed = format!("pushed-{name}-{n}");
        let img = Image::with_layers(
            &seed,
            vec![
                bytes(&format!("{seed}-a"), 4096),
                bytes(&format!("{seed}-b"), 6144),
            ],
            "",
        );
        let repo = format!("pushed/{name}-{n}");
        let c = Client::new(&reg.as_ref().unwrap().url(), None);
        let m = measure(g, || {
            push(&c, &repo, &img);
            true
        });
        report(OPS[6], &m, "");
        out.push(Some((m, String::new())));
        let m = measure(g, || {
            pull(&c, &repo, &img);
            true
        });
        report(OPS[7], &m, "");
        out.push(Some((m, String::new())));
        out
    }
}

fn fmt_count(m: &Measure) -> String {
    let n = thousands(m.total());
    if m.timed_out {
        format!("> {n}")
    } else {
        n
    }
}

fn fmt_time(m: &Measure) -> String {
    let s = m.time.as_secs_f64();
    let t = if s >= 10.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    };
    if m.timed_out {
        format!("> {t}")
    } else {
        t
    }
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// S3 calls by operation, short: `ListV2 12, Get 3` (`ListV1` is ListObjects, which
/// distribution 2.8 uses for some listings).
fn calls(m: &Measure) -> String {
    m.calls
        .iter()
        .map(|(k, v)| {
            let k = match k.as_str() {
                "ListObjectsV2" => "ListV2".to_owned(),
                "ListObjects" => "ListV1".to_owned(),
                "GetObject" | "HeadObject" | "PutObject" | "CopyObject" | "DeleteObject" => {
                    k.trim_end_matches("Object").to_owned()
                }
                k => k.to_owned(),
            };
            format!("{k} {}", thousands(*v))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

type Row = Vec<Option<(Measure, String)>>;

fn main() {
    let started = Instant::now();
    let a = args();
    let garage = Garage::start();
    garage.create_bucket(BUCKET);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = rt
        .block_on(S3Driver::new(S3Config {
            region: "garage".into(),
            region_endpoint: Some(garage.url.clone()),
            bucket: BUCKET.into(),
            access_key: Some(garage.key_id.clone()),
            secret_key: Some(garage.secret.clone()),
            secure: false,
            force_path_style: true,
            ..S3Config::default()
        }))
        .unwrap();

    eprintln!(
        "filling {BUCKET}: {LAYER_POOL} layers, {BIG} with {} tags",
        a.tags
    );
    rt.block_on(fill(&driver, "layers", 0..LAYER_POOL, |k| {
        let l = layer(k);
        vec![(blob_path(&digest(&l)), l)]
    }));
    let big = filled_image(BIG, 0);
    let big_digest = digest(&big.manifest);
    rt.block_on(fill(&driver, "big repository", 0..1, move |_| {
        image_objects(BIG, &big, &[])
    }));
    rt.block_on(fill(&driver, "tags", 0..a.tags, move |j| {
        tag_objects(BIG, &format!("1.{}.{}", j / 1000, j % 1000), &big_digest).to_vec()
    }));

    let setup = Setup {
        garage: &garage,
        storage: garage.storage_yaml(
            BUCKET,
            "",
            "  redirect:\n    disable: true\n  cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n",
        ),
        dir: tempfile::tempdir().unwrap(),
        timeout: a.timeout,
    };
    let mut results: Vec<(usize, Row, Row)> = Vec::new();
    let mut filled = 0;
    for &n in &a.repos {
        eprintln!("filling repositories {filled}..{n}");
        rt.block_on(fill(&driver, "repositories", filled..n, |i| {
            let name = repo_name(i);
            let img = filled_image(&name, i);
            image_objects(&name, &img, &["latest".to_owned()])
        }));
        filled = n;
        eprintln!("measuring at {n} repositories");
        let b = setup.run(true, n);
        let d = setup.run(false, n);
        results.push((n, b, d));
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Garage {} single node, one bucket; each repository: config + 2 layers (of {LAYER_POOL} shared), tagged `latest`; `{BIG}` has {} tags; time limit per operation {} s.\n",
        garage_version(),
        thousands(a.tags as u64),
        a.timeout.as_secs()
    );
    for (n, b, d) in &results {
        let _ = writeln!(
            out,
            "**{} repositories** (S3 requests counted by Garage):\n",
            thousands(*n as u64)
        );
        let _ = writeln!(out, "| operation | Berth requests | distribution requests | Berth time | distribution time | time ratio (Berth / distribution) |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for (i, op) in OPS.iter().enumerate() {
            let Some((bm, _)) = &b[i] else { continue };
            // distribution has one GC mode: the offline row compares with it.
            let dm = d[i]
                .as_ref()
                .or(d[4].as_ref().filter(|_| i == 5))
                .map(|x| &x.0)
                .unwrap();
            let r = bm.time.as_secs_f64() / dm.time.as_secs_f64();
            // A cut operation took at least its time: the ratio is a bound, or unknown.
            let ratio = match (bm.timed_out, dm.timed_out) {
                (false, false) => format!("{r:.2}x"),
                (true, false) => format!("> {r:.2}x"),
                (false, true) => format!("< {r:.2}x"),
                (true, true) => "?".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {op} | {} | {} | {} | {} | {ratio} |",
                fmt_count(bm),
                fmt_count(dm),
                fmt_time(bm),
                fmt_time(dm),
            );
        }
        let _ = writeln!(out, "\nBy S3 call:\n");
        let _ = writeln!(
            out,
            "| operation | Berth | distribution | listed (Berth / distribution) |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for (i, op) in OPS.iter().enumerate() {
            let Some((bm, bn)) = &b[i] else { continue };
            let (dm, dn) = d[i].as_ref().or(d[4].as_ref().filter(|_| i == 5)).unwrap();
            let listed = if bn.is_empty() {
                String::new()
            } else {
                format!("{bn} / {dn}")
            };
            let _ = writeln!(out, "| {op} | {} | {} | {listed} |", calls(bm), calls(dm));
        }
        let _ = writeln!(out);
    }
    if results.len() > 1 {
        let ns: Vec<String> = results.iter().map(|r| thousands(r.0 as u64)).collect();
        let _ = writeln!(
            out,
            "Growth with the number of repositories ({}):\n",
            ns.join(" → ")
        );
        let _ = writeln!(out, "| operation | Berth requests | distribution requests | Berth time | distribution time |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for (i, op) in OPS.iter().enumerate() {
            let pick = |berth: bool| -> Vec<&Measure> {
                results
                    .iter()
                    .filter_map(|(_, b, d)| {
                        let row = if berth { b } else { d };
                        row[i].as_ref().or(if berth {
                            None
                        } else {
                            row[4].as_ref().filter(|_| i == 5)
                        })
                    })
                    .map(|x| &x.0)
                    .collect()
            };
            let (bs, ds) = (pick(true), pick(false));
            if bs.is_empty() {
                continue;
            }
            let series = |ms: &[&Measure], f: fn(&Measure) -> String| {
                ms.iter().map(|m| f(m)).collect::<Vec<_>>().join(" → ")
            };
            let _ = writeln!(
                out,
                "| {op} | {} | {} | {} | {} |",
                series(&bs, fmt_count),
                series(&ds, fmt_count),
                series(&bs, fmt_time),
                series(&ds, fmt_time)
            );
        }
        let _ = writeln!(out);
    }
    let secs = started.elapsed().as_secs();
    let _ = writeln!(out, "Total run time: {} min {} s.", secs / 60, secs % 60);
}

fn garage_version() -> String {
    Command::new(berth_testkit::garage_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .map(|v| v.trim_start_matches("cargo:").to_owned())
        })
        .unwrap_or_default()
}
