//! `Verifier::verify` per call: uncached (every token new, so decoding, the key lookup, the
//! signature and the claims are checked) and cached (the same token again, the path every
//! request after the first takes), for RS256 and ES256 tokens as Berth's issuer signs them
//! (libtrust `kid` + `x5c`, trusted through the certificate in a `rootcertbundle`).
//! And `Signer::sign` per call (what Berth's issuer does for each token it grants).
//! In-process: no server, no distribution.
//!
//! ```sh
//! cargo build --release -p berth-bench --bin token-verify && target/release/token-verify
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use berth_auth::keys::Alg;
use berth_auth::signer::{generate, Signer};
use berth_auth::token::{Verifier, VerifierConfig};
use berth_auth::trust::TrustSet;
use serde_json::json;

const UNCACHED: usize = 2_000;
const CACHED: usize = 200_000;
const SIGNED: usize = 500;
const ROUNDS: usize = 5;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn tokens(signer: &Signer, n: usize, now: i64) -> Vec<String> {
    (0..n)
        .map(|i| {
            signer
                .sign(&json!({
                    "iss": "bench-issuer", "sub": "alice", "aud": "bench-registry",
                    "exp": now + 3600, "nbf": now - 10, "iat": now - 10, "jti": format!("j{i}"),
                    "access": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}],
                }))
                .unwrap()
        })
        .collect()
}

fn verifier(cert_pem: &str) -> Verifier {
    Verifier::new(
        VerifierConfig {
            issuer: "bench-issuer".into(),
            service: "bench-registry".into(),
            algorithms: None,
        },
        TrustSet::from_pem_bundle(cert_pem, "rootcertbundle").unwrap(),
    )
}

/// Median over `ROUNDS` of the mean time per call, in microseconds.
fn measure(mut round: impl FnMut() -> (usize, std::time::Duration)) -> f64 {
    let mut per_call: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let (n, took) = round();
            took.as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[ROUNDS / 2]
}

fn main() {
    println!("| token | verify() uncached | verify() cached | sign() |");
    println!("| --- | ---: | ---: | ---: |");
    for alg in [Alg::RS256, Alg::ES256] {
        let g = generate(alg, "bench signer", 30).unwrap();
        let signer = Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).unwrap();
        let now = now();
        let fresh = tokens(&signer, UNCACHED, now);
        let uncached = measure(|| {
            // A new verifier each round: an empty cache, so every call checks the signature.
            let v = verifier(&g.cert_pem);
            let t = Instant::now();
            for token in &fresh {
                v.verify(token, now).unwrap();
            }
            (fresh.len(), t.elapsed())
        });
        let v = verifier(&g.cert_pem);
        let token = &fresh[0];
        v.verify(token, now).unwrap();
        let cached = measure(|| {
            let t = Instant::now();
            for _ in 0..CACHED {
                std::hint::black_box(v.verify(std::hint::black_box(token), now).unwrap());
            }
            (CACHED, t.elapsed())
        });
        let claims = json!({"iss": "bench-issuer", "aud": "bench-registry", "exp": now + 300});
        let sign = measure(|| {
            let t = Instant::now();
            for _ in 0..SIGNED {
                std::hint::black_box(signer.sign(&claims).unwrap());
            }
            (SIGNED, t.elapsed())
        });
        println!(
            "| {} | {uncached:.1} µs | {cached:.2} µs | {sign:.1} µs |",
            alg.as_str()
        );
    }
}
