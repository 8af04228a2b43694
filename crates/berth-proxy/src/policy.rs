//! Which upstream, if any, a repository name belongs to, and whether it may be pulled.
//!
//! - An upstream with a `name` (`docker.io`, `ghcr.io`) owns names under that prefix
//!   (`docker.io/library/alpine`), and names asked with containerd's `?ns=<name>`.
//! - A `default` upstream (or distribution's single `proxy.remoteurl`) also answers names with
//!   no prefix, as a Docker daemon with `registry-mirrors` sends them (`library/alpine`) — those
//!   its allowlist admits; with no allowlist, every name (the registry is then a pure mirror, as
//!   distribution's proxy mode).
//! - Every other name is hosted: pushed to and pulled from this registry.
//!
//! A proxied name is cached locally under `<upstream name>/<remote name>` (under the name as
//! asked for distribution's unnamed upstream, whose layout it then keeps), so prefixed, `?ns=`
//! and mirror requests share one cache. For Docker Hub a one-component name means
//! `library/<name>`.

use std::time::Duration;

use berth_core::RepoName;

/// One upstream registry as configured.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The prefix and `?ns=` host it owns; empty for distribution's single `remoteurl`.
    pub name: String,
    /// `https://registry-1.docker.io`
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `proxy.exec`: a credential helper instead of `username`/`password`.
    pub exec: Option<crate::credentials::ExecHelper>,
    /// How long a tag is trusted before upstream is asked again (with a HEAD).
    pub ttl: Duration,
    /// How long cached content is kept before it is removed (distribution's `proxy.ttl`);
    /// `None`: for good.
    pub cache_ttl: Option<Duration>,
    /// Remote repository patterns that may be pulled (`library/*`); empty: any.
    pub allow: Vec<String>,
    /// Remote repository patterns that may not (checked first).
    pub deny: Vec<String>,
    /// Answers names without a prefix.
    pub default: bool,
    /// Docker Hub's rule: a one-component name is `library/<name>`.
    pub library: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This registry's own content.
    Hosted,
    /// The upstream at index `upstream` has `remote`; it is cached as `local`.
    Proxied {
        upstream: usize,
        remote: String,
        local: RepoName,
    },
    /// Owned by an upstream, but its policy refuses it (why).
    Denied(String),
}

/// `*` matches any run of characters, `?` one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl UpstreamConfig {
    /// The remote name for a name as asked (Docker Hub's `library/` rule).
    fn remote_name(&self, asked: &str) -> String {
        if self.library && !asked.contains('/') {
            format!("library/{asked}")
        } else {
            asked.to_owned()
        }
    }

    /// Why the policy refuses `remote`, if it does.
    pub fn refuses(&self, remote: &str) -> Option<String> {
        if let Some(p) = self.deny.iter().find(|p| glob(p, remote)) {
            return Some(format!(
                "{remote} matches the deny pattern {p:?} of upstream {}",
                self.label()
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| glob(p, remote)) {
            return Some(format!(
                "{remote} is not in the allowlist of upstream {} ({})",
                self.label(),
                self.allow.join(", ")
            ));
        }
        None
    }

    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.url
        } else {
            &self.name
        }
    }

    fn local_name(&self, asked: &RepoName, remote: &str) -> Option<RepoName> {
        if self.name.is_empty() {
            Some(asked.clone())
        } else {
            format!("{}/{remote}", self.name).parse().ok()
        }
    }
}

/// Routes `name` (with containerd's `ns`, if given) among `upstreams`.
pub fn route(upstreams: &[UpstreamConfig], name: &RepoName, ns: Option<&str>) -> Route {
    let proxied = |i: usize, asked: &str| -> Route {
        let u = &upstreams[i];
        let remote = u.remote_name(asked);
        if let Some(why) = u.refuses(&remote) {
            return Route::Denied(why);
        }
        match u.local_name(name, &remote) {
            Some(local) => Route::Proxied {
                upstream: i,
                remote,
                local,
            },
            None => Route::Denied(format!("{remote} cannot be cached under {}/", u.name)),
        }
    };
    // An explicit prefix.
    if let Some((first, rest)) = name.as_str().split_once('/') {
        if let Some(i) = upstreams
            .iter()
            .position(|u| !u.name.is_empty() && u.name == first)
        {
            return proxied(i, rest);
        }
    }
    // containerd's ?ns=<host>.
    if let Some(ns) = ns.filter(|n| !n.is_empty()) {
        if let Some(i) = upstreams
            .iter()
            .position(|u| !u.name.is_empty() && u.name == ns)
        {
            return proxied(i, name.as_str());
        }
    }
    // The default upstream: names its allowlist admits (all, without one).
    if let Some(i) = upstreams.iter().position(|u| u.default) {
        let u = &upstreams[i];
        let remote = u.remote_name(name.as_str());
        let admitted = u.allow.is_empty() || u.allow.iter().any(|p| glob(p, &remote));
        if admitted {
            return proxied(i, name.as_str());
        }
    }
    Route::Hosted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, default: bool, allow: &[&str], deny: &[&str]) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            url: format!("https://{name}"),
            username: None,
            password: None,
            exec: None,
            ttl: Duration::from_secs(60),
            cache_ttl: None,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            default,
            library: name == "docker.io",
        }
    }

    fn r(upstreams: &[UpstreamConfig], name: &str, ns: Option<&str>) -> Route {
        route(
            upstreams,
            &name.parse().unwrap_or_else(|e| panic!("{e}")),
            ns,
        )
    }

    fn proxied(upstream: usize, remote: &str, local: &str) -> Route {
        Route::Proxied {
            upstream,
            remote: remote.into(),
            local: local.parse().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn prefixes_ns_and_the_default() {
        let u = vec![
            up(
                "docker.io",
                true,
                &["library/*", "bitnami/*"],
                &["library/evil*"],
            ),
            up("ghcr.io", false, &[], &[]),
        ];
        assert_eq!(
            r(&u, "docker.io/library/alpine", None),
            proxied(0, "library/alpine", "docker.io/library/alpine")
        );
        // Docker Hub's one-component names.
        assert_eq!(
            r(&u, "docker.io/alpine", None),
            proxied(0, "library/alpine", "docker.io/library/alpine")
        );
        // registry-mirrors: no prefix, default upstream, cached with the prefixed requests.
        assert_eq!(
            r(&u, "library/alpine", None),
            proxied(0, "library/alpine", "docker.io/library/alpine")
        );
        // containerd's ?ns=.
        assert_eq!(
            r(&u, "library/alpine", Some("docker.io")),
            proxied(0, "library/alpine", "docker.io/library/alpine")
        );
        assert_eq!(
            r(&u, "owner/tool", Some("ghcr.io")),
            proxied(1, "owner/tool", "ghcr.io/owner/tool")
        );
        assert_eq!(
            r(&u, "ghcr.io/owner/tool", None),
            proxied(1, "owner/tool", "ghcr.io/owner/tool")
        );
        // Outside the default's allowlist and without a prefix: hosted.
        assert_eq!(r(&u, "myteam/app", None), Route::Hosted);
        // With a prefix but outside the allowlist, or denied: refused.
        assert!(
            matches!(r(&u, "docker.io/someone/app", None), Route::Denied(w) if w.contains("allowlist"))
        );
        assert!(
            matches!(r(&u, "docker.io/library/evilcorp", None), Route::Denied(w) if w.contains("deny"))
        );
        assert!(matches!(
            r(&u, "library/evilcorp", Some("docker.io")),
            Route::Denied(_)
        ));
        // Without an allowlist the default upstream takes everything unprefixed.
        let all = vec![up("docker.io", true, &[], &[])];
        assert_eq!(
            r(&all, "myteam/app", None),
            proxied(0, "myteam/app", "docker.io/myteam/app")
        );
    }

    #[test]
    fn distributions_single_remote_keeps_its_layout() {
        let mut u = up("", true, &[], &[]);
        u.url = "https://registry-1.docker.io".into();
        u.library = true;
        assert_eq!(
            r(&[u.clone()], "library/alpine", None),
            proxied(0, "library/alpine", "library/alpine")
        );
        assert_eq!(
            r(&[u], "alpine", None),
            proxied(0, "library/alpine", "alpine")
        );
    }

    #[test]
    fn globs() {
        assert!(glob("library/*", "library/alpine"));
        assert!(glob("*", "a/b/c"));
        assert!(!glob("library/*", "libraryx/alpine"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
    }
}
