//! What the catalog and tag lists cost on a real S3 server (Garage), counted by the driver:
//! a page costs the same whether the bucket holds a hundred repositories or thousands, and a
//! whole walk about one request per 1,000 names. The bucket is filled directly in
//! distribution's layout, as a registry that has been in use holds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use berth_registry::{Options, Registry};
use berth_storage::{S3Config, S3Driver, StorageDriver};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

const ROOT: &str = "/docker/registry/v2/repositories";

/// The driver on a new bucket of `g`.
async fn driver(g: &berth_testkit::Garage, bucket: &str) -> S3Driver {
    g.create_bucket(bucket);
    S3Driver::new(S3Config {
        region: "garage".into(),
        region_endpoint: Some(g.url.clone()),
        bucket: bucket.into(),
        access_key: Some(g.key_id.clone()),
        secret_key: Some(g.secret.clone()),
        force_path_style: true,
        ..S3Config::default()
    })
    .await
    .unwrap()
}

/// A repository as a push leaves it: a layer link, a revision and one tag (current + index).
fn repo_keys(name: &str, seed: usize) -> Vec<String> {
    let hex = format!("{seed:064x}");
    vec![
        format!("{ROOT}/{name}/_layers/sha256/{hex}/link"),
        format!("{ROOT}/{name}/_manifests/revisions/sha256/{hex}/link"),
        format!("{ROOT}/{name}/_manifests/tags/latest/current/link"),
        format!("{ROOT}/{name}/_manifests/tags/latest/index/sha256/{hex}/link"),
    ]
}

async fn put_all(d: &S3Driver, keys: Vec<String>) {
    stream::iter(keys)
        .for_each_concurrent(64, |k| async move {
            d.put_content(&k, Bytes::from_static(b"sha256:0"))
                .await
                .unwrap();
        })
        .await;
}

/// Names whose key order is not their name order (`team-3` after `team-3-x/...` and
/// `team-3/0...`), nested and top-level ones.
fn names(from: usize, to: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in from..to {
        let t = i % 7;
        out.push(match i % 5 {
            0 => format!("team-{t}"),
            1 => format!("team-{t}/app-{i}"),
            2 => format!("team-{t}-x/svc.{i}"),
            3 => format!("team-{t}/{i}"),
            _ => format!("r{i}"),
        });
    }
    out.sort();
    out.dedup();
    out
}

async fn counted<T>(d: &S3Driver, f: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = d.request_counts().total();
    let out = f.await;
    (out, d.request_counts().total() - before)
}

/// Every page by `last`, and what the walk cost.
async fn walk(reg: &Registry, d: &S3Driver, n: usize) -> (Vec<String>, u64, u64) {
    let (mut all, mut cost, mut pages) = (Vec::new(), 0, 0);
    let mut last: Option<String> = None;
    loop {
        let (page, c) = counted(d, reg.catalog(Some(n), last.as_deref())).await;
        let page = page.unwrap();
        // A page of 1,000 that meets a stray entry needs a second listing for its last name.
        let most = if n >= 1000 { 4 } else { 3 };
        assert!(c <= most, "page {pages} of {n} after {last:?} cost {c}");
        cost += c;
        pages += 1;
        all.extend(page.entries.iter().cloned());
        if !page.more {
            return (all, cost, pages);
        }
        last = page.entries.last().cloned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_tag_pages_cost_what_they_return() {
    let g = berth_testkit::Garage::start();
    let d = driver(&g, "scale").await;
    let reg = Registry::new(Arc::new(d.clone()), Options::default());

    // 150 repositories, then 2,500: the first page costs the same.
    let small = names(0, 150);
    put_all(
        &d,
        small
            .iter()
            .enumerate()
            .flat_map(|(i, n)| repo_keys(n, i))
            .collect(),
    )
    .await;
    let (page, small_cost) = counted(&d, reg.catalog(Some(100), None)).await;
    let page = page.unwrap();
    assert_eq!(page.entries, small[..100]);
    assert!(page.more);

    let big = names(150, 2_500);
    put_all(
        &d,
        big.iter()
            .enumerate()
            .flat_map(|(i, n)| repo_keys(n, i + 150))
            .collect(),
    )
    .await;
    // An upload that has not finished yet makes its repository visible too.
    d.put_content(
        &format!("{ROOT}/zz-new/_uploads/u/startedat"),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    // Strays: a file among repositories, a directory that is not a valid name.
    put_all(
        &d,
        vec![
            format!("{ROOT}/stray"),
            format!("{ROOT}/Upper/_layers/x/link"),
        ],
    )
    .await;
    let mut every: Vec<String> = small.iter().chain(&big).cloned().collect();
    every.push("zz-new".into());
    every.sort();
    every.dedup();

    let (page, big_cost) = counted(&d, reg.catalog(Some(100), None)).await;
    assert_eq!(page.unwrap().entries, every[..100]);
    println!(
        "catalog page of 100: {small_cost} S3 requests at {} repositories, {big_cost} at {}",
        small.len(),
        every.len()
    );
    assert!(big_cost <= 3, "{big_cost}");
    assert!(big_cost <= small_cost + 1, "{small_cost} -> {big_cost}");

    // Pages from the middle, where `last` is a prefix of names listed before it.
    for last in [
        "team-3",
        "team-3-x/svc.1002",
        "team-3/app-1001",
        "r1999",
        "zz",
    ] {
        let (page, cost) = counted(&d, reg.catalog(Some(100), Some(last))).await;
        let want: Vec<String> = every
            .iter()
            .filter(|x| x.as_str() > last)
            .take(100)
            .cloned()
            .collect();
        assert_eq!(page.unwrap().entries, want, "after {last}");
        assert!(cost <= 3, "after {last}: {cost}");
    }

    // Whole walks: every name once, in order, at most 3 requests a page of 100: one listing; two
    // where a page of 1,000 meets a stray entry (two of them here); and a probe where a page
    // ends among the extensions of a name that could still come before its last name
    // (`team-2/app-1234` ends a page: is `team` a repository? `team-2/app`?).
    for (n, budget) in [(1000, 8), (100, 45)] {
        let (all, cost, pages) = walk(&reg, &d, n).await;
        assert_eq!(all, every, "n={n}");
        println!(
            "whole catalog of {} in pages of {n}: {pages} pages, {cost} S3 requests",
            every.len()
        );
        assert!(cost <= budget, "n={n}: {cost}");
    }

    // 3,000 tags in one repository: a page of 1,000 costs at most two requests.
    let name: berth_core::RepoName = "tagged".parse().unwrap();
    let mut tags: Vec<String> = (0..3_000)
        .map(|i| match i % 3 {
            0 => format!("v{i}"),
            1 => format!("v{}-rc", i - 1),
            _ => format!("v{}.1", i - 2),
        })
        .collect();
    let keys = tags
        .iter()
        .flat_map(|t| {
            [
                format!("{ROOT}/tagged/_manifests/tags/{t}/current/link"),
                format!(
                    "{ROOT}/tagged/_manifests/tags/{t}/index/sha256/{:064x}/link",
                    1
                ),
            ]
        })
        .collect();
    put_all(&d, keys).await;
    tags.sort();
    let (mut got, mut cost, mut last) = (Vec::new(), 0, None::<String>);
    loop {
        let (page, c) = counted(&d, reg.list_tags(&name, Some(1000), last.as_deref())).await;
        let page = page.unwrap();
        assert!(c <= 2, "a tag page cost {c}");
        cost += c;
        got.extend(page.entries.iter().cloned());
        if !page.more {
            break;
        }
        last = page.entries.last().cloned();
    }
    assert_eq!(got, tags);
    println!("3,000 tags in pages of 1,000: {cost} S3 requests");
    assert!(cost <= 6, "{cost}");
}

/// Garbage collection reads every key once, through flat listings, and each manifest once:
/// at N repositories about N + keys/1,000 requests, where walking directory by directory
/// cost five to six per repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_lists_each_key_once() {
    use berth_core::Digest;
    use berth_registry::gc::{GcOptions, Progress};

    let g = berth_testkit::Garage::start();
    let d = driver(&g, "gcscale").await;
    let reg = Registry::new(Arc::new(d.clone()), Options::default());
    let blob_key = |d: &Digest| {
        format!(
            "/docker/registry/v2/blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        )
    };
    let (config, layer) = (b"{}".to_vec(), b"layer".to_vec());
    let (cd, ld) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
    let mut objects: Vec<(String, Vec<u8>)> = vec![(blob_key(&cd), config), (blob_key(&ld), layer)];
    let repos = 600;
    for i in 0..repos {
        let name = format!("team-{}/app-{i}", i % 9);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":5}}],"annotations":{{"i":"{i}"}}}}"#
        );
        let md = Digest::sha256_of(manifest.as_bytes());
        let link = md.to_string().into_bytes();
        let r = format!("{ROOT}/{name}");
        objects.push((blob_key(&md), manifest.into_bytes()));
        for l in [&cd, &ld, &md] {
            let p = format!("{r}/_layers/sha256/{}/link", l.hex());
            objects.push((p, l.to_string().into_bytes()));
        }
        objects.push((
            format!("{r}/_manifests/revisions/sha256/{}/link", md.hex()),
            link.clone(),
        ));
        objects.push((
            format!("{r}/_manifests/tags/latest/current/link"),
            link.clone(),
        ));
        objects.push((
            format!("{r}/_manifests/tags/latest/index/sha256/{}/link", md.hex()),
            link,
        ));
    }
    // Five blobs nothing references.
    let orphans: Vec<Digest> = (0..5)
        .map(|i| {
            let data = format!("orphan {i}").into_bytes();
            let od = Digest::sha256_of(&data);
            objects.push((blob_key(&od), data));
            od
        })
        .collect();
    let keys = objects.len() as u64;
    stream::iter(objects)
        .for_each_concurrent(64, |(k, v)| {
            let d = &d;
            async move { d.put_content(&k, Bytes::from(v)).await.unwrap() }
        })
        .await;

    let run = |dry_run| {
        let reg = reg.clone();
        async move {
            let opts = GcOptions {
                dry_run,
                ..GcOptions::default()
            };
            reg.garbage_collect(&opts, &Progress::default(), &|_| {})
                .await
                .unwrap()
        }
    };
    let (report, cost) = counted(&d, run(true)).await;
    assert_eq!(report.repositories, repos as u64);
    assert_eq!(report.blobs_deleted, 5, "{report:?}");
    println!(
        "gc dry run: {repos} repositories, {keys} keys: {cost} S3 requests ({:?})",
        d.request_counts().snapshot()
    );
    // One GET per manifest, one listing per 1,000 keys, and a few more.
    let budget = repos as u64 + keys / 1000 + 5;
    assert!(cost <= budget, "{cost} > {budget}");

    let (report, cost) = counted(&d, run(false)).await;
    assert_eq!(report.blobs_deleted, 5, "{report:?}");
    println!("gc: {cost} S3 requests, deleting 5 blobs");
    for od in &orphans {
        assert!(d
            .stat_object(&blob_key(od))
            .await
            .unwrap_err()
            .is_not_found());
    }
    assert!(d.stat_object(&blob_key(&cd)).await.is_ok());
}
