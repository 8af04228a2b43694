//! Federated workload identity: tokens that other issuers gave a workload (a Kubernetes pod's
//! projected service-account token, a GitHub Actions or GitLab CI ID token, any OIDC
//! provider's), presented as the password at the token endpoint. The token is verified like a
//! registry token ([`crate::token::Verifier`]: key lookup, asymmetric algorithms only, `iss`,
//! `aud`, `exp`, `nbf`), then its claims are mapped to an [`Identity`]:
//!
//! - every top-level claim that is a string, number or boolean becomes `${claims.NAME}`;
//! - a Kubernetes token's `kubernetes.io` claim gives `${namespace}` and `${serviceaccount}`;
//! - the account name is a template over those variables (default: the `sub` claim, which
//!   for Kubernetes is `system:serviceaccount:NAMESPACE:NAME`);
//! - required claims (globs) must all match, or the token is refused: an issuer shared by a
//!   whole platform (GitHub Actions signs for every repository on github.com) must be narrowed
//!   to one's own organisation.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::acl::glob_matches;
use crate::identity::Identity;
use crate::token::Verified;

/// What kind of tokens an issuer signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kubernetes service-account tokens (`kubernetes.io` claims).
    Kubernetes,
    /// Any OIDC ID token (GitHub Actions, GitLab CI, Buildkite, a company IdP).
    Oidc,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "kubernetes" => Some(Kind::Kubernetes),
            "oidc" => Some(Kind::Oidc),
            _ => None,
        }
    }
}

/// The account template when none is configured: the `sub` claim (for Kubernetes,
/// `system:serviceaccount:NAMESPACE:NAME`).
pub const DEFAULT_ACCOUNT: &str = "${claims.sub}";

/// How one federated issuer's verified claims become an identity.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The identity source name (what rules' `source:` match).
    pub name: String,
    pub kind: Kind,
    /// The account name template (`${...}` variables).
    pub account: String,
    /// Claims that must be present with a value matching the glob.
    pub required: BTreeMap<String, String>,
}

/// Why verified claims do not make an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// Low-cardinality label for metrics.
    pub reason: &'static str,
    pub detail: String,
}

/// A claim as a variable value: strings as they are, numbers and booleans as JSON prints them.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `template` with each `${variable}` replaced; `Err(variable)` when one is missing.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(after.to_owned());
        };
        let var = &after[..end];
        out.push_str(vars.get(var).ok_or_else(|| var.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Mapping {
    /// The identity of a verified token, valid until the token expires.
    pub fn identity(&self, token: &Verified) -> Result<Identity, Unmapped> {
        let claims = token.claims.as_object();
        let mut vars = BTreeMap::new();
        for (name, value) in claims.into_iter().flatten() {
            if let Some(v) = scalar(value) {
                vars.insert(format!("claims.{name}"), v);
            }
        }
        if self.kind == Kind::Kubernetes {
            let k8s = &token.claims["kubernetes.io"];
            let namespace = k8s["namespace"].as_str().filter(|s| !s.is_empty());
            let sa = k8s["serviceaccount"]["name"]
                .as_str()
                .filter(|s| !s.is_empty());
            let (Some(namespace), Some(sa)) = (namespace, sa) else {
                return Err(Unmapped {
                    reason: "not_a_service_account_token",
                    detail: "the token has no kubernetes.io namespace and serviceaccount claims (a legacy or a user token)".into(),
                });
            };
            vars.insert("namespace".into(), namespace.to_owned());
            vars.insert("serviceaccount".into(), sa.to_owned());
        }
        for (claim, pattern) in &self.required {
            let value = token.claims.get(claim).and_then(scalar);
            if !value.as_deref().is_some_and(|v| glob_matches(pattern, v)) {
                return Err(Unmapped {
                    reason: "claim_mismatch",
                    detail: format!(
                        "claim {claim} is {}, required {pattern:?}",
                        value.map_or("absent".to_owned(), |v| format!("{v:?}"))
                    ),
                });
            }
        }
        let account = expand(&self.account, &vars).map_err(|var| Unmapped {
            reason: "claim_missing",
            detail: format!(
                "the account template {:?} needs ${{{var}}}, which the token lacks",
                self.account
            ),
        })?;
        if account.is_empty() {
            return Err(Unmapped {
                reason: "claim_missing",
                detail: format!(
                    "the account template {:?} gives an empty name",
                    self.account
                ),
            });
        }
        Ok(Identity {
            account,
            source: self.name.clone(),
            vars,
            groups: Vec::new(),
            expires: Some(token.expires),
        })
    }
}

/// The `iss` claim of a JWT, read without verifying anything: which federated issuer's keys
/// to check it with. `None` when the text is not a JWT with a string `iss`.
pub fn unverified_issuer(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_, claims, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = B64URL.decode(claims.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["iss"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verified(claims: Value) -> Verified {
        Verified {
            subject: claims["sub"].as_str().unwrap_or("").to_owned(),
            access: Vec::new(),
            classes: Vec::new(),
            expires: claims["exp"].as_i64().unwrap_or(0),
            claims,
        }
    }

    fn k8s() -> Mapping {
        Mapping {
            name: "cluster".into(),
            kind: Kind::Kubernetes,
            account: DEFAULT_ACCOUNT.into(),
            required: BTreeMap::new(),
        }
    }

    /// The claims of a projected service-account token as the kube-apiserver issues them.
    fn pod_claims() -> Value {
        json!({
            "aud": ["registry.example.com"],
            "exp": 1_900_000_000,
            "iat": 1_899_996_400,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "4b7d6a1c-9a0e-4e55-8f53-0c9b1d3c2f10",
            "kubernetes.io": {
                "namespace": "build",
                "node": {"name": "node-1", "uid": "5f0c"},
                "pod": {"name": "kaniko-7f9c", "uid": "a1b2"},
                "serviceaccount": {"name": "builder", "uid": "c3d4"}
            },
            "nbf": 1_899_996_400,
            "sub": "system:serviceaccount:build:builder"
        })
    }

    #[test]
    fn kubernetes_tokens_give_namespace_and_service_account() {
        let who = k8s().identity(&verified(pod_claims())).unwrap();
        assert_eq!(who.account, "system:serviceaccount:build:builder");
        assert_eq!(who.source, "cluster");
        assert_eq!(who.vars["namespace"], "build");
        assert_eq!(who.vars["serviceaccount"], "builder");
        assert_eq!(who.expires, Some(1_900_000_000));
        // A token without the claims (a legacy secret token's shape) is no pod's identity.
        let mut legacy = pod_claims();
        legacy.as_object_mut().unwrap().remove("kubernetes.io");
        assert_eq!(
            k8s().identity(&verified(legacy)).unwrap_err().reason,
            "not_a_service_account_token"
        );
    }

    #[test]
    fn oidc_claims_map_to_accounts_and_required_claims_narrow() {
        let github = Mapping {
            name: "github".into(),
            kind: Kind::Oidc,
            account: "github:${claims.repository}".into(),
            required: BTreeMap::from([("repository_owner".to_owned(), "octo-org".to_owned())]),
        };
        let claims = json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:octo-org/app:ref:refs/heads/main",
            "aud": "https://registry.example.com",
            "exp": 1_900_000_000,
            "repository": "octo-org/app",
            "repository_owner": "octo-org",
            "repository_id": 74,
            "run_attempt": "1",
            "ref_protected": true,
        });
        let who = github.identity(&verified(claims.clone())).unwrap();
        assert_eq!(who.account, "github:octo-org/app");
        assert_eq!(who.vars["claims.repository"], "octo-org/app");
        assert_eq!(who.vars["claims.repository_id"], "74");
        assert_eq!(who.vars["claims.ref_protected"], "true");
        let mut other = claims.clone();
        other["repository_owner"] = json!("mallory");
        let e = github.identity(&verified(other)).unwrap_err();
        assert_eq!(e.reason, "claim_mismatch");
        assert!(e.detail.contains("\"mallory\""), "{}", e.detail);
        let mut missing = claims;
        missing.as_object_mut().unwrap().remove("repository");
        missing["repository_owner"] = json!("octo-org");
        assert_eq!(
            github.identity(&verified(missing)).unwrap_err().reason,
            "claim_missing"
        );
    }

    #[test]
    fn unverified_issuer_reads_iss_only_from_jwts() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        use base64::Engine as _;
        let body = B64URL.encode(br#"{"iss":"https://gitlab.example.com","sub":"x"}"#);
        assert_eq!(
            unverified_issuer(&format!("eyJhbGciOiJSUzI1NiJ9.{body}.c2ln")).as_deref(),
            Some("https://gitlab.example.com")
        );
        assert_eq!(unverified_issuer("hunter2"), None);
        assert_eq!(unverified_issuer("a.b.c.d"), None);
        assert_eq!(unverified_issuer(&format!("x.{body}.y.z")), None);
    }
}
