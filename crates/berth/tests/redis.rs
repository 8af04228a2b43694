//! The Redis blob-descriptor cache as operators run it, against real `redis-server`
//! processes on loopback ports:
//! - Sentinel (one master, one replica, three sentinels and a silent one listed first): the
//!   master is killed while images are pushed and pulled through `berth serve`; every request
//!   succeeds, and once the sentinels have promoted the replica, Berth finds it and fills the
//!   cache there;
//! - a three-master Cluster: distribution's keys (in different slots) land on the nodes;
//! - TLS with a client certificate and a private CA (and without the certificate, the cache
//!   is refused and Berth serves from storage);
//! - a file with 2.8's `redis.pool` and the 3.x keys starts, and `db`, `clientname` and
//!   `protocol` reach Redis; a dropped connection is retried (`maxretries`), and a connection
//!   past `connmaxlifetime` is replaced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_conformance::client::Client;
use berth_conformance::fixtures::{digest, Image};
use support::{free_port, run_ok, Berth, Ca, Redis};

/// `redis-cli -p PORT ARGS...`, its standard output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keys matching `pattern` in database `db` of one server.
fn keys(port: u16, db: u32, pattern: &str) -> Vec<String> {
    cli(
        port,
        &["-n", &db.to_string(), "--scan", "--pattern", pattern],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn poll(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Berth on a fresh filesystem root with the Redis cache and this `redis` section.
fn serve(root: &Path, redis: &str) -> Berth {
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: redis\nhttp:\n  addr: 127.0.0.1:0\n{redis}",
        root.display()
    );
    Berth::start_with_config(&cfg, root)
}

/// Pushes `img` as `repo:tag`, then pulls it back (manifest and every blob) and asks for
/// each blob twice (the second answer comes from the cache when it works).
fn push_and_pull(c: &Client, repo: &str, tag: &str, img: &Image) -> Result<(), String> {
    let r = c.push_image(repo, tag, img)?;
    if r.status != 201 {
        return Err(format!("push {repo}:{tag}: {}", r.describe()));
    }
    let accept = [("Accept", img.media_type)];
    let r = c.get(&format!("/v2/{repo}/manifests/{tag}"), &accept)?;
    if r.status != 200 || r.body != img.manifest {
        return Err(format!("pull {repo}:{tag}: {}", r.describe()));
    }
    for b in img.blobs() {
        let path = format!("/v2/{repo}/blobs/{}", digest(b));
        for _ in 0..2 {
            let r = c.head(&path)?;
            if r.status != 200 {
                return Err(format!("HEAD {path}: {}", r.describe()));
            }
        }
        let r = c.get(&path, &[])?;
        if r.status != 200 || &r.body != b {
            return Err(format!("GET {path}: {}", r.describe()));
        }
    }
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// A value of `SENTINEL MASTER` (alternating field and value lines).
fn sentinel_field(port: u16, field: &str) -> Option<String> {
    let out = cli(port, &["SENTINEL", "MASTER", "mm"]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .find(|kv| kv[0] == field)
        .and_then(|kv| kv.get(1).map(|v| (*v).to_owned()))
}

fn master_port(sentinel: u16) -> Option<u16> {
    cli(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mm"])
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
}

#[test]
fn sentinel_failover_while_pushing_and_pulling() {
    let mut master = Redis::start();
    let replica = Redis::start_with(
        &[],
        &strings(&["--replicaof", "127.0.0.1", &master.port.to_string()]),
    );
    poll("the replica to sync", Duration::from_secs(10), || {
        cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let confs = tempfile::tempdir().unwrap();
    let sentinels: Vec<Redis> = (0..3)
        .map(|i| {
            let conf = confs.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mm 127.0.0.1 {} 2\nsentinel down-after-milliseconds mm 500\nsentinel failover-timeout mm 3000\n",
                    master.port
                ),
            )
            .unwrap();
            Redis::start_with(&[conf.display().to_string()], &strings(&["--sentinel"]))
        })
        .collect();
    // A failover needs the sentinels to know each other (they announce themselves every 2 s)
    // and the replica.
    poll(
        "the sentinels to find each other and the replica",
        Duration::from_secs(20),
        || {
            sentinels.iter().all(|s| {
                sentinel_field(s.port, "num-other-sentinels").as_deref() == Some("2")
                    && sentinel_field(s.port, "num-slaves").as_deref() == Some("1")
            })
        },
    );

    let dir = tempfile::tempdir().unwrap();
    // First in the list, a sentinel that accepts connections and never answers: it costs its
    // turn (the timeouts), not the cache.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs: Vec<String> = std::iter::once(silent.local_addr().unwrap().to_string())
        .chain(sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)))
        .collect();
    let berth = serve(
        &dir.path().join("data"),
        &format!(
            "redis:\n  addrs: [{}]\n  mastername: mm\n  dialtimeout: 200ms\n  readtimeout: 200ms\n  writetimeout: 200ms\n",
            addrs.join(", ")
        ),
    );
    let log = berth.log();
    assert!(log.contains("mode=\"sentinel\""), "{log}");

    let c = Client::new(&berth.url, None);
    push_and_pull(
        &c,
        "app",
        "before",
        &Image::oci("before the failover", 2, ""),
    )
    .unwrap();
    poll("the cache on the master", Duration::from_secs(5), || {
        !keys(master.port, 0, "repository::app::blobs").is_empty()
    });

    // Pushes and pulls go on in the background while the master dies.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let worker = {
        let (stop, rounds, failures) = (stop.clone(), rounds.clone(), failures.clone());
        let url = berth.url.clone();
        std::thread::spawn(move || {
            let c = Client::new(&url, None);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let img = Image::oci(&format!("worker round {n}"), 1, "");
                if let Err(e) = push_and_pull(&c, "work", &format!("r{n}"), &img) {
                    failures.lock().unwrap().push(e);
                }
                n += 1;
                rounds.store(n, Ordering::SeqCst);
            }
        })
    };
    poll("the worker to start", Duration::from_secs(10), || {
        rounds.load(Ordering::SeqCst) >= 2
    });
    master.stop();
    let killed_at = rounds.load(Ordering::SeqCst);

    poll(
        "the sentinels to promote the replica",
        Duration::from_secs(20),
        || {
            sentinels
                .iter()
                .all(|s| master_port(s.port) == Some(replica.port))
        },
    );
    // Berth noticed the outage, and comes back to the new master by itself.
    poll(
        "Berth to use the new master",
        Duration::from_secs(30),
        || {
            berth
                .log()
                .contains("redis blob-descriptor cache recovered")
        },
    );
    let seen = rounds.load(Ordering::SeqCst);
    poll("two more rounds", Duration::from_secs(20), || {
        rounds.load(Ordering::SeqCst) >= seen + 2
    });
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during the failover: {failures:#?}"
    );
    assert!(rounds.load(Ordering::SeqCst) > killed_at + 2);

    // The cache is used again: what is pushed now is recorded on the promoted replica.
    push_and_pull(&c, "after", "x", &Image::oci("after the failover", 2, "")).unwrap();
    poll(
        "the cache on the new master",
        Duration::from_secs(5),
        || !keys(replica.port, 0, "repository::after::blobs").is_empty(),
    );
    let log = berth.log();
    assert_eq!(
        log.matches("redis blob-descriptor cache unavailable")
            .count(),
        1,
        "one WARN for the outage:\n{log}"
    );
    assert!(!log.contains("status=500"), "{log}");
}

#[test]
fn cluster_of_three_masters_holds_the_cache() {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| Redis::start_with(&[], &strings(&["--cluster-enabled", "yes"])))
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    run_ok(
        Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"]),
    );
    poll("the cluster to be ready", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });

    let dir = tempfile::tempdir().unwrap();
    let berth = serve(
        &dir.path().join("data"),
        &format!(
            "redis:\n  addrs: [{}]\n  dialtimeout: 500ms\n  readtimeout: 500ms\n  writetimeout: 500ms\n  maxredirects: 5\n",
            addrs.join(", ")
        ),
    );
    assert!(berth.log().contains("mode=\"cluster\""), "{}", berth.log());
    let c = Client::new(&berth.url, None);
    let mut images = Vec::new();
    for i in 0..3 {
        let img = Image::oci(&format!("cluster {i}"), 2, "");
        push_and_pull(&c, &format!("repo{i}"), "t", &img).unwrap();
        images.push(img);
    }
    // Every blob is recorded, each key on the node that owns its slot.
    for (i, img) in images.iter().enumerate() {
        for b in img.blobs() {
            let d = digest(b);
            let holders = nodes
                .iter()
                .filter(|n| !keys(n.port, 0, &format!("blobs::{d}")).is_empty())
                .count();
            assert_eq!(holders, 1, "blobs::{d} on {holders} nodes");
            let members = cli(
                nodes[0].port,
                &["-c", "SMEMBERS", &format!("repository::repo{i}::blobs")],
            );
            assert!(members.contains(&d), "repo{i} lacks {d}: {members}");
        }
    }
    let per_node: Vec<usize> = nodes.iter().map(|n| keys(n.port, 0, "*").len()).collect();
    assert!(
        per_node.iter().filter(|k| **k > 0).count() >= 2,
        "the keys should spread over the masters: {per_node:?}"
    );
    let log = berth.log();
    assert!(!log.contains("unavailable"), "{log}");
    assert!(!log.contains("status=500"), "{log}");
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, as files.
fn pki(dir: &Path) {
    let ca = Ca::new("redis test CA");
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    for (name, client) in [("server", false), ("client", true)] {
        let (cert, key, _) = ca.leaf(name, client);
        std::fs::write(dir.join(format!("{name}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
    }
}

#[test]
fn tls_with_a_client_certificate_and_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    pki(d);
    let tls_port = free_port();
    let file = |n: &str| d.join(n).display().to_string();
    // The plain port stays for the harness's readiness check and for redis-cli.
    let redis = Redis::start_with(
        &[],
        &strings(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "yes",
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let berth = serve(
        &dir.path().join("data"),
        &format!(
            "redis:\n  addrs: [127.0.0.1:{tls_port}]\n  dialtimeout: 1s\n  readtimeout: 1s\n  writetimeout: 1s\n  tls:\n    certificate: {}\n    key: {}\n    rootcas:\n      - {}\n",
            file("client.crt"),
            file("client.key"),
            file("ca.crt")
        ),
    );
    assert!(berth.log().contains("tls=true"), "{}", berth.log());
    let c = Client::new(&berth.url, None);
    push_and_pull(&c, "secure", "t", &Image::oci("over tls", 1, "")).unwrap();
    poll("the cache over TLS", Duration::from_secs(5), || {
        !keys(redis.port, 0, "repository::secure::blobs").is_empty()
    });
    assert!(!berth.log().contains("unavailable"), "{}", berth.log());

    // Without the client certificate the server refuses the connection: Berth serves from
    // storage and says so once.
    let dir2 = tempfile::tempdir().unwrap();
    let anonymous = serve(
        &dir2.path().join("data"),
        &format!(
            "redis:\n  addrs: [127.0.0.1:{tls_port}]\n  dialtimeout: 1s\n  readtimeout: 1s\n  writetimeout: 1s\n  tls:\n    rootcas: [{}]\n",
            file("ca.crt")
        ),
    );
    let c = Client::new(&anonymous.url, None);
    push_and_pull(
        &c,
        "anonymous",
        "t",
        &Image::oci("no client certificate", 1, ""),
    )
    .unwrap();
    anonymous.wait_log("the refused cache", |l| {
        l.contains("redis blob-descriptor cache unavailable")
    });
    assert!(keys(redis.port, 0, "repository::anonymous::*").is_empty());
}

/// distribution 2.8's `pool` next to every 3.x key: Berth starts, and what changes the
/// conversation with Redis (database, client name, protocol) reaches it.
#[test]
fn pool_and_v3_keys_start_and_apply() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = serve(
        &dir.path().join("data"),
        &format!(
            "redis:
  addr: 127.0.0.1:{port}
  db: 3
  clientname: berth-test
  protocol: 3
  username: ''
  password: ''
  dialtimeout: 200ms
  readtimeout: 200ms
  writetimeout: 200ms
  maxretries: 2
  minretrybackoff: 8ms
  maxretrybackoff: '-1'
  contexttimeoutenabled: true
  poolfifo: true
  poolsize: 64
  pooltimeout: 1s
  minidleconns: 2
  maxidleconns: 16
  maxactiveconns: 64
  connmaxidletime: 300s
  connmaxlifetime: 1h
  readonly: false
  disableidentity: false
  identitysuffix: test
  unstableresp3: false
  pool:
    maxidle: 16
    maxactive: 64
    idletimeout: 300s
",
            port = redis.port
        ),
    );
    let log = berth.log();
    assert!(
        !log.contains("WARN"),
        "no key is unknown or unsupported:\n{log}"
    );
    let c = Client::new(&berth.url, None);
    push_and_pull(&c, "pooled", "t", &Image::oci("pool keys", 1, "")).unwrap();
    poll("the cache in database 3", Duration::from_secs(5), || {
        !keys(redis.port, 3, "repository::pooled::blobs").is_empty()
    });
    assert!(
        keys(redis.port, 0, "*").is_empty(),
        "database 0 is not used"
    );
    let clients = cli(redis.port, &["CLIENT", "LIST"]);
    let ours = clients
        .lines()
        .find(|l| l.contains("name=berth-test"))
        .unwrap_or_else(|| panic!("no client named berth-test:\n{clients}"));
    assert!(ours.contains("db=3") && ours.contains("resp=3"), "{ours}");
}

/// The id of the connection Redis knows by `name`, if there is one.
fn client_id(port: u16, name: &str) -> Option<String> {
    cli(port, &["CLIENT", "LIST"])
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
}

/// A connection Redis dropped is replaced on the spot (`maxretries`, go-redis's default 3):
/// no request waits, no WARN. With `maxretries: -1` the same drop is an outage.
#[test]
fn a_dropped_connection_is_retried_unless_retries_are_off() {
    let redis = Redis::start();
    let yaml = |name: &str, extra: &str| {
        format!(
            "redis:\n  addr: 127.0.0.1:{}\n  clientname: {name}\n  dialtimeout: 200ms\n  readtimeout: 200ms\n  writetimeout: 200ms\n{extra}",
            redis.port
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let retrying = serve(&dir.path().join("a"), &yaml("retrying", ""));
    let once = serve(&dir.path().join("b"), &yaml("once", "  maxretries: -1\n"));
    for (b, repo) in [(&retrying, "r1"), (&once, "o1")] {
        let c = Client::new(&b.url, None);
        push_and_pull(&c, repo, "t", &Image::oci(repo, 1, "")).unwrap();
    }
    let before = client_id(redis.port, "retrying").expect("a named connection");
    assert!(client_id(redis.port, "once").is_some());
    cli(redis.port, &["CLIENT", "KILL", "TYPE", "normal"]);
    for (b, repo) in [(&retrying, "r2"), (&once, "o2")] {
        let c = Client::new(&b.url, None);
        push_and_pull(&c, repo, "t", &Image::oci(repo, 1, "")).unwrap();
    }
    assert!(
        !keys(redis.port, 0, "repository::r2::blobs").is_empty(),
        "the retried commands reached Redis"
    );
    assert_ne!(client_id(redis.port, "retrying"), Some(before));
    assert!(
        !retrying.log().contains("unavailable"),
        "{}",
        retrying.log()
    );
    once.wait_log("the outage without retries", |l| {
        l.contains("redis blob-descriptor cache unavailable")
    });
}

/// `connmaxlifetime`: a connection older than that is replaced before its next use.
#[test]
fn connections_are_replaced_after_their_lifetime() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = serve(
        &dir.path().join("data"),
        &format!(
            "redis:\n  addr: 127.0.0.1:{}\n  clientname: short-lived\n  connmaxlifetime: 300ms\n",
            redis.port
        ),
    );
    let c = Client::new(&berth.url, None);
    push_and_pull(&c, "a", "t", &Image::oci("first", 1, "")).unwrap();
    let first = client_id(redis.port, "short-lived").expect("a named connection");
    // The lifetime has to pass: this wait is what is tested.
    std::thread::sleep(Duration::from_millis(400));
    push_and_pull(&c, "b", "t", &Image::oci("second", 1, "")).unwrap();
    poll(
        "the old connection to close",
        Duration::from_secs(5),
        || client_id(redis.port, "short-lived").is_some_and(|id| id != first),
    );
    assert!(!berth.log().contains("unavailable"), "{}", berth.log());
}
