//! CloudFront signed URLs with a canned policy, as distribution's `cloudfront` storage
//! middleware makes them (through aws-sdk-go's `cloudfront/sign`): the policy
//! `{"Statement":[{"Resource":URL,"Condition":{"DateLessThan":{"AWS:EpochTime":T}}}]}` is
//! signed with RSA PKCS#1 v1.5 over SHA-1 (what CloudFront verifies), and the URL gets
//! `Expires=T&Signature=S&Key-Pair-Id=ID`, where S is base64 with CloudFront's URL-safe
//! substitutions (`+` → `-`, `=` → `_`, `/` → `~`).
//! <https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-creating-signed-url-canned-policy.html>

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;

/// DER prefix of a SHA-1 `DigestInfo` (RFC 8017, section 9.2, note 1).
const SHA1_DIGEST_INFO: [u8; 15] = [
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];

/// Signs URLs for one CloudFront key pair.
pub struct UrlSigner {
    key_pair_id: String,
    key: rsa::RsaPrivateKey,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("key_pair_id", &self.key_pair_id)
            .finish_non_exhaustive()
    }
}

impl UrlSigner {
    /// From the PEM of a PKCS#1 RSA private key (`-----BEGIN RSA PRIVATE KEY-----`, the form
    /// AWS hands out and the only one distribution reads).
    pub fn from_pem(key_pair_id: &str, pem: &str) -> Result<UrlSigner, String> {
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| {
            let hint = if pem.contains("BEGIN PRIVATE KEY") {
                "; it is PKCS#8, distribution reads PKCS#1 only: convert it with `openssl rsa -traditional -in KEY -out KEY.pkcs1`"
            } else {
                ""
            };
            format!("not a PKCS#1 RSA private key ({e}){hint}")
        })?;
        Ok(UrlSigner {
            key_pair_id: key_pair_id.to_owned(),
            key,
        })
    }

    /// `url` signed to be valid until `expires` (seconds since the epoch).
    pub fn sign(&self, url: &str, expires: u64) -> Result<String, String> {
        let policy = canned_policy(url, expires);
        let hash = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, policy.as_bytes());
        let padding = rsa::Pkcs1v15Sign {
            hash_len: Some(20),
            prefix: SHA1_DIGEST_INFO.into(),
        };
        let sig = self
            .key
            .sign(padding, hash.as_ref())
            .map_err(|e| format!("signing for CloudFront: {e}"))?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{url}{sep}Expires={expires}&Signature={}&Key-Pair-Id={}",
            url_safe(&sig),
            self.key_pair_id
        ))
    }
}

/// The canned policy CloudFront rebuilds from a signed URL to check its signature.
pub fn canned_policy(url: &str, expires: u64) -> String {
    let resource = serde_json::to_string(url).unwrap_or_default();
    format!(
        r#"{{"Statement":[{{"Resource":{resource},"Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}}}]}}"#
    )
}

/// Base64 with CloudFront's substitutions for query strings.
pub fn url_safe(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '+' => '-',
            '=' => '_',
            '/' => '~',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};

    #[test]
    fn signature_verifies_with_the_public_key() {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        let s = UrlSigner::from_pem("APKAEXAMPLE", &pem).unwrap();
        let url =
            "https://d111111abcdef8.cloudfront.net/docker/registry/v2/blobs/sha256/ab/abc/data";
        let signed = s.sign(url, 1_900_000_000).unwrap();
        let (base, query) = signed.split_once('?').unwrap();
        assert_eq!(base, url);
        let params: Vec<(&str, &str)> = query
            .split('&')
            .map(|p| p.split_once('=').unwrap())
            .collect();
        assert_eq!(params[0], ("Expires", "1900000000"));
        assert_eq!(params[2], ("Key-Pair-Id", "APKAEXAMPLE"));
        assert_eq!(params[1].0, "Signature");
        let sig: String = params[1]
            .1
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '=',
                '~' => '/',
                c => c,
            })
            .collect();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let public = key.to_public_key().to_pkcs1_der().unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public.as_bytes(),
        )
        .verify(
            br#"{"Statement":[{"Resource":"https://d111111abcdef8.cloudfront.net/docker/registry/v2/blobs/sha256/ab/abc/data","Condition":{"DateLessThan":{"AWS:EpochTime":1900000000}}}]}"#,
            &sig,
        )
        .unwrap();
        // A query already there is kept; PKCS#8 keys are refused with a hint.
        assert!(s
            .sign("https://x/a?b=c", 1)
            .unwrap()
            .starts_with("https://x/a?b=c&Expires=1&"));
        let p8 =
            rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, rsa::pkcs8::LineEnding::LF).unwrap();
        assert!(UrlSigner::from_pem("x", &p8)
            .unwrap_err()
            .contains("openssl rsa -traditional"));
    }
}
