//! Berth's token issuer: authenticates accounts (htpasswd users), grants requested scopes by
//! the ACL, and signs Docker registry tokens
//! (<https://distribution.github.io/distribution/spec/auth/token/>). The HTTP endpoint
//! (GET with Basic credentials, POST OAuth2 `password` and `refresh_token` grants) lives in the
//! server; this is the logic behind it.
//!
//! Refresh tokens (`offline_token=true`, `access_type=offline`) are signed too, stateless, and
//! carry an audience of their own, so one can never be used as an access token; redeeming one
//! checks that the account still exists.

use std::sync::Arc;

use ring::rand::SecureRandom as _;
use serde_json::{json, Value};

use crate::acl::{self, Rule};
use crate::htpasswd::Users;
use crate::identity::{self, Identity};
use crate::scope::Scope;
use crate::signer::Signer;
use crate::token::{Verifier, VerifierConfig};
use crate::trust::{TrustSet, TrustedKey};

/// What the issuer signs for.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// The `aud` of its tokens: the registry's `auth.token.service`.
    pub service: String,
    /// Lifetime of an access token.
    pub expiration_secs: i64,
    /// Lifetime of a refresh token.
    pub refresh_expiration_secs: i64,
    pub acl: Vec<Rule>,
}

/// A token as the endpoint returns it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: i64,
    pub issued_at: i64,
    pub granted: Vec<Scope>,
    pub refresh_token: Option<String>,
}

/// Where the issuer's accounts come from: fixed, or a file re-read when it changes.
pub trait UserSource: Send + Sync {
    fn current(&self) -> Arc<Users>;
}

impl UserSource for Arc<Users> {
    fn current(&self) -> Arc<Users> {
        self.clone()
    }
}

pub struct Issuer {
    /// The first signs; all are published and trusted (rotation).
    signers: Vec<Signer>,
    users: Box<dyn UserSource>,
    settings: IssuerSettings,
    refresh: Verifier,
}

fn refresh_audience(service: &str) -> String {
    format!("berth-refresh:{service}")
}

impl Issuer {
    pub fn new(
        signers: Vec<Signer>,
        users: Box<dyn UserSource>,
        settings: IssuerSettings,
    ) -> Result<Issuer, String> {
        if signers.is_empty() {
            return Err("the issuer has no signing key".into());
        }
        let refresh = Verifier::new(
            VerifierConfig {
                issuer: settings.issuer.clone(),
                service: refresh_audience(&settings.service),
                algorithms: None,
            },
            Self::trust_of(&signers),
        );
        Ok(Issuer {
            signers,
            users,
            settings,
            refresh,
        })
    }

    fn trust_of(signers: &[Signer]) -> TrustSet {
        TrustSet {
            keys: signers
                .iter()
                .map(|s| {
                    TrustedKey::new(s.public.clone(), Some(s.kid.clone()), "berth issuer".into())
                })
                .collect(),
            anchors: Vec::new(),
        }
    }

    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    /// The keys the issuer signs with, as a verifier trusts them (Berth validating its own
    /// tokens needs no other configuration).
    pub fn trust_set(&self) -> TrustSet {
        Self::trust_of(&self.signers)
    }

    /// The JWKS document of every live key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.signers.iter().map(Signer::jwk).collect::<Vec<_>>() })
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.current()
    }

    /// Checks Basic credentials against the issuer's accounts: the identity, or `None` for a
    /// wrong user or password.
    pub fn authenticate(&self, user: &str, password: &str, now: i64) -> Option<Identity> {
        self.users
            .current()
            .check(user, password, now)
            .then(|| Identity::new(user, identity::PASSWORD))
    }

    /// Whether `user` is one of the issuer's own accounts (which then decide its password).
    pub fn has_account(&self, user: &str) -> bool {
        self.users.current().contains(user)
    }

    fn jti() -> String {
        let mut b = [0u8; 16];
        // The system RNG does not fail on Linux; an all-zero id would still be unique enough
        // together with iat and sub.
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Grants `who` (`None`: anonymous) what the ACL allows of `requested`, and signs an
    /// access token, which expires with the identity's proof at the latest, and a refresh token
    /// when `offline` and `who` is one of the issuer's own accounts (an external token, a
    /// directory or a robot token must be presented again, so that revoking it works).
    pub fn issue(
        &self,
        who: Option<&Identity>,
        requested: &[Scope],
        offline: bool,
        now: i64,
    ) -> Result<Issued, String> {
        let granted = acl::grant(&self.settings.acl, who, requested);
        let refresh = offline && who.is_some_and(|w| w.source == identity::PASSWORD);
        self.sign(who, granted, refresh, now)
    }

    /// Grants a robot token's account what the ACL allows of `requested`, cut down to the
    /// token's scopes ([`RobotToken::limit`]), and signs an access token (never a refresh
    /// token: a revoked robot token must stop working when its access tokens expire).
    pub fn issue_for_robot(
        &self,
        robot: &crate::robot::RobotToken,
        requested: &[Scope],
        now: i64,
    ) -> Result<Issued, String> {
        let who = robot.identity();
        let granted = robot.limit(acl::grant(&self.settings.acl, Some(&who), requested));
        self.sign(Some(&who), granted, false, now)
    }

    fn sign(
        &self,
        who: Option<&Identity>,
        granted: Vec<Scope>,
        offline: bool,
        now: i64,
    ) -> Result<Issued, String> {
        let account = who.map(|w| w.account.as_str());
        let exp = match who.and_then(|w| w.expires) {
            // A proof accepted within the clock-skew leeway after its expiry still gets a token
            // that is valid for a moment, not one that is expired when issued.
            Some(until) => (now + self.settings.expiration_secs).min(until.max(now + 1)),
            None => now + self.settings.expiration_secs,
        };
        let access: Vec<Value> = granted
            .iter()
            .map(|s| json!({ "type": s.typ, "name": s.name, "actions": s.actions }))
            .collect();
        let claims = json!({
            "iss": self.settings.issuer,
            "sub": account.unwrap_or(""),
            "aud": self.settings.service,
            "exp": exp,
            "nbf": now - 5,
            "iat": now,
            "jti": Self::jti(),
            "access": access,
        });
        let signer = &self.signers[0];
        let token = signer.sign(&claims)?;
        let refresh_token = match (offline, account) {
            (true, Some(a)) => Some(signer.sign(&json!({
                "iss": self.settings.issuer,
                "sub": a,
                "aud": refresh_audience(&self.settings.service),
                "exp": now + self.settings.refresh_expiration_secs,
                "iat": now,
                "jti": Self::jti(),
            }))?),
            _ => None,
        };
        Ok(Issued {
            token,
            expires_in: exp - now,
            issued_at: now,
            granted,
            refresh_token,
        })
    }

    /// The account a refresh token was issued to, if it is valid and the account still exists.
    pub fn redeem_refresh(&self, refresh_token: &str, now: i64) -> Result<Identity, String> {
        let v = self
            .refresh
            .verify(refresh_token, now)
            .map_err(|r| format!("invalid refresh token: {}", r.detail))?;
        if !self.users.current().contains(&v.subject) {
            return Err(format!("the account {:?} no longer exists", v.subject));
        }
        Ok(Identity::new(v.subject.clone(), identity::PASSWORD))
    }
}
