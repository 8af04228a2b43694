//! Bearer-token verification: a JWS compact token whose claims follow Docker's token spec
//! (<https://distribution.github.io/distribution/spec/auth/jwt/>), from any issuer style.
//!
//! Berth finds the key; `jsonwebtoken` does the rest. The key is found, in order, by: the `kid`
//! as a JWKS kid, libtrust key ID or RFC 7638 thumbprint of a trusted key; an `x5c` chain that
//! verifies to a `rootcertbundle` certificate; with no `kid` and no `x5c`, each trusted key
//! that fits the algorithm. Only asymmetric algorithms exist ([`Alg`]): `none` and HMAC tokens
//! are refused before any key is looked at. jsonwebtoken then decodes the token, checks the
//! signature, and checks `iss` and `aud` (a string or a list; both required) and that `exp`
//! is there. `exp` and `nbf` are compared here with the caller's clock (`now`, with a minute of
//! leeway): jsonwebtoken only reads the system clock. Whether the token's `access` covers a
//! request is the caller's question ([`crate::scope::covers`]).
//!
//! What jsonwebtoken cannot say, read here from the raw token only to explain a refusal: the
//! `alg` of a header it does not parse (`none`, ES512, unknown names), and `iss`/`aud` for the
//! WARN line. ES512 is refused as unsupported (neither jsonwebtoken nor ring has P-521).
//!
//! A token verified once is cached (by its SHA-256) until it expires, so the signature of a
//! token is checked once, not on every request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::Value;
use sha2::Digest as _;

use crate::keys::{install_jwt_backend, Alg, PublicKey};
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

/// One part of a token (0: header, 1: payload) as a JSON object, unverified: only to explain a
/// refusal.
fn unverified_part(token: &str, index: usize) -> Result<Value, String> {
    let what = ["header", "payload"][index.min(1)];
    let part = token
        .split('.')
        .nth(index)
        .ok_or("not a JWS compact token (three dot-separated parts)")?;
    let bytes = B64URL
        .decode(part)
        .map_err(|e| format!("{what} is not base64url: {e}"))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{what} is not JSON: {e}"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(format!("{what} is not a JSON object"))
    }
}

/// An `alg` Berth verifies, or why not.
fn classify_alg(name: &str) -> Result<Alg, (Reason, String, &'static str)> {
    match Alg::parse(name) {
        Some(Alg::ES512) => Err((
            Reason::UnsupportedAlgorithm,
            "ES512 (P-521) is not supported: neither jsonwebtoken nor ring verifies it".into(),
            "sign tokens with RS256/384/512, PS256/384/512, ES256 or ES384",
        )),
        Some(a) => Ok(a),
        None if name.eq_ignore_ascii_case("none") || name.is_empty() => Err((
            Reason::Unsigned,
            "the token is not signed (alg none)".into(),
            "unsigned tokens are never accepted",
        )),
        None if name.starts_with("HS") => Err((
            Reason::Symmetric,
            format!("{name} is a shared-secret algorithm"),
            "only asymmetric algorithms (RS*, PS*, ES*) are accepted; configure the issuer to sign with an RSA or EC key",
        )),
        None => Err((
            Reason::UnsupportedAlgorithm,
            format!("algorithm {name:?} is not supported"),
            "sign tokens with RS256/384/512, PS256/384/512, ES256 or ES384",
        )),
    }
}

/// A JSON number as whole seconds (NumericDate may have a fraction).
fn numeric_date(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

const NOT_A_JWT: &str = "the client sent something that is not a JWT as its bearer token";

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
    /// jsonwebtoken's checks for each algorithm (a `Validation` names the algorithms a token
    /// may use; Berth allows the one its key lookup was made for).
    validations: HashMap<Alg, Validation>,
    trust: RwLock<Arc<TrustSet>>,
    cache: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
}

impl Verifier {
    pub fn new(config: VerifierConfig, trust: TrustSet) -> Verifier {
        install_jwt_backend();
        let validations = Alg::ALL
            .into_iter()
            .filter_map(|alg| {
                let mut v = Validation::new(alg.jwt()?);
                // Both checked against the caller's `now` after the signature (jsonwebtoken
                // would read the system clock).
                v.validate_exp = false;
                v.validate_nbf = false;
                v.leeway = 0;
                // Without these, jsonwebtoken accepts a token that lacks `iss` or `aud`.
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&[&config.service]);
                Some((alg, v))
            })
            .collect();
        Verifier {
            config,
            validations,
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

    /// A refusal, with what the raw token says (`iss`, `aud`) for the WARN line. A token whose
    /// payload is not a JSON object is malformed, whatever else is wrong with it.
    fn refusal(
        &self,
        token: &str,
        trust: &TrustSet,
        (alg, kid): (Option<String>, Option<String>),
        (reason, detail, hint): (Reason, String, &str),
    ) -> Box<Refusal> {
        let mut r = Refusal {
            reason,
            detail,
            hint: hint.to_owned(),
            alg,
            kid,
            iss: None,
            aud: None,
            trusted: trust.key_ids(),
        };
        match unverified_part(token, 1) {
            Ok(claims) => {
                r.iss = claims["iss"].as_str().map(str::to_owned);
                let auds = audiences(&claims);
                r.aud = (!auds.is_empty()).then(|| auds.join(","));
            }
            Err(e) if reason != Reason::Malformed => {
                r.reason = Reason::Malformed;
                r.detail = e;
                r.hint = NOT_A_JWT.to_owned();
            }
            Err(_) => {}
        }
        Box::new(r)
    }

    /// What a jsonwebtoken error other than a bad signature means.
    fn decode_failure(&self, token: &str, e: &ErrorKind) -> (Reason, String, &'static str) {
        let claims = unverified_part(token, 1).unwrap_or_default();
        match e {
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => (
                Reason::Malformed,
                "no exp claim".into(),
                "tokens must expire",
            ),
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => self.wrong_issuer(&claims),
            ErrorKind::InvalidIssuer => self.wrong_issuer(&claims),
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidAudience => (
                Reason::WrongAudience,
                format!(
                    "aud {:?} does not include {:?}",
                    audiences(&claims),
                    self.config.service
                ),
                "auth.token.service must equal the service the client asked the token for",
            ),
            ErrorKind::InvalidClaimFormat(c) => {
                (Reason::Malformed, format!("{c} is not a number"), NOT_A_JWT)
            }
            ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidToken => {
                (Reason::Malformed, format!("not a JWT: {e:?}"), NOT_A_JWT)
            }
            other => (
                Reason::BadSignature,
                format!("the signature could not be checked: {other:?}"),
                "the token was signed by another key, or was altered after signing",
            ),
        }
    }

    fn wrong_issuer(&self, claims: &Value) -> (Reason, String, &'static str) {
        (
            Reason::WrongIssuer,
            format!(
                "iss is {:?}, expected {:?}",
                claims["iss"], self.config.issuer
            ),
            "auth.token.issuer must equal the issuer's configured name",
        )
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<Verified, Box<Refusal>> {
        let trust = self.trust();
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            // Not a header jsonwebtoken reads: say why from the raw header.
            Err(e) => {
                let (names, why) = match unverified_part(token, 0) {
                    Err(detail) => ((None, None), (Reason::Malformed, detail, NOT_A_JWT)),
                    Ok(h) => {
                        let alg = h["alg"].as_str().unwrap_or("").to_owned();
                        let why = classify_alg(&alg).err().unwrap_or_else(|| {
                            (
                                Reason::Malformed,
                                format!("the header is not a JWS header: {e}"),
                                NOT_A_JWT,
                            )
                        });
                        ((Some(alg), h["kid"].as_str().map(str::to_owned)), why)
                    }
                };
                return Err(self.refusal(token, &trust, names, why));
            }
        };
        let alg_name = format!("{:?}", header.alg);
        let kid = header.kid.clone();
        let refuse = |why: (Reason, String, &str)| {
            self.refusal(token, &trust, (Some(alg_name.clone()), kid.clone()), why)
        };
        let alg = classify_alg(&alg_name).map_err(refuse)?;
        if let Some(crit) = header.crit.as_ref().filter(|c| !c.is_empty()) {
            // RFC 7515 §4.1.11: extensions a verifier does not implement make the token invalid.
            return Err(refuse((
                Reason::Malformed,
                format!("critical header extensions {crit:?} are not understood"),
                "the issuer uses JWS extensions Berth does not implement; have it sign plain JWTs",
            )));
        }
        if let Some(allowed) = &self.config.algorithms {
            if !allowed.contains(&alg) {
                let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
                return Err(refuse((
                    Reason::AlgorithmNotAllowed,
                    format!("{alg_name} is not in auth.token.signingalgorithms [{}]", names.join(", ")),
                    "add the issuer's algorithm to auth.token.signingalgorithms, or remove the list",
                )));
            }
        }
        let Some(validation) = self.validations.get(&alg) else {
            return Err(refuse((
                Reason::UnsupportedAlgorithm,
                format!("algorithm {alg_name:?} is not supported"),
                "sign tokens with RS256/384/512, PS256/384/512, ES256 or ES384",
            )));
        };
        // jsonwebtoken checks the signature with `key`, then the claims. `bad` says what a
        // signature that does not verify (`what`) means for the way the key was found.
        type Why = (Reason, String, &'static str);
        let decode = |key: &PublicKey, bad: &dyn Fn(String) -> Why| {
            if !key.fits(alg) {
                return Err(bad(format!(
                    "algorithm {alg_name} does not fit {} key",
                    key.describe()
                )));
            }
            jsonwebtoken::decode::<Value>(token, &key.decoding_key(), validation)
                .map(|d| d.claims)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => bad("the signature does not verify".into()),
                    other => self.decode_failure(token, other),
                })
        };

        // Find the key, then let jsonwebtoken verify with it.
        let x5c = header.x5c_der().map_err(|e| {
            refuse((
                Reason::UntrustedChain,
                format!("x5c is not base64: {e}"),
                "x5c must hold base64 DER certificates",
            ))
        })?;
        let verdict = if let Some((key, how)) = kid.as_deref().and_then(|k| trust.by_kid(k)) {
            decode(&key.key, &|what| {
                (
                    Reason::BadSignature,
                    format!("kid matches the {how} of {}, but {what}", key.origin),
                    "the token was signed by another key that claims this kid, or was altered after signing",
                )
            })
        } else if let Some(chain) = x5c.as_ref().filter(|c| !c.is_empty()) {
            match trust.verify_x5c(chain, now) {
                Ok(leaf) => decode(&leaf, &|what| {
                    (
                        Reason::BadSignature,
                        format!("x5c chain is trusted, but with its leaf key {what}"),
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
            let none_verifies = |_: String| {
                (
                    Reason::BadSignature,
                    format!("the token has no kid and no x5c, and none of the {} trusted {alg_name} keys verifies it", fitting.len()),
                    "trust the issuer's key (rootcertbundle or jwks), or have the issuer set kid",
                )
            };
            // The first key whose signature verifies decides; a key that does not is skipped.
            let mut verdict = Err(none_verifies(String::new()));
            for key in &fitting {
                verdict = decode(key, &none_verifies);
                if !matches!(&verdict, Err((Reason::BadSignature, ..))) {
                    break;
                }
            }
            verdict
        };
        let claims = verdict.map_err(refuse)?;

        // The clock, with the caller's `now`.
        let Some(exp) = numeric_date(&claims["exp"]) else {
            return Err(refuse((
                Reason::Malformed,
                "exp is not a number".into(),
                NOT_A_JWT,
            )));
        };
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(refuse((
                Reason::Expired,
                format!("expired {}s ago", now.saturating_sub(exp)),
                "the client should fetch a new token; check the clocks if this repeats",
            )));
        }
        if let Some(nbf) = claims.get("nbf") {
            // A `nbf` that is not a number is refused, not ignored (GHSA-h395-gr6q-cpjc).
            match numeric_date(nbf) {
                None => {
                    return Err(refuse((
                        Reason::Malformed,
                        "nbf is not a number".into(),
                        NOT_A_JWT,
                    )))
                }
                Some(nbf) if nbf > now.saturating_add(LEEWAY_SECS) => {
                    return Err(refuse((
                        Reason::NotYetValid,
                        format!("not valid for another {}s", nbf.saturating_sub(now)),
                        "the issuer's clock is ahead of this server's; sync the clocks (NTP)",
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(Verified {
            subject: claims["sub"].as_str().unwrap_or("").to_owned(),
            access: access_claim(&claims),
            classes: class_claim(&claims),
            expires: exp,
            claims,
        })
    }
}
