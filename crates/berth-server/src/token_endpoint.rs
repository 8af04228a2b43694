//! The token endpoint of Berth's issuer, `/auth/token`, as Docker's clients use it
//! (<https://distribution.github.io/distribution/spec/auth/token/> and `.../oauth/`):
//!
//! - `GET ?service=&scope=...&offline_token=true` with Basic credentials, or none for an
//!   anonymous token: `{"token", "access_token", "expires_in", "issued_at"[, "refresh_token"]}`;
//! - `POST` form with `grant_type=password` (`username`, `password`) or
//!   `grant_type=refresh_token` (`refresh_token`), plus `service`, `scope` (space-separated),
//!   `client_id` and `access_type=offline`: what `docker login` does to get an identity token.
//!
//! Wrong credentials are 401 (clients show "unauthorized"); a scope the ACL does not grant is
//! simply left out of the token. Repeated failures for an account or from an address are
//! answered 429 with `Retry-After` for a growing while ([`crate::throttle`]). The keys are
//! published at `/auth/jwks.json`.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use berth_auth::identity::Identity;
use berth_auth::issuer::Issuer;
use berth_auth::scope::Scope;
use http::request::Parts;
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::json;

use berth_auth::robot::RobotToken;
use berth_storage::StorageDriver;

use crate::auth::{basic_credentials, now_secs, Auth};
use crate::body::{read_to_limit, BodySlot};
use crate::http_util::{percent_decode, query};

/// The largest token request form (a few scopes and credentials).
const MAX_FORM: usize = 64 * 1024;

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Tokens must not be cached by proxies.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_reply(
        status,
        json!({ "error": error, "error_description": description, "details": description }),
    )
}

fn unauthorized(issuer: &Issuer, description: &str) -> Response {
    let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", description);
    let realm = format!(
        "Basic realm=\"{}\"",
        issuer.settings().service.replace('"', "")
    );
    if let Ok(v) = HeaderValue::from_str(&realm) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Scopes from `scope` values; each may hold several, space-separated.
fn scopes<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<Scope>, String> {
    let mut out = Vec::new();
    for v in values {
        for s in v.split(' ').filter(|s| !s.is_empty()) {
            out.push(s.parse::<Scope>().map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    berth_core::time::rfc3339(t)
}

/// Who a token request logged in as.
enum Login {
    Anonymous,
    /// Basic credentials or the password grant (the issuer's accounts, LDAP, an external
    /// token), or a refresh token.
    Known {
        who: Identity,
        /// How it was proven, for the grant's log line: the identity source, or
        /// `refresh_token`.
        via: String,
    },
    /// A robot token presented as the password.
    Robot(RobotToken),
}

impl Login {
    fn known(who: Identity) -> Login {
        let via = who.source.clone();
        Login::Known { who, via }
    }
}

/// Signs a token and logs the grant: one line with the account, how it was identified
/// (`source`, and a robot token's id), what was asked and what was granted. Never a secret.
fn issue(
    issuer: &Issuer,
    login: &Login,
    requested: &[Scope],
    offline: bool,
    refresh_for: Option<&str>,
) -> Response {
    let now = now_secs();
    let (signed, account, source, robot) = match login {
        Login::Anonymous => (
            issuer.issue(None, requested, false, now),
            "anonymous",
            "anonymous",
            "",
        ),
        Login::Known { who, via } => (
            issuer.issue(Some(who), requested, offline, now),
            who.account.as_str(),
            via.as_str(),
            "",
        ),
        Login::Robot(t) => (
            issuer.issue_for_robot(t, requested, now),
            t.account.as_str(),
            berth_auth::identity::ROBOT_TOKEN,
            t.id.as_str(),
        ),
    };
    match signed {
        Ok(t) => {
            let granted: Vec<String> = t.granted.iter().map(|s| s.to_string()).collect();
            tracing::info!(
                account,
                source,
                robot_token = robot,
                requested = %requested.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
                granted = %granted.join(" "),
                "token issued"
            );
            let mut body = json!({
                "token": t.token,
                "access_token": t.token,
                "expires_in": t.expires_in,
                "issued_at": rfc3339(t.issued_at),
                "scope": granted.join(" "),
            });
            // A refresh grant hands back the refresh token it was given (Docker keeps it).
            match (t.refresh_token, refresh_for) {
                (Some(r), _) => body["refresh_token"] = json!(r),
                (None, Some(r)) => body["refresh_token"] = json!(r),
                _ => {}
            }
            json_reply(StatusCode::OK, body)
        }
        Err(e) => {
            tracing::error!("signing a token failed: {e}");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            )
        }
    }
}

/// Serves `/auth/token`.
pub async fn token(
    issuer: &Arc<Issuer>,
    auth: &Auth,
    driver: &dyn StorageDriver,
    req: &Parts,
    body: &mut BodySlot,
) -> Response {
    let refusals = &auth.refusals;
    // The client's IP address (the port changes with each connection).
    let address =
        req.extensions
            .get::<crate::listen::PeerAddr>()
            .map(|p| match p.0.rsplit_once(':') {
                Some((ip, _)) => ip.trim_matches(|c| c == '[' || c == ']').to_owned(),
                None => p.0.to_string(),
            });
    let address = address.as_deref();
    match req.method {
        Method::GET => {
            let q = query(&req.uri);
            let requested = match scopes(
                q.iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.as_str()),
            ) {
                Ok(s) => s,
                Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &e),
            };
            let offline = q.iter().any(|(k, v)| k == "offline_token" && v == "true");
            let login = match basic_credentials(&req.headers) {
                None => Login::Anonymous,
                Some((user, password)) => {
                    match check(issuer, auth, driver, address, user, password).await {
                        Ok(l) => l,
                        Err(r) => return r,
                    }
                }
            };
            issue(issuer, &login, &requested, offline, None)
        }
        Method::POST => {
            let form = match read_to_limit(body.take(), MAX_FORM).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "unreadable form",
                    )
                }
            };
            let fields: Vec<(String, String)> = form
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect();
            let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let requested = match scopes(
                fields
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.as_str()),
            ) {
                Ok(s) => s,
                Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &e),
            };
            let offline = field("access_type") == Some("offline");
            match field("grant_type") {
                Some("password") => {
                    let user = field("username").unwrap_or("").to_owned();
                    let password = field("password").unwrap_or("").to_owned();
                    match check(issuer, auth, driver, address, user, password).await {
                        Ok(l) => issue(issuer, &l, &requested, offline, None),
                        Err(r) => r,
                    }
                }
                Some("refresh_token") => {
                    let refresh = field("refresh_token").unwrap_or("");
                    match issuer.redeem_refresh(refresh, now_secs()) {
                        Ok(who) => {
                            let login = Login::Known {
                                who,
                                via: "refresh_token".into(),
                            };
                            issue(issuer, &login, &requested, false, Some(refresh))
                        }
                        Err(e) => {
                            refusals.count("issuer", "bad_refresh_token");
                            tracing::warn!(
                                "refresh token refused: {e}; hint: the client must log in again"
                            );
                            unauthorized(issuer, "invalid refresh token")
                        }
                    }
                }
                other => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!(
                        "grant_type {:?} is not supported (password, refresh_token)",
                        other.unwrap_or("")
                    ),
                ),
            }
        }
        _ => oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "GET or POST",
        ),
    }
}

/// Whom `user` logs in as, or the response refusing it: 429 while the account or the address
/// is locked out (nothing is checked then), 401 for wrong credentials, 503 when a robot
/// token's record cannot be read or the LDAP directory does not answer. A password in the robot
/// token form is looked up by its id ([`crate::robots`]); any other is checked against the
/// issuer's accounts with bcrypt, off the async threads, or, for a name that is not one of
/// them, against LDAP ([`crate::ldap`]). A refusal logs one WARN line, which also says when it
/// starts a lock-out.
async fn check(
    issuer: &Arc<Issuer>,
    auth: &Auth,
    driver: &dyn StorageDriver,
    address: Option<&str>,
    user: String,
    password: String,
) -> Result<Login, Response> {
    // An external token (workload identity): verified by its issuer's keys. Its failures are
    // not counted against the name or address: a token is not guessed, and pods that share a
    // node's address and a placeholder user name must not lock each other out.
    if let Some(f) = auth.federation.issuer_of(&password) {
        return match f.identify(&password, now_secs()).await {
            Ok(who) => Ok(Login::known(who)),
            Err(r) => {
                auth.refusals.count("issuer", r.reason);
                tracing::warn!(user = %user, "token request refused: {}", r.message);
                Err(unauthorized(issuer, "invalid token"))
            }
        };
    }
    if let Some(iss) = berth_auth::federation::unverified_issuer(&password) {
        if !issuer.has_account(&user) {
            auth.refusals.count("issuer", "unknown_issuer");
            tracing::warn!(
                user = %user,
                iss = ?iss,
                "token request refused (unknown_issuer): the password is a token from an issuer that is not trusted; hint: add it to auth.issuer.federated, or check the token's iss"
            );
            return Err(unauthorized(issuer, "invalid token"));
        }
    }
    if let Some(wait) = auth.throttle.check(&user, address) {
        auth.refusals.count("issuer", "throttled");
        let secs = wait.retry_after.as_secs().max(1);
        let mut r = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            &format!("too many failed logins; retry in {secs} s"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(r);
    }
    let (login, refusal) = if let Some(id) = berth_auth::robot::id_of(&password) {
        match auth.robots.get(driver, id).await {
            Err(e) => {
                tracing::warn!(
                    user = %user,
                    robot_token = id,
                    "token request failed: the robot token's record cannot be read ({e}); hint: check {}",
                    auth.robots.place()
                );
                return Err(oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "robot token records unavailable",
                ));
            }
            Ok(None) => (None, ("unknown_robot_token", "robot token unknown or revoked; hint: create a new one with berth tokens create")),
            Ok(Some(t)) => match t.check(&password, now_secs()) {
                Ok(()) => (Some(Login::Robot(t)), ("", "")),
                Err(berth_auth::robot::Refused::Expired) => (None, ("expired_robot_token", "robot token expired; hint: create a new one with berth tokens create")),
                Err(berth_auth::robot::Refused::WrongSecret) => (None, ("bad_robot_token", "robot token secret does not match; hint: the secret is printed once, at creation")),
            },
        }
    } else if let Some(dir) = auth.ldap.as_ref().filter(|_| !issuer.has_account(&user)) {
        // LDAP (issue 14, part 2): names that are not the issuer's own accounts. A directory
        // that does not answer is 503, not a failed login (the throttle does not count it).
        match dir.login(&user, &password).await {
            Ok(who) => (Some(Login::known(who)), ("", "")),
            Err(crate::ldap::Failure::Refused(reason, why)) => (None, (reason, why)),
            Err(crate::ldap::Failure::Unavailable(e)) => {
                auth.refusals.count("issuer", "ldap_unavailable");
                tracing::warn!(user = %user, "token request failed: the LDAP directory did not answer ({e}); hint: other accounts still log in");
                return Err(oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the account directory is unavailable",
                ));
            }
        }
    } else {
        let shared = issuer.clone();
        let u = user.clone();
        let account =
            tokio::task::spawn_blocking(move || shared.authenticate(&u, &password, now_secs()))
                .await
                .ok()
                .flatten();
        (
            account.map(Login::known),
            ("bad_credentials", "unknown user or wrong password; hint: check the account in auth.issuer (htpasswd or users, bcrypt)"),
        )
    };
    if let Some(l) = login {
        auth.throttle.succeeded(&user, address);
        return Ok(l);
    }
    let (reason, why) = refusal;
    auth.refusals.count("issuer", reason);
    match auth.throttle.failed(&user, address) {
        None => tracing::warn!(user = %user, "token request refused: {why}"),
        Some(w) => tracing::warn!(
            user = %user,
            address = address.unwrap_or(""),
            locked_out = w.by,
            retry_after_secs = w.retry_after.as_secs(),
            "token request refused: {why}; again: the {} is locked out for {} s (a client with a stale secret, such as a CI variable or a credential helper, keeps retrying it)",
            w.by,
            w.retry_after.as_secs()
        ),
    }
    Err(unauthorized(issuer, "invalid username or password"))
}

/// Serves `/auth/jwks.json`.
pub fn jwks(issuer: &Issuer) -> Response {
    let mut r = Response::new(Body::from(issuer.jwks().to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
