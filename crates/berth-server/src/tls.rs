//! TLS for the registry listener (`http.tls`), with rustls and the ring provider.
//!
//! distribution's keys: `certificate` and `key` (PEM files), `clientcas` (CA files: clients must
//! present a certificate that chains to one of them), `clientauth` (distribution 3), `minimumtls`
//! and `ciphersuites` (Go's names). `letsencrypt` is refused by the configuration check rather
//! than served as plain HTTP.
//!
//! The certificate, key and client CAs are re-read when their files change on disk (a watcher
//! thread compares size, mtime and inode every [`POLL_INTERVAL`]): cert-manager renews a
//! Kubernetes Secret in place by swapping the `..data` symlink. The new pair is swapped into
//! [`ReloadingCert`], which new handshakes read; open connections keep the keys they agreed on.
//! A pair that does not load is reported once and the previous one stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite,
};

use crate::config::schema::Tls as TlsConfig;

/// How often the watcher looks at the certificate, key and CA files.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// TLS 1.2 suites by Go's name (distribution's `ciphersuites`), for those rustls implements.
const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites: Go (and so distribution) accepts their names and always enables them all.
const TLS13_NAMES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows (CBC, RC4, 3DES, RSA key exchange) that rustls does not implement.
const GO_ONLY: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// A `ciphersuites` entry: a TLS 1.2 suite to enable, or a TLS 1.3 name (always enabled).
fn cipher_suite(name: &str) -> Result<Option<CipherSuite>, String> {
    if let Some((_, s)) = TLS12_SUITES.iter().find(|(n, _)| *n == name) {
        return Ok(Some(*s));
    }
    if TLS13_NAMES.contains(&name) {
        return Ok(None);
    }
    let supported: Vec<&str> = TLS12_SUITES.iter().map(|(n, _)| *n).collect();
    if GO_ONLY.contains(&name) {
        return Err(format!(
            "{name} (CBC, RC4, 3DES or RSA key exchange) is not implemented by Berth's TLS library; supported TLS 1.2 suites: {}",
            supported.join(", ")
        ));
    }
    Err(format!(
        "unknown cipher suite {name:?}; supported TLS 1.2 suites: {} (TLS 1.3 suites are always enabled)",
        supported.join(", ")
    ))
}

/// Whether only TLS 1.3 is allowed (`minimumtls`).
fn tls13_only(minimum: Option<&str>) -> Result<bool, String> {
    match minimum.unwrap_or("tls1.2") {
        "" | "tls1.2" => Ok(false),
        "tls1.3" => Ok(true),
        v @ ("tls1.0" | "tls1.1") => Err(format!(
            "{v} is not supported: Berth's TLS library implements TLS 1.2 and 1.3 only; use tls1.2 (the default) or tls1.3"
        )),
        v => Err(format!("unknown version {v:?} (tls1.2, tls1.3)")),
    }
}

/// Whether a client certificate is required (`clientauth`; only with `clientcas`).
fn client_auth_mandatory(clientauth: Option<&str>) -> Result<bool, String> {
    match clientauth.unwrap_or("require-and-verify-client-cert") {
        "" | "require-and-verify-client-cert" => Ok(true),
        "verify-client-cert-if-given" => Ok(false),
        v @ ("request-client-cert" | "require-any-client-cert") => Err(format!(
            "{v} would accept client certificates without verifying them; not supported (require-and-verify-client-cert, verify-client-cert-if-given)"
        )),
        v => Err(format!(
            "unknown value {v:?} (require-and-verify-client-cert, verify-client-cert-if-given)"
        )),
    }
}

/// Whether `http.tls` asks for TLS at all. An empty `tls:` section means plain HTTP, as in
/// distribution; any key in it means TLS (or a start-up error).
pub fn enabled(t: &TlsConfig) -> bool {
    t.certificate.is_some()
        || t.key.is_some()
        || t.clientcas.is_some()
        || t.clientauth.is_some()
        || t.minimumtls.is_some()
        || t.ciphersuites.is_some()
        || t.letsencrypt.is_some()
}

/// The configuration check of `http.tls` (no file is read here): every problem, by key.
pub fn check_config(t: &TlsConfig, bad: &mut dyn FnMut(&str, String)) {
    if !enabled(t) {
        return;
    }
    if t.letsencrypt.is_some() {
        bad(
            "http.tls.letsencrypt",
            "Let's Encrypt (ACME) is not supported: obtain the certificate with another tool (cert-manager, certbot) and set http.tls.certificate and http.tls.key; Berth reloads them when they change".to_owned(),
        );
    } else {
        let empty = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        if empty(&t.certificate) {
            bad("http.tls.certificate", "required for TLS".to_owned());
        }
        if empty(&t.key) {
            bad("http.tls.key", "required for TLS".to_owned());
        }
    }
    let only13 = tls13_only(t.minimumtls.as_deref());
    if let Err(e) = &only13 {
        bad("http.tls.minimumtls", e.clone());
    }
    if let Some(list) = &t.ciphersuites {
        let mut tls12 = 0;
        for (i, name) in list.iter().enumerate() {
            match cipher_suite(name) {
                Ok(Some(_)) => tls12 += 1,
                Ok(None) => {}
                Err(e) => bad(&format!("http.tls.ciphersuites[{i}]"), e),
            }
        }
        if tls12 == 0 && only13 == Ok(false) && !list.is_empty() {
            bad(
                "http.tls.ciphersuites",
                "lists no TLS 1.2 suite, so TLS 1.2 clients could not connect: add one, or set http.tls.minimumtls: tls1.3".to_owned(),
            );
        }
    }
    if let Err(e) = client_auth_mandatory(t.clientauth.as_deref()) {
        bad("http.tls.clientauth", e);
    }
    for (i, ca) in t.clientcas.iter().flatten().enumerate() {
        if ca.is_empty() {
            bad(&format!("http.tls.clientcas[{i}]"), "empty path".to_owned());
        }
    }
}

/// The listener's TLS: the rustls configuration, and the watcher that reloads its files.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    watcher: Watcher,
}

impl Tls {
    /// Loads the files of a configuration that passed [`check_config`]. `http2`: offer `h2`
    /// by ALPN (not when `http.http2.disabled`). Errors name the key and the file.
    pub fn load(t: &TlsConfig, http2: bool) -> Result<Tls, String> {
        let only13 =
            tls13_only(t.minimumtls.as_deref()).map_err(|e| format!("http.tls.minimumtls: {e}"))?;
        let mandatory = client_auth_mandatory(t.clientauth.as_deref())
            .map_err(|e| format!("http.tls.clientauth: {e}"))?;
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(list) = &t.ciphersuites {
            let mut wanted = Vec::new();
            for (i, name) in list.iter().enumerate() {
                if let Some(s) =
                    cipher_suite(name).map_err(|e| format!("http.tls.ciphersuites[{i}]: {e}"))?
                {
                    wanted.push(s);
                }
            }
            provider.cipher_suites.retain(|s| match s {
                SupportedCipherSuite::Tls13(_) => true,
                SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
            });
        }
        let provider = Arc::new(provider);
        let files = Files {
            certificate: PathBuf::from(t.certificate.clone().unwrap_or_default()),
            key: PathBuf::from(t.key.clone().unwrap_or_default()),
            clientcas: t.clientcas.iter().flatten().map(PathBuf::from).collect(),
        };
        let cert = Arc::new(ReloadingCert(RwLock::new(Arc::new(
            files.certified_key(&provider)?,
        ))));
        let verifier = if files.clientcas.is_empty() {
            None
        } else {
            let inner = files.client_verifier(&provider, mandatory)?;
            Some(Arc::new(ReloadingVerifier {
                inner: RwLock::new(inner),
                mandatory,
            }))
        };
        let versions: &[&rustls::SupportedProtocolVersion] = if only13 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("http.tls: {e}"))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let seen = files.stamp();
        Ok(Tls {
            config: Arc::new(config),
            watcher: Watcher {
                files,
                provider,
                cert,
                verifier,
                seen,
            },
        })
    }

    /// Starts the thread that reloads changed files into the live configuration; it runs
    /// until the process exits.
    pub fn watch(self) -> Arc<ServerConfig> {
        let Tls { config, watcher } = self;
        let spawned = std::thread::Builder::new()
            .name("tls-reload".to_owned())
            .spawn(move || watcher.run());
        if let Err(e) = spawned {
            tracing::warn!("http.tls: cannot start the certificate watcher ({e}); certificate changes need a restart");
        }
        config
    }
}

/// The files `http.tls` names.
struct Files {
    certificate: PathBuf,
    key: PathBuf,
    clientcas: Vec<PathBuf>,
}

/// What identifies a file's version: size, modification time and, on Unix, device and inode
/// (a Kubernetes Secret update swaps a symlink to new files). `None`: unreadable.
type Stamp = Option<(u64, Option<std::time::SystemTime>, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some((m.len(), m.modified().ok(), dev, ino))
}

impl Files {
    fn stamp(&self) -> (Vec<Stamp>, Vec<Stamp>) {
        (
            vec![stamp(&self.certificate), stamp(&self.key)],
            self.clientcas.iter().map(|p| stamp(p)).collect(),
        )
    }

    fn certified_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
        let chain =
            certificates(&self.certificate).map_err(|e| format!("http.tls.certificate: {e}"))?;
        let pem = std::fs::read(&self.key)
            .map_err(|e| format!("http.tls.key: reading {}: {e}", self.key.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            format!(
                "http.tls.key: no usable PEM private key in {}: {e}",
                self.key.display()
            )
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            format!(
                "http.tls.key: {} does not go with the certificate in {}: {e}",
                self.key.display(),
                self.certificate.display()
            )
        })
    }

    fn client_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut roots = RootCertStore::empty();
        for (i, path) in self.clientcas.iter().enumerate() {
            let key = format!("http.tls.clientcas[{i}]");
            for cert in certificates(path).map_err(|e| format!("{key}: {e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
            }
        }
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !mandatory {
            builder = builder.allow_unauthenticated();
        }
        builder
            .build()
            .map_err(|e| format!("http.tls.clientcas: {e}"))
    }
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Reloads changed files: see the module documentation.
struct Watcher {
    files: Files,
    provider: Arc<CryptoProvider>,
    cert: Arc<ReloadingCert>,
    verifier: Option<Arc<ReloadingVerifier>>,
    /// The files' stamps when last looked at: a change is acted on once, so a bad pair is
    /// reported once, not at every poll.
    seen: (Vec<Stamp>, Vec<Stamp>),
}

impl Watcher {
    fn run(mut self) {
        loop {
            std::thread::sleep(POLL_INTERVAL);
            self.poll();
        }
    }

    fn poll(&mut self) {
        let now = self.files.stamp();
        if now.0 != self.seen.0 {
            match self.files.certified_key(&self.provider) {
                Ok(k) => {
                    *self.cert.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(k);
                    tracing::info!(
                        certificate = %self.files.certificate.display(),
                        "http.tls: certificate reloaded; new connections use it"
                    );
                }
                Err(e) => tracing::warn!(
                    "http.tls: the changed certificate or key does not load, still serving the previous one: {e}"
                ),
            }
        }
        if now.1 != self.seen.1 {
            if let Some(v) = &self.verifier {
                match self.files.client_verifier(&self.provider, v.mandatory) {
                    Ok(inner) => {
                        *v.inner.write().unwrap_or_else(PoisonError::into_inner) = inner;
                        tracing::info!("http.tls: client CAs reloaded");
                    }
                    Err(e) => tracing::warn!(
                        "http.tls: the changed client CAs do not load, still using the previous ones: {e}"
                    ),
                }
            }
        }
        self.seen = now;
    }
}

/// The server certificate new handshakes use; replaced by the watcher.
#[derive(Debug)]
struct ReloadingCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The client-certificate verifier (`clientcas`), replaced by the watcher. It sends no CA
/// names in its certificate request (they cannot be borrowed across a reload); clients then
/// offer their certificate whatever CA issued it, which is what a registry client with one
/// certificate does anyway.
#[derive(Debug)]
struct ReloadingVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
}

impl ReloadingVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(t: &TlsConfig) -> Vec<String> {
        let mut out = Vec::new();
        check_config(t, &mut |k, m| out.push(format!("{k}: {m}")));
        out
    }

    fn with_files() -> TlsConfig {
        TlsConfig {
            certificate: Some("/c.pem".into()),
            key: Some("/k.pem".into()),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn an_empty_section_is_plain_http() {
        assert!(!enabled(&TlsConfig::default()));
        assert!(problems(&TlsConfig::default()).is_empty());
    }

    #[test]
    fn certificate_and_key_are_required() {
        let t = TlsConfig {
            minimumtls: Some("tls1.3".into()),
            ..TlsConfig::default()
        };
        let p = problems(&t);
        assert!(
            p.iter().any(|p| p.starts_with("http.tls.certificate:")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.starts_with("http.tls.key:")), "{p:?}");
        assert!(problems(&with_files()).is_empty());
    }

    #[test]
    fn old_versions_and_letsencrypt_are_refused() {
        for v in ["tls1.0", "tls1.1", "ssl3"] {
            let t = TlsConfig {
                minimumtls: Some(v.into()),
                ..with_files()
            };
            let p = problems(&t);
            assert!(
                p.len() == 1 && p[0].starts_with("http.tls.minimumtls:"),
                "{p:?}"
            );
        }
        let t = TlsConfig {
            letsencrypt: Some(
                serde_yaml::from_str("{cachefile: /x, email: a@b}").unwrap_or_default(),
            ),
            ..TlsConfig::default()
        };
        let p = problems(&t);
        assert!(
            p.len() == 1 && p[0].starts_with("http.tls.letsencrypt:"),
            "{p:?}"
        );
    }

    #[test]
    fn cipher_suites_by_go_name() {
        let t = TlsConfig {
            ciphersuites: Some(vec![
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into(),
                "TLS_BOGUS".into(),
            ]),
            ..with_files()
        };
        let p = problems(&t);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("http.tls.ciphersuites[2]: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA (CBC")
        );
        assert!(p[1].starts_with("http.tls.ciphersuites[3]: unknown cipher suite \"TLS_BOGUS\""));
        let only13 = TlsConfig {
            ciphersuites: Some(vec!["TLS_AES_128_GCM_SHA256".into()]),
            ..with_files()
        };
        assert_eq!(problems(&only13).len(), 1);
        let only13 = TlsConfig {
            minimumtls: Some("tls1.3".into()),
            ..only13
        };
        assert!(problems(&only13).is_empty());
        // Every name in the table is one rustls's ring provider implements.
        let provider = rustls::crypto::ring::default_provider();
        for (name, suite) in TLS12_SUITES {
            assert!(
                provider.cipher_suites.iter().any(|s| s.suite() == *suite),
                "{name}"
            );
        }
    }

    #[test]
    fn client_auth_modes() {
        let t = TlsConfig {
            clientcas: Some(vec!["/ca.pem".into()]),
            clientauth: Some("require-any-client-cert".into()),
            ..with_files()
        };
        let p = problems(&t);
        assert!(
            p.len() == 1 && p[0].starts_with("http.tls.clientauth:"),
            "{p:?}"
        );
    }
}
