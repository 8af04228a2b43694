//! Signing keys for Berth's issuer: load them (PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1
//! `RSA PRIVATE KEY` PEM, as openssl and others write them), generate them with a self-signed
//! certificate (no openssl needed), and sign tokens with them (`jsonwebtoken`, on the ring
//! backend of [`crate::keys`]).
//!
//! A token Berth signs carries `kid` = the key's libtrust ID (what distribution 2.x looks up in
//! its `rootcertbundle`) and `x5c` = the key's certificate chain (what distribution 3.x
//! verifies against its bundle), so both versions trust it with only the certificate.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::Value;

use crate::keys::{install_jwt_backend, pem_blocks, Alg, PublicKey};

/// A key that signs tokens, with its public half and certificate chain.
pub struct Signer {
    /// PKCS#8 (EC) or PKCS#1/PKCS#8 (RSA) DER, as the ring backend reads it.
    private: EncodingKey,
    /// `alg` as jsonwebtoken names it (ES256 or RS256: what `from_pem` loads).
    jwt_alg: jsonwebtoken::Algorithm,
    pub alg: Alg,
    pub public: PublicKey,
    /// The libtrust key ID, sent as `kid`.
    pub kid: String,
    /// DER certificates, leaf first (empty when none was given).
    pub chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The PKCS#8 form of a SEC1 `ECPrivateKey` for P-256 (what `openssl ecparam -genkey` writes).
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    let alg = tlv(
        0x30,
        &[
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07][..],
        ]
        .concat(),
    );
    tlv(
        0x30,
        &[&[0x02, 0x01, 0x00][..], &alg, &tlv(0x04, sec1)].concat(),
    )
}

impl Signer {
    /// Loads a private key (PEM) and, optionally, its certificate chain (PEM, leaf first).
    pub fn from_pem(key_pem: &str, chain_pem: Option<&str>) -> Result<Signer, String> {
        install_jwt_backend();
        let rng = SystemRandom::new();
        let blocks = pem_blocks(key_pem)?;
        let (label, der) = blocks
            .into_iter()
            .find(|(l, _)| l.ends_with("PRIVATE KEY"))
            .ok_or("no PRIVATE KEY block")?;
        let ec = |pkcs8: &[u8]| {
            EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &rng,
            )
        };
        let ec_public = |k: EcdsaKeyPair| PublicKey::Ec {
            curve: crate::keys::Curve::P256,
            point: k.public_key().as_ref().to_vec(),
        };
        let rsa_public = |k: RsaKeyPair| {
            let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
            PublicKey::Rsa { n: c.n, e: c.e }
        };
        // Read once with ring here, to refuse a bad key at start and to know its public half.
        let (private, alg, public) = match label.as_str() {
            "PRIVATE KEY" => match ec(&der) {
                Ok(k) => (EncodingKey::from_ec_der(&der), Alg::ES256, ec_public(k)),
                Err(_) => match RsaKeyPair::from_pkcs8(&der) {
                    Ok(k) => (EncodingKey::from_rsa_der(&der), Alg::RS256, rsa_public(k)),
                    Err(e) => {
                        return Err(format!(
                            "the key is neither an EC P-256 nor an RSA (2048+ bits) key: {e}"
                        ))
                    }
                },
            },
            "EC PRIVATE KEY" => {
                let pkcs8 = sec1_p256_to_pkcs8(&der);
                let k = ec(&pkcs8).map_err(|e| format!("not an EC P-256 key: {e}"))?;
                (EncodingKey::from_ec_der(&pkcs8), Alg::ES256, ec_public(k))
            }
            "RSA PRIVATE KEY" => {
                let k = RsaKeyPair::from_der(&der).map_err(|e| format!("bad RSA key: {e}"))?;
                (EncodingKey::from_rsa_der(&der), Alg::RS256, rsa_public(k))
            }
            other => return Err(format!("unsupported key type {other}")),
        };
        let chain: Vec<Vec<u8>> = match chain_pem {
            Some(pem) => pem_blocks(pem)?
                .into_iter()
                .filter(|(l, _)| l == "CERTIFICATE")
                .map(|(_, d)| d)
                .collect(),
            None => Vec::new(),
        };
        if let Some(leaf) = chain.first() {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf)
                .map_err(|e| format!("unreadable certificate: {e}"))?;
            let cert_key = PublicKey::from_spki(cert.public_key())?;
            if cert_key != public {
                return Err("the certificate is not the key's (its public key differs)".into());
            }
        }
        Ok(Signer {
            kid: public.libtrust_id(),
            private,
            jwt_alg: if alg == Alg::ES256 {
                jsonwebtoken::Algorithm::ES256
            } else {
                jsonwebtoken::Algorithm::RS256
            },
            alg,
            public,
            chain,
        })
    }

    /// Signs `claims` as a compact JWS with `kid` and `x5c`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(self.jwt_alg);
        header.kid = Some(self.kid.clone());
        if !self.chain.is_empty() {
            header.x5c = Some(self.chain.iter().map(|c| B64.encode(c)).collect());
        }
        jsonwebtoken::encode(&header, claims, &self.private)
            .map_err(|e| format!("signing failed: {e}"))
    }

    /// Signs `claims` under exactly `header`, whatever its `alg` says (jsonwebtoken's typed
    /// header cannot say `none` or carry arbitrary fields): tests use this to make tokens the
    /// way other issuers, or attackers, make them. The signature is the key's own algorithm.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.private, self.jwt_alg)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(format!("{input}.{sig}"))
    }

    /// The key as a JWKS entry (kid = libtrust ID, with its chain).
    pub fn jwk(&self) -> Value {
        self.public.to_jwk(&self.kid, &self.chain)
    }
}

/// A new key and its self-signed certificate, both PEM.
pub struct Generated {
    pub key_pem: String,
    pub cert_pem: String,
}

/// Generates a signing key (`ES256`: P-256; `RS256`: RSA-2048) with a self-signed certificate
/// valid for `days`, whose subject CN is `common_name`.
pub fn generate(alg: Alg, common_name: &str, days: u32) -> Result<Generated, String> {
    let key_pair = match alg {
        Alg::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating the key: {e}"))?,
        Alg::RS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let mut rng = rsa::rand_core::OsRng;
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| format!("generating the key: {e}"))?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| format!("encoding the key: {e}"))?;
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| format!("loading the key: {e}"))?
        }
        other => {
            return Err(format!(
                "keys for {} cannot be generated (ES256, RS256)",
                other.as_str()
            ))
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("certificate parameters: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| format!("signing the certificate: {e}"))?;
    Ok(Generated {
        key_pem: key_pair.serialize_pem(),
        cert_pem: cert.pem(),
    })
}
