//! The issuer's access rules: an ordered list; for each requested scope the first rule that
//! matches the requester, the resource type and the resource name decides, and the token gets
//! the requested actions that the rule allows (the intersection). A rule with no actions
//! denies. No matching rule: nothing is granted.
//!
//! ```yaml
//! acl:
//!   - account: "*"            # any signed-in account (a glob; omit it to match anonymous too)
//!     name: "${account}/*"    # `${account}` is the account's name, taken literally
//!     actions: ["*"]
//!   - source: kubernetes      # tokens of the federated issuer named `kubernetes`
//!     name: "${namespace}/*"  # the pod's namespace
//!     actions: [push, pull]
//!   - groups: [admins]        # LDAP group members
//!     name: "*"
//!     actions: ["*"]
//!   - name: "public/*"        # everyone, anonymous included
//!     actions: [pull]
//! ```
//!
//! In patterns `*` matches any run of characters (`/` included) and `?` one character. A
//! `${variable}` is replaced by the requester's value taken literally (a value of `*` is not a
//! wildcard): `${account}`, `${namespace}` and `${serviceaccount}` (Kubernetes tokens),
//! `${claims.NAME}` (a claim of a federated token), and `${groups}`, which stands for each of
//! the requester's groups in turn. A rule whose pattern names a variable the requester does not
//! have does not apply to that requester.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::scope::Scope;

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A glob on the account name; absent: every requester, anonymous included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A glob on the identity source (`password`, `robot_token`, `ldap`, a federated issuer's
    /// name); absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Globs on group names: the rule applies to members of any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The resource type (`repository`, or `registry` for the catalog).
    #[serde(default = "repository", rename = "type")]
    pub typ: String,
    /// A glob on the resource name, with `${...}` variables.
    pub name: String,
    /// What the rule allows: `pull`, `push`, `delete`, or `*` for everything.
    #[serde(default)]
    pub actions: Vec<String>,
}

fn repository() -> String {
    "repository".to_owned()
}

/// The variables a pattern may name (besides `claims.NAME`).
const VARIABLES: [&str; 4] = ["account", "groups", "namespace", "serviceaccount"];

/// The `${...}` variables of `pattern`, or why it is not a valid pattern (an unclosed `${`, an
/// unknown variable).
pub fn variables(pattern: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{pattern:?}: \"${{\" without a closing \"}}\""))?;
        let var = &after[..end];
        let claim = var.strip_prefix("claims.").is_some_and(|c| !c.is_empty());
        if !claim && !VARIABLES.contains(&var) {
            return Err(format!(
                "{pattern:?}: unknown variable ${{{var}}} (known: ${{account}}, ${{namespace}}, ${{serviceaccount}}, ${{groups}}, ${{claims.NAME}})"
            ));
        }
        out.push(var.to_owned());
        rest = &after[end + 1..];
    }
    Ok(out)
}

impl Rule {
    /// Why this rule cannot be used, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        variables(&self.name)?;
        for p in self.account.iter().chain(&self.source) {
            if p.contains("${") {
                return Err(format!("{p:?}: variables are only replaced in name"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    Star,
    Any,
}

/// A pattern with each `${variable}` replaced by the requester's value as literal characters
/// (an account called `*` must not become a wildcard), `${groups}` by `group`. `None` when the
/// pattern names a variable the requester does not have.
fn compile(pattern: &str, who: Option<&Identity>, group: Option<&str>) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}')?;
            let var = &after[..end];
            let id = who?;
            let value = match var {
                "account" => id.account.as_str(),
                "groups" => group?,
                _ => id.vars.get(var)?.as_str(),
            };
            out.extend(value.chars().map(Token::Literal));
            rest = &after[end + 1..];
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next()?;
        out.push(match c {
            '*' => Token::Star,
            '?' => Token::Any,
            c => Token::Literal(c),
        });
        rest = chars.as_str();
    }
    Some(out)
}

fn glob(pattern: &[Token], text: &[char]) -> bool {
    // Iterative matching with one backtrack point for the last `*` (linear in practice).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Star) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Token::Any) => {
                p += 1;
                t += 1;
            }
            Some(Token::Literal(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|tok| *tok == Token::Star)
}

/// Whether the glob `pattern` (`*`, `?`; no variables) matches `text`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    matches(pattern, None, None, text)
}

fn matches(pattern: &str, who: Option<&Identity>, group: Option<&str>, text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    compile(pattern, who, group).is_some_and(|p| glob(&p, &chars))
}

impl Rule {
    /// Whether this rule decides `scope` for `who` (`None`: anonymous).
    fn applies(&self, who: Option<&Identity>, scope: &Scope) -> bool {
        let requester = |pattern: &Option<String>, value: fn(&Identity) -> &str| match pattern {
            None => true,
            Some(p) => who.is_some_and(|id| matches(p, None, None, value(id))),
        };
        let member = match &self.groups {
            None => true,
            Some(wanted) => who.is_some_and(|id| {
                id.groups
                    .iter()
                    .any(|g| wanted.iter().any(|w| matches(w, None, None, g)))
            }),
        };
        if !(requester(&self.account, |id| &id.account)
            && requester(&self.source, |id| &id.source)
            && member
            && self.typ == scope.typ)
        {
            return false;
        }
        if self.name.contains("${groups}") {
            // `${groups}` stands for each group in turn: any of them may match.
            who.is_some_and(|id| {
                id.groups
                    .iter()
                    .any(|g| matches(&self.name, who, Some(g), &scope.name))
            })
        } else {
            matches(&self.name, who, None, &scope.name)
        }
    }
}

/// How the rules decide one requested scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The index of the first rule that applies; `None`: no rule does, nothing is granted.
    pub rule: Option<usize>,
    /// The requested actions that rule allows (`None` when none).
    pub granted: Option<Scope>,
}

/// Which rule decides `scope` for `who` (`None`: anonymous), and what it grants.
pub fn decide(rules: &[Rule], who: Option<&Identity>, scope: &Scope) -> Decision {
    let Some((i, rule)) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.applies(who, scope))
    else {
        return Decision {
            rule: None,
            granted: None,
        };
    };
    let all = rule.actions.iter().any(|a| a == "*");
    let actions: BTreeSet<String> = scope
        .actions
        .iter()
        .filter(|a| all || rule.actions.contains(a))
        .cloned()
        .collect();
    Decision {
        rule: Some(i),
        granted: (!actions.is_empty()).then(|| Scope {
            typ: scope.typ.clone(),
            name: scope.name.clone(),
            actions,
        }),
    }
}

/// What `rules` grant `who` of the `requested` scopes (scopes with nothing granted are left
/// out, as Docker's token servers do).
pub fn grant(rules: &[Rule], who: Option<&Identity>, requested: &[Scope]) -> Vec<Scope> {
    requested
        .iter()
        .filter_map(|scope| decide(rules, who, scope).granted)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<Rule> {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn scope(s: &str) -> Scope {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn granted(rules: &[Rule], account: Option<&str>, s: &str) -> String {
        let who = account.map(|a| Identity::new(a, "password"));
        granted_to(rules, who.as_ref(), s)
    }

    fn granted_to(rules: &[Rule], who: Option<&Identity>, s: &str) -> String {
        grant(rules, who, &[scope(s)])
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// The multi-tenancy policy of `config.example.yml`.
    const TENANTS: &str = r#"
- account: "*"
  name: "${account}/*"
  actions: ["*"]
- name: "public/*"
  actions: [pull]
"#;

    #[test]
    fn tenants_own_their_namespace_and_everyone_pulls_public() {
        let r = rules(TENANTS);
        assert_eq!(
            granted(&r, Some("alice"), "repository:alice/app:pull,push"),
            "repository:alice/app:pull,push"
        );
        assert_eq!(
            granted(&r, Some("alice"), "repository:alice/a/b/c:push,delete"),
            "repository:alice/a/b/c:delete,push"
        );
        assert_eq!(
            granted(&r, Some("alice"), "repository:bob/app:pull,push"),
            ""
        );
        assert_eq!(
            granted(&r, Some("alice"), "repository:public/base:pull,push"),
            "repository:public/base:pull"
        );
        assert_eq!(
            granted(&r, None, "repository:public/base:pull"),
            "repository:public/base:pull"
        );
        assert_eq!(granted(&r, None, "repository:alice/app:pull"), "");
        // Not a prefix trick: "alicex/app" is not alice's.
        assert_eq!(granted(&r, Some("alice"), "repository:alicex/app:pull"), "");
        assert_eq!(granted(&r, Some("alice"), "registry:catalog:*"), "");
    }

    #[test]
    fn first_matching_rule_decides_and_empty_actions_deny() {
        let r = rules(
            r#"
- account: "mallory"
  name: "*"
  actions: []
- account: "*"
  name: "*"
  actions: [pull]
- account: admin
  type: registry
  name: catalog
  actions: ["*"]
"#,
        );
        assert_eq!(granted(&r, Some("mallory"), "repository:x:pull"), "");
        assert_eq!(
            granted(&r, Some("eve"), "repository:x:pull,push"),
            "repository:x:pull"
        );
        assert_eq!(
            granted(&r, Some("admin"), "registry:catalog:*"),
            "registry:catalog:*"
        );
        assert_eq!(granted(&r, Some("eve"), "registry:catalog:*"), "");
    }

    #[test]
    fn account_names_are_literal_in_patterns() {
        let r = rules(TENANTS);
        // An account named "*" owns "*/..." only, not everything.
        assert_eq!(granted(&r, Some("*"), "repository:bob/app:push"), "");
        assert!(glob_matches("a?c/*", "abc/x/y"));
        assert!(!glob_matches("a?c/*", "abbc/x"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*x*y", "axxbxy"));
        assert!(!glob_matches("${account}/*", "x/y"));
    }

    fn pod(namespace: &str, sa: &str) -> Identity {
        let mut id = Identity::new(
            format!("system:serviceaccount:{namespace}:{sa}"),
            "kubernetes",
        );
        id.vars.insert("namespace".into(), namespace.into());
        id.vars.insert("serviceaccount".into(), sa.into());
        id
    }

    #[test]
    fn rules_match_sources_groups_and_variables() {
        let r = rules(
            r#"
- source: kubernetes
  name: "${namespace}/*"
  actions: [push, pull]
- source: "github*"
  name: "gh/${claims.repository}"
  actions: [push, pull]
- groups: ["admins", "ops-*"]
  name: "*"
  actions: ["*"]
- source: ldap
  name: "teams/${groups}/*"
  actions: [pull, push]
- name: "public/*"
  actions: [pull]
"#,
        );
        let builder = pod("build", "builder");
        assert_eq!(
            granted_to(&r, Some(&builder), "repository:build/app:push,pull"),
            "repository:build/app:pull,push"
        );
        assert_eq!(
            granted_to(&r, Some(&builder), "repository:prod/app:push"),
            ""
        );
        // A namespace called "*" is a name, not a wildcard.
        assert_eq!(
            granted_to(&r, Some(&pod("*", "x")), "repository:prod/app:push"),
            ""
        );
        // The same variables from another source do not count.
        let mut forged = pod("prod", "x");
        forged.source = "password".into();
        assert_eq!(
            granted_to(&r, Some(&forged), "repository:prod/app:push"),
            ""
        );
        let mut gh = Identity::new("repo:octo/app:ref:refs/heads/main", "github");
        gh.vars
            .insert("claims.repository".into(), "octo/app".into());
        assert_eq!(
            granted_to(&r, Some(&gh), "repository:gh/octo/app:push"),
            "repository:gh/octo/app:push"
        );
        assert_eq!(
            granted_to(&r, Some(&gh), "repository:gh/octo/other:push"),
            ""
        );
        // A rule naming a variable the requester lacks does not apply: the next one decides.
        assert_eq!(
            granted_to(&r, Some(&gh), "repository:public/x:push,pull"),
            "repository:public/x:pull"
        );
        let mut carol = Identity::new("carol", "ldap");
        carol.groups = vec!["dev".into(), "web".into()];
        assert_eq!(
            granted_to(&r, Some(&carol), "repository:teams/web/site:push"),
            "repository:teams/web/site:push"
        );
        assert_eq!(
            granted_to(&r, Some(&carol), "repository:teams/db/x:pull"),
            ""
        );
        carol.groups.push("ops-eu".into());
        assert_eq!(
            granted_to(&r, Some(&carol), "repository:teams/db/x:delete"),
            "repository:teams/db/x:delete"
        );
        assert_eq!(granted_to(&r, None, "repository:build/app:pull"), "");
        let who = Some(&builder);
        assert_eq!(
            decide(&r, who, &scope("repository:public/a:pull")).rule,
            Some(4)
        );
    }

    #[test]
    fn unknown_variables_are_refused() {
        assert_eq!(
            variables("${namespace}/${claims.repo}/*").unwrap_or_default(),
            vec!["namespace".to_owned(), "claims.repo".to_owned()]
        );
        assert!(variables("${namespcae}/*").is_err());
        assert!(variables("${claims.}/*").is_err());
        assert!(variables("${account").is_err());
        let rule = |yaml: &str| rules(yaml).remove(0).validate();
        assert!(rule("- name: \"${group}/*\"").is_err());
        assert!(rule("- account: \"${account}\"\n  name: x").is_err());
        assert!(rule("- name: \"${groups}/*\"").is_ok());
    }
}
