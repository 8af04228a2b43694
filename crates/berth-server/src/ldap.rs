//! LDAP accounts for the issuer (`auth.issuer.ldap`): people log in at `/auth/token` with their
//! directory password, and their groups become the `groups` of their [`Identity`], which ACL
//! rules match (`groups: [admins]`, `teams/${groups}/*`).
//!
//! A login is a simple bind as the user, over `ldaps://` or `ldap://` with StartTLS (or plain
//! `ldap://`, for a directory on the same host). The user's DN is either a template
//! (`uid=${username},ou=people,dc=example,dc=org`, the name escaped per RFC 4514) or found by a
//! search as a service account (`(uid=${username})`, escaped per RFC 4515). Groups come from an
//! attribute of the user (`memberOf`) and/or a group search (`(member=${dn})`,
//! `(memberUid=${username})`).
//!
//! Invariants:
//! - An empty password is refused before the directory is asked: a simple bind with a DN and
//!   no password is an "unauthenticated bind" (RFC 4513 section 5.1.2), which many servers
//!   answer with success.
//! - Successful logins are remembered for `cachettl` (60 s), keyed by the user name and a salted
//!   SHA-256 of the password (the salt is random per process; the password itself is never
//!   kept), so that a `docker pull` storm costs one bind; the cache is bounded. Logins with the
//!   same name and password that arrive while one is asking the directory wait for its answer
//!   instead of asking too (the storm's first wave costs one bind as well).
//! - A directory that does not answer within the timeouts is [`Failure::Unavailable`], never a
//!   wrong password: the endpoint answers 503 and the throttle does not count it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_auth::identity::{self, Identity};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// `auth.issuer.ldap`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starttls: Option<bool>,
    /// PEM certificates of the CAs trusted for the directory's certificate (default: the
    /// system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cafile: Option<String>,
    /// Accept any certificate (a WARN at start says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecureskipverify: Option<bool>,
    /// Direct bind: the user's DN, with `${username}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userdn: Option<String>,
    /// Search bind: the service account that searches for the user's DN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binddn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bindpassword: Option<String>,
    /// A file holding the service account's password (a Kubernetes Secret mounted as a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bindpasswordfile: Option<String>,
    /// Search bind: where users are searched (subtree).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userbase: Option<String>,
    /// Search bind: the filter that finds exactly one user, with `${username}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userfilter: Option<String>,
    /// The attribute whose value is the account name (e.g. `uid`, which normalises case);
    /// default: the name as typed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accountattribute: Option<String>,
    /// An attribute of the user listing the DNs of its groups (`memberOf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memberofattribute: Option<String>,
    /// Group search: where groups are searched (subtree).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groupbase: Option<String>,
    /// Group search: the filter of the user's groups, with `${dn}` and/or `${username}` (the
    /// `accountattribute` value when it is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groupfilter: Option<String>,
    /// The attribute of a group that is its name (default `cn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groupnameattribute: Option<String>,
    /// Connecting, TLS included (default 5s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialtimeout: Option<String>,
    /// Each bind or search (default 5s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long a successful login is remembered (default 60s; 0 turns the cache off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cachettl: Option<String>,
}

const USERNAME: &str = "${username}";
const DN: &str = "${dn}";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound of the login cache: beyond it, expired entries go, then all.
const CACHE_ENTRIES: usize = 10_000;
/// LDAP result code `invalidCredentials` (RFC 4511 appendix A).
const INVALID_CREDENTIALS: u32 = 49;

fn duration(v: &Option<String>, default: Duration) -> Result<Duration, String> {
    v.as_deref()
        .map_or(Ok(default), crate::config::parse_duration)
}

/// Every problem of `c`, as (location under `auth.issuer.ldap`, message), for `config check`.
pub fn problems(c: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |k: &str, m: String| out.push((format!("auth.issuer.ldap.{k}"), m));
    let url = c.url.as_deref().unwrap_or("");
    if url.is_empty() {
        bad("url", "required (ldaps://host or ldap://host)".into());
    } else if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
        bad("url", format!("{url:?} is not an ldap:// or ldaps:// URL"));
    } else if c.starttls == Some(true) && url.starts_with("ldaps://") {
        bad(
            "starttls",
            "StartTLS is for ldap:// URLs; ldaps:// is TLS already".into(),
        );
    }
    if c.cafile.is_some() && c.insecureskipverify == Some(true) {
        bad(
            "insecureskipverify",
            "set cafile or insecureskipverify, not both".into(),
        );
    }
    let search = c.binddn.is_some() || c.userbase.is_some() || c.userfilter.is_some();
    match (&c.userdn, search) {
        (Some(_), true) => bad(
            "userdn",
            "set userdn (direct bind) or binddn, userbase and userfilter (search bind), not both"
                .into(),
        ),
        (None, false) => bad(
            "userdn",
            "set userdn (direct bind, e.g. uid=${username},ou=people,dc=example,dc=org) or binddn, userbase and userfilter (search bind)".into(),
        ),
        (Some(t), false) if !t.contains(USERNAME) => {
            bad("userdn", format!("{t:?} does not contain ${{username}}"))
        }
        (None, true) => {
            for (k, v) in [("binddn", &c.binddn), ("userbase", &c.userbase)] {
                if v.as_deref().unwrap_or("").is_empty() {
                    bad(k, "required for a search bind".into());
                }
            }
            match c.userfilter.as_deref() {
                Some(f) if f.contains(USERNAME) => {}
                Some(f) => bad(
                    "userfilter",
                    format!("{f:?} does not contain ${{username}}"),
                ),
                None => bad(
                    "userfilter",
                    "required for a search bind, e.g. (uid=${username})".into(),
                ),
            }
            match (&c.bindpassword, &c.bindpasswordfile) {
                (Some(_), Some(_)) => bad(
                    "bindpassword",
                    "set bindpassword or bindpasswordfile, not both".into(),
                ),
                (None, None) => bad(
                    "bindpassword",
                    "required for a search bind (or bindpasswordfile)".into(),
                ),
                _ => {}
            }
        }
        _ => {}
    }
    match (&c.groupbase, &c.groupfilter) {
        (Some(_), None) | (None, Some(_)) => bad(
            "groupfilter",
            "a group search needs groupbase and groupfilter".into(),
        ),
        (Some(_), Some(f)) if !f.contains(DN) && !f.contains(USERNAME) => bad(
            "groupfilter",
            format!("{f:?} contains neither ${{dn}} nor ${{username}}"),
        ),
        _ => {}
    }
    for (k, v) in [
        ("dialtimeout", &c.dialtimeout),
        ("timeout", &c.timeout),
        ("cachettl", &c.cachettl),
    ] {
        if let Some(Err(e)) = v.as_deref().map(crate::config::parse_duration) {
            bad(k, e);
        }
    }
    out
}

/// Why a login did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// A failed login (counted by the throttle): the refusal counter's reason and the log's
    /// explanation.
    Refused(&'static str, &'static str),
    /// The directory did not answer, or answered with an error: not the user's fault.
    Unavailable(String),
}

/// How the user's DN is found.
#[derive(Debug)]
enum Bind {
    Direct {
        template: String,
    },
    Search {
        dn: String,
        password: String,
        base: String,
        filter: String,
    },
}

struct Cached {
    key: [u8; 32],
    who: Identity,
    until: Instant,
}

/// The directory, set up at start from [`Config`] (files read, TLS configured).
pub struct Directory {
    url: String,
    starttls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    insecure: bool,
    bind: Bind,
    account_attr: Option<String>,
    memberof_attr: Option<String>,
    groups: Option<(String, String)>,
    group_name_attr: String,
    dial_timeout: Duration,
    timeout: Duration,
    cache_ttl: Duration,
    salt: [u8; 16],
    cache: Mutex<HashMap<String, Cached>>,
    /// Logins asking the directory now, by cache key: a second one with the same key waits.
    asking: Mutex<HashMap<[u8; 32], Queue>>,
}

/// The lock logins with one key queue on, and how many logins hold it.
type Queue = (Arc<tokio::sync::Mutex<()>>, usize);

/// A login's place in [`Directory::asking`]; its entry goes with the last login holding it,
/// also when a login is abandoned (the client went away), so the map holds only logins in
/// progress.
struct Gate<'a> {
    dir: &'a Directory,
    key: [u8; 32],
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Gate<'a> {
    fn enter(dir: &'a Directory, key: [u8; 32]) -> Gate<'a> {
        let mut asking = dir.asking.lock().unwrap_or_else(|p| p.into_inner());
        let entry = asking.entry(key).or_default();
        entry.1 += 1;
        Gate {
            dir,
            key,
            lock: entry.0.clone(),
        }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut asking = self.dir.asking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = asking.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                asking.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("url", &self.url).finish()
    }
}

impl Directory {
    /// Checks `c` ([`problems`]), reads its files and logs what it will do (and a WARN if
    /// certificates are not verified).
    pub fn new(c: &Config) -> Result<Directory, String> {
        if let Some((at, e)) = problems(c).into_iter().next() {
            return Err(format!("{at}: {e}"));
        }
        let url = c.url.clone().unwrap_or_default();
        let bind = match &c.userdn {
            Some(t) => Bind::Direct {
                template: t.clone(),
            },
            None => {
                let password = match (&c.bindpassword, &c.bindpasswordfile) {
                    (Some(p), _) => p.clone(),
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|e| format!("auth.issuer.ldap.bindpasswordfile {f}: {e}"))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                    (None, None) => String::new(),
                };
                if password.is_empty() {
                    return Err("auth.issuer.ldap.bindpassword: empty (a bind with an empty password is unauthenticated)".into());
                }
                Bind::Search {
                    dn: c.binddn.clone().unwrap_or_default(),
                    password,
                    base: c.userbase.clone().unwrap_or_default(),
                    filter: c.userfilter.clone().unwrap_or_default(),
                }
            }
        };
        let tls = match &c.cafile {
            Some(f) => Some(tls_config(f)?),
            None => None,
        };
        let insecure = c.insecureskipverify == Some(true);
        let starttls = c.starttls == Some(true);
        if insecure {
            tracing::warn!(url = %url, "auth.issuer.ldap.insecureskipverify: the directory's certificate is not verified; anyone on the path can read the passwords; hint: set cafile instead");
        } else if url.starts_with("ldap://") && !starttls {
            tracing::warn!(url = %url, "auth.issuer.ldap: passwords go to the directory unencrypted; hint: use ldaps:// or starttls: true unless it is on this host");
        }
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| "no randomness for the LDAP cache's salt".to_owned())?;
        let d = Directory {
            starttls,
            tls,
            insecure,
            account_attr: c.accountattribute.clone(),
            memberof_attr: c.memberofattribute.clone(),
            groups: c.groupbase.clone().zip(c.groupfilter.clone()),
            group_name_attr: c.groupnameattribute.clone().unwrap_or_else(|| "cn".into()),
            dial_timeout: duration(&c.dialtimeout, DEFAULT_TIMEOUT)?,
            timeout: duration(&c.timeout, DEFAULT_TIMEOUT)?,
            cache_ttl: duration(&c.cachettl, DEFAULT_CACHE_TTL)?,
            salt,
            cache: Mutex::default(),
            asking: Mutex::default(),
            bind,
            url,
        };
        tracing::info!(
            url = %d.url,
            bind = match d.bind { Bind::Direct { .. } => "direct", Bind::Search { .. } => "search" },
            "LDAP accounts at the token endpoint"
        );
        Ok(d)
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&self.salt);
        h.update(&(user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(h.finish().as_ref());
        key
    }

    fn cached(&self, user: &str, key: &[u8; 32]) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(user)
            // A plain comparison: the keys are salted with a secret, so timing reveals nothing.
            .filter(|c| c.until > Instant::now() && &c.key == key)
            .map(|c| c.who.clone())
    }

    fn remember(&self, user: &str, key: [u8; 32], who: &Identity) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            user.to_owned(),
            Cached {
                key,
                who: who.clone(),
                until: now + self.cache_ttl,
            },
        );
    }

    /// Logs `user` in with `password`: its identity (source `ldap`, with its groups).
    pub async fn login(&self, user: &str, password: &str) -> Result<Identity, Failure> {
        if password.is_empty() {
            return Err(Failure::Refused(
                "ldap_empty_password",
                "empty password (an LDAP bind without a password proves nothing)",
            ));
        }
        if user.is_empty() {
            return Err(Failure::Refused("bad_credentials", "empty user name"));
        }
        let key = self.cache_key(user, password);
        if let Some(who) = self.cached(user, &key) {
            return Ok(who);
        }
        // One login per key asks; the others wait for it and then find its answer cached (a
        // refusal is not cached: they ask in turn, as they would have).
        let gate = Gate::enter(self, key);
        let _turn = gate.lock.lock().await;
        match self.cached(user, &key) {
            Some(who) => Ok(who),
            None => self.ask(user, password).await.inspect(|who| {
                self.remember(user, key, who);
            }),
        }
    }

    /// One session with the directory for a login.
    async fn ask(&self, user: &str, password: &str) -> Result<Identity, Failure> {
        let unavailable = |what: &str, e: ldap3::LdapError| {
            Failure::Unavailable(format!("{what} at {}: {e}", self.url))
        };
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.dial_timeout)
            .set_starttls(self.starttls)
            .set_no_tls_verify(self.insecure);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        // The connect timeout covers TCP only; StartTLS and the TLS handshake are bounded here.
        let (conn, mut ldap) = match tokio::time::timeout(
            self.dial_timeout,
            LdapConnAsync::with_settings(settings, &self.url),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable("connecting", e)),
            Err(_) => {
                return Err(Failure::Unavailable(format!(
                    "connecting to {} timed out after {:?}",
                    self.url, self.dial_timeout
                )))
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("LDAP connection ended: {e}");
            }
        });
        let mut attrs: Vec<&str> = Vec::new();
        attrs.extend(self.account_attr.as_deref());
        attrs.extend(self.memberof_attr.as_deref());
        let (dn, mut entry) = match &self.bind {
            Bind::Direct { template } => (fill_dn(template, user), None),
            Bind::Search {
                dn,
                password: service_pw,
                base,
                filter,
            } => {
                self.service_bind(&mut ldap, dn, service_pw).await?;
                let filter = fill_filter(filter, &[(USERNAME, user)]);
                let attrs = if attrs.is_empty() {
                    vec!["1.1"]
                } else {
                    attrs.clone()
                };
                let (found, _) = ldap
                    .with_timeout(self.timeout)
                    .search(base, Scope::Subtree, &filter, attrs)
                    .await
                    .and_then(|r| r.success())
                    .map_err(|e| unavailable("searching for the user", e))?;
                let mut found = found.into_iter().map(SearchEntry::construct);
                match (found.next(), found.next()) {
                    (Some(e), None) => (e.dn.clone(), Some(e)),
                    (None, _) => {
                        return Err(Failure::Refused(
                            "bad_credentials",
                            "unknown user or wrong password (LDAP: no entry matches userfilter)",
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(Failure::Refused(
                            "ldap_ambiguous_user",
                            "LDAP: several entries match userfilter; hint: make auth.issuer.ldap.userfilter match one entry",
                        ))
                    }
                }
            }
        };
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(&dn, password)
            .await
            .map_err(|e| unavailable("binding as the user", e))?;
        match bound.rc {
            0 => {}
            INVALID_CREDENTIALS => {
                return Err(Failure::Refused(
                    "bad_credentials",
                    "unknown user or wrong password (LDAP: invalid credentials)",
                ))
            }
            _ => {
                return Err(Failure::Unavailable(format!(
                    "binding as the user at {}: {bound}",
                    self.url
                )))
            }
        }
        // A direct bind knows no attributes yet: the user reads its own entry.
        if entry.is_none() && !attrs.is_empty() {
            let (found, _) = ldap
                .with_timeout(self.timeout)
                .search(&dn, Scope::Base, "(objectClass=*)", attrs)
                .await
                .and_then(|r| r.success())
                .map_err(|e| unavailable("reading the user's entry", e))?;
            entry = found.into_iter().next().map(SearchEntry::construct);
        }
        let first = |attr: &Option<String>| {
            let e = entry.as_ref()?;
            let a = attr.as_deref()?;
            e.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(a))
                .and_then(|(_, v)| v.first().cloned())
        };
        let mut who = Identity::new(
            first(&self.account_attr).unwrap_or_else(|| user.to_owned()),
            identity::LDAP,
        );
        if let (Some(e), Some(a)) = (&entry, &self.memberof_attr) {
            for (k, values) in &e.attrs {
                if k.eq_ignore_ascii_case(a) {
                    who.groups
                        .extend(values.iter().filter_map(|dn| rdn_value(dn)));
                }
            }
        }
        if let Some((base, filter)) = &self.groups {
            // The service account reads groups (a user may not be allowed to).
            if let Bind::Search { dn, password, .. } = &self.bind {
                self.service_bind(&mut ldap, dn, password).await?;
            }
            // The directory's spelling of the name (`accountattribute`) when there is one:
            // `memberUid` is matched case-sensitively.
            let filter = fill_filter(filter, &[(DN, dn.as_str()), (USERNAME, &who.account)]);
            let (found, _) = ldap
                .with_timeout(self.timeout)
                .search(
                    base,
                    Scope::Subtree,
                    &filter,
                    vec![self.group_name_attr.as_str()],
                )
                .await
                .and_then(|r| r.success())
                .map_err(|e| unavailable("searching for the user's groups", e))?;
            for g in found.into_iter().map(SearchEntry::construct) {
                let name = g
                    .attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&self.group_name_attr))
                    .and_then(|(_, v)| v.first().cloned());
                who.groups.extend(name);
            }
        }
        who.groups.sort();
        who.groups.dedup();
        let _ = ldap.unbind().await;
        Ok(who)
    }

    async fn service_bind(
        &self,
        ldap: &mut ldap3::Ldap,
        dn: &str,
        password: &str,
    ) -> Result<(), Failure> {
        ldap.with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await
            .and_then(|r| r.success())
            .map(|_| ())
            .map_err(|e| {
                Failure::Unavailable(format!(
                    "binding as the service account {dn} at {}: {e}; hint: check auth.issuer.ldap.binddn and its password",
                    self.url
                ))
            })
    }
}

/// `template` with `${username}` replaced by `user` escaped as an RDN value (RFC 4514): a name
/// cannot add an RDN or end the value.
fn fill_dn(template: &str, user: &str) -> String {
    template.replace(USERNAME, &ldap3::dn_escape(user))
}

/// `template` with each variable replaced by its value escaped for a filter (RFC 4515): a
/// value cannot add a wildcard or close the filter. Values are inserted in one pass, so a value
/// holding `${dn}` is not replaced again.
fn fill_filter(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (name, value) in vars {
            if let Some(after) = rest.strip_prefix(name) {
                out.push_str(&ldap3::ldap_escape(*value));
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        out.extend(chars.next());
        rest = chars.as_str();
    }
    out
}

/// The value of the first RDN of `dn` (`cn=admins,ou=groups,...` is `admins`), unescaped.
fn rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            ',' | '+' => break,
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

/// A client TLS configuration trusting only the CAs of `path`.
fn tls_config(path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let at = |e: &dyn std::fmt::Display| format!("auth.issuer.ldap.cafile {path}: {e}");
    let pem = std::fs::read(path).map_err(|e| at(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.map_err(|e| at(&e))?).map_err(|e| at(&e))?;
    }
    if roots.is_empty() {
        return Err(at(&"no PEM certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| at(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn direct() -> Config {
        Config {
            url: Some("ldaps://ldap.example.org".into()),
            userdn: Some("uid=${username},ou=people,dc=example,dc=org".into()),
            ..Config::default()
        }
    }

    #[test]
    fn names_are_escaped_for_dns_and_filters() {
        let t = "uid=${username},ou=people,dc=example,dc=org";
        assert_eq!(fill_dn(t, "bob"), "uid=bob,ou=people,dc=example,dc=org");
        // RFC 4514: a name cannot add an RDN or change the attribute (hex escapes are valid).
        assert_eq!(
            fill_dn(t, "a,ou=admins"),
            "uid=a\\2cou\\3dadmins,ou=people,dc=example,dc=org"
        );
        assert_eq!(fill_dn("uid=${username}", "a+cn=x"), "uid=a\\2bcn\\3dx");
        assert!(fill_dn("uid=${username}", " #x ").starts_with("uid=\\"));
        // RFC 4515: a name cannot widen or close the filter.
        let u = |v: &str| fill_filter("(&(uid=${username})(objectClass=person))", &[(USERNAME, v)]);
        assert_eq!(u("bob"), "(&(uid=bob)(objectClass=person))");
        assert_eq!(u("*"), "(&(uid=\\2a)(objectClass=person))");
        assert_eq!(
            u("a)(uid=*"),
            "(&(uid=a\\29\\28uid=\\2a)(objectClass=person))"
        );
        assert_eq!(u("a\\b\0"), "(&(uid=a\\5cb\\00)(objectClass=person))");
        // Values are not substituted again, and both variables may appear.
        let g = "(|(member=${dn})(memberUid=${username}))";
        assert_eq!(
            fill_filter(g, &[(DN, "uid=${username},dc=o"), (USERNAME, "b(")]),
            "(|(member=uid=${username},dc=o)(memberUid=b\\28))"
        );
    }

    #[test]
    fn group_names_from_member_of() {
        assert_eq!(
            rdn_value("cn=admins,ou=groups,dc=example,dc=org").as_deref(),
            Some("admins")
        );
        assert_eq!(rdn_value("CN=a\\,b,OU=x").as_deref(), Some("a,b"));
        assert_eq!(rdn_value("cn=x+uid=y,dc=o").as_deref(), Some("x"));
        assert_eq!(rdn_value("nonsense"), None);
        assert_eq!(rdn_value("cn=,dc=o"), None);
    }

    #[test]
    fn config_problems() {
        assert!(problems(&direct()).is_empty(), "{:?}", problems(&direct()));
        let at = |c: &Config| problems(c).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let mut c = direct();
        c.userdn = Some("uid=bob,ou=people".into());
        assert_eq!(at(&c), ["auth.issuer.ldap.userdn"]);
        c.userdn = None;
        assert_eq!(at(&c), ["auth.issuer.ldap.userdn"]);
        let mut c = direct();
        c.binddn = Some("cn=svc".into());
        assert_eq!(at(&c), ["auth.issuer.ldap.userdn"]);
        let search = Config {
            url: Some("ldap://127.0.0.1:389".into()),
            starttls: Some(true),
            binddn: Some("cn=svc,dc=example,dc=org".into()),
            bindpassword: Some("pw".into()),
            userbase: Some("ou=people,dc=example,dc=org".into()),
            userfilter: Some("(uid=${username})".into()),
            groupbase: Some("ou=groups,dc=example,dc=org".into()),
            groupfilter: Some("(member=${dn})".into()),
            ..Config::default()
        };
        assert!(problems(&search).is_empty(), "{:?}", problems(&search));
        let mut c = search.clone();
        c.userfilter = Some("(uid=bob)".into());
        c.bindpassword = None;
        c.groupfilter = Some("(cn=admins)".into());
        assert_eq!(
            at(&c),
            [
                "auth.issuer.ldap.userfilter",
                "auth.issuer.ldap.bindpassword",
                "auth.issuer.ldap.groupfilter"
            ]
        );
        let mut c = search.clone();
        c.url = Some("ldaps://x".into());
        c.cafile = Some("ca.pem".into());
        c.insecureskipverify = Some(true);
        c.timeout = Some("soon".into());
        assert_eq!(
            at(&c),
            [
                "auth.issuer.ldap.starttls",
                "auth.issuer.ldap.insecureskipverify",
                "auth.issuer.ldap.timeout"
            ]
        );
        c.url = Some("http://x".into());
        assert_eq!(at(&c)[0], "auth.issuer.ldap.url");
    }

    #[test]
    fn start_refuses_unreadable_files() {
        let mut c = direct();
        c.cafile = Some("/nonexistent/ca.pem".into());
        let e = Directory::new(&c).unwrap_err();
        assert!(
            e.contains("auth.issuer.ldap.cafile /nonexistent/ca.pem"),
            "{e}"
        );
        let c = Config {
            url: Some("ldap://127.0.0.1".into()),
            binddn: Some("cn=svc".into()),
            bindpasswordfile: Some("/nonexistent/pw".into()),
            userbase: Some("dc=o".into()),
            userfilter: Some("(uid=${username})".into()),
            ..Config::default()
        };
        let e = Directory::new(&c).unwrap_err();
        assert!(e.contains("bindpasswordfile /nonexistent/pw"), "{e}");
    }

    #[tokio::test]
    async fn empty_passwords_never_reach_the_directory() {
        // Nothing listens on port 1: asking the directory would be Unavailable.
        let mut c = direct();
        c.url = Some("ldap://127.0.0.1:1".into());
        let d = Directory::new(&c).unwrap();
        assert!(matches!(
            d.login("alice", "").await,
            Err(Failure::Refused("ldap_empty_password", _))
        ));
        assert!(matches!(
            d.login("alice", "pw").await,
            Err(Failure::Unavailable(_))
        ));
    }

    #[test]
    fn the_cache_expires_and_is_bounded() {
        let mut c = direct();
        c.cachettl = Some("50ms".into());
        let d = Directory::new(&c).unwrap();
        let who = Identity::new("alice", identity::LDAP);
        let key = d.cache_key("alice", "pw");
        d.remember("alice", key, &who);
        assert_eq!(d.cached("alice", &key), Some(who.clone()));
        assert_eq!(d.cached("alice", &d.cache_key("alice", "other")), None);
        assert_eq!(d.cached("bob", &key), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.cached("alice", &key).is_some() {
            assert!(Instant::now() < deadline, "the entry did not expire");
            std::thread::sleep(Duration::from_millis(10));
        }
        for i in 0..CACHE_ENTRIES + 10 {
            d.remember(&format!("u{i}"), key, &who);
        }
        let len = d.cache.lock().unwrap().len();
        assert!((1..=CACHE_ENTRIES).contains(&len), "{len}");
        // Off: nothing is kept.
        c.cachettl = Some("0s".into());
        let d = Directory::new(&c).unwrap();
        d.remember("alice", key, &who);
        assert!(d.cache.lock().unwrap().is_empty());
    }

    #[test]
    fn the_cache_key_depends_on_name_password_and_salt() {
        let d = Directory::new(&direct()).unwrap();
        let e = Directory::new(&direct()).unwrap();
        assert_eq!(d.cache_key("a", "pw"), d.cache_key("a", "pw"));
        assert_ne!(d.cache_key("a", "pw"), d.cache_key("a", "pw2"));
        assert_ne!(d.cache_key("ab", "c"), d.cache_key("a", "bc"));
        assert_ne!(d.cache_key("a", "pw"), e.cache_key("a", "pw"));
    }
}
