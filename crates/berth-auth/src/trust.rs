//! The keys and certificates a verifier trusts: `rootcertbundle` certificates (their keys are
//! known by libtrust ID and thumbprint, and they anchor `x5c` chains) and JWKS entries (known by
//! their `kid`, and by thumbprint).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use x509_parser::prelude::*;

use crate::keys::{pem_blocks, PublicKey};

/// One trusted key and every name a token may use for it.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: PublicKey,
    /// The `kid` of the JWKS entry it came from.
    pub jwks_kid: Option<String>,
    pub libtrust_id: String,
    pub thumbprint: String,
    /// Where it came from, for messages (`rootcertbundle: CN=token-signer`, `jwks`).
    pub origin: String,
}

impl TrustedKey {
    pub fn new(key: PublicKey, jwks_kid: Option<String>, origin: String) -> TrustedKey {
        TrustedKey {
            libtrust_id: key.libtrust_id(),
            thumbprint: key.thumbprint(),
            key,
            jwks_kid,
            origin,
        }
    }

    /// Whether a token's `kid` names this key, and how.
    pub fn named_by(&self, kid: &str) -> Option<&'static str> {
        if self.jwks_kid.as_deref() == Some(kid) {
            Some("JWKS kid")
        } else if self.libtrust_id == kid {
            Some("libtrust key ID")
        } else if self.thumbprint == kid {
            Some("RFC 7638 thumbprint")
        } else {
            None
        }
    }
}

/// A `rootcertbundle` certificate, an anchor for `x5c` chains.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub der: Vec<u8>,
    pub subject: String,
}

/// Everything trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    pub keys: Vec<TrustedKey>,
    pub anchors: Vec<Anchor>,
}

impl TrustSet {
    /// Certificates (and bare public keys) of a PEM bundle, as distribution's
    /// `rootcertbundle`.
    pub fn from_pem_bundle(text: &str, name: &str) -> Result<TrustSet, String> {
        let mut set = TrustSet::default();
        for (label, der) in pem_blocks(text).map_err(|e| format!("{name}: {e}"))? {
            match label.as_str() {
                "CERTIFICATE" => {
                    let (_, cert) = parse_x509_certificate(&der)
                        .map_err(|e| format!("{name}: unreadable certificate: {e}"))?;
                    let subject = cert.subject().to_string();
                    let key = PublicKey::from_spki(cert.public_key())
                        .map_err(|e| format!("{name}: certificate {subject}: {e}"))?;
                    set.keys.push(TrustedKey::new(
                        key,
                        None,
                        format!("{name}: certificate {subject}"),
                    ));
                    set.anchors.push(Anchor { der, subject });
                }
                "PUBLIC KEY" => {
                    let key = PublicKey::from_spki_der(&der).map_err(|e| format!("{name}: {e}"))?;
                    set.keys
                        .push(TrustedKey::new(key, None, format!("{name}: public key")));
                }
                _ => {}
            }
        }
        if set.keys.is_empty() {
            return Err(format!("{name}: no certificate or public key in it"));
        }
        Ok(set)
    }

    /// The keys of a JWKS document (`{"keys":[...]}`). Entries Berth cannot use (symmetric
    /// keys, encryption keys, unknown curves) are skipped; it is an error only when none is
    /// left.
    pub fn from_jwks(text: &str, name: &str) -> Result<TrustSet, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        let entries = doc["keys"]
            .as_array()
            .ok_or_else(|| format!("{name}: no \"keys\" list"))?;
        let mut set = TrustSet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in entries.iter().enumerate() {
            if jwk["use"].as_str().is_some_and(|u| u != "sig") {
                continue;
            }
            let kid = jwk["kid"].as_str().map(str::to_owned);
            match PublicKey::from_jwk(jwk) {
                Ok(key) => {
                    let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
                    set.keys
                        .push(TrustedKey::new(key, kid, format!("{name}: key {label}")));
                }
                Err(e) => skipped.push(format!("#{i}: {e}")),
            }
            // A JWK may carry its certificate chain; its root anchors x5c tokens too.
            if let Some(chain) = jwk["x5c"].as_array() {
                if let Some(last) = chain.last().and_then(Value::as_str) {
                    if let Ok(der) = B64.decode(last) {
                        if let Ok((_, cert)) = parse_x509_certificate(&der) {
                            let subject = cert.subject().to_string();
                            set.anchors.push(Anchor { der, subject });
                        }
                    }
                }
            }
        }
        if set.keys.is_empty() {
            return Err(format!(
                "{name}: no usable signing key ({})",
                if skipped.is_empty() {
                    "empty".to_owned()
                } else {
                    skipped.join("; ")
                }
            ));
        }
        Ok(set)
    }

    pub fn extend(&mut self, other: TrustSet) {
        self.keys.extend(other.keys);
        self.anchors.extend(other.anchors);
    }

    /// The key a `kid` names, and how it names it.
    pub fn by_kid(&self, kid: &str) -> Option<(&TrustedKey, &'static str)> {
        // JWKS kids first: they are what the publisher chose.
        self.keys
            .iter()
            .find_map(|k| (k.jwks_kid.as_deref() == Some(kid)).then_some((k, "JWKS kid")))
            .or_else(|| {
                self.keys
                    .iter()
                    .find_map(|k| k.named_by(kid).map(|how| (k, how)))
            })
    }

    /// The IDs a token's `kid` may use, for messages (JWKS kid or libtrust ID per key).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.jwks_kid.clone().unwrap_or_else(|| k.libtrust_id.clone()))
            .collect()
    }

    /// Verifies an `x5c` chain (leaf first, DER) to an anchor at `now` (Unix seconds) and
    /// returns the leaf's key.
    pub fn verify_x5c(&self, chain: &[Vec<u8>], now: i64) -> Result<PublicKey, String> {
        const MAX_DEPTH: usize = 8;
        if self.anchors.is_empty() {
            return Err("no rootcertbundle certificate to verify an x5c chain against".into());
        }
        if chain.is_empty() || chain.len() > MAX_DEPTH {
            return Err(format!("x5c has {} certificates", chain.len()));
        }
        let mut parsed = Vec::with_capacity(chain.len());
        for (i, der) in chain.iter().enumerate() {
            let (_, cert) = parse_x509_certificate(der)
                .map_err(|e| format!("x5c[{i}] is not a certificate: {e}"))?;
            let validity = cert.validity();
            if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
                return Err(format!(
                    "x5c[{i}] ({}) is outside its validity ({} to {})",
                    cert.subject(),
                    validity.not_before,
                    validity.not_after
                ));
            }
            parsed.push(cert);
        }
        let leaf_key =
            PublicKey::from_spki(parsed[0].public_key()).map_err(|e| format!("x5c[0]: {e}"))?;
        let mut current = 0usize;
        for _ in 0..MAX_DEPTH {
            let cert = &parsed[current];
            if self.anchors.iter().any(|a| a.der == chain[current]) {
                return Ok(leaf_key);
            }
            // Issued by an anchor?
            for a in &self.anchors {
                if let Ok((_, anchor)) = parse_x509_certificate(&a.der) {
                    if anchor.subject() == cert.issuer()
                        && cert.verify_signature(Some(anchor.public_key())).is_ok()
                    {
                        return Ok(leaf_key);
                    }
                }
            }
            // Issued by a CA further up the chain?
            let next = parsed.iter().enumerate().skip(current + 1).find(|(_, up)| {
                up.subject() == cert.issuer()
                    && up.is_ca()
                    && cert.verify_signature(Some(up.public_key())).is_ok()
            });
            match next {
                Some((i, _)) => current = i,
                None => {
                    return Err(format!(
                        "x5c certificate {} (issuer {}) does not chain to any rootcertbundle certificate",
                        cert.subject(),
                        cert.issuer()
                    ))
                }
            }
        }
        Err("x5c chain too deep".into())
    }
}
