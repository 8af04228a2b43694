//! The notifier in-process: a real HTTP listener on loopback, the in-memory storage driver as
//! the shared journal, real delivery tasks.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_storage::{InMemoryDriver, StorageDriver};

use super::*;

/// A webhook listener: records each POST (headers, body) and answers with `status`.
#[derive(Clone)]
struct Listener {
    url: String,
    status: Arc<AtomicU16>,
    /// POSTs answered with `status` before every further one gets 503 (negative: no limit).
    budget: Arc<std::sync::atomic::AtomicI64>,
    posts: Arc<Mutex<Vec<(http::HeaderMap, serde_json::Value)>>>,
}

impl Listener {
    async fn start() -> Listener {
        let status = Arc::new(AtomicU16::new(200));
        let budget = Arc::new(std::sync::atomic::AtomicI64::new(-1));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let (s, p, b) = (status.clone(), posts.clone(), budget.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (s, p, b) = (s.clone(), p.clone(), b.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut code = s.load(Ordering::SeqCst);
                match b.load(Ordering::SeqCst) {
                    0 => code = 503,
                    n if n > 0 => {
                        b.fetch_sub(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
                if code < 300 {
                    p.lock().unwrap().push((parts.headers, v));
                }
                http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK)
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Listener {
            url,
            status,
            budget,
            posts,
        }
    }

    /// The events received, in order.
    fn events(&self) -> Vec<serde_json::Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, v)| v["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.events();
            if e.len() >= n || Instant::now() > deadline {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `target.size` of each event: the tests number their pushes by size.
fn sizes(events: &[serde_json::Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["target"]["size"].as_u64().unwrap_or(0))
        .collect()
}

fn endpoint(url: &str) -> EndpointConfig {
    EndpointConfig {
        name: "hook".to_owned(),
        url: url.to_owned(),
        headers: vec![(
            http::HeaderName::from_static("authorization"),
            http::HeaderValue::from_static("Bearer s3cret"),
        )],
        timeout: Duration::from_secs(2),
        threshold: 2,
        backoff: Duration::from_millis(50),
        ignore: Ignore::default(),
        max_pending: DEFAULT_MAX_PENDING,
        max_age: None,
        unhealthy_after: Duration::from_millis(100),
        max_batch: 1,
    }
}

fn config(endpoints: Vec<EndpointConfig>) -> NotifyConfig {
    NotifyConfig {
        endpoints,
        include_references: true,
        source_addr: "registry-0:5000".to_owned(),
        orphan_after: Duration::from_millis(600),
    }
}

async fn notifier(cfg: NotifyConfig, driver: &Arc<dyn StorageDriver>) -> Arc<Notifier> {
    Notifier::start(cfg, driver.clone()).await.unwrap().unwrap()
}

fn ctx() -> RequestContext {
    RequestContext {
        request: RequestRecord {
            id: "req-1".to_owned(),
            addr: "192.0.2.7:40000".to_owned(),
            host: "registry.example.com".to_owned(),
            method: "PUT".to_owned(),
            useragent: "skopeo/1.9.3".to_owned(),
        },
        actor: "ci".to_owned(),
        base_url: "https://registry.example.com".to_owned(),
    }
}

fn digest(hex_char: char) -> Digest {
    format!("sha256:{}", hex_char.to_string().repeat(64))
        .parse()
        .unwrap()
}

fn push(n: u64) -> Notice {
    Notice::Blob {
        action: Action::Push,
        repository: "app".parse().unwrap(),
        digest: digest('a'),
        size: n,
        from: None,
    }
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":7,"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":9,"digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","annotations":{"a":"b"},"data":"eA=="}]}"#;

#[tokio::test]
async fn events_are_distributions_json_one_per_post() {
    let hook = Listener::start().await;
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let n = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    let manifest = Notice::Manifest {
        action: Action::Push,
        repository: "team/app".parse().unwrap(),
        digest: digest('d'),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        body: Bytes::from_static(MANIFEST.as_bytes()),
        tag: Some("v1".to_owned()),
    };
    n.publish(&manifest, &ctx()).await;
    let mount = Notice::Blob {
        action: Action::Mount,
        repository: "team/app".parse().unwrap(),
        digest: digest('c'),
        size: 9,
        from: Some("base".parse().unwrap()),
    };
    n.publish(&mount, &ctx()).await;
    let deleted = Notice::ManifestDeleted {
        repository: "team/app".parse().unwrap(),
        digest: digest('d'),
        tags: vec!["v1".to_owned(), "latest".to_owned()],
    };
    n.publish(&deleted, &ctx()).await;
    let events = hook.wait_for(5).await;
    assert_eq!(events.len(), 5, "{events:#?}");
    let posts = hook.posts.lock().unwrap().clone();
    assert_eq!(
        posts.len(),
        5,
        "one event per POST, as distribution sends them"
    );
    for (headers, _) in &posts {
        assert_eq!(headers["content-type"], EVENTS_MEDIA_TYPE);
        assert_eq!(headers["authorization"], "Bearer s3cret");
    }
    let e = &events[0];
    assert_eq!(e["action"], "push");
    assert_eq!(
        e["target"],
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": MANIFEST.len(),
            "digest": digest('d').to_string(),
            "length": MANIFEST.len(),
            "repository": "team/app",
            "url": format!("https://registry.example.com/v2/team/app/manifests/{}", digest('d')),
            "tag": "v1",
            "references": [
                {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 7, "digest": format!("sha256:{}", "b".repeat(64))},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 9, "digest": format!("sha256:{}", "c".repeat(64)), "annotations": {"a": "b"}},
            ],
        })
    );
    assert_eq!(
        e["request"],
        serde_json::json!({"id": "req-1", "addr": "192.0.2.7:40000", "host": "registry.example.com", "method": "PUT", "useragent": "skopeo/1.9.3"})
    );
    assert_eq!(e["actor"], serde_json::json!({"name": "ci"}));
    assert_eq!(e["source"]["addr"], "registry-0:5000");
    assert!(uuid::Uuid::parse_str(e["source"]["instanceID"].as_str().unwrap()).is_ok());
    assert!(berth_core::time::parse_rfc3339(e["timestamp"].as_str().unwrap()).is_some());
    assert_eq!(events[1]["action"], "mount");
    assert_eq!(events[1]["target"]["fromRepository"], "base");
    assert_eq!(events[1]["target"]["mediaType"], "application/octet-stream");
    // A digest delete, then one event per tag that pointed at it (distribution's order).
    assert_eq!(
        events[2]["target"],
        serde_json::json!({"digest": digest('d').to_string(), "repository": "team/app"})
    );
    assert_eq!(
        events[3]["target"],
        serde_json::json!({"repository": "team/app", "tag": "v1"})
    );
    assert_eq!(events[4]["target"]["tag"], "latest");
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), 5);
    n.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn client_addr_is_distributions() {
    let mut h = HeaderMap::new();
    assert_eq!(client_addr(&h, Some("10.0.0.1:1234")), "10.0.0.1:1234");
    h.insert("x-real-ip", "192.0.2.1".parse().unwrap());
    assert_eq!(client_addr(&h, Some("10.0.0.1:1234")), "192.0.2.1");
    h.insert("x-forwarded-for", "198.51.100.2, 10.1.1.1".parse().unwrap());
    assert_eq!(client_addr(&h, Some("10.0.0.1:1234")), "198.51.100.2");
    // Not an IP address: ignored, as distribution ignores it.
    h.insert("x-forwarded-for", "unknown".parse().unwrap());
    assert_eq!(client_addr(&h, None), "192.0.2.1");
}

#[test]
fn references_of_an_index_are_its_manifests() {
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:aa","platform":{"os":"linux","architecture":"arm64"},"artifactType":"x"}]}"#;
    assert_eq!(
        references(index),
        vec![
            serde_json::json!({"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:aa","platform":{"os":"linux","architecture":"arm64"}})
        ]
    );
    assert!(references(b"not json").is_empty());
}

#[tokio::test]
async fn ignore_rules_filter_per_endpoint() {
    let (all, some) = (Listener::start().await, Listener::start().await);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let mut filtered = endpoint(&some.url);
    filtered.name = "filtered".to_owned();
    filtered.ignore = Ignore {
        media_types: vec!["application/octet-stream".to_owned()],
        actions: vec!["delete".to_owned()],
    };
    let n = notifier(config(vec![endpoint(&all.url), filtered]), &driver).await;
    n.publish(&push(1), &ctx()).await;
    let del = Notice::TagDeleted {
        repository: "app".parse().unwrap(),
        tag: "v1".to_owned(),
    };
    n.publish(&del, &ctx()).await;
    let m = Notice::Manifest {
        action: Action::Pull,
        repository: "app".parse().unwrap(),
        digest: digest('d'),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        body: Bytes::from_static(MANIFEST.as_bytes()),
        tag: None,
    };
    n.publish(&m, &ctx()).await;
    assert_eq!(all.wait_for(3).await.len(), 3);
    let got = some.wait_for(1).await;
    n.shutdown(Duration::from_secs(5)).await;
    let actions: Vec<_> = got.iter().map(|e| e["action"].clone()).collect();
    assert_eq!(actions, vec![serde_json::json!("pull")]);
}

#[tokio::test]
async fn a_failing_endpoint_gets_everything_once_in_order_after_it_recovers() {
    let hook = Listener::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let n = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    for i in 1..=20 {
        n.publish(&push(i), &ctx()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = &n.endpoints()[0];
    assert!(s.failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(s.pending.load(Ordering::Relaxed), 20);
    assert!(s.oldest_age().is_some());
    // Failing past `unhealthyafter`: /debug/health lists it.
    assert_eq!(n.unhealthy().len(), 1, "{:?}", n.unhealthy());
    hook.status.store(200, Ordering::SeqCst);
    let got = hook.wait_for(20).await;
    let sizes = sizes(&got);
    assert_eq!(sizes, (1..=20).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(n.unhealthy().is_empty());
    assert_eq!(s.delivered.load(Ordering::Relaxed), 20);
    // Delivered batches leave the journal.
    n.shutdown(Duration::from_secs(5)).await;
    let left = driver
        .list_names("/docker/registry/v2/_berth/notifications/queues/hook")
        .await
        .unwrap_or_default();
    for inst in left {
        let objs = driver
            .list_names(&format!(
                "/docker/registry/v2/_berth/notifications/queues/hook/{inst}"
            ))
            .await
            .unwrap_or_default();
        assert!(objs.is_empty(), "left in the journal: {objs:?}");
    }
}

#[tokio::test]
async fn maxpending_drops_the_oldest() {
    let hook = Listener::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let mut ep = endpoint(&hook.url);
    ep.max_pending = 3;
    let n = notifier(config(vec![ep]), &driver).await;
    for i in 1..=10 {
        n.publish(&push(i), &ctx()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &n.endpoints()[0];
    assert_eq!(s.dropped_maxpending.load(Ordering::Relaxed), 7);
    hook.status.store(200, Ordering::SeqCst);
    let got = hook.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sizes = sizes(&hook.events());
    assert_eq!(sizes, vec![8, 9, 10], "{got:?}");
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stopped_instances_queue_goes_to_the_next_one_without_duplicates() {
    let hook = Listener::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let first = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    for i in 1..=5 {
        first.publish(&push(i), &ctx()).await;
    }
    first.shutdown(Duration::from_secs(5)).await;
    // A released queue is adopted at once (no wait for `orphanafter`).
    let second = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    second.publish(&push(6), &ctx()).await;
    hook.status.store(200, Ordering::SeqCst);
    let got = hook.wait_for(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sizes = sizes(&hook.events());
    assert_eq!(sizes, vec![1, 2, 3, 4, 5, 6], "{got:?}");
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_killed_replicas_queue_is_adopted_after_orphanafter() {
    let hook = Listener::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let survivor = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    let doomed = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    for i in 1..=4 {
        doomed.publish(&push(i), &ctx()).await;
    }
    // While it beats, its queue is its own: nobody else delivers it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(survivor.endpoints()[0].pending.load(Ordering::Relaxed), 0);
    // Killed: no flush, no release, no more heartbeats.
    doomed.abort();
    // A POST the killed instance had already sent still reaches the listener (and is
    // refused); only then does the listener start to accept, so a duplicate here would be
    // the survivor's doing. Under load that arrival took longer than the flip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hook.status.store(200, Ordering::SeqCst);
    let got = hook.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sizes = sizes(&hook.events());
    assert_eq!(sizes, vec![1, 2, 3, 4], "{got:?}");
    assert_eq!(survivor.endpoints()[0].delivered.load(Ordering::Relaxed), 4);
    survivor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_partly_delivered_batch_is_not_sent_again_after_a_clean_stop() {
    let hook = Listener::start().await;
    hook.budget.store(2, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let first = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    // One notice, five events, one journal object.
    let deleted = Notice::ManifestDeleted {
        repository: "app".parse().unwrap(),
        digest: digest('d'),
        tags: (1..=4).map(|i| format!("t{i}")).collect(),
    };
    first.publish(&deleted, &ctx()).await;
    assert_eq!(hook.wait_for(2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.shutdown(Duration::from_secs(5)).await;
    hook.budget.store(-1, Ordering::SeqCst);
    let second = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    hook.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = hook.events();
    let tags: Vec<String> = events
        .iter()
        .map(|e| e["target"]["tag"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(tags, vec!["", "t1", "t2", "t3", "t4"]);
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), 5, "an event was delivered twice");
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn maxbatch_sends_a_backlog_several_events_per_post_in_order() {
    let hook = Listener::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let driver: Arc<dyn StorageDriver> = Arc::new(InMemoryDriver::new());
    let mut ep = endpoint(&hook.url);
    ep.max_batch = 4;
    let n = notifier(config(vec![ep]), &driver).await;
    for i in 1..=10 {
        n.publish(&push(i), &ctx()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    hook.status.store(200, Ordering::SeqCst);
    let got = hook.wait_for(10).await;
    let sizes = sizes(&got);
    assert_eq!(sizes, (1..=10).collect::<Vec<_>>());
    let per_post: Vec<usize> = hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["events"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(per_post.iter().all(|k| (1..=4).contains(k)), "{per_post:?}");
    assert!(
        per_post.len() < 10,
        "a backlog goes in batches: {per_post:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn storage_that_refuses_the_journal_still_delivers_from_memory() {
    let hook = Listener::start().await;
    let dir = tempfile::tempdir().unwrap();
    // `_berth` is a file: every journal write fails (ENOTDIR), as on a read-only mount.
    let v2 = dir.path().join("docker/registry/v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("_berth"), b"not a directory").unwrap();
    let driver: Arc<dyn StorageDriver> = Arc::new(berth_storage::FilesystemDriver::new(dir.path()));
    let n = notifier(config(vec![endpoint(&hook.url)]), &driver).await;
    for i in 1..=3 {
        tokio::time::timeout(Duration::from_secs(5), n.publish(&push(i), &ctx()))
            .await
            .expect("a push waits for the journal only as long as it answers");
    }
    let got = hook.wait_for(3).await;
    assert_eq!(sizes(&got), vec![1, 2, 3]);
    n.shutdown(Duration::from_secs(5)).await;
}
