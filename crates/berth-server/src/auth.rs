//! Access control of the `/v2/` API: what each request needs ([`required`]), who is asking
//! (a bearer token, Basic credentials, or nobody), and the 401 challenge clients follow when
//! the answer is no.
//!
//! - **Token** (`auth.token`): a bearer token verified by [`berth_auth::token::Verifier`] must
//!   cover every [`Access`] the request needs; `GET /v2/` needs only a valid token.
//! - **Basic** (`auth.htpasswd`): any valid account may do anything, as in distribution.
//! - **Silly** (`auth.silly`): distribution's development stub: any non-empty `Authorization`
//!   header is admitted; without one, a `Bearer` challenge as distribution's stub writes it.
//! - **None**: everything is allowed.
//!
//! Every refused token or credential logs one WARN line with the reason and a hint (never the
//! token or password).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use berth_auth::htpasswd::Users;
use berth_auth::issuer::Issuer;
use berth_auth::scope::{covers, scopes_of, Access};
use berth_auth::token::{Reason, Verified, Verifier};
use http::{HeaderMap, Method};

use crate::endpoint::Endpoint;

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Who a request comes from, as far as access control is concerned.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No access control is configured.
    Open,
    /// An htpasswd account (may do anything).
    Account(String),
    /// A verified bearer token (may do what its `access` claim says).
    Token(Arc<Verified>),
}

impl Principal {
    pub fn can(&self, a: &Access) -> bool {
        match self {
            Principal::Open | Principal::Account(_) => true,
            Principal::Token(t) => covers(&t.access, a),
        }
    }

    /// The name for the access log (`-` when unknown).
    pub fn name(&self) -> &str {
        match self {
            Principal::Open => "-",
            Principal::Account(a) => a,
            Principal::Token(t) if t.subject.is_empty() => "anonymous",
            Principal::Token(t) => &t.subject,
        }
    }
}

/// What each request needs, in distribution's terms: reads need `pull`; writes `pull` and
/// `push`; deletes `delete`; the catalog `registry:catalog:*`. A mount's `pull` on the source
/// repository is optional (without it the mount falls back to an upload) and is checked by the
/// handler.
pub fn required(ep: &Endpoint, method: &Method) -> Vec<Access> {
    let repo = |name: &berth_core::RepoName, actions: &[&str]| -> Vec<Access> {
        actions
            .iter()
            .map(|a| Access::repository(name.as_str(), a))
            .collect()
    };
    let read = matches!(*method, Method::GET | Method::HEAD);
    match ep {
        Endpoint::Base | Endpoint::Token | Endpoint::Jwks => Vec::new(),
        Endpoint::Catalog => vec![Access::catalog()],
        Endpoint::Tags(n) | Endpoint::Referrers(n, _) => repo(n, &["pull"]),
        Endpoint::Manifest(n, _) | Endpoint::ManifestBadTag(n, _) | Endpoint::Blob(n, _) => {
            if read {
                repo(n, &["pull"])
            } else if *method == Method::DELETE {
                repo(n, &["delete"])
            } else {
                repo(n, &["pull", "push"])
            }
        }
        // Uploads, including their status and cancellation, belong to pushing.
        Endpoint::UploadStart(n) | Endpoint::Upload(n, _) => repo(n, &["pull", "push"]),
    }
}

/// A refusal: the 401 to send.
#[derive(Debug)]
pub struct Challenge {
    pub www_authenticate: String,
    pub message: String,
    pub needed: Vec<Access>,
}

/// An htpasswd file, re-read when it changes (checked at most every few seconds), plus
/// accounts given in the configuration.
pub struct HtpasswdFile {
    path: String,
    /// Accounts from the configuration (name, bcrypt hash), added to the file's.
    extra: Vec<(String, String)>,
    state: Mutex<(Instant, Option<SystemTime>, Arc<Users>)>,
}

impl berth_auth::issuer::UserSource for HtpasswdFile {
    fn current(&self) -> Arc<Users> {
        self.users()
    }
}

const RELOAD_CHECK: Duration = Duration::from_secs(5);

impl HtpasswdFile {
    pub fn load(path: &str, extra: Vec<(String, String)>) -> Result<HtpasswdFile, String> {
        let missing =
            std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        let (mtime, users) = if missing {
            // distribution starts here too, after creating the file with a user `docker` and a
            // random password that it writes to its log. Berth writes no passwords to logs: it
            // starts with no accounts from the file and reads it once it appears.
            tracing::warn!(
                path,
                "the htpasswd file does not exist: no account from it can log in until it is \
                 created (it is read when it appears); distribution would create it with a user \
                 `docker` whose password it logs, which Berth does not do"
            );
            (None, Self::users_from("", path, &extra)?)
        } else {
            Self::read(path, &extra)?
        };
        Ok(HtpasswdFile {
            path: path.to_owned(),
            extra,
            state: Mutex::new((Instant::now(), mtime, Arc::new(users))),
        })
    }

    /// `auth.htpasswd` as distribution opens it: both versions also start when the file exists
    /// but cannot be read (Debian's packaged config names the directory
    /// `/etc/docker/registry`) and refuse the credentials of every request until it can.
    /// Berth says so once at start, refuses with 401, and reads the file as soon as it changes.
    pub fn load_or_refuse_all(path: &str) -> HtpasswdFile {
        Self::load(path, Vec::new()).unwrap_or_else(|e| {
            tracing::warn!(
                "auth.htpasswd: cannot read {e}; every credential is refused until the file can be read (it is read again when it changes); hint: create it with `htpasswd -Bc {path} USER`"
            );
            // A directory keeps its time (it is not re-read until it changes); an unreadable
            // file gets none, so it is tried again at the next check.
            let mtime = std::fs::metadata(path)
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| m.modified().ok());
            HtpasswdFile {
                path: path.to_owned(),
                extra: Vec::new(),
                state: Mutex::new((Instant::now(), mtime, Arc::new(Users::default()))),
            }
        })
    }

    fn read(path: &str, extra: &[(String, String)]) -> Result<(Option<SystemTime>, Users), String> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        Ok((mtime, Self::users_from(&text, path, extra)?))
    }

    /// The file's accounts plus those of the configuration.
    fn users_from(text: &str, path: &str, extra: &[(String, String)]) -> Result<Users, String> {
        let mut users = Users::parse(text, path)?;
        for (name, hash) in extra {
            users.add(name, hash)?;
        }
        Ok(users)
    }

    /// The current users (re-read if the file changed; a broken new version keeps the old).
    pub fn users(&self) -> Arc<Users> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.elapsed() >= RELOAD_CHECK {
            st.0 = Instant::now();
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != st.1 {
                match Self::read(&self.path, &self.extra) {
                    Ok((m, users)) => {
                        tracing::info!(path = %self.path, users = users.len(), "htpasswd file reloaded");
                        st.1 = m;
                        st.2 = Arc::new(users);
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path, "htpasswd file changed but cannot be read, keeping the previous users: {e}");
                        st.1 = mtime;
                    }
                }
            }
        }
        st.2.clone()
    }
}

/// How requests are authenticated.
pub enum Mode {
    Open,
    Basic {
        realm: String,
        users: HtpasswdFile,
    },
    Token {
        verifier: Arc<Verifier>,
        /// `auth.token.realm`; `None`: Berth's own issuer endpoint on the request's host.
        realm: Option<String>,
        /// `auth.token.autoredirect`: the realm is this path on the request's `Host`, with
        /// `X-Forwarded-Proto` or `https` (see [`auto_realm`]).
        autoredirect: Option<String>,
        service: String,
        jwks: Option<Arc<crate::jwks::Refresher>>,
    },
    /// `auth.silly`: the header's presence is all that is checked.
    Silly {
        realm: String,
        service: String,
    },
}

/// Access control and, optionally, Berth's token issuer.
pub struct Auth {
    pub mode: Mode,
    pub issuer: Option<Arc<Issuer>>,
    /// Refusals counted for the metrics.
    pub refusals: Refusals,
    /// Failed logins at the issuer's token endpoint, per account and address.
    pub throttle: crate::throttle::Throttle,
    /// Robot token records read recently.
    pub robots: crate::robots::RobotCache,
    /// External issuers whose tokens log workloads in at the issuer's token endpoint.
    pub federation: crate::federation::Shared,
    /// The issuer's LDAP directory (`auth.issuer.ldap`).
    pub ldap: Option<Arc<crate::ldap::Directory>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: Mode::Open,
            issuer: None,
            refusals: Refusals::default(),
            throttle: Default::default(),
            robots: Default::default(),
            federation: Default::default(),
            ldap: None,
        }
    }
}

/// Refused credentials and tokens since the start, by kind (`token`, `basic`, `issuer`) and
/// reason. Refusals are rare next to requests: a mutex is cheap enough.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>);

impl Refusals {
    pub fn count(&self, kind: &'static str, reason: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((kind, reason)).or_insert(0) += 1;
    }

    /// `((kind, reason), count)`, sorted.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// `Basic` credentials from an `Authorization` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The realm of `auth.token.autoredirect`, built as distribution 3 builds it: the scheme is
/// `X-Forwarded-Proto` when present, else `https` (2.8 always said `https`); the host is the
/// request's `Host`; the path is `autoredirectpath` (default `/auth/token`).
pub fn auto_realm(headers: &HeaderMap, path: &str) -> String {
    // The first of a proxy chain's list (distribution would put the whole list in the URL).
    let scheme = crate::http_util::forwarded_proto(headers).unwrap_or("https");
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let slash = if path.starts_with('/') || path.is_empty() {
        ""
    } else {
        "/"
    };
    format!("{scheme}://{host}{slash}{path}")
}

/// `autoredirectpath` when `autoredirect` is on (distribution's default path when empty).
pub fn autoredirect_path(t: &crate::config::schema::TokenAuth) -> Option<String> {
    t.autoredirect.unwrap_or(false).then(|| {
        t.autoredirectpath
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/auth/token".to_owned())
    })
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// distribution's silly challenge: one `type:name:action` per needed access (not grouped by
/// resource as a token challenge is), space-separated.
fn silly_challenge(realm: &str, service: &str, needed: &[Access]) -> Challenge {
    let mut h = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        quote(realm),
        quote(service)
    );
    if !needed.is_empty() {
        let scope: Vec<String> = needed
            .iter()
            .map(|a| format!("{}:{}:{}", a.typ, a.name, a.action))
            .collect();
        h.push_str(&format!(",scope=\"{}\"", quote(&scope.join(" "))));
    }
    Challenge {
        www_authenticate: h,
        message: "authentication required".to_owned(),
        needed: needed.to_vec(),
    }
}

impl Auth {
    /// Decides a request. `base` is the external base URL of the request (for the default
    /// realm).
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        needed: &[Access],
        base: &str,
    ) -> Result<Principal, Challenge> {
        match &self.mode {
            Mode::Open => Ok(Principal::Open),
            Mode::Silly { realm, service } => {
                let present = headers
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| !v.is_empty());
                if present {
                    return Ok(Principal::Account("silly".to_owned()));
                }
                Err(silly_challenge(realm, service, needed))
            }
            Mode::Basic { realm, users } => {
                let challenge = |message: &str| Challenge {
                    www_authenticate: format!("Basic realm=\"{}\"", quote(realm)),
                    message: message.to_owned(),
                    needed: needed.to_vec(),
                };
                let Some((user, password)) = basic_credentials(headers) else {
                    return Err(challenge("authentication required"));
                };
                let users = users.users();
                // bcrypt is slow on purpose: off the async threads.
                let (u, p) = (user.clone(), password);
                let ok = tokio::task::spawn_blocking(move || users.check(&u, &p, now_secs()))
                    .await
                    .unwrap_or(false);
                if ok {
                    Ok(Principal::Account(user))
                } else {
                    self.refusals.count("basic", "bad_credentials");
                    tracing::warn!(
                        user = %user,
                        "basic credentials refused: unknown user or wrong password; hint: check the account in the auth.htpasswd file (bcrypt, `htpasswd -B`)"
                    );
                    Err(challenge("invalid username or password"))
                }
            }
            Mode::Token {
                verifier,
                realm,
                autoredirect,
                service,
                jwks,
            } => {
                let realm = match (autoredirect, realm) {
                    (Some(path), _) => auto_realm(headers, path),
                    (None, Some(r)) => r.clone(),
                    (None, None) => format!("{base}/auth/token"),
                };
                let scope: Vec<String> = scopes_of(needed).iter().map(|s| s.to_string()).collect();
                let challenge = |error: Option<&str>, message: String| {
                    let mut h = format!(
                        "Bearer realm=\"{}\",service=\"{}\"",
                        quote(&realm),
                        quote(service)
                    );
                    if !scope.is_empty() {
                        h.push_str(&format!(",scope=\"{}\"", quote(&scope.join(" "))));
                    }
                    if let Some(e) = error {
                        h.push_str(&format!(",error=\"{e}\""));
                    }
                    Challenge {
                        www_authenticate: h,
                        message,
                        needed: needed.to_vec(),
                    }
                };
                let Some(token) = bearer(headers) else {
                    return Err(challenge(None, "authentication required".into()));
                };
                let mut verdict = verifier.verify(token, now_secs());
                if let (Err(r), Some(jwks)) = (&verdict, jwks) {
                    // An unknown kid may be a key the issuer rotated in: fetch its JWKS again
                    // (rate-limited) and try once more.
                    if r.reason == Reason::UnknownKey && jwks.refresh(verifier).await {
                        verdict = verifier.verify(token, now_secs());
                    }
                }
                let token = match verdict {
                    Ok(t) => t,
                    Err(r) => {
                        self.refusals.count("token", r.reason.as_str());
                        tracing::warn!("{r}");
                        return Err(challenge(
                            Some("invalid_token"),
                            format!("token refused: {}", r.detail),
                        ));
                    }
                };
                let principal = Principal::Token(token);
                let missing: Vec<&Access> = needed.iter().filter(|a| !principal.can(a)).collect();
                if missing.is_empty() {
                    return Ok(principal);
                }
                let wanted: Vec<String> = missing
                    .iter()
                    .map(|a| format!("{}:{}:{}", a.typ, a.name, a.action))
                    .collect();
                self.refusals.count("token", "insufficient_scope");
                tracing::warn!(
                    subject = %principal.name(),
                    "token refused (insufficient_scope): it does not grant {}; hint: the token server's access rules do not allow this account that access, or the client asked for too little",
                    wanted.join(" ")
                );
                Err(challenge(
                    Some("insufficient_scope"),
                    format!(
                        "access to {} is not granted by the token",
                        wanted.join(", ")
                    ),
                ))
            }
        }
    }
}
