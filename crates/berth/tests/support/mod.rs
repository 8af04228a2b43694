//! The test harness of the `berth` crate's integration tests: `berth-testkit`'s processes,
//! with `Berth` constructors that start this crate's own binary, and the helpers several test
//! files share (commands that must succeed, pulls checked byte for byte, distribution's
//! collector, a private CA).
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod raw;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_conformance::client::{Client, Resp};
use berth_conformance::fixtures::{digest, Image};
pub use berth_testkit::{free_port, Distribution, Garage, Redis, DISTRIBUTION_BIN};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

/// A running `berth serve` of this crate's binary (see [`berth_testkit::Berth`]).
pub struct Berth(pub berth_testkit::Berth);

impl Deref for Berth {
    type Target = berth_testkit::Berth;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Berth {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Berth {
    /// On a fresh temporary filesystem root with deletes enabled.
    pub fn start() -> Berth {
        Berth(berth_testkit::Berth::start(bin()))
    }

    /// On `root`; `extra_yaml` adds top-level sections.
    pub fn start_on(root: &Path, extra_yaml: &str) -> Berth {
        Berth(berth_testkit::Berth::start_on(bin(), root, extra_yaml))
    }

    /// With a whole configuration (listening on 127.0.0.1:0).
    pub fn start_with_config(config_yaml: &str, root: &Path) -> Berth {
        Berth(berth_testkit::Berth::start_with_config(
            bin(),
            config_yaml,
            root,
        ))
    }

    /// On a bucket of `garage`.
    pub fn start_garage(garage: &Garage, bucket: &str, storage_extra: &str, extra: &str) -> Berth {
        Berth(berth_testkit::Berth::start_garage(
            bin(),
            garage,
            bucket,
            storage_extra,
            extra,
        ))
    }
}

/// Runs `cmd`, which must succeed; what it printed is in the failure message.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Pulls `repo:tag` through `c`: the manifest and every blob of `img` are served (200) with
/// their bytes.
pub fn pull_checked(c: &Client, repo: &str, tag: &str, img: &Image) {
    let r = c.get(&format!("/v2/{repo}/manifests/{tag}"), &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    for b in img.blobs() {
        let r = c
            .get(&format!("/v2/{repo}/blobs/{}", digest(b)), &[])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(&r.body == b, "blob differs");
    }
}

/// distribution 2.8's `garbage-collect` with `args` over the configuration file `config`
/// (REGISTRY_* variables unset: distribution refuses the ones that name no key).
pub fn distribution_gc_config(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(DISTRIBUTION_BIN);
    cmd.arg("garbage-collect").args(args).arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

/// distribution 2.8's `garbage-collect` with `args` over the filesystem `root`: its exit
/// status and output (stdout, then stderr).
pub fn distribution_gc(root: &Path, args: &[&str]) -> (bool, String) {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("config.yml");
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n",
            root.display()
        ),
    )
    .unwrap();
    let out = distribution_gc_config(&path, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A filesystem storage root put out of service: a file stands where the directory was (moved
/// aside), so every storage operation fails until [`restore`](Self::restore).
pub struct BrokenRoot {
    root: PathBuf,
    aside: PathBuf,
}

impl BrokenRoot {
    pub fn new(root: &Path) -> BrokenRoot {
        let mut aside = root.as_os_str().to_owned();
        aside.push(".aside");
        let aside = PathBuf::from(aside);
        std::fs::rename(root, &aside).unwrap();
        std::fs::write(root, "not a directory").unwrap();
        BrokenRoot {
            root: root.to_path_buf(),
            aside,
        }
    }

    /// Puts the directory back.
    pub fn restore(self) {
        std::fs::remove_file(&self.root).unwrap();
        std::fs::rename(&self.aside, &self.root).unwrap();
    }
}

/// A private CA (rcgen).
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate, for `localhost` and `127.0.0.1` unless it is a client's:
    /// (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self, cn: &str, client: bool) -> (String, String, Vec<u8>) {
        let names = if client {
            vec![]
        } else {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        };
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// The debug listener's address (`http://127.0.0.1:port`), from its start-up line.
pub fn debug_url(b: &Berth) -> String {
    let log = b.wait_log("the debug listener", |l| {
        l.contains("debug listener on http://")
    });
    let rest = log.split("debug listener on http://").nth(1).unwrap();
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    format!("http://{addr}")
}

/// A GET's status and body, whatever the status.
pub fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// The `service` the token tests' issuers name.
pub const SERVICE: &str = "berth.test";

/// Seconds since the epoch, as JWT claims count them.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    let creds = format!("{user}:{pw}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// `GET /auth/token` for [`SERVICE`] as docker, skopeo and containerd ask: Basic credentials
/// (or none) and scopes.
pub fn get_token(url: &str, creds: Option<(&str, &str)>, scopes: &[&str]) -> Resp {
    let c = Client::new(url, creds.map(|(u, p)| basic(u, p)));
    let q: Vec<String> = scopes.iter().map(|s| format!("&scope={s}")).collect();
    c.get(&format!("/auth/token?service={SERVICE}{}", q.concat()), &[])
        .unwrap()
}

/// Runs `cmd` with `input` on its stdin (a password or token, as `--password-stdin` and `-`
/// read them) and waits for its output.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
