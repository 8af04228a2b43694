//! Access scopes in Docker's token grammar
//! (<https://distribution.github.io/distribution/spec/auth/scope/>):
//!
//! ```text
//! scope        = resourcetype ":" resourcename ":" action [ "," action ]*
//! resourcetype = "repository" | "registry" | ...   (a "(class)" suffix is allowed)
//! ```
//!
//! A resource name may itself contain ':' (a registry host with a port), so the type is what
//! precedes the first ':' and the actions what follows the last one.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One permission a request needs: an action on a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    /// `repository` or `registry`.
    pub typ: String,
    /// A repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, or `*`.
    pub action: String,
}

impl Access {
    pub fn new(typ: &str, name: &str, action: &str) -> Access {
        Access {
            typ: typ.to_owned(),
            name: name.to_owned(),
            action: action.to_owned(),
        }
    }

    pub fn repository(name: &str, action: &str) -> Access {
        Access::new("repository", name, action)
    }

    /// What `GET /v2/_catalog` needs.
    pub fn catalog() -> Access {
        Access::new("registry", "catalog", "*")
    }
}

/// A requested or granted scope: several actions on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub typ: String,
    pub name: String,
    pub actions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: expected type:name:action[,action]")]
pub struct ScopeError(pub String);

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError(s.chars().take(200).collect());
        let (typ, rest) = s.split_once(':').ok_or_else(err)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(err)?;
        let valid = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"()-_./".contains(&b))
        };
        // `repository(plugin)` is a repository of another class: same checks. A class alone,
        // `(plugin)`, has no type (found by fuzzing: it parsed to an empty type).
        let base = typ.split('(').next().unwrap_or(typ);
        if !valid(typ) || base.is_empty() || name.is_empty() || name.len() > 512 {
            return Err(err());
        }
        let actions: BTreeSet<String> = actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if actions
            .iter()
            .any(|a| !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*'))
        {
            return Err(err());
        }
        Ok(Scope {
            typ: base.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(String::as_str).collect();
        write!(f, "{}:{}:{}", self.typ, self.name, actions.join(","))
    }
}

/// Groups accesses into scopes, as they are written in a challenge (`repository:a:pull,push`).
pub fn scopes_of(accesses: &[Access]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for a in accesses {
        match out.iter_mut().find(|s| s.typ == a.typ && s.name == a.name) {
            Some(s) => {
                s.actions.insert(a.action.clone());
            }
            None => out.push(Scope {
                typ: a.typ.clone(),
                name: a.name.clone(),
                actions: BTreeSet::from([a.action.clone()]),
            }),
        }
    }
    out
}

/// Whether `granted` (a token's `access` claim) covers `needed`. `*` grants every action.
pub fn covers(granted: &[Scope], needed: &Access) -> bool {
    granted.iter().any(|s| {
        s.typ == needed.typ
            && s.name == needed.name
            && (s.actions.contains(&needed.action) || s.actions.contains("*"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_docker_scopes() {
        let s = scope("repository:library/alpine:pull,push");
        assert_eq!(
            (s.typ.as_str(), s.name.as_str()),
            ("repository", "library/alpine")
        );
        assert_eq!(s.actions.len(), 2);
        assert_eq!(s.to_string(), "repository:library/alpine:pull,push");
        // A name with a port.
        let s = scope("repository:localhost:5000/app:pull");
        assert_eq!(s.name, "localhost:5000/app");
        assert_eq!(scope("registry:catalog:*").actions.len(), 1);
        assert_eq!(scope("repository(plugin):x:pull").typ, "repository");
        for bad in [
            "",
            "repository",
            "repository:x",
            ":x:pull",
            "repository::pull",
            "a b:x:pull",
            "repository:x:pu ll",
            // Found by fuzzing: a class without a type parsed to an empty type.
            "(plugin):x:pull",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage() {
        let granted = vec![scope("repository:a:pull"), scope("registry:catalog:*")];
        assert!(covers(&granted, &Access::repository("a", "pull")));
        assert!(!covers(&granted, &Access::repository("a", "push")));
        assert!(!covers(&granted, &Access::repository("b", "pull")));
        assert!(covers(&granted, &Access::catalog()));
        let grouped = scopes_of(&[
            Access::repository("a", "pull"),
            Access::repository("a", "push"),
            Access::repository("b", "pull"),
        ]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].to_string(), "repository:a:pull,push");
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            if let Ok(sc) = s.parse::<Scope>() {
                prop_assert!(!sc.name.is_empty());
            }
        }
    }
}
