//! Bearer-token verification: a JWS compact token whose claims follow Docker's token spec
//! (<https://distribution.github.io/distribution/spec/auth/jwt/>), from any issuer style.
//!
//! The key is found, in order, by: the `kid` as a JWKS kid, libtrust key ID or RFC 7638
//! thumbprint of a trusted key; an `x5c` chain that verifies to a `rootcertbundle` certificate;
//! with no `kid` and no `x5c`, each trusted key that fits the algorithm. Only asymmetric
//! algorithms exist ([`Alg`]): `none` and HMAC tokens are refused before any key is looked at.
//! Then `iss`, `aud` (a string or a list), `exp` and `nbf` (with a small leeway) are checked.
//! Whether the token's `access` covers a request is the caller's question
//! ([`crate::scope::covers`]).
//!
//! A token verified once is cached (by its SHA-256) until it expires, so the signature of a
//! token is checked once, not on every request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

use crate::keys::{Alg, PublicKey};
use crate::scope::Scope;
use crate::trust::TrustSet;

/// Clock skew tolerated on `exp` and `nbf` (distribution uses the same minute).
pub const LEEWAY_SECS: i64 = 60;
/// Verified tokens kept (each is a few hundred bytes).
const CACHE_CAPACITY: usize = 10_000;

/// Why a token was refused; the label is low-cardinality (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Malformed,
    Unsigned,
    Symmetric,
    UnsupportedAlgorithm,
    AlgorithmNotAllowed,
    UnknownKey,
    UntrustedChain,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Unsigned => "unsigned",
            Reason::Symmetric => "symmetric_algorithm",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::UntrustedChain => "untrusted_chain",
            Reason::BadSignature => "bad_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
        }
    }
}

/// A refused token, with what an operator needs to see why: one WARN line.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
    /// What to check or change.
    pub hint: String,
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    /// The key IDs this verifier trusts.
    pub trusted: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "token refused ({}): {}; alg={} kid={} iss={} aud={}; trusted key IDs: [{}]; hint: {}",
            self.reason.as_str(),
            self.detail,
            show(&self.alg),
            show(&self.kid),
            show(&self.iss),
            show(&self.aud),
            self.trusted.join(", "),
            self.hint
        )
    }
}

/// What the verifier checks claims against.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// `auth.token.issuer`: the `iss` tokens must carry.
    pub issuer: String,
    /// `auth.token.service`: must be (one of) the token's `aud`.
    pub service: String,
    /// `auth.token.signingalgorithms`: when set, only these.
    pub algorithms: Option<Vec<Alg>>,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub subject: String,
    pub access: Vec<Scope>,
    /// The resource class of each `access` entry's name (`image` when the entry has no
    /// `class`), for `policy.repository.classes`.
    pub classes: Vec<(String, String)>,
    pub expires: i64,
    /// Every claim of the token (federated identities map them to an account and ACL
    /// variables).
    pub claims: Value,
}

/// The parts of a token, decoded but not yet trusted.
struct Decoded {
    header: Value,
    claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn decode(token: &str) -> Result<Decoded, String> {
    let mut parts = token.split('.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => (h, c, s),
        _ => return Err("not a JWS compact token (three dot-separated parts)".into()),
    };
    let json = |part: &str, what: &str| -> Result<Value, String> {
        let bytes = B64URL
            .decode(part.trim_end_matches('='))
            .map_err(|e| format!("{what} is not base64url: {e}"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{what} is not JSON: {e}"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(format!("{what} is not a JSON object"))
        }
    };
    Ok(Decoded {
        header: json(h, "header")?,
        claims: json(c, "payload")?,
        signing_input: format!("{h}.{c}"),
        signature: B64URL
            .decode(s.trim_end_matches('='))
            .map_err(|e| format!("signature is not base64url: {e}"))?,
    })
}

/// `aud` as a list (a string is a list of one).
fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `(name, class)` of every `access` entry; a missing or empty `class` is distribution's
/// default, `image`.
fn class_claim(claims: &Value) -> Vec<(String, String)> {
    let Some(entries) = claims["access"].as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let name = e["name"].as_str()?.to_owned();
            let class = e["class"]
                .as_str()
                .filter(|c| !c.is_empty())
                .unwrap_or("image");
            Some((name, class.to_owned()))
        })
        .collect()
}

fn access_claim(claims: &Value) -> Vec<Scope> {
    claims["access"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    Some(Scope {
                        typ: e["type"].as_str()?.to_owned(),
                        name: e["name"].as_str()?.to_owned(),
                        actions: e["actions"]
                            .as_array()?
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Verifies tokens against a trust set that can be replaced while serving (a refreshed JWKS).
pub struct Verifier {
    config: VerifierConfig,
    trust: RwLock<Arc<TrustSet>>,
    cache: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
}

impl Verifier {
    pub fn new(config: VerifierConfig, trust: TrustSet) -> Verifier {
        Verifier {
            config,
            trust: RwLock::new(Arc::new(trust)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    pub fn trust(&self) -> Arc<TrustSet> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the trusted keys (after fetching a JWKS again). Cached verdicts stay: a key
    /// that disappears from a JWKS does not revoke tokens it already signed.
    pub fn set_trust(&self, trust: TrustSet) {
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust);
    }

    /// Verifies `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Verified>, Box<Refusal>> {
        let fingerprint: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint)
        {
            if now <= v.expires + LEEWAY_SECS {
                return Ok(v.clone());
            }
        }
        let verified = Arc::new(self.verify_uncached(token, now)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, v| now <= v.expires + LEEWAY_SECS);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(fingerprint, verified.clone());
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<Verified, Box<Refusal>> {
        let trust = self.trust();
        let mut refusal = Refusal {
            reason: Reason::Malformed,
            detail: String::new(),
            hint: String::new(),
            alg: None,
            kid: None,
            iss: None,
            aud: None,
            trusted: trust.key_ids(),
        };
        let fail = |mut r: Refusal, reason: Reason, detail: String, hint: &str| {
            r.reason = reason;
            r.detail = detail;
            r.hint = hint.to_owned();
            Err(Box::new(r))
        };
        let d = match decode(token) {
            Ok(d) => d,
            Err(e) => {
                return fail(
                    refusal,
                    Reason::Malformed,
                    e,
                    "the client sent something that is not a JWT as its bearer token",
                )
            }
        };
        let alg_name = d.header["alg"].as_str().unwrap_or("").to_owned();
        refusal.alg = Some(alg_name.clone());
        refusal.kid = d.header["kid"].as_str().map(str::to_owned);
        refusal.iss = d.claims["iss"].as_str().map(str::to_owned);
        let auds = audiences(&d.claims);
        refusal.aud = (!auds.is_empty()).then(|| auds.join(","));

        let alg = match Alg::parse(&alg_name) {
            Some(a) => a,
            None if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() => {
                return fail(
                    refusal,
                    Reason::Unsigned,
                    "the token is not signed (alg none)".into(),
                    "unsigned tokens are never accepted",
                )
            }
            None if alg_name.starts_with("HS") => {
                return fail(
                    refusal,
                    Reason::Symmetric,
                    format!("{alg_name} is a shared-secret algorithm"),
                    "only asymmetric algorithms (RS*, PS*, ES*) are accepted; configure the issuer to sign with an RSA or EC key",
                )
            }
            None => {
                return fail(
                    refusal,
                    Reason::UnsupportedAlgorithm,
                    format!("algorithm {alg_name:?} is not supported"),
                    "sign tokens with RS256/384/512, PS256/384/512, ES256 or ES384",
                )
            }
        };
        if let Some(allowed) = &self.config.algorithms {
            if !allowed.contains(&alg) {
                let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
                return fail(
                    refusal,
                    Reason::AlgorithmNotAllowed,
                    format!("{alg_name} is not in auth.token.signingalgorithms [{}]", names.join(", ")),
                    "add the issuer's algorithm to auth.token.signingalgorithms, or remove the list",
                );
            }
        }

        // Find the key, then check the signature with it.
        let message = d.signing_input.as_bytes();
        let kid = refusal.kid.clone();
        let x5c: Option<Vec<Vec<u8>>> = d.header["x5c"].as_array().map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().and_then(|s| B64.decode(s).ok()))
                .collect()
        });
        let verdict: Result<(), (Reason, String, &str)> = if let Some((key, how)) =
            kid.as_deref().and_then(|k| trust.by_kid(k))
        {
            key.key.verify(alg, message, &d.signature).map_err(|e| {
                (
                    Reason::BadSignature,
                    format!("kid matches the {how} of {}, but {e}", key.origin),
                    "the token was signed by another key that claims this kid, or was altered after signing",
                )
            })
        } else if let Some(chain) = x5c.as_ref().filter(|c| !c.is_empty()) {
            match trust.verify_x5c(chain, now) {
                Ok(leaf) => leaf.verify(alg, message, &d.signature).map_err(|e| {
                    (
                        Reason::BadSignature,
                        format!("x5c chain is trusted, but with its leaf key {e}"),
                        "the token was altered after signing, or signed with another key than its certificate's",
                    )
                }),
                Err(e) => Err((
                    Reason::UntrustedChain,
                    e,
                    "add the issuer's CA (or its signing certificate) to auth.token.rootcertbundle",
                )),
            }
        } else if let Some(k) = kid.as_deref() {
            Err((
                Reason::UnknownKey,
                format!("no trusted key has the ID {k:?} (as JWKS kid, libtrust key ID or RFC 7638 thumbprint)"),
                "add the issuer's certificate to auth.token.rootcertbundle or its key to auth.token.jwks; `berth keys jwks CERT` prints a key's IDs",
            ))
        } else {
            let fitting: Vec<&PublicKey> = trust
                .keys
                .iter()
                .map(|k| &k.key)
                .filter(|k| k.fits(alg))
                .collect();
            if fitting
                .iter()
                .any(|k| k.verify(alg, message, &d.signature).is_ok())
            {
                Ok(())
            } else {
                Err((
                    Reason::BadSignature,
                    format!("the token has no kid and no x5c, and none of the {} trusted {alg_name} keys verifies it", fitting.len()),
                    "trust the issuer's key (rootcertbundle or jwks), or have the issuer set kid",
                ))
            }
        };
        if let Err((reason, detail, hint)) = verdict {
            return fail(refusal, reason, detail, hint);
        }

        // Claims.
        let iss = refusal.iss.clone().unwrap_or_default();
        if iss != self.config.issuer {
            let detail = format!("iss is {iss:?}, expected {:?}", self.config.issuer);
            return fail(
                refusal,
                Reason::WrongIssuer,
                detail,
                "auth.token.issuer must equal the issuer's configured name",
            );
        }
        if !auds.iter().any(|a| a == &self.config.service) {
            let detail = format!("aud {auds:?} does not include {:?}", self.config.service);
            return fail(
                refusal,
                Reason::WrongAudience,
                detail,
                "auth.token.service must equal the service the client asked the token for",
            );
        }
        let exp = d.claims["exp"].as_i64();
        match exp {
            Some(exp) if now > exp + LEEWAY_SECS => {
                let detail = format!("expired {}s ago", now - exp);
                return fail(
                    refusal,
                    Reason::Expired,
                    detail,
                    "the client should fetch a new token; check the clocks if this repeats",
                );
            }
            None => {
                return fail(
                    refusal,
                    Reason::Malformed,
                    "no exp claim".into(),
                    "tokens must expire",
                );
            }
            _ => {}
        }
        if let Some(nbf) = d.claims["nbf"].as_i64() {
            if nbf > now + LEEWAY_SECS {
                let detail = format!("not valid for another {}s", nbf - now);
                return fail(
                    refusal,
                    Reason::NotYetValid,
                    detail,
                    "the issuer's clock is ahead of this server's; sync the clocks (NTP)",
                );
            }
        }
        Ok(Verified {
            subject: d.claims["sub"].as_str().unwrap_or("").to_owned(),
            access: access_claim(&d.claims),
            classes: class_claim(&d.claims),
            expires: exp.unwrap_or(now),
            claims: d.claims,
        })
    }
}
