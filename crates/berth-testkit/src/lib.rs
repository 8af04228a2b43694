//! The process harness of Berth's tests and benchmarks: a real `berth serve`, Debian's
//! `docker-registry` (distribution 2.8), Garage (S3) and `redis-server`, each on an
//! ephemeral loopback port with temporary data, each stopped on drop. No fixed ports, no
//! sleep-and-hope: readiness is Berth's listening line or an answer to a request. The processes get a controlled environment (no stray `AWS_*`,
//! `REGISTRY_*` or proxy variables). [`Webhook`] is a notification listener that records what it
//! receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod slapd;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `berth serve`.
pub struct Berth {
    child: Child,
    /// `http://127.0.0.1:PORT` (`https://` when the config enables TLS)
    pub url: String,
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The storage root (`storage.filesystem.rootdirectory`).
    pub root: PathBuf,
    pub config_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    _cfgdir: tempfile::TempDir,
    /// Everything the process wrote to stderr so far is collected here by a thread.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Berth {
    /// Berth (the binary `bin`) on a fresh temporary filesystem root with deletes enabled.
    pub fn start(bin: &Path) -> Berth {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut b = Berth::start_on(bin, &root, "");
        b._dir = Some(dir);
        b
    }

    /// Berth on the given filesystem root; `extra_yaml` is appended to the config (top-level
    /// sections other than `version`, `storage` and `http`).
    pub fn start_on(bin: &Path, root: &Path, extra_yaml: &str) -> Berth {
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{}",
            root.display(),
            extra_yaml
        );
        Berth::start_with_config(bin, &cfg, root)
    }

    /// Berth with a complete config file text. The config must listen on `127.0.0.1:0`.
    pub fn start_with_config(bin: &Path, config_yaml: &str, root: &Path) -> Berth {
        Berth::start_with_env(bin, config_yaml, root, &[])
    }

    /// As [`start_with_config`](Self::start_with_config), with these environment variables
    /// (after the machine's `AWS_*` ones are removed).
    pub fn start_with_env(
        bin: &Path,
        config_yaml: &str,
        root: &Path,
        env: &[(&str, &str)],
    ) -> Berth {
        let cfgdir = tempfile::tempdir().unwrap();
        let config_path = cfgdir.path().join("config.yml");
        std::fs::write(&config_path, config_yaml).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // This machine exports AWS_* variables (a CA bundle among them): Berth gets only what
        // its configuration says.
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn berth");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let url: String = url
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    if let Some(tx) = tx.take().filter(|_| url.starts_with("http")) {
                        let _ = tx.send(url);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "berth did not report its address; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let host = url.split("://").nth(1).unwrap_or_default().to_owned();
        Berth {
            child,
            url,
            host,
            root: root.to_path_buf(),
            config_path,
            _dir: None,
            _cfgdir: cfgdir,
            log,
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the log satisfies `pred` and returns it; the log reaches the
    /// test through a reader thread, a moment after the request that caused it.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if pred(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never showed {what}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself (up to 30 s) and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "berth did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the process (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port. Only for programs that cannot listen on port 0 and report it
/// (distribution): there is a small window in which another process could take it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of Debian's distribution 2.8 binary.
pub const DISTRIBUTION_BIN: &str = "/usr/bin/docker-registry";

/// A running Debian `docker-registry` (distribution 2.8).
pub struct Distribution {
    child: Child,
    pub url: String,
    pub host: String,
    _cfg: tempfile::TempDir,
}

/// distribution's log section without the access log.
const QUIET_LOG: &str = "log:\n  level: warn\n  accesslog:\n    disabled: true\n";

impl Distribution {
    /// distribution 2.8 on the given filesystem root with deletes enabled.
    pub fn start(root: &Path) -> Distribution {
        Distribution::start_with_extra(root, "")
    }

    /// distribution 2.8 with the given `storage:` section.
    pub fn start_storage(storage_yaml: &str) -> Distribution {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Distribution::try_start_yaml(storage_yaml, "") {
                Ok(d) => return d,
                Err(log) => last_log = log,
            }
        }
        panic!("docker-registry did not come up:\n{last_log}");
    }

    pub fn start_with_extra(root: &Path, extra_yaml: &str) -> Distribution {
        assert!(
            Path::new(DISTRIBUTION_BIN).exists(),
            "{DISTRIBUTION_BIN} missing: install Debian's docker-registry (scripts/install-test-deps.sh)"
        );
        // distribution cannot listen on port 0 and say where: a free port is picked first, and
        // if another process takes it in between, distribution exits and another is tried.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Distribution::try_start(root, extra_yaml) {
                Ok(d) => return d,
                Err(log) => last_log = log,
            }
        }
        panic!("docker-registry did not come up:\n{last_log}");
    }

    /// The process ID (for RSS readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// As [`start_with_extra`](Self::start_with_extra), without the access log (benchmarks).
    pub fn start_quiet(root: &Path, extra_yaml: &str) -> Distribution {
        let extra = format!("{QUIET_LOG}{extra_yaml}");
        Distribution::start_with_extra(root, &extra)
    }

    fn try_start(root: &Path, extra_yaml: &str) -> Result<Distribution, String> {
        let storage = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n",
            root.display()
        );
        Distribution::try_start_yaml(&storage, extra_yaml)
    }

    fn try_start_yaml(storage_yaml: &str, extra_yaml: &str) -> Result<Distribution, String> {
        let cfg = tempfile::tempdir().unwrap();
        let port = free_port();
        // A `log:` section in `extra_yaml` (start_quiet) replaces the default one.
        let (log, extra_yaml) = match extra_yaml.strip_prefix(QUIET_LOG) {
            Some(rest) => (QUIET_LOG, rest),
            None => ("log:\n  level: warn\n", extra_yaml),
        };
        let yaml = format!(
            "version: 0.1\n{log}{storage_yaml}http:\n  addr: 127.0.0.1:{port}\n{extra_yaml}"
        );
        let path = cfg.path().join("config.yml");
        std::fs::write(&path, yaml).unwrap();
        let log_path = cfg.path().join("stderr.log");
        let mut cmd = Command::new(DISTRIBUTION_BIN);
        cmd.arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap());
        // distribution refuses to start when any REGISTRY_* variable names no config key.
        for (k, _) in std::env::vars() {
            if k.starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        // It would also pick up proxies and AWS settings (a CA bundle) from the environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn docker-registry");
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Any HTTP answer means it is up (with auth configured, /v2/ answers 401).
            match ureq::get(&format!("{url}/v2/")).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => break,
                Err(_) => {}
            }
            if Instant::now() >= deadline || child.try_wait().ok().flatten().is_some() {
                // Never leave the process behind when giving up.
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Distribution {
            child,
            url,
            host,
            _cfg: cfg,
        })
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-node Garage (<https://garagehq.deuxfleurs.fr>, `cargo install garage`), a
/// production S3 server for self-hosted clusters, on ephemeral loopback ports with its data in
/// a temporary directory and a cleared environment. One key, imported with fixed credentials,
/// owns every bucket [`Garage::create_bucket`] makes.
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    /// The S3 API (`http://127.0.0.1:port`).
    pub url: String,
    pub key_id: String,
    pub secret: String,
    /// The admin API (`http://127.0.0.1:port`), where `/metrics` counts S3 requests.
    pub admin_url: String,
}

/// The binary: `$GARAGE_BIN`, else `garage` on `PATH` (`~/.cargo/bin` after `cargo install`).
pub fn garage_bin() -> String {
    std::env::var("GARAGE_BIN").unwrap_or_else(|_| "garage".to_owned())
}

impl Garage {
    pub fn start() -> Garage {
        let (g, id) = Garage::spawn(1);
        let node = id.split('@').next().unwrap_or_default().to_owned();
        g.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli_ok(&["layout", "apply", "--version", "1"]);
        g.import_key();
        g
    }

    /// `n` nodes that replicate every object on all of them (`replication_factor = n`), one
    /// zone each, connected over loopback RPC. Each has its own S3 endpoint ([`Garage::url`]);
    /// the key and the buckets made through any node are the cluster's.
    pub fn cluster(n: usize) -> Vec<Garage> {
        let nodes: Vec<(Garage, String)> = (0..n).map(|_| Garage::spawn(n)).collect();
        let first = &nodes[0].0;
        for (_, id) in &nodes[1..] {
            first.cli_ok(&["node", "connect", id]);
        }
        for (i, (_, id)) in nodes.iter().enumerate() {
            let node = id.split('@').next().unwrap_or_default();
            first.cli_ok(&[
                "layout",
                "assign",
                "-z",
                &format!("dc{i}"),
                "-c",
                "1G",
                node,
            ]);
        }
        first.cli_ok(&["layout", "apply", "--version", "1"]);
        first.import_key();
        nodes.into_iter().map(|(g, _)| g).collect()
    }

    /// One node on fresh ports; returns it once its CLI answers, with its `id@address`.
    fn spawn(replication: usize) -> (Garage, String) {
        let dir = tempfile::tempdir().unwrap();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let config = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = {replication}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            secret = "1799bccfd7411eddcf9ebd316bc1f5287ad12a68094e1c6ac6abde7e6feae1ec",
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let child = Self::command(dir.path())
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("garage (cargo install garage; scripts/install-test-deps.sh)");
        let g = Garage {
            child,
            dir,
            url: format!("http://127.0.0.1:{s3}"),
            key_id: "GK31c2f218a2e44f485b94239e".to_owned(),
            secret: "4420d99ef5ac0b4e53a27c5e1b7eabf66ac8d6e8d4b76c7f3d4b0d41d1fc8a21".to_owned(),
            admin_url: format!("http://127.0.0.1:{admin}"),
        };
        // `node id` reads the node's key file, which exists before the RPC listens; `status`
        // needs the RPC, which the layout commands use.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut id = None;
        loop {
            if id.is_none() {
                let out = g.cli(&["node", "id", "-q"]);
                if out.status.success() {
                    id = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
                }
            }
            let status = g.cli(&["status"]);
            if let (Some(id), true) = (&id, status.status.success()) {
                return (g, id.clone());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL); [`restart`](Self::restart) brings it back on the same
    /// ports and data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its configuration, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::command(self.dir.path())
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("garage");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.cli(&["status"]).status.success() {
            assert!(Instant::now() < deadline, "garage did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_key(&self) {
        self.cli_ok(&[
            "key",
            "import",
            "--yes",
            &self.key_id.clone(),
            &self.secret.clone(),
            "-n",
            "berth",
        ]);
    }

    fn command(dir: &Path) -> Command {
        let mut cmd = Command::new(garage_bin());
        cmd.arg("-c")
            .arg(dir.join("garage.toml"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default());
        cmd
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Self::command(self.dir.path())
            .args(args)
            .output()
            .expect("garage CLI")
    }

    fn cli_ok(&self, args: &[&str]) {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes a bucket (at least three characters) owned by the key.
    pub fn create_bucket(&self, name: &str) {
        self.cli_ok(&["bucket", "create", name]);
        self.cli_ok(&[
            "bucket", "allow", "--read", "--write", "--owner", name, "--key", "berth",
        ]);
    }

    /// The server's process id (to stop and resume it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// S3 requests the server has answered so far, by API endpoint (`PutObject`,
    /// `HeadObject`, ...), from its Prometheus metrics: what a client's operations cost,
    /// counted where the bill counts them.
    pub fn s3_requests(&self) -> std::collections::BTreeMap<String, u64> {
        let text = ureq::get(&format!("{}/metrics", self.admin_url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("api_s3_request_counter{"))
            .filter_map(|l| {
                let endpoint = l.split("api_endpoint=\"").nth(1)?.split('"').next()?;
                let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((endpoint.to_owned(), n as u64))
            })
            .fold(std::collections::BTreeMap::new(), |mut m, (k, n)| {
                *m.entry(k).or_default() += n;
                m
            })
    }

    /// Every key of `bucket` under `prefix`, listed by an S3 client that is not Berth's
    /// (boto3, from PyPI), with a cleared environment.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = [
            "import sys, boto3",
            "c = boto3.client('s3', endpoint_url=sys.argv[1], region_name='garage', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])",
            "for page in c.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[4], Prefix=sys.argv[5]):",
            "    for o in page.get('Contents', []):",
            "        print(o['Key'])",
        ]
        .join("\n");
        let out = Command::new("python3")
            .args([
                "-c",
                &script,
                &self.url,
                &self.key_id,
                &self.secret,
                bucket,
                prefix,
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .output()
            .expect("python3 with boto3 (scripts/install-test-deps.sh installs it)");
        assert!(
            out.status.success(),
            "listing {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// distribution's `storage.s3` section for a bucket on this server; `s3_extra` goes inside
    /// `s3` (four spaces), `extra` after it under `storage`.
    pub fn storage_yaml(&self, bucket: &str, s3_extra: &str, extra: &str) -> String {
        format!(
            "storage:\n  s3:\n    region: garage\n    regionendpoint: {}\n    bucket: {bucket}\n    accesskey: {}\n    secretkey: {}\n    secure: false\n    forcepathstyle: true\n    chunksize: 5242880\n{s3_extra}  delete:\n    enabled: true\n{extra}",
            self.url, self.key_id, self.secret
        )
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Berth {
    /// Berth on a bucket of `garage`; `storage_extra` goes under `storage` (after `s3` and
    /// `delete`), `extra` is appended to the config (other sections).
    pub fn start_garage(
        bin: &Path,
        garage: &Garage,
        bucket: &str,
        storage_extra: &str,
        extra: &str,
    ) -> Berth {
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n{}http:\n  addr: 127.0.0.1:0\n{extra}",
            garage.storage_yaml(bucket, "", storage_extra)
        );
        let dir = tempfile::tempdir().unwrap();
        let mut b = Berth::start_with_config(bin, &cfg, dir.path());
        b._dir = Some(dir);
        b
    }
}

/// A running `redis-server` on a free loopback port, with no persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Arguments before the port (a config file) and after the defaults (`--sentinel`,
    /// `--cluster-enabled yes`, `--replicaof`, TLS ports, ...).
    before: Vec<String>,
    after: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[], &[])
    }

    /// With `before` ahead of the port (a config file to load, as sentinels need) and `after`
    /// the defaults (later arguments win). Ready when it answers `PING` on its plain port.
    pub fn start_with(before: &[String], after: &[String]) -> Redis {
        let mut r = Redis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            before: before.to_vec(),
            after: after.to_vec(),
        };
        // A free port is picked first; if another process takes it, try another.
        for _ in 0..3 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts the server on `self.port`; false if it did not come up.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(&self.before)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.after)
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-test-deps.sh)");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until_up(&mut self.child, || {
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
        });
        if !up {
            self.stop();
        }
        up
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Its data directory (for config files and cluster state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn yaml(&self) -> String {
        format!("redis:\n  addr: 127.0.0.1:{}\n  dialtimeout: 200ms\n  readtimeout: 200ms\n  writetimeout: 200ms\n", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP request a [`Webhook`] received.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the webhook answered with.
    pub status: u16,
}

impl WebhookRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `events` of the body's envelope (empty when the body is not one).
    pub fn events(&self) -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("events").and_then(|e| e.as_array()).cloned())
            .unwrap_or_default()
    }
}

/// What the listener threads and the test share.
struct WebhookShared {
    requests: std::sync::Mutex<Vec<WebhookRequest>>,
    /// Signalled on every recorded request.
    arrived: std::sync::Condvar,
    status: std::sync::atomic::AtomicU16,
    /// Milliseconds to wait before answering (after the request is recorded).
    delay_ms: std::sync::atomic::AtomicU64,
}

/// A running accept loop and the connections it opened, so `stop` can close them all.
struct WebhookServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    thread: std::thread::JoinHandle<()>,
}

/// A notification listener: a real HTTP/1.1 server on an ephemeral loopback port (keep-alive,
/// `Content-Length` and chunked bodies) that records every request and answers each with a
/// settable status (200 unless told otherwise). [`stop`](Self::stop) closes the port and every
/// open connection (clients then get "connection refused"); [`restart`](Self::restart) listens
/// on the same port again, keeping what was recorded.
pub struct Webhook {
    port: u16,
    shared: std::sync::Arc<WebhookShared>,
    server: Option<WebhookServer>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut w = Webhook {
            port,
            shared: std::sync::Arc::new(WebhookShared {
                requests: std::sync::Mutex::new(Vec::new()),
                arrived: std::sync::Condvar::new(),
                status: std::sync::atomic::AtomicU16::new(200),
                delay_ms: std::sync::atomic::AtomicU64::new(0),
            }),
            server: None,
        };
        w.serve(listener);
        w
    }

    /// A webhook whose port is reserved but closed: started, then stopped.
    pub fn start_stopped() -> Webhook {
        let mut w = Webhook::start();
        w.stop();
        w
    }

    /// `http://127.0.0.1:PORT/events`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The status every following request is answered with (200, 503, ...).
    pub fn set_status(&self, status: u16) {
        self.shared
            .status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// How long every following request waits for its answer (a slow or hung listener).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Every request received so far, whatever it was answered.
    pub fn requests(&self) -> Vec<WebhookRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The events of every envelope accepted (answered 2xx) so far, in arrival order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        accepted_events(&self.shared.requests.lock().unwrap())
    }

    /// Waits until `done` says yes of the requests received, or `timeout` passes; returns
    /// the requests and whether `done` said yes.
    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[WebhookRequest]) -> bool,
    ) -> (Vec<WebhookRequest>, bool) {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock().unwrap();
        loop {
            if done(&reqs) {
                return (reqs.clone(), true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (reqs.clone(), false);
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits until at least `n` events were accepted and returns all accepted so far; fails
    /// the test with what did arrive when `timeout` passes first.
    pub fn wait_events(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let (reqs, ok) = self.wait_until(timeout, |r| accepted_events(r).len() >= n);
        let events = accepted_events(&reqs);
        assert!(
            ok,
            "the webhook accepted {} events within {timeout:?}, {n} expected; requests: {}",
            events.len(),
            describe_requests(&reqs)
        );
        events
    }

    /// Waits until at least `n` requests arrived (whatever the answer); false on timeout.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.len() >= n).1
    }

    /// Closes the port and every open connection; returns once nothing listens.
    pub fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the blocking accept, which then sees the flag and drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        server.thread.join().unwrap();
        for c in server.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens on the same port again (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the webhook is running");
        // The port can be held for a moment by a connecting client's socket; retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    panic!("cannot listen on 127.0.0.1:{} again: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, conns2, shared) = (stop.clone(), conns.clone(), self.shared.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    conns2.lock().unwrap().push(c);
                }
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(stream, &shared));
            }
        });
        self.server = Some(WebhookServer {
            stop,
            conns,
            thread,
        });
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accepted_events(reqs: &[WebhookRequest]) -> Vec<serde_json::Value> {
    reqs.iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| r.events())
        .collect()
}

fn describe_requests(reqs: &[WebhookRequest]) -> String {
    let mut s = String::new();
    for r in reqs {
        s.push_str(&format!(
            "\n{} {} -> {}: {}",
            r.method,
            r.path,
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    s
}

/// Serves requests on one connection until the client closes it, asks to, or sends something
/// that is not HTTP/1.1.
fn serve_connection(stream: std::net::TcpStream, shared: &WebhookShared) {
    use std::io::{Read, Write};
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut close = version == "HTTP/1.0";
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                return;
            };
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        if get("connection").is_some_and(|v| v.contains("close")) {
            close = true;
        }
        if get("expect").is_some_and(|v| v == "100-continue")
            && out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let hex = size.trim().split(';').next().unwrap_or("");
                let Ok(n) = usize::from_str_radix(hex, 16) else {
                    return;
                };
                let mut chunk = vec![0u8; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    // The chunk was only the final CRLF (no trailers are sent by the clients
                    // this serves).
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = get("content-length") {
            let Ok(n) = n.parse::<usize>() else {
                return;
            };
            body = vec![0u8; n];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let status = shared.status.load(std::sync::atomic::Ordering::SeqCst);
        {
            let mut reqs = shared
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            reqs.push(WebhookRequest {
                method,
                path,
                headers,
                body,
                status,
            });
            shared.arrived.notify_all();
        }
        let delay = shared.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let reason = match status {
            200 => "OK",
            202 => "Accepted",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let conn = if close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: {conn}\r\n\r\n"
        );
        if out.write_all(head.as_bytes()).is_err() || out.flush().is_err() || close {
            return;
        }
    }
}

/// Polls `ready` for up to 10 s while `child` runs: whether it answered (false also when the
/// process exited first, its port taken, say).
pub(crate) fn wait_until_up(child: &mut Option<Child>, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        if child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .is_some()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(url: &str, agent: &ureq::Agent, body: &str) -> Result<u16, Box<ureq::Error>> {
        agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(body)
            .map(|r| r.status())
            .map_err(Box::new)
    }

    #[test]
    fn webhook_records_answers_stops_and_restarts() {
        let mut hook = Webhook::start();
        // One agent: the second POST reuses the connection.
        let agent = ureq::agent();
        let url = hook.url();
        assert_eq!(
            post(&url, &agent, r#"{"events":[{"id":"1"}]}"#).unwrap(),
            200
        );
        hook.set_status(503);
        match post(&url, &agent, r#"{"events":[{"id":"2"}]}"#) {
            Err(e) if matches!(*e, ureq::Error::Status(503, _)) => {}
            other => panic!("{other:?}"),
        }
        hook.set_status(200);
        assert_eq!(
            post(&url, &agent, r#"{"events":[{"id":"3"},{"id":"4"}]}"#).unwrap(),
            200
        );
        let ids: Vec<String> = hook
            .wait_events(3, Duration::from_secs(5))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["1", "3", "4"], "only accepted envelopes count");
        let reqs = hook.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[1].status, 503);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/events");
        assert_eq!(reqs[0].header("Content-Type"), Some("application/json"));

        hook.stop();
        let err = post(&url, &agent, "{}").unwrap_err();
        assert!(matches!(*err, ureq::Error::Transport(_)), "{err:?}");
        assert!(std::net::TcpStream::connect(("127.0.0.1", hook.port())).is_err());
        hook.restart();
        assert_eq!(
            post(&url, &ureq::agent(), r#"{"events":[{"id":"5"}]}"#).unwrap(),
            200
        );
        assert_eq!(hook.events().len(), 4);
    }
}
