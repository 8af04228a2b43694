//! The driver contract against real S3-compatible servers on ephemeral loopback ports with a
//! cleared environment: Garage (a production S3 server, `berth_testkit::Garage`) and moto's
//! `moto_server` (PyPI), whose request log the other tests of this file do not need but whose
//! quirks the driver once had to be pinned against.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use berth_storage::{S3Config, S3Driver, StorageDriver};
use bytes::Bytes;

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    let mut child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; scripts/install-test-deps.sh)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("Running on ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("moto_server did not say where it listens");
    Moto { child, url }
}

fn bucket(m: &Moto, name: &str) {
    ureq::put(&format!("{}/{name}", m.url)).call().unwrap();
}

async fn driver(m: &Moto, bucket_name: &str, root: &str) -> S3Driver {
    bucket(m, bucket_name);
    S3Driver::new(S3Config {
        region: "us-east-1".into(),
        region_endpoint: Some(m.url.clone()),
        bucket: bucket_name.into(),
        root_directory: root.into(),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
        force_path_style: true,
        chunk_size: berth_storage::s3::MIN_CHUNK_SIZE,
        // Small enough that the contract suite's 13 MB object takes the multipart copy path.
        multipart_copy_threshold_size: 8 << 20,
        multipart_copy_chunk_size: 5 << 20,
        ..S3Config::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract() {
    let m = moto();
    let d = driver(&m, "contract", "").await;
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
    let m = moto();
    let d = driver(&m, "rooted", "/some/root/").await;
    d.put_content("/docker/registry/v2/x", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    let bare = S3Driver::new(S3Config {
        region_endpoint: Some(m.url.clone()),
        bucket: "rooted".into(),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_garage() {
    let g = berth_testkit::Garage::start();
    g.create_bucket("contract");
    let d = S3Driver::new(S3Config {
        region: "garage".into(),
        region_endpoint: Some(g.url.clone()),
        bucket: "contract".into(),
        access_key: Some(g.key_id.clone()),
        secret_key: Some(g.secret.clone()),
        force_path_style: true,
        chunk_size: berth_storage::s3::MIN_CHUNK_SIZE,
        multipart_copy_threshold_size: 8 << 20,
        multipart_copy_chunk_size: 5 << 20,
        ..S3Config::default()
    })
    .await
    .unwrap();
    contract_on(&d).await;
}
