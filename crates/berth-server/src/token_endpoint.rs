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
//! simply left out of the token. The keys are published at `/auth/jwks.json`.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use berth_auth::issuer::Issuer;
use berth_auth::scope::Scope;
use http::request::Parts;
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::auth::{basic_credentials, now_secs, Refusals};
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

fn issue(
    issuer: &Issuer,
    account: Option<&str>,
    requested: &[Scope],
    offline: bool,
    refresh_for: Option<&str>,
) -> Response {
    let now = now_secs();
    match issuer.issue(account, requested, offline, now) {
        Ok(t) => {
            let granted: Vec<String> = t.granted.iter().map(|s| s.to_string()).collect();
            tracing::info!(
                account = account.unwrap_or("anonymous"),
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
    refusals: &Refusals,
    req: &Parts,
    body: &mut BodySlot,
) -> Response {
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
            let account = match basic_credentials(&req.headers) {
                None => None,
                Some((user, password)) => match check(issuer, refusals, user, password).await {
                    Some(a) => Some(a),
                    None => return unauthorized(issuer, "invalid username or password"),
                },
            };
            issue(
                issuer,
                account.as_deref(),
                &requested,
                offline && account.is_some(),
                None,
            )
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
                    match check(issuer, refusals, user, password).await {
                        Some(a) => issue(issuer, Some(&a), &requested, offline, None),
                        None => unauthorized(issuer, "invalid username or password"),
                    }
                }
                Some("refresh_token") => {
                    let refresh = field("refresh_token").unwrap_or("");
                    match issuer.redeem_refresh(refresh, now_secs()) {
                        Ok(a) => issue(issuer, Some(&a), &requested, false, Some(refresh)),
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

/// bcrypt off the async threads; a refusal logs one WARN line.
async fn check(
    issuer: &Arc<Issuer>,
    refusals: &Refusals,
    user: String,
    password: String,
) -> Option<String> {
    let shared = issuer.clone();
    let u = user.clone();
    let account =
        tokio::task::spawn_blocking(move || shared.authenticate(&u, &password, now_secs()))
            .await
            .ok()
            .flatten();
    if account.is_none() {
        refusals.count("issuer", "bad_credentials");
        tracing::warn!(
            user = %user,
            "token request refused: unknown user or wrong password; hint: check the account in auth.issuer (htpasswd or users, bcrypt)"
        );
    }
    account
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
