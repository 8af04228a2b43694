//! The issuer's access rules: an ordered list; for each requested scope the first rule that
//! matches the account, the resource type and the resource name decides, and the token gets
//! the requested actions that the rule allows (the intersection). A rule with no actions
//! denies. No matching rule: nothing is granted.
//!
//! ```yaml
//! acl:
//!   - account: "*"            # any signed-in account (a glob; omit it to match anonymous too)
//!     name: "${account}/*"    # `${account}` is the account's name, taken literally
//!     actions: ["*"]
//!   - name: "public/*"        # everyone, anonymous included
//!     actions: [pull]
//! ```
//!
//! In patterns `*` matches any run of characters (`/` included) and `?` one character.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::scope::Scope;

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A glob on the account name; absent: every requester, anonymous included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The resource type (`repository`, or `registry` for the catalog).
    #[serde(default = "repository", rename = "type")]
    pub typ: String,
    /// A glob on the resource name, where `${account}` stands for the account's name.
    pub name: String,
    /// What the rule allows: `pull`, `push`, `delete`, or `*` for everything.
    #[serde(default)]
    pub actions: Vec<String>,
}

fn repository() -> String {
    "repository".to_owned()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    Star,
    Any,
}

/// A pattern with `${account}` replaced by the account's name as literal characters (an
/// account called `*` must not become a wildcard). `None` when the pattern needs an account
/// and there is none.
fn compile(pattern: &str, account: Option<&str>) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${account}") {
            out.extend(account?.chars().map(Token::Literal));
            rest = after;
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

/// Whether the glob `pattern` (`*`, `?`; no `${account}`) matches `text`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    matches(pattern, None, text)
}

fn matches(pattern: &str, account: Option<&str>, text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    compile(pattern, account).is_some_and(|p| glob(&p, &chars))
}

impl Rule {
    /// Whether this rule decides `scope` for `account` (`None`: anonymous).
    fn applies(&self, account: Option<&str>, scope: &Scope) -> bool {
        let who = match (&self.account, account) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(p), Some(a)) => matches(p, None, a),
        };
        who && self.typ == scope.typ && matches(&self.name, account, &scope.name)
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

/// Which rule decides `scope` for `account` (`None`: anonymous), and what it grants.
pub fn decide(rules: &[Rule], account: Option<&str>, scope: &Scope) -> Decision {
    let Some((i, rule)) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.applies(account, scope))
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

/// What `rules` grant `account` of the `requested` scopes (scopes with nothing granted are left
/// out, as Docker's token servers do).
pub fn grant(rules: &[Rule], account: Option<&str>, requested: &[Scope]) -> Vec<Scope> {
    requested
        .iter()
        .filter_map(|scope| decide(rules, account, scope).granted)
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
        grant(rules, account, &[scope(s)])
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
        assert!(matches("a?c/*", None, "abc/x/y"));
        assert!(!matches("a?c/*", None, "abbc/x"));
        assert!(matches("*", None, ""));
        assert!(matches("*x*y", None, "axxbxy"));
        assert!(!matches("${account}/*", None, "x/y"));
    }
}
