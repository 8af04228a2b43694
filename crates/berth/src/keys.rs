//! `berth keys generate` and `berth keys jwks`: token signing keys, certificates and JWKS
//! documents without openssl, xxd and base64.

use std::path::Path;

use anyhow::{bail, Context};
use berth_auth::keys::{pem_blocks, Alg, PublicKey};
use berth_auth::signer::{generate, Signer};

/// Writes `token.key` (mode 0600), `token.crt` and `jwks.json` to `out`.
pub fn generate_cmd(out: &Path, alg: &str, cn: &str, days: u32) -> anyhow::Result<()> {
    let alg = match alg.to_ascii_uppercase().as_str() {
        "ES256" => Alg::ES256,
        "RS256" => Alg::RS256,
        other => bail!("--algorithm {other}: ES256 or RS256"),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let g = generate(alg, cn, days).map_err(anyhow::Error::msg)?;
    let signer = Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).map_err(anyhow::Error::msg)?;
    let key_path = out.join("token.key");
    berth_server::setup::write_private(&key_path, &g.key_pem)
        .with_context(|| format!("writing {} (it must not exist yet)", key_path.display()))?;
    std::fs::write(out.join("token.crt"), &g.cert_pem).context("writing token.crt")?;
    let jwks = serde_json::json!({ "keys": [signer.jwk()] });
    std::fs::write(out.join("jwks.json"), format!("{jwks:#}\n")).context("writing jwks.json")?;
    outln!(
        "wrote {0}/token.key, {0}/token.crt, {0}/jwks.json",
        out.display()
    );
    print_ids(&signer.public);
    Ok(())
}

fn print_ids(key: &PublicKey) {
    outln!("  key:                 {}", key.describe());
    outln!("  libtrust key ID:     {}", key.libtrust_id());
    outln!("  RFC 7638 thumbprint: {}", key.thumbprint());
}

/// Prints a JWKS of the public keys of certificates, public keys or private keys (PEM files).
pub fn jwks_cmd(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let blocks = pem_blocks(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| f.display().to_string())?;
        let mut chain: Vec<Vec<u8>> = Vec::new();
        let mut key: Option<PublicKey> = None;
        for (label, der) in &blocks {
            match label.as_str() {
                "CERTIFICATE" => {
                    if key.is_none() {
                        let (_, cert) = x509_parser::parse_x509_certificate(der)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                        let spki = cert.public_key().raw.to_vec();
                        key = Some(PublicKey::from_spki_der(&spki).map_err(anyhow::Error::msg)?);
                    }
                    chain.push(der.clone());
                }
                "PUBLIC KEY" => {
                    key = Some(PublicKey::from_spki_der(der).map_err(anyhow::Error::msg)?)
                }
                l if l.ends_with("PRIVATE KEY") => {
                    let s = Signer::from_pem(&text, None).map_err(anyhow::Error::msg)?;
                    key = Some(s.public);
                }
                _ => {}
            }
        }
        let Some(key) = key else {
            bail!(
                "{}: no certificate, public key or private key in it",
                f.display()
            );
        };
        eprintln!("{}:", f.display());
        let kid = key.libtrust_id();
        eprintln!("  libtrust key ID (kid): {kid}");
        eprintln!("  RFC 7638 thumbprint:   {}", key.thumbprint());
        keys.push(key.to_jwk(&kid, &chain));
    }
    outln!("{:#}", serde_json::json!({ "keys": keys }));
    Ok(())
}
