//! What a push and a pull cost on S3, for Berth and for distribution 2.8 on the same S3
//! server (Garage, counted by its own metrics): requests by operation, and throughput. The two registries run side by side
//! and take turns.
//!
//! ```sh
//! cargo build --release -p berth -p berth-bench && target/release/s3-cost [ROUNDS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use berth_bench::{berth_bin, median, mib_per_s, timed};
use berth_conformance::client::Client;
use berth_conformance::fixtures::{
    bytes, descriptor, digest, expect_status, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use berth_testkit::{Berth, Distribution, Garage};

/// The image: a config and layers of 1 KiB, 1 MiB and 40 MiB (above S3's part size).
fn image(seed: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
    let layers = vec![
        bytes(&format!("{seed}-a"), 1024),
        bytes(&format!("{seed}-b"), 1 << 20),
        bytes(&format!("{seed}-c"), 40 << 20),
    ];
    let descs: Vec<String> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(OCI_CONFIG, &config),
        descs.join(",")
    )
    .into_bytes();
    let mut blobs = vec![config];
    blobs.extend(layers);
    (blobs, manifest)
}

/// A push as Docker makes it: for each blob HEAD (absent), POST, one streamed PATCH, PUT
/// ?digest=; then the manifest by tag.
fn push(c: &Client, repo: &str, blobs: &[Vec<u8>], manifest: &[u8]) {
    for b in blobs {
        berth_bench::docker_push_blob(c, repo, b, true);
    }
    let r = c.put_manifest(repo, "v1", OCI_MANIFEST, manifest).unwrap();
    expect_status(&r, &[201]).unwrap();
}

/// A pull as containerd makes it: HEAD the tag, GET the manifest by digest, GET every blob
/// (following redirects to storage).
fn pull(c: &Client, repo: &str, blobs: &[Vec<u8>], manifest: &[u8]) {
    let r = c.head(&format!("/v2/{repo}/manifests/v1")).unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .get(&format!("/v2/{repo}/manifests/{}", digest(manifest)), &[])
        .unwrap();
    assert_eq!(r.body, manifest);
    for b in blobs {
        let r = c
            .get(&format!("/v2/{repo}/blobs/{}", digest(b)), &[])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(&r.body == b);
    }
}

/// What the server counted between two snapshots of its counters, by operation.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, usize> {
    after
        .iter()
        .map(|(op, n)| {
            (
                op.clone(),
                (n - before.get(op).copied().unwrap_or(0)) as usize,
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let garage = Garage::start();
    garage.create_bucket("berth");
    garage.create_bucket("dist");
    let cache = "  cache:\n    blobdescriptor: inmemory\n";
    let berth = Berth::start_garage(&berth_bin(), &garage, "berth", cache, "");
    let dist = Distribution::start_storage(&garage.storage_yaml("dist", "", cache));
    let registries = [
        ("berth", Client::new(&berth.url, None)),
        ("distribution 2.8", Client::new(&dist.url, None)),
    ];
    let total: usize = image("x").0.iter().map(Vec::len).sum::<usize>();

    let mut counts: BTreeMap<(&str, &str), BTreeMap<String, usize>> = BTreeMap::new();
    let mut speed: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (name, c) in &registries {
            let (blobs, manifest) = image(&format!("{name}-{round}"));
            let repo = format!("bench/r{round}");
            let before = garage.s3_requests();
            let (_, t) = timed(|| push(c, &repo, &blobs, &manifest));
            let mid = garage.s3_requests();
            speed
                .entry((name, "push"))
                .or_default()
                .push(mib_per_s(total, t));
            let (_, t) = timed(|| pull(c, &repo, &blobs, &manifest));
            let after = garage.s3_requests();
            speed
                .entry((name, "pull"))
                .or_default()
                .push(mib_per_s(total, t));
            if round == 0 {
                counts.insert((name, "push"), delta(&before, &mid));
                counts.insert((name, "pull"), delta(&mid, &after));
            }
        }
    }

    println!("S3 requests for one image (config + layers of 1 KiB, 1 MiB, 40 MiB; chunksize 5 MiB), Garage {}:\n", garage.url);
    println!("| operation | berth push | distribution push | berth pull | distribution pull |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut ops: Vec<String> = counts.values().flat_map(|m| m.keys().cloned()).collect();
    ops.sort();
    ops.dedup();
    let get = |n: &str, p: &str, op: &str| {
        counts
            .get(&(n, p))
            .and_then(|m| m.get(op))
            .copied()
            .unwrap_or(0)
    };
    for op in &ops {
        println!(
            "| {op} | {} | {} | {} | {} |",
            get("berth", "push", op),
            get("distribution 2.8", "push", op),
            get("berth", "pull", op),
            get("distribution 2.8", "pull", op)
        );
    }
    let sum = |n: &str, p: &str| {
        counts
            .get(&(n, p))
            .map(|m| m.values().sum::<usize>())
            .unwrap_or(0)
    };
    println!(
        "| **total** | **{}** | **{}** | **{}** | **{}** |",
        sum("berth", "push"),
        sum("distribution 2.8", "push"),
        sum("berth", "pull"),
        sum("distribution 2.8", "pull")
    );
    println!("\nThroughput (MiB/s, median of {rounds}; one Garage node on the same two cores):\n");
    println!("| | berth | distribution 2.8 | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for phase in ["push", "pull"] {
        let b = median(speed[&("berth", phase)].clone());
        let d = median(speed[&("distribution 2.8", phase)].clone());
        println!("| {phase} | {b:.1} | {d:.1} | {:.2}x |", b / d);
    }
}
