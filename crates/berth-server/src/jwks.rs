//! `auth.token.jwksurl` (Berth's): the keys of an OIDC issuer such as Keycloak, fetched at
//! start and again when a token names a key Berth does not know (the issuer rotated keys), at
//! most once per [`MIN_INTERVAL`]. A failed fetch keeps the keys Berth has, with a WARN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_auth::token::Verifier;
use berth_auth::trust::TrustSet;

/// The least time between two fetches triggered by unknown key IDs.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Refresher {
    url: String,
    client: reqwest::Client,
    /// The keys trusted whatever the URL says (rootcertbundle, jwks file, Berth's issuer).
    base: TrustSet,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Refresher {
    pub fn new(url: &str, base: TrustSet) -> Result<Refresher, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Refresher {
            url: url.to_owned(),
            client,
            base,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The static keys plus the URL's.
    pub async fn fetch(&self) -> Result<TrustSet, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("fetching {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {}: HTTP {}", self.url, resp.status()));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?;
        let fetched = TrustSet::from_jwks(&text, &self.url)?;
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
                tracing::info!(url = %self.url, keys = trust.keys.len(), "JWKS fetched again for an unknown key ID");
                verifier.set_trust(trust);
                true
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the keys already known; hint: check that auth.token.jwksurl is reachable from the registry");
                false
            }
        }
    }
}
