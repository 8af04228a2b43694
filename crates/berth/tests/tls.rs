//! `http.tls` and the graceful shutdown, against the real binary: skopeo pushes and pulls over
//! HTTPS with a private CA; an HTTP/2 client gets HTTP/2 by ALPN (reqwest and curl); mutual TLS
//! refuses clients without a certificate from `clientcas` (and follows a rewritten CA file);
//! `minimumtls: tls1.3` and
//! `ciphersuites` shut out the clients they should; a certificate rewritten on disk (in place,
//! or by a Kubernetes-style `..data` symlink swap) is served to new connections while an open
//! connection keeps working; `Location` URLs are https; bad TLS settings stop the start-up with
//! the key named. Shutdown: SIGTERM turns `/readyz` to 503, closes the listener and idle
//! connections, lets a request in flight finish and exits 0; a stalled request is dropped at
//! `http.draintimeout` with a WARN. Certificates come from rcgen; nothing uses fixed sleeps
//! beyond the certificate watcher's poll interval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/clients.rs"]
mod clients_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clients_support::{sha256, Lab, Layout};
use support::{Berth, Ca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The certificate watcher's poll interval is 2 s: a reload must show within this.
const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

/// A directory with the server's certificate and key and the CA (`ca.crt`).
struct Pki {
    ca: Ca,
    dir: PathBuf,
    /// DER of the certificate the files hold now.
    der: Vec<u8>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = Ca::new("berth test CA");
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        let mut pki = Pki {
            ca,
            dir: dir.to_path_buf(),
            der: Vec::new(),
        };
        pki.rotate("berth-a");
        pki
    }

    /// Writes a new server certificate and key over the old files.
    fn rotate(&mut self, cn: &str) {
        let dir = self.dir.clone();
        self.rotate_into(&dir, cn);
    }

    /// Writes a new server certificate and key to `dir`.
    fn rotate_into(&mut self, dir: &Path, cn: &str) {
        let (cert, key, der) = self.ca.leaf(cn, false);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        self.der = der;
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `tls:` with this certificate and key, and `extra` lines inside it.
    fn http_yaml(&self, extra: &str) -> String {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n{extra}",
            self.cert().display(),
            self.key().display()
        )
    }
}

/// A whole configuration on `root`; `http_extra` goes inside `http:`.
fn config(root: &Path, http_extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{http_extra}",
        root.display()
    )
}

fn start(dir: &Path, http_extra: &str) -> Berth {
    let root = dir.join("data");
    Berth::start_with_config(&config(&root, http_extra), &root)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A reqwest client that trusts only `pki`'s CA.
fn client(pki: &Pki) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(20))
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (scripts/install-test-deps.sh installs it)")
}

#[test]
fn skopeo_pushes_and_pulls_over_https_with_a_private_ca() {
    let mut pki_slot = None;
    let lab = Lab::start_with(|dir| {
        let pki = Pki::new(&dir.join("certs"));
        let b = start(dir, &pki.http_yaml(""));
        pki_slot = Some(pki);
        b
    });
    let pki = pki_slot.unwrap();
    assert!(lab.berth.url.starts_with("https://"), "{}", lab.berth.url);
    // skopeo's certificate directory: the CA only (a *.key there would be a client key).
    let cert_dir = lab.path("skopeo-certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(pki.ca_file(), cert_dir.join("ca.crt")).unwrap();
    let certs = cert_dir.to_str().unwrap().to_owned();

    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(&lab, "v1", "amd64", &[("/etc/motd", "pushed over TLS\n")]);
    let dest = lab.docker_ref("team/tls", "v1");

    // Without the CA the server is not trusted: TLS is really on and verified.
    let refused = lab.try_run(lab.skopeo().args(["copy", &layout.reference("v1"), &dest]));
    assert!(!refused.ok(), "skopeo trusted an unknown CA");
    assert!(refused.stderr.contains("certificate"), "{}", refused.stderr);

    lab.run(lab.skopeo().args([
        "copy",
        "--dest-cert-dir",
        &certs,
        &layout.reference("v1"),
        &dest,
    ]));
    let out = lab.run(lab.skopeo().args(["inspect", "--cert-dir", &certs, &dest]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["Digest"].as_str(), Some(img.manifest.as_str()));

    let out_dir = lab.path("out/pulled");
    lab.run(lab.skopeo().args([
        "copy",
        "--src-cert-dir",
        &certs,
        &dest,
        &format!("oci:{}:v1", out_dir.display()),
    ]));
    let pulled = Layout::open(&out_dir);
    assert_eq!(pulled.image("v1").manifest, img.manifest);
    for layer in &img.layers {
        assert_eq!(&sha256(&pulled.blob(layer)), layer);
    }
}

#[test]
fn https_negotiates_http2_by_alpn_and_locations_are_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"));
    let berth = start(dir.path(), &pki.http_yaml(""));
    let url = berth.url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    rt().block_on(async {
        let h2 = client(&pki).build().unwrap();
        let r = h2.get(format!("{url}/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "ALPN did not pick h2"
        );

        // A blob pushed and pulled over HTTP/2; the upload's Location is https.
        let blob = b"a blob over HTTP/2".repeat(1000);
        let digest = sha256(&blob);
        let r = h2
            .post(format!("{url}/v2/team/h2/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&format!("{url}/v2/team/h2/blobs/uploads/")),
            "{location}"
        );
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = h2
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("https://"));
        let r = h2
            .get(format!("{url}/v2/team/h2/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());

        // An HTTP/1.1-only client gets HTTP/1.1 on the same port, and https Locations.
        let h1 = client(&pki).http1_only().build().unwrap();
        let r = h1
            .post(format!("{url}/v2/team/h1/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        assert_eq!(r.status(), 202);
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("https://"));
    });

    let out = curl(&[
        "--http2",
        "-v",
        "-o",
        "/dev/null",
        "--cacert",
        pki.ca_file().to_str().unwrap(),
        &format!("{url}/v2/"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    assert!(err.contains("< HTTP/2 200"), "{err}");

    // Plain HTTP on the TLS port is not served, and the failed handshake does not stop the
    // listener.
    let out = curl(&[&format!("http://{}/v2/", berth.host)]);
    assert!(!out.status.success(), "{out:?}");
    let out = curl(&[
        "--cacert",
        pki.ca_file().to_str().unwrap(),
        "-o",
        "/dev/null",
        &format!("{url}/v2/"),
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn http2_disabled_offers_only_http1() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"));
    let berth = start(
        dir.path(),
        &format!("  http2:\n    disabled: true\n{}", pki.http_yaml("")),
    );
    rt().block_on(async {
        let r = client(&pki)
            .build()
            .unwrap()
            .get(format!("{}/v2/", berth.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
    });
}

#[test]
fn mutual_tls_requires_a_certificate_from_clientcas() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"));
    let client_ca = Ca::new("berth client CA");
    let client_ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca_file, client_ca.pem()).unwrap();
    let berth = start(
        dir.path(),
        &pki.http_yaml(&format!(
            "    clientcas:\n      - {}\n",
            client_ca_file.display()
        )),
    );
    let url = format!("{}/v2/", berth.url);
    let identity = |ca: &Ca| {
        let (cert, key, _) = ca.leaf("a client", true);
        reqwest::Identity::from_pem(format!("{key}{cert}").as_bytes()).unwrap()
    };

    rt().block_on(async {
        let anonymous = client(&pki).build().unwrap().get(&url).send().await;
        assert!(
            anonymous.is_err(),
            "served a client without a certificate: {anonymous:?}"
        );

        let stranger = client(&pki)
            .identity(identity(&Ca::new("another CA")))
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        assert!(
            stranger.is_err(),
            "served a certificate from an unknown CA: {stranger:?}"
        );

        let r = client(&pki)
            .identity(identity(&client_ca))
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });

    // curl: refused without a certificate, served with one.
    let cacert = pki.ca_file();
    let out = curl(&["--cacert", cacert.to_str().unwrap(), &url]);
    assert!(!out.status.success());
    let (cert, key, _) = client_ca.leaf("curl", true);
    std::fs::write(dir.path().join("c.crt"), cert).unwrap();
    std::fs::write(dir.path().join("c.key"), key).unwrap();
    let out = curl(&[
        "--cacert",
        cacert.to_str().unwrap(),
        "--cert",
        dir.path().join("c.crt").to_str().unwrap(),
        "--key",
        dir.path().join("c.key").to_str().unwrap(),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");

    // The client CA file is reloaded too: after it names a new CA, that CA's clients get in
    // and the old one's do not.
    let new_ca = Ca::new("berth client CA 2");
    std::fs::write(&client_ca_file, new_ca.pem()).unwrap();
    rt().block_on(async {
        let deadline = Instant::now() + RELOAD_DEADLINE;
        loop {
            let r = client(&pki)
                .identity(identity(&new_ca))
                .build()
                .unwrap()
                .get(&url)
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "the new client CA was not used");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let old = client(&pki)
            .identity(identity(&client_ca))
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        assert!(
            old.is_err(),
            "a client of the replaced CA was served: {old:?}"
        );
    });
    assert!(
        berth.log().contains("client CAs reloaded"),
        "{}",
        berth.log()
    );
}

#[test]
fn minimumtls_and_ciphersuites_shut_out_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"));
    let berth = start(dir.path(), &pki.http_yaml("    minimumtls: tls1.3\n"));
    let url = format!("{}/v2/", berth.url);
    let cacert = pki.ca_file();
    let cacert = cacert.to_str().unwrap();
    rt().block_on(async {
        let old = client(&pki)
            .max_tls_version(reqwest::tls::Version::TLS_1_2)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        assert!(old.is_err(), "a TLS 1.2 client was served: {old:?}");
        let r = client(&pki)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let out = curl(&["--cacert", cacert, "--tls-max", "1.2", &url]);
    assert!(!out.status.success(), "curl --tls-max 1.2 was served");
    let out = curl(&["--cacert", cacert, "--tlsv1.3", "-o", "/dev/null", &url]);
    assert!(out.status.success(), "{out:?}");
    drop(berth);

    // TLS 1.2 with one ECDSA suite (rcgen's keys are P-256): only a client offering it gets in.
    let dir2 = tempfile::tempdir().unwrap();
    let berth = start(
        dir2.path(),
        &pki.http_yaml(
            "    ciphersuites:\n      - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n      - TLS_AES_128_GCM_SHA256\n",
        ),
    );
    let url = format!("{}/v2/", berth.url);
    let tls12 = |cipher: &str| {
        curl(&[
            "--cacert",
            cacert,
            "--tls-max",
            "1.2",
            "--ciphers",
            cipher,
            "-o",
            "/dev/null",
            &url,
        ])
    };
    assert!(!tls12("ECDHE-ECDSA-AES128-GCM-SHA256").status.success());
    let ok = tls12("ECDHE-ECDSA-AES256-GCM-SHA384");
    assert!(ok.status.success(), "{ok:?}");
}

/// A TLS connection of our own (to see the server's certificate and keep the connection).
async fn connect(
    addr: &str,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from(pem_der(ca_pem));
    roots.add(der).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn peer_cert(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// `GET /v2/` on a kept-alive HTTP/1.1 connection; the status.
async fn get_v2<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> u16 {
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

#[test]
fn certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes' layout for a Secret volume: the files are symlinks through `..data`, which
    // an update points at a new directory.
    let certs = dir.path().join("certs");
    let mut pki = Pki::new(&certs.join("..2024_a"));
    std::os::unix::fs::symlink("..2024_a", certs.join("..data")).unwrap();
    for f in ["server.crt", "server.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), certs.join(f)).unwrap();
    }
    let http = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display()
    );
    let berth = start(dir.path(), &http);
    let addr = berth.host.clone();
    let ca = pki.ca.pem();
    let first = pki.der.clone();

    rt().block_on(async {
        let mut old = connect(&addr, &ca).await;
        assert_eq!(peer_cert(&old), first);
        assert_eq!(get_v2(&mut old).await, 200);

        // 1. Rewritten in place.
        pki.rotate("berth-b");
        let second = pki.der.clone();
        wait_for_cert(&addr, &ca, &second).await;
        assert!(
            berth.log().contains("certificate reloaded"),
            "{}",
            berth.log()
        );
        // The connection opened before still works, on its old certificate.
        assert_eq!(get_v2(&mut old).await, 200);
        assert_eq!(peer_cert(&old), first);

        // 2. A key that does not go with the certificate: one WARN, the last good pair stays.
        let (_, other_key, _) = pki.ca.leaf("unused", false);
        std::fs::write(pki.key(), other_key).unwrap();
        berth.wait_log("the refused reload", |l| l.contains("does not load"));
        // Two more polls: the WARN is not repeated, and the served certificate is unchanged.
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            berth.log().matches("does not load").count(),
            1,
            "{}",
            berth.log()
        );
        let mut s = connect(&addr, &ca).await;
        assert_eq!(peer_cert(&s), second);
        assert_eq!(get_v2(&mut s).await, 200);

        // 3. Kubernetes' update: a new directory, then `..data` swapped atomically.
        pki.rotate_into(&certs.join("..2024_b"), "berth-c");
        std::os::unix::fs::symlink("..2024_b", certs.join("..data_tmp")).unwrap();
        std::fs::rename(certs.join("..data_tmp"), certs.join("..data")).unwrap();
        wait_for_cert(&addr, &ca, &pki.der).await;
        assert_eq!(get_v2(&mut old).await, 200);
        assert!(!berth.log().contains("ERROR"), "{}", berth.log());
    });
}

/// Opens new connections until the server presents `want` (within [`RELOAD_DEADLINE`]).
async fn wait_for_cert(addr: &str, ca: &str, want: &[u8]) {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        let mut s = connect(addr, ca).await;
        if peer_cert(&s) == want {
            assert_eq!(get_v2(&mut s).await, 200);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `berth serve` on a config that must be refused; its exit code and stderr.
fn refused_start(config_text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = Command::new(support::bin())
        .arg("serve")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth started on a configuration it should refuse:\n{config_text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn bad_tls_settings_stop_the_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"));
    let root = dir.path().join("data");
    let (_, mismatched_key, _) = pki.ca.leaf("other", false);
    std::fs::write(dir.path().join("other.key"), mismatched_key).unwrap();
    let cases = [
        (
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.cert().display(),
                dir.path().join("missing.key").display()
            ),
            "http.tls.key",
        ),
        (
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.cert().display(),
                dir.path().join("other.key").display()
            ),
            "http.tls.key",
        ),
        (
            "  tls:\n    letsencrypt:\n      cachefile: /tmp/le\n      email: a@example.com\n"
                .to_owned(),
            "http.tls.letsencrypt",
        ),
        (pki.http_yaml("    minimumtls: tls1.0\n"), "http.tls.minimumtls"),
        (
            pki.http_yaml("    ciphersuites:\n      - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n      - TLS_NOT_A_SUITE\n"),
            "http.tls.ciphersuites[1]",
        ),
        ("  tls:\n    minimumtls: tls1.3\n".to_owned(), "http.tls.certificate"),
    ];
    for (http, key) in cases {
        let text = config(&root, &http);
        let (code, err) = refused_start(&text);
        assert!(
            code.is_some_and(|c| c != 0),
            "exit {code:?} for\n{text}\n{err}"
        );
        assert!(err.contains(key), "the message does not name {key}:\n{err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

// ---- graceful shutdown -------------------------------------------------------------------

/// The debug listener's address, from its start-up line.
fn debug_addr(b: &Berth) -> String {
    let log = b.wait_log("the debug listener", |l| {
        l.contains("debug listener on http://")
    });
    let rest = log.split("debug listener on http://").nth(1).unwrap();
    rest.chars().take_while(|c| !c.is_whitespace()).collect()
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://{addr}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_flight(debug: &str) -> f64 {
    let (_, text) = http_get(debug, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("berth_http_requests_in_flight "))
        .map(|v| v.parse().unwrap())
        .unwrap_or(-1.0)
}

fn sigterm(b: &Berth) {
    let st = Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Starts a monolithic blob upload with a chunked body, sends `first` and leaves the request
/// open; returns the connection and the blob's digest for `first + rest`.
fn slow_upload(b: &Berth, first: &[u8], rest: &[u8]) -> TcpStream {
    let r = ureq::post(&format!("{}/v2/drain/blobs/uploads/", b.url))
        .call()
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.header("location").unwrap().to_owned();
    let path = location
        .strip_prefix(&b.url)
        .unwrap_or(&location)
        .to_owned();
    let whole = [first, rest].concat();
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut s = TcpStream::connect(&b.host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "PUT {path}{sep}digest={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        sha256(&whole),
        b.host,
        first.len()
    )
    .unwrap();
    s.write_all(first).unwrap();
    s.write_all(b"\r\n").unwrap();
    s.flush().unwrap();
    s
}

/// What the server sent until it closed (or reset) the connection.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn sigterm_drains_a_request_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(
        dir.path(),
        "  draintimeout: 20s\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n",
    );
    let debug = debug_addr(&b);
    assert_eq!(http_get(&debug, "/readyz").0, 200);

    // An idle keep-alive connection, which the drain closes at once.
    let mut idle = TcpStream::connect(&b.host).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(idle, "GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", b.host).unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let (first, rest) = (
        b"the first half, ".as_slice(),
        b"and the second half".as_slice(),
    );
    let mut upload = slow_upload(&b, first, rest);
    until(
        "the upload to be in flight",
        Duration::from_secs(10),
        || in_flight(&debug) >= 1.0,
    );

    let t0 = Instant::now();
    sigterm(&b);
    until("/readyz to fail", Duration::from_secs(10), || {
        http_get(&debug, "/readyz").0 == 503
    });
    until(
        "the listener to close",
        Duration::from_secs(10),
        || matches!(TcpStream::connect(&b.host), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
    );
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "the idle connection stayed open"
    );

    // The request in flight finishes normally.
    write!(upload, "{:x}\r\n", rest.len()).unwrap();
    upload.write_all(rest).unwrap();
    upload.write_all(b"\r\n0\r\n\r\n").unwrap();
    let answer = read_to_close(&mut upload);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}\n{}", b.log());

    assert_eq!(b.wait(), Some(0), "{}", b.log());
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let log = b.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("drain timeout"), "{log}");
}

#[test]
fn a_stalled_request_is_dropped_at_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(
        dir.path(),
        "  draintimeout: 1s\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n",
    );
    let debug = debug_addr(&b);
    let mut stalled = slow_upload(&b, b"never finished", b"");
    until(
        "the upload to be in flight",
        Duration::from_secs(10),
        || in_flight(&debug) >= 1.0,
    );
    let t0 = Instant::now();
    sigterm(&b);
    assert_eq!(b.wait(), Some(0), "{}", b.log());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "exited after {took:?}"
    );
    let log = b.log();
    let warn = log
        .lines()
        .find(|l| l.contains("drain timeout"))
        .unwrap_or_else(|| panic!("no drain-timeout line:\n{log}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains("1 request(s)"), "{warn}");
    // The connection was dropped without an answer.
    let answer = read_to_close(&mut stalled);
    assert!(answer.is_empty(), "{answer}");
}

#[test]
fn h2c_prior_knowledge_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let plain = start(dir.path(), "");
    let h2 = |url: &str| curl(&["--http2-prior-knowledge", "-v", "-o", "/dev/null", url]);
    let out = h2(&format!("{}/v2/", plain.url));
    assert!(
        !out.status.success(),
        "HTTP/2 served without http.h2c: {out:?}"
    );
    // HTTP/1.1 is unaffected.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &format!("{}/v2/", plain.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1");

    let dir2 = tempfile::tempdir().unwrap();
    let h2c = start(dir2.path(), "  h2c:\n    enabled: true\n");
    let out = h2(&format!("{}/v2/", h2c.url));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("< HTTP/2 200"),
        "{err}"
    );
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &format!("{}/v2/", h2c.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1");
}
