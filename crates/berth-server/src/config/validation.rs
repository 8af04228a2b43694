//! `validation`: the configured checks on pushed manifests, turned into
//! [`berth_core::manifest::Rules`] the way distribution's `NewApp` reads them.
//!
//! - Validation is on unless `disabled: true` (the deprecated `enabled: true` wins over it).
//! - On, with neither `urls.allow` nor `urls.deny`: no layer may name a URL. With rules, every
//!   URL must match one `allow` expression (when any is set) and none of `deny`. Off: any
//!   http(s) URL.
//! - `indexes.platforms`: `all` (the default) requires every child of an index to exist;
//!   `none` none; `list` the children whose os/architecture is in `platformlist` (an empty
//!   list means all, as in distribution). Off: none.
//!
//! An expression that does not compile or an unknown `platforms` value refuses the
//! configuration (distribution panics or fails to parse).

use berth_core::manifest::{join_regexes, IndexPolicy, Platform, Rules, UrlPolicy};

use super::schema::Validation;

/// The rules `v` configures, or each problem with its location.
pub fn manifest_rules(v: &Validation) -> Result<Rules, Vec<(String, String)>> {
    let enabled = v.enabled == Some(true) || !v.disabled;
    let manifests = v.manifests.clone().unwrap_or_default();
    let urls = manifests.urls.unwrap_or_default();
    let allow = urls.allow.unwrap_or_default();
    let deny = urls.deny.unwrap_or_default();
    let mut problems = Vec::new();
    let mut compile = |key: &str, list: &[String]| match join_regexes(list) {
        Ok(r) => r,
        Err((i, e)) => {
            problems.push((
                format!("validation.manifests.urls.{key}[{i}]"),
                format!("{:?} is not a regular expression: {e}", list[i]),
            ));
            None
        }
    };
    let allow_re = compile("allow", &allow);
    let deny_re = compile("deny", &deny);

    let indexes = manifests.indexes.unwrap_or_default();
    let platforms = indexes
        .platforms
        .as_deref()
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let list: Vec<Platform> = indexes
        .platformlist
        .unwrap_or_default()
        .into_iter()
        .map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
        })
        .collect();
    let index_policy = match platforms.as_str() {
        "" | "all" => IndexPolicy::All,
        "none" => IndexPolicy::None,
        "list" if list.is_empty() => IndexPolicy::All,
        "list" => IndexPolicy::Platforms(list),
        other => {
            problems.push((
                "validation.manifests.indexes.platforms".to_owned(),
                format!("{other:?} is not one of all, none, list"),
            ));
            IndexPolicy::All
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    if !enabled {
        return Ok(Rules {
            urls: UrlPolicy::Any,
            indexes: IndexPolicy::None,
        });
    }
    let urls = if allow_re.is_none() && deny_re.is_none() {
        UrlPolicy::None
    } else {
        UrlPolicy::Match {
            allow: allow_re,
            deny: deny_re,
        }
    };
    Ok(Rules {
        urls,
        indexes: index_policy,
    })
}

/// The rules for a starting registry: as [`manifest_rules`], with distribution's warning when
/// index completeness is not checked for every platform.
pub fn startup_rules(v: &Validation) -> Result<Rules, String> {
    let rules = manifest_rules(v).map_err(|problems| {
        let all: Vec<String> = problems
            .iter()
            .map(|(at, m)| format!("{at}: {m}"))
            .collect();
        all.join("; ")
    })?;
    if rules.indexes != IndexPolicy::All {
        tracing::warn!(
            "validation: image indexes are accepted without all of their platform images (validation.manifests.indexes or validation.disabled); tools reading this registry may expect complete indexes"
        );
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Rules, Vec<(String, String)>> {
        let v: Validation = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        manifest_rules(&v)
    }

    fn ok(yaml: &str) -> Rules {
        rules(yaml).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn defaults_are_distributions() {
        let r = ok("{}");
        assert!(matches!(r.urls, UrlPolicy::None));
        assert_eq!(r.indexes, IndexPolicy::All);
        // `enabled: false` alone does not turn validation off; `disabled` does, unless
        // `enabled: true` says otherwise.
        assert!(matches!(ok("enabled: false").urls, UrlPolicy::None));
        let off = ok("disabled: true\nmanifests: {urls: {allow: ['^x']}}");
        assert!(matches!(off.urls, UrlPolicy::Any));
        assert_eq!(off.indexes, IndexPolicy::None);
        assert!(matches!(
            ok("disabled: true\nenabled: true").urls,
            UrlPolicy::None
        ));
    }

    #[test]
    fn url_rules() {
        let r = ok("manifests: {urls: {allow: ['^https://a/', '^https://b/'], deny: ['x']}}");
        let UrlPolicy::Match { allow, deny } = &r.urls else {
            panic!("{:?}", r.urls)
        };
        assert!(allow.as_ref().is_some_and(|a| a.is_match("https://b/1")));
        assert!(deny.as_ref().is_some_and(|d| d.is_match("https://a/x")));
        let deny_only = ok("manifests: {urls: {deny: ['x']}}");
        assert!(matches!(
            deny_only.urls,
            UrlPolicy::Match {
                allow: None,
                deny: Some(_)
            }
        ));
    }

    #[test]
    fn index_rules() {
        assert_eq!(
            ok("manifests: {indexes: {platforms: None}}").indexes,
            IndexPolicy::None
        );
        assert_eq!(
            ok("manifests: {indexes: {platforms: ALL}}").indexes,
            IndexPolicy::All
        );
        assert_eq!(
            ok("manifests: {indexes: {platforms: list}}").indexes,
            IndexPolicy::All
        );
        assert_eq!(
            ok("manifests: {indexes: {platforms: List, platformlist: [{os: linux, architecture: arm64}]}}").indexes,
            IndexPolicy::Platforms(vec![Platform {
                os: "linux".into(),
                architecture: "arm64".into()
            }])
        );
    }

    #[test]
    fn refusals_name_the_key() {
        let e = rules("manifests: {urls: {allow: ['ok', '(bad'], deny: ['[z-a]']}, indexes: {platforms: some}}")
            .err()
            .unwrap_or_default();
        let at: Vec<&str> = e.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            at,
            [
                "validation.manifests.urls.allow[1]",
                "validation.manifests.urls.deny[0]",
                "validation.manifests.indexes.platforms"
            ]
        );
    }
}
