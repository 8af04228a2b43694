//! The driver contract against a real S3 server, Garage (`berth_testkit::Garage`, a
//! production S3 server for self-hosted clusters) on ephemeral loopback ports with a cleared
//! environment. (moto, the mock it replaced, answered listings by scanning the whole bucket and
//! had protocol bugs the driver had been pinned around; nothing here needs it.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_storage::{S3Config, S3Driver, StorageDriver};
use berth_testkit::Garage;
use bytes::Bytes;

/// A driver on a new bucket of `g`, with parts and copy thresholds small enough that the
/// contract suite's 13 MB object takes the multipart paths.
async fn driver(g: &Garage, bucket: &str, root: &str) -> S3Driver {
    g.create_bucket(bucket);
    S3Driver::new(S3Config {
        region: "garage".into(),
        region_endpoint: Some(g.url.clone()),
        bucket: bucket.into(),
        root_directory: root.into(),
        access_key: Some(g.key_id.clone()),
        secret_key: Some(g.secret.clone()),
        force_path_style: true,
        chunk_size: berth_storage::s3::MIN_CHUNK_SIZE,
        multipart_copy_threshold_size: 8 << 20,
        multipart_copy_chunk_size: 5 << 20,
        ..S3Config::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_garage() {
    let g = Garage::start();
    let d = driver(&g, "contract", "").await;
    contract_on(&d).await;
}

/// The contract suite, and that staging used multipart uploads and the 13 MB move a multipart
/// copy.
async fn contract_on(d: &S3Driver) {
    berth_storage::testsuite::run(d).await;
    let counts = d.request_counts().snapshot();
    for op in [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    ] {
        assert!(
            counts.get(op).copied().unwrap_or(0) > 0,
            "{op} never used: {counts:?}"
        );
    }
    // The server rolled the listings up itself (a delimiter other than `/`), rather than
    // sending every key for the driver to roll up.
    assert!(!d.delimiter_ignored());
}

/// Keys are `<rootdirectory><path>` without the leading slash, as distribution writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_rootdirectory() {
    let g = Garage::start();
    let d = driver(&g, "rooted", "/some/root/").await;
    d.put_content("/docker/registry/v2/x", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    // As another S3 client lists the bucket.
    assert_eq!(g.keys("rooted", ""), ["some/root/docker/registry/v2/x"]);
    let bare = S3Driver::new(S3Config {
        region: "garage".into(),
        region_endpoint: Some(g.url.clone()),
        bucket: "rooted".into(),
        access_key: Some(g.key_id.clone()),
        secret_key: Some(g.secret.clone()),
        force_path_style: true,
        ..S3Config::default()
    })
    .await
    .unwrap();
    assert_eq!(
        bare.get_content("/some/root/docker/registry/v2/x")
            .await
            .unwrap(),
        Bytes::from_static(b"hi")
    );
    assert_eq!(
        d.list("/docker/registry").await.unwrap(),
        vec!["/docker/registry/v2"]
    );
    assert_eq!(d.list("/").await.unwrap(), vec!["/docker"]);
    // A presigned URL fetches the object without credentials.
    let url = d
        .redirect_url("/docker/registry/v2/x")
        .await
        .unwrap()
        .unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
    assert_eq!(ureq::get(&url).call().unwrap().into_string().unwrap(), "hi");
}

/// Finishing a staged object again (what the SDK's retry of a completion whose answer was lost
/// amounts to: S3 answers NoSuchUpload) succeeds when the object is there, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_completion_is_a_success() {
    let g = Garage::start();
    let d = driver(&g, "complete", "").await;
    let data: Vec<u8> = (0..7_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = d.append("/stage/data", None).await.unwrap();
    w.write(Bytes::from(data.clone())).await.unwrap();
    let state = w.commit().await.unwrap();
    d.finish_append("/stage/data", state.clone(), "/blob/a")
        .await
        .unwrap();
    d.finish_append("/stage/data", state, "/blob/b")
        .await
        .unwrap();
    for p in ["/blob/a", "/blob/b"] {
        assert_eq!(d.get_content(p).await.unwrap(), Bytes::from(data.clone()));
    }
}
