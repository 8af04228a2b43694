//! Public keys as token issuers name them, and the ring backend `jsonwebtoken` signs and
//! verifies with.
//!
//! Issuers put different things in a token's `kid`; a key here knows all of its names:
//! - the **libtrust key ID** (Docker's libtrust, used by Keycloak's docker-v2 protocol,
//!   docker_auth, GitLab and Harbor): SHA-256 of the PKIX `SubjectPublicKeyInfo` DER, first 240
//!   bits, base32, in twelve groups of four joined by ':';
//! - the **RFC 7638 JWK thumbprint** (distribution 3.x): SHA-256 of the canonical JWK, base64url;
//! - the `kid` of a JWKS entry, as its publisher wrote it.
//!
//! JWS decoding, header and claim checks and signing are `jsonwebtoken`'s; its cryptography is
//! a pluggable [`CryptoProvider`](jsonwebtoken::crypto::CryptoProvider), and Berth installs one
//! on `ring` ([`install_jwt_backend`]): ring is already what TLS and everything else here use,
//! where jsonwebtoken's own backends would add aws-lc (a C build) or the RustCrypto curve and
//! RSA crates (18 more crates, and non-constant-time RSA signing).

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;

/// An elliptic curve Berth knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The DER of the curve's OID (with tag and length).
    fn oid_der(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }

    fn from_name(s: &str) -> Option<Curve> {
        match s {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }
}

/// A public key that can verify token signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y`.
    Ec { curve: Curve, point: Vec<u8> },
}

/// The JWS algorithms Berth verifies and signs. Only asymmetric ones exist here: `none` and
/// HMAC are not algorithms Berth has a name for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
        }
    }

    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The algorithm as `jsonwebtoken` names it; `None` for ES512, which it has no name for.
    pub fn jwt(self) -> Option<jsonwebtoken::Algorithm> {
        use jsonwebtoken::Algorithm as J;
        Some(match self {
            Alg::RS256 => J::RS256,
            Alg::RS384 => J::RS384,
            Alg::RS512 => J::RS512,
            Alg::PS256 => J::PS256,
            Alg::PS384 => J::PS384,
            Alg::PS512 => J::PS512,
            Alg::ES256 => J::ES256,
            Alg::ES384 => J::ES384,
            Alg::ES512 => return None,
        })
    }
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let i = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    b[i..].to_vec()
}

impl PublicKey {
    /// From a DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| format!("not a public key: {e}"))?;
        PublicKey::from_spki(&spki)
    }

    pub(crate) fn from_spki(
        spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<PublicKey, String> {
        use x509_parser::public_key::PublicKey as P;
        match spki.parsed() {
            Ok(P::RSA(k)) => Ok(PublicKey::Rsa {
                n: strip_zeros(k.modulus),
                e: strip_zeros(k.exponent),
            }),
            Ok(P::EC(point)) => {
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let curve = match curve_oid.as_str() {
                    "1.2.840.10045.3.1.7" => Curve::P256,
                    "1.3.132.0.34" => Curve::P384,
                    "1.3.132.0.35" => Curve::P521,
                    other => return Err(format!("unsupported elliptic curve {other}")),
                };
                let point = point.data().to_vec();
                if point.len() != 1 + 2 * curve.coordinate_len() || point[0] != 4 {
                    return Err("compressed or malformed EC point".into());
                }
                Ok(PublicKey::Ec { curve, point })
            }
            Ok(_) => Err("only RSA and EC keys can sign tokens".into()),
            Err(e) => Err(format!("unreadable public key: {e}")),
        }
    }

    /// From a JWK object (`kty` RSA or EC).
    pub fn from_jwk(jwk: &Value) -> Result<PublicKey, String> {
        let field = |k: &str| -> Result<Vec<u8>, String> {
            let s = jwk[k]
                .as_str()
                .ok_or_else(|| format!("JWK without \"{k}\""))?;
            B64URL
                .decode(s.trim_end_matches('='))
                .map_err(|e| format!("JWK \"{k}\" is not base64url: {e}"))
        };
        match jwk["kty"].as_str() {
            Some("RSA") => Ok(PublicKey::Rsa {
                n: strip_zeros(&field("n")?),
                e: strip_zeros(&field("e")?),
            }),
            Some("EC") => {
                let crv = jwk["crv"].as_str().unwrap_or("");
                let curve =
                    Curve::from_name(crv).ok_or_else(|| format!("unsupported curve {crv:?}"))?;
                let (x, y) = (field("x")?, field("y")?);
                let n = curve.coordinate_len();
                if x.len() != n || y.len() != n {
                    return Err(format!("{crv} coordinates must be {n} bytes"));
                }
                let mut point = vec![4];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(PublicKey::Ec { curve, point })
            }
            other => Err(format!("unsupported JWK kty {other:?}")),
        }
    }

    /// `RSA-2048`, `EC P-256`: for messages.
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { n, .. } => format!("RSA-{}", n.len() * 8),
            PublicKey::Ec { curve, .. } => format!("EC {}", curve.jwk_name()),
        }
    }

    /// The PKIX `SubjectPublicKeyInfo` DER, byte for byte what Go's
    /// `x509.MarshalPKIXPublicKey` writes.
    pub fn spki_der(&self) -> Vec<u8> {
        match self {
            PublicKey::Rsa { n, e } => {
                let rsa_key = der_seq(&[der_int(n), der_int(e)].concat());
                let alg = der_seq(&[RSA_ENCRYPTION_OID, DER_NULL].concat());
                der_seq(&[alg, der_bitstring(&rsa_key)].concat())
            }
            PublicKey::Ec { curve, point } => {
                let alg = der_seq(&[EC_PUBLIC_KEY_OID, curve.oid_der()].concat());
                der_seq(&[alg, der_bitstring(point)].concat())
            }
        }
    }

    /// The libtrust key ID (`ABCD:EFGH:...`, 12 groups).
    pub fn libtrust_id(&self) -> String {
        let hash = sha2::Sha256::digest(self.spki_der());
        let b32 = base32(&hash[..30]);
        b32.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        // Required members only, in lexical order, no whitespace (RFC 7638 §3.2).
        let canonical = match self {
            PublicKey::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64URL.encode(e),
                B64URL.encode(n)
            ),
            PublicKey::Ec { curve, point } => {
                let (x, y) = point[1..].split_at(curve.coordinate_len());
                format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    curve.jwk_name(),
                    B64URL.encode(x),
                    B64URL.encode(y)
                )
            }
        };
        B64URL.encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// The key as a JWK with the given `kid` (and certificate chain, when there is one).
    pub fn to_jwk(&self, kid: &str, x5c: &[Vec<u8>]) -> Value {
        let mut jwk = match self {
            PublicKey::Rsa { n, e } => json!({
                "kty": "RSA", "use": "sig", "kid": kid,
                "n": B64URL.encode(n), "e": B64URL.encode(e),
            }),
            PublicKey::Ec { curve, point } => {
                let (x, y) = point[1..].split_at(curve.coordinate_len());
                json!({
                    "kty": "EC", "use": "sig", "kid": kid, "crv": curve.jwk_name(),
                    "x": B64URL.encode(x), "y": B64URL.encode(y),
                })
            }
        };
        if !x5c.is_empty() {
            jwk["x5c"] = json!(x5c.iter().map(|c| B64.encode(c)).collect::<Vec<_>>());
        }
        jwk
    }

    /// Whether `alg` can be verified with this key at all.
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (
                PublicKey::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ) | (
                PublicKey::Ec {
                    curve: Curve::P256,
                    ..
                },
                Alg::ES256
            ) | (
                PublicKey::Ec {
                    curve: Curve::P384,
                    ..
                },
                Alg::ES384
            ) | (
                PublicKey::Ec {
                    curve: Curve::P521,
                    ..
                },
                Alg::ES512
            )
        )
    }

    /// The key as `jsonwebtoken` takes it (for the ring backend below: RSA as modulus and
    /// exponent, EC as the uncompressed point).
    pub fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match self {
            PublicKey::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
            PublicKey::Ec { point, .. } => jsonwebtoken::DecodingKey::from_ec_der(point),
        }
    }
}

const RSA_ENCRYPTION_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const DER_NULL: &[u8] = &[0x05, 0x00];

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

fn der_seq(content: &[u8]) -> Vec<u8> {
    der_tlv(0x30, content)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn der_int(magnitude: &[u8]) -> Vec<u8> {
    let m = strip_zeros(magnitude);
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().is_some_and(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(&m);
    der_tlv(0x02, &content)
}

fn der_bitstring(content: &[u8]) -> Vec<u8> {
    let mut c = vec![0];
    c.extend_from_slice(content);
    der_tlv(0x03, &c)
}

/// RFC 4648 base32 (standard alphabet), without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u64, 0u32);
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The base64 blocks of a PEM text, with their labels (`CERTIFICATE`, `PUBLIC KEY`, ...).
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            let (begun, body) = current
                .take()
                .ok_or_else(|| format!("END {label} without BEGIN"))?;
            if begun != label {
                return Err(format!("BEGIN {begun} ended by END {label}"));
            }
            let der = B64
                .decode(body.as_bytes())
                .map_err(|e| format!("{label}: bad base64: {e}"))?;
            out.push((label.to_owned(), der));
        } else if let Some((_, body)) = current.as_mut() {
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(format!("BEGIN {label} without END"));
    }
    Ok(out)
}

/// Installs the ring backend as `jsonwebtoken`'s process-wide crypto provider (idempotent;
/// [`crate::token::Verifier::new`] and [`crate::signer::Signer::from_pem`] call it, so no
/// token is signed or verified before it is in place).
pub fn install_jwt_backend() {
    // Err means a provider is installed already: this one, by an earlier call.
    let _ = ring_backend::PROVIDER.install_default();
}

/// `jsonwebtoken`'s [`CryptoProvider`](jsonwebtoken::crypto::CryptoProvider) on ring, for the
/// algorithms Berth verifies and signs. Signing keys come as PKCS#8 (EC) or PKCS#1/PKCS#8
/// (RSA) DER; verifying keys as [`PublicKey::decoding_key`] makes them. HMAC and EdDSA have
/// no factory: Berth refuses those tokens before a key is looked at.
mod ring_backend {
    use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::signature;
    use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
    use ring::rand::SystemRandom;
    use ring::signature as rs;

    pub(super) static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory,
        verifier_factory,
        // Only used by jsonwebtoken's JWK helpers, which Berth does not call (keys.rs
        // reads and writes JWKs itself).
        jwk_utils: JwkUtils::new_unimplemented(),
    };

    fn rsa_verify_params(alg: Algorithm) -> Option<&'static rs::RsaParameters> {
        Some(match alg {
            Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    fn ecdsa_verify_alg(alg: Algorithm) -> Option<&'static rs::EcdsaVerificationAlgorithm> {
        match alg {
            Algorithm::ES256 => Some(&rs::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => Some(&rs::ECDSA_P384_SHA384_FIXED),
            _ => None,
        }
    }

    struct Verifier {
        alg: Algorithm,
        key: DecodingKey,
    }

    impl signature::Verifier<Vec<u8>> for Verifier {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            let ok = match (self.key.kind(), rsa_verify_params(self.alg)) {
                (DecodingKeyKind::RsaModulusExponent { n, e }, Some(params)) => {
                    rs::RsaPublicKeyComponents { n, e }
                        .verify(params, msg, sig)
                        .is_ok()
                }
                (DecodingKeyKind::SecretOrDer(der), Some(params)) => {
                    rs::UnparsedPublicKey::new(params, der)
                        .verify(msg, sig)
                        .is_ok()
                }
                (DecodingKeyKind::SecretOrDer(point), None) => ecdsa_verify_alg(self.alg)
                    .is_some_and(|a| {
                        rs::UnparsedPublicKey::new(a, point)
                            .verify(msg, sig)
                            .is_ok()
                    }),
                (DecodingKeyKind::RsaModulusExponent { .. }, None) => false,
            };
            ok.then_some(()).ok_or_else(signature::Error::new)
        }
    }

    impl JwtVerifier for Verifier {
        fn algorithm(&self) -> Algorithm {
            self.alg
        }
    }

    fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
        if rsa_verify_params(*alg).is_none() && ecdsa_verify_alg(*alg).is_none() {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        Ok(Box::new(Verifier {
            alg: *alg,
            key: key.clone(),
        }))
    }

    enum Private {
        Ec(rs::EcdsaKeyPair),
        Rsa(rs::RsaKeyPair, &'static dyn rs::RsaEncoding),
    }

    struct Signer {
        alg: Algorithm,
        key: Private,
        rng: SystemRandom,
    }

    impl signature::Signer<Vec<u8>> for Signer {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            match &self.key {
                Private::Ec(k) => k
                    .sign(&self.rng, msg)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| signature::Error::new()),
                Private::Rsa(k, encoding) => {
                    let mut sig = vec![0; k.public().modulus_len()];
                    k.sign(*encoding, &self.rng, msg, &mut sig)
                        .map_err(|_| signature::Error::new())?;
                    Ok(sig)
                }
            }
        }
    }

    impl JwtSigner for Signer {
        fn algorithm(&self) -> Algorithm {
            self.alg
        }
    }

    fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
        let rng = SystemRandom::new();
        let der = key.inner();
        let ec = |a: &'static rs::EcdsaSigningAlgorithm| {
            rs::EcdsaKeyPair::from_pkcs8(a, der, &rng)
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))
        };
        let rsa = |encoding: &'static dyn rs::RsaEncoding| {
            rs::RsaKeyPair::from_pkcs8(der)
                .or_else(|_| rs::RsaKeyPair::from_der(der))
                .map(|k| Private::Rsa(k, encoding))
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))
        };
        let key = match alg {
            Algorithm::ES256 => Private::Ec(ec(&rs::ECDSA_P256_SHA256_FIXED_SIGNING)?),
            Algorithm::ES384 => Private::Ec(ec(&rs::ECDSA_P384_SHA384_FIXED_SIGNING)?),
            Algorithm::RS256 => rsa(&rs::RSA_PKCS1_SHA256)?,
            Algorithm::RS384 => rsa(&rs::RSA_PKCS1_SHA384)?,
            Algorithm::RS512 => rsa(&rs::RSA_PKCS1_SHA512)?,
            Algorithm::PS256 => rsa(&rs::RSA_PSS_SHA256)?,
            Algorithm::PS384 => rsa(&rs::RSA_PSS_SHA384)?,
            Algorithm::PS512 => rsa(&rs::RSA_PSS_SHA512)?,
            _ => return Err(ErrorKind::InvalidAlgorithm.into()),
        };
        Ok(Box::new(Signer {
            alg: *alg,
            key,
            rng,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys made with openssl, and their libtrust IDs as Go computes them with
    /// `x509.MarshalPKIXPublicKey` + `sha256` + `base32.StdEncoding` (what libtrust's
    /// `keyIDFromCryptoKey` does).
    const EC_SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEr+W8YxbRQN9+sX7d9kDqLGdxUGIq
d0ePo4TY/ep0MXhTjKXjzkcUuD/QJoSY5Z3R9l9JKNsnHr8DjsTF+DNDUA==
-----END PUBLIC KEY-----";
    const EC_LIBTRUST_ID: &str = "PPO3:AEBS:5D33:3H7H:YZVE:NDJF:RS3W:H5T7:MIFR:Q4KN:QJYV:B6UQ";

    const RSA_SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA49azYSg60wyEyF0STKON
Pk6x+5s6L8temruJdLhbJ2TK7NvKyiBwGM5hBgWIL8F3OVRIKHAS/JmyCgyZLTxD
NESVs4P1bctsiFv0NjD/XYa+0TGVZHX3PhVdaUAzgUj/DUhdXFTnzfzo8GNVYarN
ri0iKQ6Ti4U2OfSQOhVXXGkJnpbNwe/N8jK01gMGQOMb5zcYxOQ+QIo0spjNGv6w
5he1WdsqfR0mmbCS+KXt2Ve9MWaMgL5VmD6wQlO9KETUj6jwt3gPgu0gCL3GLDST
QPl/kzqjXdlDTp1c+lWsX2vsQK25a1FLZLJOtRsZdP3QJaNb5wME2XfM6B775l2U
XwIDAQAB
-----END PUBLIC KEY-----";
    const RSA_LIBTRUST_ID: &str = "JORQ:LAEK:MPVS:5ZLP:FRWM:RQRK:DEPJ:UOEY:YJKS:5TI5:IZHD:V4LY";

    #[test]
    fn rsa_libtrust_id_matches_go() {
        let blocks = pem_blocks(RSA_SPKI_PEM).unwrap_or_default();
        let key = PublicKey::from_spki_der(&blocks[0].1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.spki_der(), blocks[0].1);
        assert_eq!(key.libtrust_id(), RSA_LIBTRUST_ID);
        assert_eq!(key.describe(), "RSA-2048");
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn spki_roundtrips_byte_for_byte() {
        let blocks = pem_blocks(EC_SPKI_PEM).unwrap_or_default();
        assert_eq!(blocks.len(), 1);
        let key = PublicKey::from_spki_der(&blocks[0].1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.spki_der(), blocks[0].1);
        assert_eq!(key.libtrust_id(), EC_LIBTRUST_ID);
        // Through a JWK and back: same key, same names.
        let again = PublicKey::from_jwk(&key.to_jwk("x", &[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, key);
        assert_eq!(again.thumbprint(), key.thumbprint());
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
        });
        let key = PublicKey::from_jwk(&jwk).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(key.describe(), "RSA-2048");
    }

    #[test]
    fn pem_errors() {
        assert!(pem_blocks("-----BEGIN X-----\nAAAA\n").is_err());
        assert!(pem_blocks("-----BEGIN X-----\n!!\n-----END X-----").is_err());
        assert!(pem_blocks("-----BEGIN X-----\nAAAA\n-----END Y-----").is_err());
        assert_eq!(pem_blocks("no pem here").map(|b| b.len()), Ok(0));
    }
}
