//! Who a token request is: an account name, the identity source that vouched for it, and the
//! variables and groups the issuer's ACL rules may use.
//!
//! Sources: `password` (the issuer's htpasswd file or `users`), `refresh_token`, `robot_token`
//! ([`crate::robot`]), `ldap`, and each federated issuer by its configured name (a Kubernetes
//! cluster, GitHub Actions, GitLab, ...; [`crate::federation`]).

use std::collections::BTreeMap;

/// The issuer's own accounts (htpasswd file or `users`), which alone get refresh tokens.
pub const PASSWORD: &str = "password";
/// A robot token ([`crate::robot`]).
pub const ROBOT_TOKEN: &str = "robot_token";
/// An LDAP directory.
pub const LDAP: &str = "ldap";

/// A requester the issuer knows (anonymous requesters have no `Identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account name: `sub` of the issued token, `${account}` in rules.
    pub account: String,
    /// The identity source, which a rule's `source:` matches.
    pub source: String,
    /// `${name}` variables for rules: `namespace` and `serviceaccount` of a Kubernetes token,
    /// `claims.<claim>` of any federated token.
    pub vars: BTreeMap<String, String>,
    /// Group memberships (LDAP): a rule's `groups:` matches them, and `${groups}` stands for
    /// each of them in turn.
    pub groups: Vec<String>,
    /// Until when (Unix seconds) the proof of identity holds: an issued token never outlives
    /// the external token or robot token it was issued for.
    pub expires: Option<i64>,
}

impl Identity {
    /// An account with no variables or groups.
    pub fn new(account: impl Into<String>, source: impl Into<String>) -> Identity {
        Identity {
            account: account.into(),
            source: source.into(),
            vars: BTreeMap::new(),
            groups: Vec::new(),
            expires: None,
        }
    }
}
