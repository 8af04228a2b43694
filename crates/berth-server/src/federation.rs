//! `auth.issuer.federated`: the external issuers whose tokens log workloads in at the token
//! endpoint ([`berth_auth::federation`] maps their claims to identities). Each has its own
//! verifier (its `iss`, its `audience`, its algorithms, its keys) and a [`Refresher`] for its
//! keys, so a rotated key is picked up on the first token that names it.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_auth::federation::{Kind, Mapping, DEFAULT_ACCOUNT};
use berth_auth::identity::Identity;
use berth_auth::token::{Reason, Verifier, VerifierConfig};
use berth_auth::trust::TrustSet;

use crate::config::schema;
use crate::jwks::{Refresher, Source};

/// One trusted external issuer.
pub struct Federated {
    pub mapping: Mapping,
    /// The `iss` its tokens carry.
    pub issuer: String,
    verifier: Arc<Verifier>,
    keys: Refresher,
}

/// Why a presented external token gives no identity (one WARN line, never the token).
pub struct Refused {
    /// Low-cardinality label for metrics.
    pub reason: &'static str,
    pub message: String,
}

impl Federated {
    /// From its configuration, reading its keys (a failed read at start is a WARN: the keys
    /// are read again when a token needs them).
    pub async fn new(c: &schema::Federated) -> Result<Federated, String> {
        let name = c.name.clone().unwrap_or_default();
        let key = format!("auth.issuer.federated[{name}]");
        let kind = Kind::parse(c.kind.as_deref().unwrap_or("oidc"))
            .ok_or_else(|| format!("{key}.kind: kubernetes or oidc"))?;
        let issuer = c.issuer.clone().unwrap_or_default();
        let source = match (&c.jwks, &c.jwksurl) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(url)) => Source::Url(url.clone()),
            (None, None) => Source::Discovery(issuer.clone()),
        };
        let keys = Refresher::with_source(source, &format!("{key}'s keys"), TrustSet::default())?
            .with_tls(c.cafile.as_deref(), c.bearertokenfile.clone())?;
        let trust = match keys.fetch().await {
            Ok(t) => t,
            Err(e) if c.jwks.is_some() => return Err(format!("{key}.jwks: {e}")),
            Err(e) => {
                tracing::warn!("{key}: {e}; starting without its keys and reading them again when one of its tokens is presented");
                TrustSet::default()
            }
        };
        let algorithms = c.algorithms.as_ref().map(|list| {
            list.iter()
                .filter_map(|a| berth_auth::keys::Alg::parse(a))
                .collect()
        });
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: issuer.clone(),
                service: c.audience.clone().unwrap_or_default(),
                algorithms,
            },
            trust,
        );
        // Issuers that sign for every customer of a platform: without required claims, any
        // repository or project there could log in.
        let shared = [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.com",
        ];
        if shared.contains(&issuer.trim_end_matches('/'))
            && c.claims.as_ref().is_none_or(|m| m.is_empty())
        {
            tracing::warn!(
                "{key}: {issuer} signs tokens for every repository on its platform, and no claims are required: any of them can log in with this audience; hint: require your organisation, e.g. claims: {{repository_owner: my-org}} or {{namespace_path: my-group}}"
            );
        }
        tracing::info!(
            name = %name,
            issuer = %issuer,
            audience = %c.audience.as_deref().unwrap_or(""),
            keys = %verifier.trust().key_ids().join(", "),
            "federated issuer trusted"
        );
        Ok(Federated {
            mapping: Mapping {
                name,
                kind,
                account: c.account.clone().unwrap_or_else(|| DEFAULT_ACCOUNT.into()),
                required: c.claims.clone().unwrap_or_default(),
            },
            issuer,
            verifier: Arc::new(verifier),
            keys,
        })
    }

    /// The identity `token` proves, if it does.
    pub async fn identify(&self, token: &str, now: i64) -> Result<Identity, Refused> {
        let mut verdict = self.verifier.verify(token, now);
        if let Err(r) = &verdict {
            // A key the issuer rotated in: read its keys again (rate-limited), try once more.
            if r.reason == Reason::UnknownKey && self.keys.refresh(&self.verifier).await {
                verdict = self.verifier.verify(token, now);
            }
        }
        let verified = verdict.map_err(|r| Refused {
            reason: r.reason.as_str(),
            message: format!("{} token {r}", self.mapping.name),
        })?;
        self.mapping.identity(&verified).map_err(|u| Refused {
            reason: u.reason,
            message: format!(
                "{} token refused ({}): {}; hint: check auth.issuer.federated[{}] (claims, account)",
                self.mapping.name, u.reason, u.detail, self.mapping.name
            ),
        })
    }
}

/// Every federated issuer, found by `iss`.
#[derive(Default)]
pub struct Federation {
    by_issuer: BTreeMap<String, Federated>,
}

impl Federation {
    pub async fn new(list: &[schema::Federated]) -> Result<Federation, String> {
        let mut by_issuer = BTreeMap::new();
        for c in list {
            let f = Federated::new(c).await?;
            by_issuer.insert(f.issuer.clone(), f);
        }
        Ok(Federation { by_issuer })
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The issuer whose token `password` is, when it is a JWT from a configured issuer.
    pub fn issuer_of(&self, password: &str) -> Option<&Federated> {
        if self.by_issuer.is_empty() {
            return None;
        }
        let iss = berth_auth::federation::unverified_issuer(password)?;
        self.by_issuer.get(&iss)
    }
}

pub type Shared = Arc<Federation>;
