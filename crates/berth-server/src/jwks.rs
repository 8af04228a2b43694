//! Keys that change while Berth runs: `auth.token.jwksurl` (an OIDC issuer such as Keycloak)
//! and the JWKS of federated issuers (`auth.issuer.federated`: a URL, a file such as a
//! Kubernetes cluster's keys mounted from a ConfigMap, or the issuer's OpenID discovery
//! document). Read at start and again when a token names a key Berth does not know (the issuer
//! rotated keys), at most once per [`MIN_INTERVAL`]. A failed read keeps the keys Berth has,
//! with a WARN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_auth::token::Verifier;
use berth_auth::trust::TrustSet;

/// The least time between two fetches triggered by unknown key IDs.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    Url(String),
    File(String),
    /// The `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    Discovery(String),
}

pub struct Refresher {
    source: Source,
    /// What to check when reading fails (the config key).
    key: String,
    client: reqwest::Client,
    /// A file whose content is sent as a bearer token (a Kubernetes API server's JWKS needs the
    /// pod's own service-account token), read for each fetch since it is rotated.
    bearer: Option<String>,
    /// The keys trusted whatever the URL says (rootcertbundle, jwks file, Berth's issuer).
    base: TrustSet,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Refresher {
    pub fn new(url: &str, base: TrustSet) -> Result<Refresher, String> {
        Self::with_source(Source::Url(url.to_owned()), "auth.token.jwksurl", base)
    }

    /// Keys from `source`, `key` naming its configuration in messages.
    pub fn with_source(source: Source, key: &str, base: TrustSet) -> Result<Refresher, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Refresher {
            source,
            key: key.to_owned(),
            client,
            bearer: None,
            base,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// Trusts the CA certificates of `cafile` (a cluster's CA) for the HTTPS fetches and sends
    /// the content of `bearer_file` as a bearer token.
    pub fn with_tls(
        mut self,
        cafile: Option<&str>,
        bearer_file: Option<String>,
    ) -> Result<Refresher, String> {
        if let Some(path) = cafile {
            let pem =
                std::fs::read(path).map_err(|e| format!("{}: cafile {path}: {e}", self.key))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: cafile {path}: {e}", self.key))?;
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy();
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
            self.client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        }
        self.bearer = bearer_file;
        Ok(self)
    }

    async fn get(&self, url: &str) -> Result<String, String> {
        let mut req = self.client.get(url);
        if let Some(path) = &self.bearer {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: bearertokenfile {path}: {e}", self.key))?;
            req = req.bearer_auth(token.trim());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", resp.status()));
        }
        resp.text().await.map_err(|e| format!("reading {url}: {e}"))
    }

    /// The static keys plus the source's.
    pub async fn fetch(&self) -> Result<TrustSet, String> {
        let (text, name) = match &self.source {
            Source::Url(url) => (self.get(url).await?, url.clone()),
            Source::File(path) => (
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("reading {path}: {e}"))?,
                path.clone(),
            ),
            Source::Discovery(issuer) => {
                let doc = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let meta: serde_json::Value = serde_json::from_str(&self.get(&doc).await?)
                    .map_err(|e| format!("{doc}: not JSON: {e}"))?;
                // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it
                // was fetched for, or its keys are someone else's.
                if meta["issuer"].as_str().map(|i| i.trim_end_matches('/'))
                    != Some(issuer.trim_end_matches('/'))
                {
                    return Err(format!(
                        "{doc}: its issuer is {}, not {issuer:?}",
                        meta["issuer"]
                    ));
                }
                let Some(url) = meta["jwks_uri"].as_str() else {
                    return Err(format!("{doc}: no jwks_uri"));
                };
                (self.get(url).await?, url.to_owned())
            }
        };
        let fetched = TrustSet::from_jwks(&text, &name)?;
        let mut all = self.base.clone();
        all.extend(fetched);
        Ok(all)
    }

    /// Fetches again unless that happened less than [`MIN_INTERVAL`] ago; true when the
    /// verifier got new keys.
    pub async fn refresh(&self, verifier: &Arc<Verifier>) -> bool {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(trust) => {
                tracing::info!(source = ?self.source, keys = trust.keys.len(), "JWKS read again for an unknown key ID");
                verifier.set_trust(trust);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "{e}; keeping the keys already known; hint: check that {} is reachable from the registry",
                    self.key
                );
                false
            }
        }
    }
}
