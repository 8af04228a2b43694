//! The fuzz targets, as plain functions so that both `cargo fuzz` (the `fuzz_targets/*.rs`
//! wrappers, nightly) and the stable driver (`src/bin/run_corpus.rs`) run the same code. Each
//! feeds untrusted bytes to one parser and checks what must hold of its answer (a value that
//! parses prints back to itself, a range lies inside the object, ...): a panic is a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::OnceLock;

use berth_auth::scope::Scope;
use berth_auth::signer::Signer;
use berth_auth::token::{Verifier, VerifierConfig};
use berth_auth::trust::TrustSet;
use berth_core::manifest;
use berth_core::name::{Reference, RepoName, Tag};
use berth_core::sha256::ResumableSha256;
use berth_core::Digest;
use berth_server::http_util::{self, RangeRequest};

/// A fuzz target: one input, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz_targets/*.rs` and `corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("digest", digest),
    ("reference", reference),
    ("endpoint", endpoint),
    ("manifest", manifest),
    ("http", http),
    ("scope", scope),
    ("token", token),
    ("jwks", jwks),
    ("config", config),
    ("hashstate", hashstate),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `sha256:<hex>` and friends: what parses prints back unchanged, and serde agrees.
pub fn digest(data: &[u8]) {
    let s = text(data);
    if let Ok(d) = Digest::from_str(&s) {
        assert_eq!(d.to_string(), s);
        let json = serde_json::to_string(&d).unwrap();
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }
    let _ = serde_json::from_slice::<Digest>(data);
}

/// Repository names, tags and references.
pub fn reference(data: &[u8]) {
    let s = text(data);
    if let Ok(n) = RepoName::from_str(&s) {
        assert_eq!(n.as_str(), s);
        assert!(n.as_str().len() <= 255);
        assert!(n
            .components()
            .all(|c| !c.is_empty() && c != "." && c != ".."));
    }
    if let Ok(t) = Tag::from_str(&s) {
        assert_eq!(t.as_str(), s);
        assert!(!t.as_str().contains('/') && !t.as_str().contains(':'));
    }
    if let Ok(r) = Reference::from_str(&s) {
        assert_eq!(r.to_string(), s);
    }
}

/// Request paths as the router sees them (undecoded): any name, digest or upload id it
/// extracts is valid, and no storage path can be formed from `..`.
pub fn endpoint(data: &[u8]) {
    let s = text(data);
    for path in [format!("/v2/{s}"), s.to_string()] {
        if let Ok(ep) = berth_server::endpoint::parse(&path) {
            if let Some(name) = ep.repository() {
                assert!(RepoName::from_str(name.as_str()).is_ok());
                assert!(name.components().all(|c| c != ".." && c != "."));
            }
            let _ = ep.route();
        }
    }
}

/// Manifest and index bodies with each `Content-Type` a client may send.
pub fn manifest(data: &[u8]) {
    const TYPES: &[Option<&str>] = &[
        None,
        Some(manifest::OCI_MANIFEST),
        Some(manifest::OCI_INDEX),
        Some(manifest::DOCKER_MANIFEST),
        Some(manifest::DOCKER_MANIFEST_LIST),
        Some(manifest::DOCKER_SCHEMA1_SIGNED),
        Some("application/json; charset=utf-8"),
        Some(""),
    ];
    let (ct, body) = match data.split_first() {
        Some((b, rest)) => (TYPES[*b as usize % TYPES.len()], rest),
        None => (None, data),
    };
    // A client's PUT is held to the stricter rules; what it accepts, the lenient reader
    // (stored and upstream content) must accept as the same kind.
    if let Ok(put) = manifest::parse_put(body, ct) {
        let read = manifest::parse(body, ct);
        assert_eq!(read.map(|i| i.media_type).ok(), Some(put.media_type));
    }
    if let Ok(info) = manifest::parse(body, ct) {
        if info.media_type.is_index() {
            assert!(info.blobs.is_empty());
        } else {
            assert!(info.children.is_empty());
            assert!(!info.blobs.is_empty(), "an image manifest has a config");
        }
        let stored = manifest::stored_media_type(body);
        assert!(!stored.is_empty());
    }
    let _ = manifest::stored_media_type(data);
}

/// The header and query parsers of the HTTP layer: `Range`, upload `Content-Range`, query
/// strings and percent-decoding, Basic credentials.
pub fn http(data: &[u8]) {
    let (size, rest) = if data.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        // Small sizes are the interesting ones; keep the huge ones too.
        let raw = u64::from_le_bytes(b);
        (if raw & 1 == 0 { raw >> 40 } else { raw }, &data[8..])
    } else {
        (10, data)
    };
    let s = text(rest);
    match http_util::parse_range(Some(&s), size) {
        RangeRequest::Partial { start, end } => {
            assert!(start <= end && end < size, "{start}-{end} of {size}");
        }
        RangeRequest::Full | RangeRequest::Unsatisfiable => {}
    }
    if let Some((start, end)) = http_util::parse_content_range(&s) {
        assert!(start <= end);
    }
    let _ = http_util::percent_decode(&s);
    let _ = http_util::loggable_query(&s);
    if let Ok(uri) = http::Uri::try_from(format!("/v2/?{s}")) {
        for (k, v) in http_util::query(&uri) {
            let _ = (k.len(), v.len());
        }
    }
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.clone());
        h.insert(http::header::CONTENT_LENGTH, v);
        let _ = berth_server::auth::basic_credentials(&h);
        let _ = http_util::has_body(&h);
    }
}

/// Token scopes (`repository:name:pull,push`): what parses prints back to an equal scope.
pub fn scope(data: &[u8]) {
    let s = text(data);
    for part in s.split(' ') {
        if let Ok(sc) = Scope::from_str(part) {
            let again = Scope::from_str(&sc.to_string())
                .unwrap_or_else(|e| panic!("{sc} does not parse again: {e}"));
            assert_eq!(again, sc);
        }
    }
}

/// The key the token seeds are signed with (a test key, checked in under `fuzz/keys/`).
const KEY_PEM: &str = include_str!("../keys/token.key");
const CERT_PEM: &str = include_str!("../keys/token.crt");
const JWKS: &str = include_str!("../keys/jwks.json");
/// The time tokens are checked at (the seeds are valid then).
pub const NOW: i64 = 1_900_000_000;
pub const ISSUER: &str = "fuzz-issuer";
pub const SERVICE: &str = "fuzz-registry";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut trust = TrustSet::from_pem_bundle(CERT_PEM, "fuzz cert").unwrap();
        trust.extend(TrustSet::from_jwks(JWKS, "fuzz jwks").unwrap());
        Verifier::new(
            VerifierConfig {
                issuer: ISSUER.into(),
                service: SERVICE.into(),
                algorithms: None,
            },
            trust,
        )
    })
}

/// Bearer tokens through the verifier (decoding, header, key lookup, signature, claims).
pub fn token(data: &[u8]) {
    let s = text(data);
    if let Ok(v) = verifier().verify(s.trim(), NOW) {
        assert!(v.expires >= NOW - 60);
    }
}

/// Valid tokens to start from (signed with the checked-in key), for the token corpus.
pub fn seed_tokens() -> Vec<String> {
    let signer = Signer::from_pem(KEY_PEM, Some(CERT_PEM)).unwrap();
    let claims = |access: serde_json::Value| {
        serde_json::json!({
            "iss": ISSUER, "sub": "alice", "aud": SERVICE,
            "exp": NOW + 300, "nbf": NOW - 10, "iat": NOW - 10, "jti": "fuzz",
            "access": access,
        })
    };
    let full = claims(serde_json::json!([
        {"type": "repository", "name": "alice/app", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]));
    let mut out = vec![
        signer.sign(&full).unwrap(),
        signer.sign(&claims(serde_json::json!([]))).unwrap(),
    ];
    let mut aud_list = full.clone();
    aud_list["aud"] = serde_json::json!([SERVICE, "other"]);
    out.push(signer.sign(&aud_list).unwrap());
    // The same claims with an x5c chain and with a JWKS kid in the header.
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [], "kid": "unknown"});
    out.push(signer.sign_with_header(&header, &full).unwrap());
    out
}

/// Checks that the targets' fixtures still work: the signed seeds verify (otherwise the token
/// target would never get past the signature).
pub fn self_check() -> Result<(), String> {
    let seeds = seed_tokens();
    for (i, t) in seeds.iter().take(3).enumerate() {
        verifier()
            .verify(t, NOW)
            .map_err(|r| format!("signed token seed {i} is refused: {r}"))?;
    }
    Ok(())
}

/// JWKS documents (fetched from `auth.token.jwksurl`: network input).
pub fn jwks(data: &[u8]) {
    if let Ok(t) = TrustSet::from_jwks(&text(data), "fuzz") {
        let _ = t.key_ids();
    }
    let _ = TrustSet::from_pem_bundle(&text(data), "fuzz");
}

/// Configuration files, with environment overrides after a NUL (one `KEY=value` a line).
pub fn config(data: &[u8]) {
    let s = text(data);
    let (yaml, env_text) = s.split_once('\0').unwrap_or((&s, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(loaded) = berth_server::config::parse(yaml, "fuzz.yml", &env) {
        let _ = loaded.config.redacted_yaml();
        let _ = berth_server::config::unsupported(&loaded.config);
        let _ = berth_server::Limits::from_config(&loaded.config);
        let _ = loaded.config.storage.driver();
    }
    let _ = berth_server::config::parse_duration(&s);
}

/// Saved SHA-256 states (read back from storage, where distribution may have written them):
/// a state that loads can be hashed further and saved unchanged.
pub fn hashstate(data: &[u8]) {
    if let Ok(mut h) = ResumableSha256::restore(data) {
        let saved = h.save();
        assert_eq!(ResumableSha256::restore(&saved).unwrap().save(), saved);
        let _ = h.digest();
        h.update(b"more data, across a block boundary: 0123456789abcdef0123456789abcdef");
        let _ = h.digest();
    }
}
