//! Signing keys for Berth's issuer: load them (PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1
//! `RSA PRIVATE KEY` PEM, as openssl and others write them), generate them with a self-signed
//! certificate (no openssl needed), and sign tokens with them.
//!
//! A token Berth signs carries `kid` = the key's libtrust ID (what distribution 2.x looks up in
//! its `rootcertbundle`) and `x5c` = the key's certificate chain (what distribution 3.x
//! verifies against its bundle), so both versions trust it with only the certificate.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

use crate::keys::{pem_blocks, Alg, PublicKey};

enum Private {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A key that signs tokens, with its public half and certificate chain.
pub struct Signer {
    private: Private,
    pub alg: Alg,
    pub public: PublicKey,
    /// The libtrust key ID, sent as `kid`.
    pub kid: String,
    /// DER certificates, leaf first (empty when none was given).
    pub chain: Vec<Vec<u8>>,
    rng: SystemRandom,
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
        let (private, alg) = match label.as_str() {
            "PRIVATE KEY" => match ec(&der) {
                Ok(k) => (Private::Ec(k), Alg::ES256),
                Err(_) => match RsaKeyPair::from_pkcs8(&der) {
                    Ok(k) => (Private::Rsa(k), Alg::RS256),
                    Err(e) => {
                        return Err(format!(
                            "the key is neither an EC P-256 nor an RSA (2048+ bits) key: {e}"
                        ))
                    }
                },
            },
            "EC PRIVATE KEY" => {
                let k = ec(&sec1_p256_to_pkcs8(&der))
                    .map_err(|e| format!("not an EC P-256 key: {e}"))?;
                (Private::Ec(k), Alg::ES256)
            }
            "RSA PRIVATE KEY" => {
                let k = RsaKeyPair::from_der(&der).map_err(|e| format!("bad RSA key: {e}"))?;
                (Private::Rsa(k), Alg::RS256)
            }
            other => return Err(format!("unsupported key type {other}")),
        };
        let public = match &private {
            Private::Ec(k) => PublicKey::Ec {
                curve: crate::keys::Curve::P256,
                point: k.public_key().as_ref().to_vec(),
            },
            Private::Rsa(k) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                PublicKey::Rsa { n: c.n, e: c.e }
            }
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
            alg,
            public,
            chain,
            rng,
        })
    }

    /// Signs `claims` as a compact JWS with `kid` and `x5c`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = json!({ "typ": "JWT", "alg": self.alg.as_str(), "kid": self.kid });
        if !self.chain.is_empty() {
            header["x5c"] = json!(self.chain.iter().map(|c| B64.encode(c)).collect::<Vec<_>>());
        }
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under exactly `header` (its `alg` is not checked: tests use this to make
    /// tokens the way other issuers, or attackers, make them).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = match &self.private {
            Private::Ec(k) => k
                .sign(&self.rng, input.as_bytes())
                .map_err(|e| format!("signing failed: {e}"))?
                .as_ref()
                .to_vec(),
            Private::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| format!("signing failed: {e}"))?;
                sig
            }
        };
        Ok(format!("{input}.{}", B64URL.encode(sig)))
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
