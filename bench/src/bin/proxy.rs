//! The pull-through cache: time to first byte of a miss, and throughput of a hit, against a
//! direct pull from the upstream; Berth and distribution 2.8 (proxy mode) side by side on the
//! same upstream (a filesystem Berth on loopback), taking turns.
//!
//! ```sh
//! cargo build --release -p berth -p berth-bench && target/release/proxy [MiB] [ROUNDS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::time::{Duration, Instant};

use berth_bench::{berth_bin, median, mib_per_s};
use berth_conformance::client::Client;
use berth_conformance::fixtures::{bytes, digest, Image};
use berth_testkit::{Berth, Distribution};

/// One registry's measurements.
#[derive(Default)]
struct Samples {
    ttfb_ms: Vec<f64>,
    miss: Vec<f64>,
    hit: Vec<f64>,
}

/// GETs `url`: time to the first body byte, and total time, checking the length.
fn get(url: &str, len: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let resp = ureq::get(url).call().unwrap();
    let mut reader = resp.into_reader();
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    let ttfb = start.elapsed();
    let mut rest = Vec::with_capacity(len);
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len() + 1, len, "{url}");
    (ttfb, start.elapsed())
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let bin = berth_bin();
    let up = Berth::start_on(&bin, &dir.path().join("up"), "");
    // BENCH_SPOOL=/dev/shm/... puts Berth's spool on tmpfs (proxy.spooldir).
    let spool = std::env::var("BENCH_SPOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("spool"));
    let berth = Berth::start_on(
        &bin,
        &dir.path().join("berth"),
        &format!(
            "proxy:\n  spooldir: {}\n  remoteurl: {}\n",
            spool.display(),
            up.url
        ),
    );
    let dist = Distribution::start_with_extra(
        &dir.path().join("dist"),
        &format!("proxy:\n  remoteurl: {}\n", up.url),
    );
    let len = mib << 20;

    let mut direct = (Vec::new(), Vec::new());
    let mut results: std::collections::BTreeMap<&str, Samples> = Default::default();
    for round in 0..rounds {
        // A new blob per round, so every miss is a miss.
        let layer = bytes(&format!("proxied-{round}"), len);
        let d = digest(&layer);
        let repo = format!("library/r{round}");
        Client::new(&up.url, None)
            .push_image(&repo, "v1", &Image::with_layers("p", vec![layer], ""))
            .unwrap();
        let (t, total) = get(&format!("{}/v2/{repo}/blobs/{d}", up.url), len);
        direct.0.push(t.as_secs_f64() * 1000.0);
        direct.1.push(mib_per_s(len, total));
        for (name, url) in [("berth", &berth.url), ("distribution 2.8", &dist.url)] {
            let blob_url = format!("{url}/v2/{repo}/blobs/{d}");
            let (miss_ttfb, miss_total) = get(&blob_url, len);
            // Let the cache settle (distribution finishes writing after the response).
            std::thread::sleep(Duration::from_millis(500));
            let (_, hit_total) = get(&blob_url, len);
            let e = results.entry(name).or_default();
            e.ttfb_ms.push(miss_ttfb.as_secs_f64() * 1000.0);
            e.miss.push(mib_per_s(len, miss_total));
            e.hit.push(mib_per_s(len, hit_total));
        }
    }
    println!("Pull-through cache, {mib} MiB blob, median of {rounds} (upstream: a Berth on loopback, filesystem):\n");
    println!("| | miss: time to first byte (ms) | miss: MiB/s | hit: MiB/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| direct from upstream | {:.1} | {:.0} | |",
        median(direct.0.clone()),
        median(direct.1.clone())
    );
    for (name, s) in &results {
        println!(
            "| {name} | {:.1} | {:.0} | {:.0} |",
            median(s.ttfb_ms.clone()),
            median(s.miss.clone()),
            median(s.hit.clone())
        );
    }
    let b = &results["berth"];
    let d = &results["distribution 2.8"];
    println!(
        "\nberth/distribution: miss TTFB {:.2}x (lower is better), miss throughput {:.2}x, hit throughput {:.2}x; berth hit vs direct: {:.2}x",
        median(b.ttfb_ms.clone()) / median(d.ttfb_ms.clone()),
        median(b.miss.clone()) / median(d.miss.clone()),
        median(b.hit.clone()) / median(d.hit.clone()),
        median(b.hit.clone()) / median(direct.1.clone())
    );
}
