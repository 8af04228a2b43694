//! Access tokens for robot accounts (CI jobs, deploy bots): `berth tokens create` mints a
//! random secret, prints it once and stores only its SHA-256 with the account it acts as, the
//! scopes it is limited to (globs, as in the ACL) and its expiry. Presented as the password at
//! the token endpoint, it logs in as its account; what the ACL grants that account is then cut
//! down to the token's scopes.
//!
//! The secret is `berth_rt_<id>_<43 base64url characters>` (256 random bits): the id finds the
//! record with one read, and a plain SHA-256 suffices for a secret with that much entropy
//! (bcrypt's cost protects guessable passwords, not random keys).

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::scope::Scope;

/// How every robot secret starts (so secret scanners and the token endpoint can tell).
pub const PREFIX: &str = "berth_rt_";

/// What is stored for a token: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotToken {
    pub id: String,
    /// The account the token logs in as.
    pub account: String,
    /// What it may be granted at most: `type:name-glob:actions`, e.g. `repository:app/*:pull,push`.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; `None`: never.
    #[serde(default)]
    pub expires: Option<i64>,
    /// Hex SHA-256 of the whole secret.
    pub sha256: String,
}

fn hex_sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random(n: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    Ok(b)
}

/// A new token for `account` limited to `scopes`; returns the record and the secret (shown once).
pub fn mint(
    account: &str,
    scopes: &[Scope],
    expires: Option<i64>,
    now: i64,
) -> Result<(RobotToken, String), String> {
    let id: String = random(12)?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("{PREFIX}{id}_{}", B64URL.encode(random(32)?));
    let token = RobotToken {
        id,
        account: account.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        created: now,
        expires,
        sha256: hex_sha256(&secret),
    };
    Ok((token, secret))
}

/// The id in a presented secret, if it has the robot form (24 hex digits).
pub fn id_of(secret: &str) -> Option<&str> {
    let id = secret.strip_prefix(PREFIX)?.split('_').next()?;
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Why a presented robot secret is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    WrongSecret,
    Expired,
}

impl RobotToken {
    /// Whom the token logs in as; it is valid until it expires.
    pub fn identity(&self) -> crate::identity::Identity {
        let mut who = crate::identity::Identity::new(&self.account, crate::identity::ROBOT_TOKEN);
        who.expires = self.expires;
        who
    }
    /// Whether `secret` is this token's and the token is still valid. The digests are compared
    /// in constant time.
    pub fn check(&self, secret: &str, now: i64) -> Result<(), Refused> {
        let (a, b) = (hex_sha256(secret), self.sha256.to_ascii_lowercase());
        let same = a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0;
        if !same {
            return Err(Refused::WrongSecret);
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Err(Refused::Expired);
        }
        Ok(())
    }

    /// `granted` cut down to what the token's scopes allow: for each granted scope, the actions
    /// that some token scope of the same type whose name glob matches also allows (`*`: all).
    pub fn limit(&self, granted: Vec<Scope>) -> Vec<Scope> {
        let patterns: Vec<Scope> = self.scopes.iter().filter_map(|s| s.parse().ok()).collect();
        granted
            .into_iter()
            .filter_map(|g| {
                let mut allowed = BTreeSet::new();
                for p in patterns
                    .iter()
                    .filter(|p| p.typ == g.typ && crate::acl::glob_matches(&p.name, &g.name))
                {
                    if p.actions.contains("*") {
                        allowed.extend(g.actions.iter().cloned());
                    } else {
                        allowed.extend(g.actions.intersection(&p.actions).cloned());
                    }
                }
                (!allowed.is_empty()).then_some(Scope {
                    actions: allowed,
                    ..g
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    #[test]
    fn a_minted_secret_checks_and_nothing_else_does() {
        let (t, secret) =
            mint("ci", &[scope("repository:app/*:pull,push")], Some(100), 10).unwrap();
        assert_eq!(id_of(&secret), Some(t.id.as_str()));
        assert!(
            !t.sha256.contains(&secret)
                && !serde_json::to_string(&t)
                    .unwrap()
                    .contains(&secret[PREFIX.len() + 25..])
        );
        assert_eq!(t.check(&secret, 50), Ok(()));
        assert_eq!(
            t.check(&format!("{secret}x"), 50),
            Err(Refused::WrongSecret)
        );
        assert_eq!(t.check(&secret, 100), Err(Refused::Expired));
        let (other, _) = mint("ci", &[], None, 10).unwrap();
        assert_ne!(other.id, t.id);
        assert_eq!(id_of("berth_rt_nothex_x"), None);
        assert_eq!(id_of("password"), None);
    }

    #[test]
    fn grants_are_cut_down_to_the_token_scopes() {
        let (t, _) = mint(
            "ci",
            &[
                scope("repository:app/*:pull,push"),
                scope("repository:lib/base:pull"),
            ],
            None,
            0,
        )
        .unwrap();
        let cut = t.limit(vec![
            scope("repository:app/web:pull,push,delete"),
            scope("repository:lib/base:pull,push"),
            scope("repository:other/x:pull"),
            scope("registry:catalog:*"),
        ]);
        let shown: Vec<String> = cut.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            ["repository:app/web:pull,push", "repository:lib/base:pull"]
        );
    }
}
