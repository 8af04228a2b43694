//! Harness for the real-client tests (`clients.rs`): a [`Lab`] is one running Berth plus a
//! private working directory; every client process it starts gets a cleared environment that
//! points only into that directory (no `~/.docker`, no host registries.conf, no auth file, no
//! proxy or CA variables), runs under a deadline, and when it fails the panic carries its
//! command line, exit status, stdout, stderr, Berth's log and the logs of any daemon the test
//! started. OCI layouts are built locally with `umoci` (nothing is pulled from the internet);
//! `containerd` and `dockerd` run privately on sockets inside the lab and are stopped on drop,
//! also when the test panics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::support::Berth;

/// Debian's binaries only: this machine may have other builds in /usr/local/bin (a Docker 28
/// CLI, for one) that the tests must not pick up by accident.
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest any one client command may take before it is killed and the test fails.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// How long a daemon may take to answer its first request.
const DAEMON_START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a daemon gets to exit after SIGTERM before it is killed.
const DAEMON_STOP_DEADLINE: Duration = Duration::from_secs(30);

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The hex part of `sha256:<hex>`.
pub fn hex(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

/// What a finished client command produced.
pub struct Output {
    /// The command line, for messages.
    pub line: String,
    /// `None` when it was killed (deadline or signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn render(&self) -> String {
        format!(
            "$ {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.line, self.code, self.stdout, self.stderr
        )
    }
}

/// One Berth and a private directory for everything the clients of one test touch.
pub struct Lab {
    pub berth: Berth,
    dir: tempfile::TempDir,
    /// Daemon logs to show when the test fails: (name, path).
    logs: RefCell<Vec<(String, PathBuf)>>,
    /// Numbers the output files of commands.
    seq: Cell<u32>,
}

impl Lab {
    pub fn start() -> Lab {
        Lab::start_with(|_| Berth::start())
    }

    /// A lab whose Berth `start` starts, given the lab directory (for key directories, htpasswd
    /// files and the like that its configuration names).
    pub fn start_with(start: impl FnOnce(&Path) -> Berth) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let berth = start(dir.path());
        let lab = Lab {
            berth,
            dir,
            logs: RefCell::new(Vec::new()),
            seq: Cell::new(0),
        };
        for d in [
            "home",
            "tmp",
            "out",
            "docker-config",
            "containers",
            "registries.d",
            "registries.conf.d",
        ] {
            fs::create_dir_all(lab.path(d)).unwrap();
        }
        // Nothing but fully qualified references, and no mirror or short-name alias from the
        // host's configuration.
        fs::write(
            lab.path("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        fs::write(lab.path("auth.json"), "{\"auths\":{}}\n").unwrap();
        fs::write(lab.path("docker-config/config.json"), "{\"auths\":{}}\n").unwrap();
        fs::write(
            lab.path("policy.json"),
            "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n",
        )
        .unwrap();
        fs::write(lab.path("containers.conf"), "").unwrap();
        fs::write(
            lab.path("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                lab.path("containers/root").display(),
                lab.path("containers/run").display()
            ),
        )
        .unwrap();
        lab
    }

    /// A path inside the lab directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `program` with a cleared environment that points only into the lab.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("HOME", self.path("home"))
            .env("TMPDIR", self.path("tmp"))
            .env("LANG", "C.UTF-8")
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("DOCKER_CONFIG", self.path("docker-config"))
            .current_dir(self.path("tmp"));
        c
    }

    /// `skopeo` with the lab's signature policy and no signature-storage configuration from
    /// /etc/containers/registries.d.
    pub fn skopeo(&self) -> Command {
        let mut c = self.cmd("skopeo");
        c.arg("--policy")
            .arg(self.path("policy.json"))
            .arg("--registries.d")
            .arg(self.path("registries.d"));
        c
    }

    /// `skopeo copy SRC DEST` to a plain-HTTP registry, logging in as `creds` (`user:password`).
    pub fn skopeo_push(&self, creds: &str, src: &str, dest: &str) -> Command {
        let mut c = self.skopeo();
        c.args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            src,
            dest,
        ]);
        c
    }

    /// `skopeo inspect` of a plain-HTTP registry's image as `creds`; more flags go after.
    pub fn skopeo_inspect(&self, creds: &str, reference: &str) -> Command {
        let mut c = self.skopeo();
        c.args(["inspect", "--tls-verify=false", "--creds", creds, reference]);
        c
    }

    /// Runs `cmd` to completion (or its deadline) and returns what it printed.
    pub fn try_run(&self, cmd: &mut Command) -> Output {
        self.try_run_within(cmd, COMMAND_DEADLINE)
    }

    pub fn try_run_within(&self, cmd: &mut Command, deadline: Duration) -> Output {
        let n = self.seq.get();
        self.seq.set(n + 1);
        let out_path = self.path(&format!("out/{n}.stdout"));
        let err_path = self.path(&format!("out/{n}.stderr"));
        let line = describe(cmd);
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| self.fail(&cannot_start(&line, &e)));
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let read =
            |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let mut stderr = read(&err_path);
        if status.is_none() {
            stderr.push_str(&format!("\n[killed: still running after {deadline:?}]"));
        }
        Output {
            line,
            code: status.and_then(|s| s.code()),
            stdout: read(&out_path),
            stderr,
        }
    }

    /// Runs `cmd`, which must exit 0; returns its stdout.
    pub fn run(&self, cmd: &mut Command) -> String {
        let out = self.try_run(cmd);
        if !out.ok() {
            self.fail(&format!("command failed\n{}", out.render()));
        }
        out.stdout
    }

    /// Runs `cmd`, which must exit non-zero; returns its output.
    pub fn run_failing(&self, cmd: &mut Command) -> Output {
        let out = self.try_run(cmd);
        if out.ok() || out.code.is_none() {
            self.fail(&format!(
                "command was expected to fail (exit non-zero)\n{}",
                out.render()
            ));
        }
        out
    }

    /// Shows `path` (a daemon's log) in failure messages.
    pub fn attach_log(&self, name: &str, path: &Path) {
        self.logs
            .borrow_mut()
            .push((name.to_owned(), path.to_path_buf()));
    }

    /// Fails the test with `msg`, Berth's log and every attached daemon log.
    pub fn fail(&self, msg: &str) -> ! {
        let mut s = format!("{msg}\n=== berth log\n{}", self.berth.log());
        for (name, path) in self.logs.borrow().iter() {
            let text = fs::read(path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            // Daemon logs are long; the end is where the failure is.
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            s.push_str(&format!("\n=== {name} log (last 60 lines)\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        panic!("{s}");
    }

    pub fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    pub fn check_eq<T: PartialEq + Debug>(&self, left: T, right: T, what: &str) {
        if left != right {
            self.fail(&format!("{what}\n  left: {left:?}\n right: {right:?}"));
        }
    }

    /// `HOST/repo:reference` on this lab's Berth, as Docker-style clients name it.
    pub fn image_ref(&self, repo: &str, reference: &str) -> String {
        let sep = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{repo}{sep}{reference}", self.berth.host)
    }

    /// `docker://HOST/repo:reference`, as skopeo names it.
    pub fn docker_ref(&self, repo: &str, reference: &str) -> String {
        format!("docker://{}", self.image_ref(repo, reference))
    }

    /// What Berth answers to `GET /v2/<repo>/manifests/<reference>` when every manifest type
    /// is accepted: status, `Docker-Content-Digest`, `Content-Type` and the body.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (u16, String, String, Vec<u8>) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.berth.url);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let resp = match ureq::get(&url).set("Accept", &accept).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => self.fail(&format!("GET {url}: {e}")),
        };
        let status = resp.status();
        let digest = resp
            .header("Docker-Content-Digest")
            .unwrap_or("")
            .to_owned();
        let ctype = resp.header("Content-Type").unwrap_or("").to_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        (status, digest, ctype, body)
    }

    /// Asserts Berth serves `repo:reference` as the manifest with `digest` and `media_type`,
    /// byte for byte (the body hashes to the digest).
    pub fn check_served(&self, repo: &str, reference: &str, digest: &str, media_type: &str) {
        let (status, got, ctype, body) = self.get_manifest(repo, reference);
        let what = format!("GET /v2/{repo}/manifests/{reference}");
        self.check_eq(status, 200, &format!("{what}: status"));
        self.check_eq(
            got.as_str(),
            digest,
            &format!("{what}: Docker-Content-Digest"),
        );
        self.check_eq(
            sha256(&body).as_str(),
            digest,
            &format!("{what}: body digest"),
        );
        self.check_eq(ctype.as_str(), media_type, &format!("{what}: Content-Type"));
    }
}

/// Why a program could not be started, with the fix when it is simply not installed.
fn cannot_start(line: &str, e: &std::io::Error) -> String {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "\nthe program is not installed in {SYSTEM_PATH}: run `bash scripts/install-test-deps.sh` \
             (Debian packages skopeo, podman, buildah, umoci, containerd, docker.io)"
        )
    } else {
        String::new()
    };
    format!("cannot start `{line}`: {e}{hint}")
}

/// The command line of `cmd`, for messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// One image in an OCI layout: the digests a registry must keep unchanged.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: String,
    pub manifest_size: usize,
    pub config: String,
    pub layers: Vec<String>,
}

impl Image {
    /// Every blob digest: config and layers (not the manifest).
    pub fn blobs(&self) -> Vec<String> {
        let mut v = vec![self.config.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }
}

/// An OCI image layout directory (image-spec `image-layout.md`).
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// A new empty layout made by `umoci init`.
    pub fn init(lab: &Lab, dir: &Path) -> Layout {
        lab.run(lab.cmd("umoci").arg("init").arg("--layout").arg(dir));
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// An existing layout (e.g. one skopeo wrote).
    pub fn open(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// `oci:DIR:tag`, as skopeo names it.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Adds a linux/`arch` image tagged `tag` with one gzip layer per file (`(path in the
    /// image, content)`), built by `umoci new`, `umoci config` and `umoci insert`.
    pub fn add_image(&self, lab: &Lab, tag: &str, arch: &str, files: &[(&str, &str)]) -> Image {
        let image = format!("{}:{tag}", self.dir.display());
        lab.run(lab.cmd("umoci").args(["new", "--image", &image]));
        lab.run(lab.cmd("umoci").args([
            "config",
            "--image",
            &image,
            "--os",
            "linux",
            "--architecture",
            arch,
        ]));
        let stage = tempfile::tempdir_in(lab.path("tmp")).unwrap();
        for (i, (target, content)) in files.iter().enumerate() {
            let src = stage.path().join(format!("f{i}"));
            fs::write(&src, content).unwrap();
            lab.run(
                lab.cmd("umoci")
                    .args(["insert", "--image", &image])
                    .arg(&src)
                    .arg(target),
            );
        }
        self.image(tag)
    }

    /// The descriptor `index.json` holds for `tag` (annotation `org.opencontainers.image.ref.name`).
    pub fn descriptor(&self, tag: &str) -> Value {
        let index = self.index_json();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no {tag} in {}/index.json: {index}", self.dir.display()))
            .clone()
    }

    /// The image manifest tagged `tag` and the digests it references.
    pub fn image(&self, tag: &str) -> Image {
        let d = self.descriptor(tag);
        self.image_at(d["digest"].as_str().unwrap())
    }

    /// The image manifest with `digest` and the digests it references.
    pub fn image_at(&self, digest: &str) -> Image {
        let bytes = self.blob(digest);
        let m: Value = serde_json::from_slice(&bytes).unwrap();
        Image {
            manifest: digest.to_owned(),
            manifest_size: bytes.len(),
            config: m["config"]["digest"].as_str().unwrap().to_owned(),
            layers: m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned())
                .collect(),
        }
    }

    /// The bytes of blob `digest`; panics when missing or when they do not hash to `digest`.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        self.try_blob(digest).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The bytes of blob `digest`, or why they are missing or corrupt.
    pub fn try_blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let path = self.dir.join("blobs/sha256").join(hex(digest));
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let got = sha256(&bytes);
        if got != digest {
            return Err(format!("{} holds {got}", path.display()));
        }
        Ok(bytes)
    }

    fn index_json(&self) -> Value {
        serde_json::from_slice(&fs::read(self.dir.join("index.json")).unwrap()).unwrap()
    }

    /// Adds an OCI image index over `children` (each with its platform architecture, os
    /// linux) as a blob and tags it `tag` in `index.json`; returns its digest.
    pub fn add_index(&self, tag: &str, children: &[(&Image, &str)]) -> String {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(img, arch)| {
                json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": img.manifest,
                    "size": img.manifest_size,
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap();
        let digest = sha256(&body);
        fs::write(self.dir.join("blobs/sha256").join(hex(&digest)), &body).unwrap();
        let mut index = self.index_json();
        let list = index["manifests"].as_array_mut().unwrap();
        list.retain(|d| d["annotations"]["org.opencontainers.image.ref.name"] != tag);
        list.push(json!({
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        digest
    }
}

/// A daemon started by a test, stopped (SIGTERM, then SIGKILL after a deadline) on drop.
pub struct Daemon {
    name: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr in `log`, which failure messages will show.
    pub fn spawn(lab: &Lab, name: &str, cmd: &mut Command, log: &Path) -> Daemon {
        let file = fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| lab.fail(&cannot_start(&describe(cmd), &e)));
        lab.attach_log(name, log);
        Daemon {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// Waits until `ready` returns true, failing the test when the daemon exits first or the
    /// deadline passes.
    pub fn wait_ready(&mut self, lab: &Lab, mut ready: impl FnMut() -> bool) {
        let until = Instant::now() + DAEMON_START_DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                lab.fail(&format!("{} exited during start-up: {st}", self.name));
            }
            if ready() {
                return;
            }
            if Instant::now() >= until {
                lab.fail(&format!(
                    "{} did not become ready within {DAEMON_START_DEADLINE:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait, SIGKILL if it is still running at the deadline.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // std can only SIGKILL; a graceful stop lets dockerd and containerd unmount and
        // remove their sockets.
        let _ = Command::new("/bin/kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + DAEMON_STOP_DEADLINE;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {DAEMON_STOP_DEADLINE:?}; killing it",
            self.name,
            self.child.id()
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private containerd: its own root, state, sockets and `opt` directory; the CRI plugin
/// (which wants networking and a CNI setup) is disabled.
pub struct Containerd {
    daemon: Daemon,
    /// The gRPC socket.
    pub address: PathBuf,
}

impl Containerd {
    pub fn start(lab: &Lab, dir: &Path) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let address = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

# Default /opt/containerd: a host directory.
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = address.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).unwrap();
        let daemon = Daemon::spawn(
            lab,
            "containerd",
            lab.cmd("containerd").arg("--config").arg(&config_path),
            &dir.join("containerd.log"),
        );
        let mut c = Containerd {
            daemon,
            address: address.clone(),
        };
        c.daemon.wait_ready(lab, || {
            address.exists()
                && lab
                    .try_run_within(
                        lab.cmd("ctr").arg("--address").arg(&address).arg("version"),
                        Duration::from_secs(10),
                    )
                    .ok()
        });
        c
    }

    /// `ctr` on this containerd, in the test's namespace.
    pub fn ctr(&self, lab: &Lab) -> Command {
        let mut c = lab.cmd("ctr");
        c.arg("--address")
            .arg(&self.address)
            .args(["--namespace", "berth-test"]);
        c
    }
}

/// A private dockerd using a private [`Containerd`]: its own socket, data root, exec root,
/// pid file, daemon.json and trust key; no iptables, bridge, IP forwarding or masquerading, so
/// it changes nothing on the host's network.
pub struct Dockerd {
    /// Declared before `_containerd`: fields drop in order, so dockerd stops first.
    daemon: Daemon,
    _containerd: Containerd,
    /// `unix://…/docker.sock`, for `DOCKER_HOST`.
    pub host: String,
}

impl Dockerd {
    pub fn start(lab: &Lab, dir: &Path, storage_driver: &str) -> Dockerd {
        Dockerd::start_with(lab, dir, storage_driver, &[])
    }

    /// With more daemon arguments (e.g. `--registry-mirror URL`).
    pub fn start_with(lab: &Lab, dir: &Path, storage_driver: &str, extra: &[&str]) -> Dockerd {
        fs::create_dir_all(dir).unwrap();
        let containerd = Containerd::start(lab, &dir.join("containerd"));
        // The default key file is /etc/docker/key.json, a host path; daemon.json is the only
        // place dockerd 20.10 takes another from.
        let daemon_json = dir.join("daemon.json");
        fs::write(
            &daemon_json,
            serde_json::to_vec(&json!({
                "deprecated-key-path": dir.join("key.json"),
            }))
            .unwrap(),
        )
        .unwrap();
        let sock = dir.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let mut cmd = lab.cmd("dockerd");
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .arg("--host")
            .arg(&host)
            .arg("--containerd")
            .arg(&containerd.address)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg(format!("--storage-driver={storage_driver}"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            // Loopback registries are plain HTTP for dockerd by default; saying so keeps the
            // test independent of that default.
            .arg("--insecure-registry")
            .arg(&lab.berth.host)
            .args(extra);
        let daemon = Daemon::spawn(lab, "dockerd", &mut cmd, &dir.join("dockerd.log"));
        let mut d = Dockerd {
            daemon,
            _containerd: containerd,
            host,
        };
        let probe_host = d.host.clone();
        d.daemon.wait_ready(lab, || {
            sock.exists()
                && lab
                    .try_run_within(
                        lab.cmd("docker").env("DOCKER_HOST", &probe_host).args([
                            "version",
                            "--format",
                            "{{.Server.Version}}",
                        ]),
                        Duration::from_secs(10),
                    )
                    .ok()
        });
        d
    }

    /// Debian's `docker` CLI talking to this daemon only.
    pub fn docker(&self, lab: &Lab) -> Command {
        let mut c = lab.cmd("docker");
        c.env("DOCKER_HOST", &self.host);
        c
    }

    /// Loads `layout`'s image `tag` into this daemon as `name` (through a docker-archive, as
    /// skopeo writes it); returns what `docker load` printed.
    pub fn load(&self, lab: &Lab, layout: &Layout, tag: &str, name: &str) -> String {
        let archive = lab.path(&format!("{}.tar", tag));
        lab.run(lab.skopeo().args([
            "copy",
            &layout.reference(tag),
            &format!("docker-archive:{}:{name}", archive.display()),
        ]));
        lab.run(self.docker(lab).arg("load").arg("--input").arg(&archive))
    }
}
