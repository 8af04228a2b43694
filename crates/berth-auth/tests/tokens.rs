//! Every token style real issuers use, and every way a token must be refused. Tokens are made
//! here the way each issuer makes them (header fields, kid form, claims), signed with real keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use berth_auth::acl::Rule;
use berth_auth::htpasswd::Users;
use berth_auth::identity::Identity;
use berth_auth::issuer::{Issuer, IssuerSettings};
use berth_auth::keys::{pem_blocks, Alg};
use berth_auth::scope::{covers, Access, Scope};
use berth_auth::signer::{generate, Signer};
use berth_auth::token::{Reason, Verifier, VerifierConfig};
use berth_auth::trust::TrustSet;
use serde_json::{json, Value};

const ISS: &str = "test-issuer";
const SERVICE: &str = "test-registry";
const NOW: i64 = 1_800_000_000;
const RSA_A: &str = include_str!("fixtures/rsa-a.pem");
const RSA_B: &str = include_str!("fixtures/rsa-b.pem");

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "alice", "aud": SERVICE,
        "exp": NOW + 300, "nbf": NOW - 10, "iat": NOW - 10, "jti": "j1",
        "access": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}],
    })
}

fn verifier(trust: TrustSet) -> Verifier {
    Verifier::new(
        VerifierConfig {
            issuer: ISS.into(),
            service: SERVICE.into(),
            algorithms: None,
        },
        trust,
    )
}

/// A self-signed certificate for a PKCS#8 key (what `openssl req -x509` gives an issuer).
fn self_signed(key_pem: &str, cn: &str) -> String {
    let kp = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.self_signed(&kp).unwrap().pem()
}

fn rsa_b() -> (Signer, String) {
    let cert = self_signed(RSA_B, "docker_auth token signer");
    (Signer::from_pem(RSA_B, Some(&cert)).unwrap(), cert)
}

fn ec() -> (Signer, String) {
    let g = generate(Alg::ES256, "ec signer", 3650).unwrap();
    (
        Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).unwrap(),
        g.cert_pem,
    )
}

fn bundle(pems: &[&str]) -> TrustSet {
    TrustSet::from_pem_bundle(&pems.join("\n"), "rootcertbundle").unwrap()
}

fn header(alg: &str, kid: Option<&str>) -> Value {
    let mut h = json!({ "typ": "JWT", "alg": alg });
    if let Some(k) = kid {
        h["kid"] = json!(k);
    }
    h
}

fn refused(v: &Verifier, token: &str) -> Reason {
    match v.verify(token, NOW) {
        Ok(_) => panic!("token accepted"),
        Err(r) => {
            // The explanation never contains the token.
            if token.len() > 8 {
                assert!(!r.to_string().contains(token), "{r}");
            }
            r.reason
        }
    }
}

fn accepted(v: &Verifier, token: &str) {
    if let Err(r) = v.verify(token, NOW) {
        panic!("refused: {r}");
    }
}

// ------------------------------------------------------------------ accepted styles

/// docker_auth, GitLab, Harbor: RS256 with the libtrust key ID of the certificate's key.
#[test]
fn docker_auth_style_rs256_libtrust_kid() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let t = s
        .sign_with_header(&header("RS256", Some(&s.kid)), &claims())
        .unwrap();
    accepted(&v, &t);
    let got = v.verify(&t, NOW).unwrap();
    assert_eq!(got.subject, "alice");
    assert!(covers(
        &got.access,
        &Access::repository("alice/app", "push")
    ));
}

/// Keycloak's docker-v2 protocol: RS256, libtrust kid, Keycloak's extra claims.
#[test]
fn keycloak_style_token() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let mut c = claims();
    c["typ"] = json!("Bearer");
    c["azp"] = json!("registry-client");
    c["session_state"] = json!("3b9c0f0e");
    let t = s
        .sign_with_header(&header("RS256", Some(&s.kid)), &c)
        .unwrap();
    accepted(&v, &t);
}

/// distribution 3.x style: kid is the RFC 7638 thumbprint of a bundle key.
#[test]
fn thumbprint_kid() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let t = s
        .sign_with_header(&header("RS256", Some(&s.public.thumbprint())), &claims())
        .unwrap();
    accepted(&v, &t);
}

/// OIDC issuers: the kid of a JWKS entry.
#[test]
fn jwks_kid() {
    let s = Signer::from_pem(RSA_A, None).unwrap();
    let jwks = json!({ "keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac-key"},
        s.public.to_jwk("realm-key-2024", &[]),
    ]});
    let v = verifier(TrustSet::from_jwks(&jwks.to_string(), "jwks").unwrap());
    let t = s
        .sign_with_header(&header("RS256", Some("realm-key-2024")), &claims())
        .unwrap();
    accepted(&v, &t);
}

/// An x5c chain (leaf, intermediate) that ends at a CA in the bundle; no kid.
#[test]
fn x5c_chain_to_bundle_ca() {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Token Root CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    int_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Token Intermediate");
    int_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let int = int_params.signed_by(&int_key, &ca_issuer).unwrap();
    let int_issuer = rcgen::Issuer::new(int_params, &int_key);

    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "token signer");
    let leaf = leaf_params.signed_by(&leaf_key, &int_issuer).unwrap();

    let signer = Signer::from_pem(&leaf_key.serialize_pem(), None).unwrap();
    let v = verifier(bundle(&[&ca.pem()]));
    let mut h = header("ES256", None);
    h["x5c"] = json!([B64.encode(leaf.der()), B64.encode(int.der())]);
    accepted(&v, &signer.sign_with_header(&h, &claims()).unwrap());

    // Without the intermediate the chain is broken.
    h["x5c"] = json!([B64.encode(leaf.der())]);
    assert_eq!(
        refused(&v, &signer.sign_with_header(&h, &claims()).unwrap()),
        Reason::UntrustedChain
    );
    // The intermediate must be a CA: a leaf cannot sign another leaf.
    let mut fake_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    fake_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "token signer 2");
    let leaf_issuer = rcgen::Issuer::new(leaf_params, &leaf_key);
    let fake = fake_params.signed_by(&int_key, &leaf_issuer).unwrap();
    let fake_signer = Signer::from_pem(&int_key.serialize_pem(), None).unwrap();
    h["x5c"] = json!([
        B64.encode(fake.der()),
        B64.encode(leaf.der()),
        B64.encode(int.der())
    ]);
    assert_eq!(
        refused(&v, &fake_signer.sign_with_header(&h, &claims()).unwrap()),
        Reason::UntrustedChain
    );
}

/// Berth's own style (libtrust kid + x5c of a self-signed certificate in the bundle).
#[test]
fn es256_with_kid_and_x5c() {
    let (s, cert) = ec();
    let v = verifier(bundle(&[&cert]));
    accepted(&v, &s.sign(&claims()).unwrap());
    // x5c alone, with a kid nobody knows: the chain decides.
    let mut h = header("ES256", Some("not-a-known-kid"));
    h["x5c"] = json!([B64.encode(&s.chain[0])]);
    accepted(&v, &s.sign_with_header(&h, &claims()).unwrap());
}

/// No kid, no x5c: each trusted key that fits the algorithm is tried.
#[test]
fn no_kid_tries_each_key() {
    let (rsa, rsa_cert) = rsa_b();
    let (e, ec_cert) = ec();
    let v = verifier(bundle(&[&ec_cert, &rsa_cert]));
    accepted(
        &v,
        &rsa.sign_with_header(&header("RS256", None), &claims())
            .unwrap(),
    );
    accepted(
        &v,
        &e.sign_with_header(&header("ES256", None), &claims())
            .unwrap(),
    );
}

#[test]
fn audience_as_a_list() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let mut c = claims();
    c["aud"] = json!(["another-service", SERVICE]);
    accepted(&v, &s.sign(&c).unwrap());
}

/// PS256 (RSA-PSS), signed directly with ring.
#[test]
fn ps256() {
    let s = Signer::from_pem(RSA_B, None).unwrap();
    let der = pem_blocks(RSA_B).unwrap().remove(0).1;
    let kp = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let input = format!(
        "{}.{}",
        B64URL.encode(header("PS256", Some(&s.kid)).to_string()),
        B64URL.encode(claims().to_string())
    );
    let mut sig = vec![0; kp.public().modulus_len()];
    kp.sign(
        &ring::signature::RSA_PSS_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let token = format!("{input}.{}", B64URL.encode(sig));
    let jwks = json!({ "keys": [s.public.to_jwk(&s.kid, &[])] });
    accepted(
        &verifier(TrustSet::from_jwks(&jwks.to_string(), "jwks").unwrap()),
        &token,
    );
}

/// PKCS#1 and SEC1 keys as openssl writes them load too.
#[test]
fn traditional_key_formats() {
    let s = Signer::from_pem(RSA_A, None).unwrap();
    assert_eq!(s.alg, Alg::RS256);
    let s2 = Signer::from_pem(include_str!("fixtures/ec-sec1.pem"), None).unwrap();
    assert_eq!(s2.alg, Alg::ES256);
    let t = s2.sign(&claims()).unwrap();
    let jwks = json!({ "keys": [s2.public.to_jwk("k", &[])] });
    accepted(
        &verifier(TrustSet::from_jwks(&jwks.to_string(), "jwks").unwrap()),
        &t,
    );
    let g = generate(Alg::ES256, "x", 1).unwrap();
    // A certificate that is not the key's is refused.
    assert!(Signer::from_pem(RSA_A, Some(&g.cert_pem)).is_err());
}

// ------------------------------------------------------------------ refusals

#[test]
fn alg_none_is_refused() {
    let (_, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let t = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64URL.encode(claims().to_string())
    );
    assert_eq!(refused(&v, &t), Reason::Unsigned);
}

/// The algorithm-confusion attack: HS256 keyed with the issuer's (public) certificate key.
#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let input = format!(
        "{}.{}",
        B64URL.encode(header("HS256", Some(&s.kid)).to_string()),
        B64URL.encode(claims().to_string())
    );
    for key in [cert.as_bytes().to_vec(), s.public.spki_der()] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            input.as_bytes(),
        );
        let t = format!("{input}.{}", B64URL.encode(mac.as_ref()));
        assert_eq!(refused(&v, &t), Reason::Symmetric);
    }
}

/// A token signed by another key that names a trusted key's kid.
#[test]
fn untrusted_key_with_a_trusted_kid_is_refused() {
    let (trusted, cert) = rsa_b();
    let attacker = Signer::from_pem(RSA_A, None).unwrap();
    let v = verifier(bundle(&[&cert]));
    for kid in [trusted.kid.clone(), trusted.public.thumbprint()] {
        let t = attacker
            .sign_with_header(&header("RS256", Some(&kid)), &claims())
            .unwrap();
        assert_eq!(refused(&v, &t), Reason::BadSignature);
    }
    // Without a kid no trusted key verifies it either.
    let t = attacker
        .sign_with_header(&header("RS256", None), &claims())
        .unwrap();
    assert_eq!(refused(&v, &t), Reason::BadSignature);
}

#[test]
fn unknown_kid_is_refused_with_the_trusted_ids() {
    let (_, cert) = rsa_b();
    let attacker = Signer::from_pem(RSA_A, None).unwrap();
    let v = verifier(bundle(&[&cert]));
    let t = attacker.sign(&claims()).unwrap();
    let r = v.verify(&t, NOW).unwrap_err();
    assert_eq!(r.reason, Reason::UnknownKey);
    let line = r.to_string();
    // kid, iss, aud, alg and the trusted key IDs are all in the one line.
    for part in [
        attacker.kid.as_str(),
        ISS,
        SERVICE,
        "RS256",
        rsa_b().0.kid.as_str(),
        "hint",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
}

/// A self-signed x5c leaf that is not in the bundle.
#[test]
fn self_signed_x5c_is_refused() {
    let (_, cert) = rsa_b();
    let (rogue, _) = ec();
    let v = verifier(bundle(&[&cert]));
    let mut h = header("ES256", None);
    h["x5c"] = json!([B64.encode(&rogue.chain[0])]);
    assert_eq!(
        refused(&v, &rogue.sign_with_header(&h, &claims()).unwrap()),
        Reason::UntrustedChain
    );
}

#[test]
fn claims_are_checked() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c[k] = val;
        s.sign(&c).unwrap()
    };
    assert_eq!(
        refused(&v, &with("iss", json!("someone-else"))),
        Reason::WrongIssuer
    );
    assert_eq!(
        refused(&v, &with("aud", json!("other-registry"))),
        Reason::WrongAudience
    );
    assert_eq!(
        refused(&v, &with("aud", json!(["a", "b"]))),
        Reason::WrongAudience
    );
    assert_eq!(refused(&v, &with("exp", json!(NOW - 120))), Reason::Expired);
    assert_eq!(
        refused(&v, &with("nbf", json!(NOW + 600))),
        Reason::NotYetValid
    );
    // Within the leeway: a little clock skew is fine.
    accepted(&v, &with("exp", json!(NOW - 30)));
    accepted(&v, &with("nbf", json!(NOW + 30)));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(&v, &s.sign(&c).unwrap()), Reason::Malformed);
}

/// The claims jsonwebtoken would let through unless told otherwise: a missing `iss` or `aud`,
/// and `exp`/`nbf` that are not numbers (GHSA-h395-gr6q-cpjc: a string `nbf` was skipped).
#[test]
fn missing_and_mistyped_claims_are_refused() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        s.sign(&c).unwrap()
    };
    assert_eq!(refused(&v, &without("iss")), Reason::WrongIssuer);
    assert_eq!(refused(&v, &without("aud")), Reason::WrongAudience);
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c[k] = val;
        s.sign(&c).unwrap()
    };
    assert_eq!(
        refused(&v, &with("nbf", json!((NOW + 86_400).to_string()))),
        Reason::Malformed
    );
    assert_eq!(
        refused(&v, &with("exp", json!((NOW + 300).to_string()))),
        Reason::Malformed
    );
    assert_eq!(refused(&v, &with("aud", json!(42))), Reason::WrongAudience);
    // NumericDate may have a fraction; a far-future exp does not overflow the leeway sum.
    accepted(&v, &with("exp", json!(NOW as f64 + 300.5)));
    accepted(&v, &with("exp", json!(i64::MAX)));
}

/// ES512 and EdDSA are algorithms Berth does not verify; `crit` names extensions it does not
/// implement (RFC 7515 §4.1.11).
#[test]
fn unsupported_algorithms_and_critical_extensions_are_refused() {
    let (s, cert) = ec();
    let v = verifier(bundle(&[&cert]));
    for alg in ["ES512", "EdDSA", "RS1"] {
        let t = s
            .sign_with_header(&header(alg, Some(&s.kid)), &claims())
            .unwrap();
        assert_eq!(refused(&v, &t), Reason::UnsupportedAlgorithm, "{alg}");
    }
    let mut h = header("ES256", Some(&s.kid));
    h["crit"] = json!(["x-berth-test"]);
    h["x-berth-test"] = json!("1");
    let t = s.sign_with_header(&h, &claims()).unwrap();
    let r = v.verify(&t, NOW).unwrap_err();
    assert_eq!(r.reason, Reason::Malformed);
    assert!(r.detail.contains("critical header"), "{r}");
    // jsonwebtoken reads header fields it has no name for as strings only: another type is a
    // header it does not read (RFC 7797's `"b64": false` is one, and needs `crit` anyway).
    let mut h = header("ES256", Some(&s.kid));
    h["b64"] = json!(false);
    let t = s.sign_with_header(&h, &claims()).unwrap();
    assert_eq!(refused(&v, &t), Reason::Malformed);
}

#[test]
fn tampered_payload_is_refused() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let t = s.sign(&claims()).unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c["access"] = json!([{"type": "repository", "name": "bob/app", "actions": ["*"]}]);
    let forged = format!("{}.{}.{}", parts[0], B64URL.encode(c.to_string()), parts[2]);
    assert_eq!(refused(&v, &forged), Reason::BadSignature);
}

#[test]
fn garbage_is_refused() {
    let (_, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    for g in [
        "",
        "abc",
        "a.b.c",
        "a.b.c.d",
        "!!!.###.$$$",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        assert_eq!(refused(&v, g), Reason::Malformed, "{g:?}");
    }
    // `{}.{}.`: well-formed, but no alg at all.
    assert_eq!(refused(&v, "e30.e30."), Reason::Unsigned);
}

#[test]
fn signing_algorithms_restrict() {
    let (s, cert) = rsa_b();
    let v = Verifier::new(
        VerifierConfig {
            issuer: ISS.into(),
            service: SERVICE.into(),
            algorithms: Some(vec![Alg::ES256]),
        },
        bundle(&[&cert]),
    );
    assert_eq!(
        refused(&v, &s.sign(&claims()).unwrap()),
        Reason::AlgorithmNotAllowed
    );
}

/// A verified token is not verified again while it is valid: it still passes after its key is
/// no longer trusted, while a new token from that key does not.
#[test]
fn verified_tokens_are_cached_until_expiry() {
    let (s, cert) = rsa_b();
    let v = verifier(bundle(&[&cert]));
    let t = s.sign(&claims()).unwrap();
    accepted(&v, &t);
    v.set_trust(TrustSet::default());
    accepted(&v, &t);
    let mut c = claims();
    c["jti"] = json!("j2");
    let fresh = s
        .sign_with_header(&header("RS256", Some(&s.kid)), &c)
        .unwrap();
    assert_eq!(refused(&v, &fresh), Reason::UnknownKey);
    // Past its expiry the cached verdict is not used.
    assert!(v.verify(&t, NOW + 10_000).is_err());
}

// ------------------------------------------------------------------ the issuer

fn issuer(users: &[(&str, &str)]) -> Issuer {
    let mut u = Users::default();
    for (name, pw) in users {
        u.add(name, &bcrypt::hash(pw, 4).unwrap()).unwrap();
    }
    let acl: Vec<Rule> = serde_yaml::from_str(
        "- account: \"*\"\n  name: \"${account}/*\"\n  actions: [\"*\"]\n- name: \"public/*\"\n  actions: [pull]\n",
    )
    .unwrap();
    let (s, _) = ec();
    Issuer::new(
        vec![s],
        Box::new(std::sync::Arc::new(u)),
        IssuerSettings {
            issuer: ISS.into(),
            service: SERVICE.into(),
            expiration_secs: 300,
            refresh_expiration_secs: 86_400,
            acl,
        },
    )
    .unwrap()
}

#[test]
fn issued_tokens_grant_the_intersection_and_verify() {
    let iss = issuer(&[("alice", "pw")]);
    let v = verifier(iss.trust_set());
    assert_eq!(
        iss.authenticate("alice", "pw", NOW),
        Some(Identity::new("alice", "password"))
    );
    assert!(iss.authenticate("alice", "nope", NOW).is_none());
    assert!(iss.authenticate("nobody", "pw", NOW).is_none());
    let requested: Vec<Scope> = [
        "repository:alice/app:pull,push",
        "repository:bob/app:pull",
        "repository:public/base:pull,push",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let alice = Identity::new("alice", "password");
    let issued = iss.issue(Some(&alice), &requested, false, NOW).unwrap();
    let got = v.verify(&issued.token, NOW).unwrap();
    assert!(covers(
        &got.access,
        &Access::repository("alice/app", "push")
    ));
    assert!(!covers(&got.access, &Access::repository("bob/app", "pull")));
    assert!(covers(
        &got.access,
        &Access::repository("public/base", "pull")
    ));
    assert!(!covers(
        &got.access,
        &Access::repository("public/base", "push")
    ));
    assert!(issued.refresh_token.is_none());
    // Anonymous: public pulls only.
    let anon = iss.issue(None, &requested, true, NOW).unwrap();
    let got = v.verify(&anon.token, NOW).unwrap();
    assert_eq!(got.access.len(), 1);
    assert!(anon.refresh_token.is_none());
    // The JWKS has the key, with kid and x5c.
    let jwks = iss.jwks();
    assert_eq!(
        jwks["keys"][0]["kid"],
        json!(iss.trust_set().keys[0].libtrust_id)
    );
    assert!(jwks["keys"][0]["x5c"].is_array());
}

#[test]
fn refresh_tokens() {
    let iss = issuer(&[("alice", "pw")]);
    let alice = Identity::new("alice", "password");
    let issued = iss.issue(Some(&alice), &[], true, NOW).unwrap();
    let refresh = issued.refresh_token.unwrap();
    assert_eq!(iss.redeem_refresh(&refresh, NOW + 3600).unwrap(), alice);
    // Only the issuer's own accounts get one: an identity vouched for elsewhere must be
    // presented again. A token never outlives the identity's proof.
    let mut federated = Identity::new("system:serviceaccount:ci:builder", "kubernetes");
    federated.expires = Some(NOW + 120);
    let issued = iss.issue(Some(&federated), &[], true, NOW).unwrap();
    assert!(issued.refresh_token.is_none());
    assert_eq!(issued.expires_in, 120);
    assert_eq!(v_exp(&iss, &issued.token), NOW + 120);
    // Not an access token: the registry's verifier refuses its audience.
    let v = verifier(iss.trust_set());
    assert_eq!(refused(&v, &refresh), Reason::WrongAudience);
    // An access token is not a refresh token.
    assert!(iss.redeem_refresh(&issued.token, NOW).is_err());
    assert!(iss.redeem_refresh(&refresh, NOW + 86_400 * 2).is_err());
}

/// The `exp` of a token the issuer signed.
fn v_exp(iss: &Issuer, token: &str) -> i64 {
    verifier(iss.trust_set())
        .verify(token, NOW)
        .unwrap()
        .expires
}
