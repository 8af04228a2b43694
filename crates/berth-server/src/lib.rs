//! Berth's HTTP side: configuration in distribution's schema ([`config`]), the `/v2/` API
//! ([`endpoint`] parses a request into an [`endpoint::Endpoint`], [`handlers`] serve it on a
//! [`berth_registry::Registry`]), request logging, and [`run`], which serves a bound listener
//! until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_registry::Registry;
use http::{HeaderValue, Method};
use tracing::Instrument;

pub mod auth;
mod body;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod federation;
pub mod handlers;
pub mod health;
pub mod http_util;
pub mod jwks;
pub mod ldap;
pub mod lifecycle;
pub mod limits;
pub mod listen;
pub mod maintenance;
pub mod metrics;
pub mod notify;
mod observe;
mod proxied;
pub mod robots;
pub mod setup;
pub mod storage_middleware;
pub mod telemetry;
pub mod throttle;
pub mod tls;
mod token_endpoint;

pub use error::ApiError;
pub use limits::Limits;

/// Behaviour of the HTTP layer, taken from the configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `http.relativeurls`: `Location` headers without scheme and host.
    pub relative_urls: bool,
    /// `http.host`: the external base URL (`https://registry.example.com`) for `Location`.
    pub external_url: Option<String>,
    /// `catalog.maxentries`: the largest catalog page.
    pub catalog_max_entries: usize,
    /// `tags.maxtags`: a tags page asked for with a larger `n` is clamped to this.
    pub tags_max_entries: usize,
    /// `http.prefix` without its trailing slash (`/registry`); empty: the API is at `/v2/`.
    pub prefix: String,
    /// `storage.maintenance.readonly.enabled`: refuse every write.
    pub read_only: bool,
    /// `log.accesslog.disabled`.
    pub access_log: bool,
    /// `http.headers`: added to every response.
    pub extra_headers: http::HeaderMap,
    /// The listener serves TLS: `Location` URLs built from `Host` use `https`.
    pub https: bool,
    /// `http.limits`: connection timeouts and header limits (see [`limits`]).
    pub limits: Limits,
    /// `policy.repository.classes`: the manifest classes a push may have; empty: any.
    pub manifest_classes: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            relative_urls: false,
            external_url: None,
            catalog_max_entries: 1000,
            tags_max_entries: 1000,
            prefix: String::new(),
            read_only: false,
            access_log: true,
            extra_headers: http::HeaderMap::new(),
            https: false,
            limits: Limits::default(),
            manifest_classes: Vec::new(),
        }
    }
}

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub options: Arc<ServerOptions>,
    /// Access control and Berth's token issuer.
    pub auth: Arc<auth::Auth>,
    /// The pull-through cache, when `proxy` is configured.
    pub proxy: Option<Arc<berth_proxy::Proxy>>,
    /// Serving or draining (see [`lifecycle`]).
    pub lifecycle: Arc<lifecycle::Lifecycle>,
    /// Request metrics (the rest is read from the parts at scrape time).
    pub metrics: Arc<metrics::Metrics>,
    /// Health checks behind `/readyz` and `/debug/health`.
    pub health: Arc<health::Health>,
    /// Webhook notifications, when `notifications.endpoints` has an enabled endpoint.
    pub notifier: Option<Arc<notify::Notifier>>,
}

/// The axum application: every request goes through [`dispatch`].
pub fn app(state: AppState) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(state)
}

/// The debug listener's application (`http.debug.addr`): `/debug/health`, `/livez`,
/// `/readyz`, and the Prometheus metrics at `metrics_path` when enabled.
pub fn debug_app(state: AppState, metrics_path: Option<String>) -> axum::Router {
    let mut router = axum::Router::new()
        .route(
            "/debug/health",
            axum::routing::get(|State(s): State<AppState>| async move { health::debug_health(&s) }),
        )
        .route("/livez", axum::routing::get(|| async { health::livez() }))
        .route(
            "/readyz",
            axum::routing::get(|State(s): State<AppState>| async move { health::readyz(&s) }),
        );
    if let Some(path) = metrics_path {
        router = router.route(
            &path,
            axum::routing::get(|State(s): State<AppState>| async move {
                let mut r = Response::new(Body::from(metrics::render(&s)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }),
        );
    }
    router.with_state(state)
}

/// Serves `listener` (plain HTTP, default drain timeout) until `shutdown` resolves, then
/// finishes in-flight requests. See [`listen::serve`] for TLS and the other options.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, state, listen::ListenOptions::default(), shutdown).await
}

/// What a request path asks for before the API's own routing.
enum Routed {
    /// `GET /` (any method, as distribution's `alive` handler): 200, before auth.
    Alive,
    /// Outside `http.prefix`.
    OutsidePrefix,
    /// A gating health check fails: distribution's 503.
    Unavailable,
    Api(Result<endpoint::Endpoint, endpoint::RouteError>),
}

impl Routed {
    fn route(&self) -> &'static str {
        match self {
            Routed::Alive => "root",
            Routed::OutsidePrefix => "none",
            Routed::Unavailable => "unavailable",
            Routed::Api(Ok(e)) => e.route(),
            Routed::Api(Err(_)) => "none",
        }
    }
}

/// The path below `prefix` (`/registry/v2/x` → `/v2/x`), or `None` when the path is not
/// below it.
fn below_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// distribution's answer to a path outside `http.prefix` (its router's plain 404).
fn outside_prefix() -> Response {
    let mut r = Response::new(Body::from("404 page not found\n"));
    *r.status_mut() = http::StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// distribution's `alive` answer to `/`: 200, no body.
fn alive() -> Response {
    let mut r = Response::new(Body::empty());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn not_found() -> Response {
    let mut r = error::oci_response(&berth_core::OciError::with_message(
        berth_core::ErrorCode::NameUnknown,
        "no such API endpoint",
    ));
    *r.status_mut() = http::StatusCode::NOT_FOUND;
    r
}

/// The 401 of a refused request: the challenge clients follow, and distribution's body (the
/// access that was needed, in `detail`).
fn challenge_response(c: auth::Challenge) -> Response {
    let detail: Vec<serde_json::Value> = c
        .needed
        .iter()
        .map(|a| serde_json::json!({ "Type": a.typ, "Class": "", "Name": a.name, "Action": a.action }))
        .collect();
    let mut r = error::oci_response(
        &berth_core::OciError::with_message(berth_core::ErrorCode::Unauthorized, c.message)
            .detail(serde_json::Value::Array(detail)),
    );
    if let Ok(v) = HeaderValue::from_str(&c.www_authenticate) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Routes one request; the access log line, the metrics and the end of the request's span
/// follow when its response has been sent (see `observe`).
async fn dispatch(State(state): State<AppState>, mut req: Request<Body>) -> Response {
    let started = Instant::now();
    if !req.headers().contains_key(http::header::HOST) {
        // HTTP/2 carries the host in the `:authority` pseudo-header (the URI), not in `Host`;
        // `Location` URLs and token realms are built from `Host`.
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    match req.uri().path() {
        "/livez" => return health::livez(),
        "/readyz" => return health::readyz(&state),
        _ => {}
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = observe::request_id(req.headers());
    // As distribution wraps its application: the health gate first, then `/`, then the
    // routes below `http.prefix`.
    let routed = if state.health.gate_closed() {
        Routed::Unavailable
    } else if path == "/" {
        Routed::Alive
    } else {
        match below_prefix(&path, &state.options.prefix) {
            Some(api_path) => Routed::Api(endpoint::parse(api_path)),
            None => Routed::OutsidePrefix,
        }
    };
    let route = routed.route();
    state.metrics.started(route);
    let head_bytes = observe::head_size(&req);
    let repository = match &routed {
        Routed::Api(Ok(e)) => e.repository().map(|r| r.as_str().to_owned()),
        _ => None,
    };
    let span = tracing::info_span!(
        target: "berth::otel",
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        url.path = %path,
        repository = repository.as_deref(),
        request_id = %request_id,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    telemetry::set_parent(&span, req.headers());
    // What a notification event says about the request (taken before the body is consumed),
    // for the routes that can have events.
    let notifies = matches!(
        &routed,
        Routed::Api(Ok(endpoint::Endpoint::Manifest(..)
            | endpoint::Endpoint::Blob(..)
            | endpoint::Endpoint::UploadStart(_)
            | endpoint::Endpoint::Upload(..)))
    );
    let event_request = state
        .notifier
        .as_ref()
        .filter(|_| notifies)
        .map(|_| event_request(&state.options, &req, &request_id));
    let handled = serve(&state, req, routed).instrument(span.clone()).await;
    let (mut resp, account, bytes_in, logged) = handled;
    if let (Some(notifier), Some((record, basic_user, base_url))) = (&state.notifier, event_request)
    {
        if let Some(notice) = resp.extensions_mut().remove::<notify::Notice>() {
            // distribution's actor: the authenticated name, else a Basic user name as sent.
            let actor = account
                .as_deref()
                .filter(|a| !matches!(*a, "-" | "anonymous"))
                .map(str::to_owned)
                .or(basic_user)
                .unwrap_or_default();
            let ctx = notify::RequestContext {
                request: record,
                actor,
                base_url,
            };
            notifier
                .publish(&notice, &ctx)
                .instrument(span.clone())
                .await;
        }
    }
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    for (k, v) in &state.options.extra_headers {
        resp.headers_mut().append(k, v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    if method == Method::HEAD {
        // HEAD responses carry the headers of the GET, never a body.
        let (parts, _) = resp.into_parts();
        resp = Response::from_parts(parts, Body::empty());
    }
    let finished = observe::Finished {
        started,
        method: metrics::method_label(&method),
        method_name: method,
        path,
        query: logged.query,
        route,
        repository,
        account,
        request_id,
        user_agent: logged.user_agent,
        status,
        code: resp.extensions().get::<error::LoggedCode>().map(|c| c.0),
        bytes_in,
        head_bytes,
        access_log: state.options.access_log,
        metrics: state.metrics.clone(),
        span,
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(observe::Observed::new(body, finished)))
}

/// A request as notification events record it: distribution's request record, the user
/// name of a Basic `Authorization` header, and the base of URLs in events.
fn event_request(
    options: &ServerOptions,
    req: &Request<Body>,
    request_id: &str,
) -> (notify::RequestRecord, Option<String>, String) {
    let headers = req.headers();
    let peer = req
        .extensions()
        .get::<listen::PeerAddr>()
        .map(|p| p.0.as_ref());
    let text = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let record = notify::RequestRecord {
        id: request_id.to_owned(),
        addr: notify::client_addr(headers, peer),
        host: text(http::header::HOST),
        method: req.method().as_str().to_owned(),
        useragent: text(http::header::USER_AGENT),
    };
    let basic_user = auth::basic_credentials(headers).map(|(user, _)| user);
    (record, basic_user, http_util::base_url(options, headers))
}

/// Request details kept for the access log.
struct Logged {
    query: Option<String>,
    user_agent: Option<String>,
}

/// Authorizes and handles one request. Returns the response, the account, the request body
/// bytes read, and what the log line shows of the request.
async fn serve(
    state: &AppState,
    req: Request<Body>,
    routed: Routed,
) -> (Response, Option<String>, u64, Logged) {
    let logged = Logged {
        query: req.uri().query().map(http_util::loggable_query),
        user_agent: req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect()),
    };
    let has_body = http_util::has_body(req.headers());
    let (parts, body) = req.into_parts();
    let mut body = body::BodySlot::new(body, has_body, state.options.limits.body_idle_timeout);
    let mut account = None;
    let early = match routed {
        Routed::Api(e) => Ok(e),
        Routed::Alive => Err(alive()),
        Routed::OutsidePrefix => Err(outside_prefix()),
        Routed::Unavailable => Err(health::unavailable()),
    };
    let endpoint = match early {
        Ok(e) => e,
        Err(resp) => {
            // Nothing reads the body: a short one is drained so the connection stays usable.
            let (reusable, bytes_in) = body.finish().await;
            return (close_unless(reusable, resp), None, bytes_in, logged);
        }
    };
    let resp = match endpoint {
        Ok(endpoint::Endpoint::Token) => match &state.auth.issuer {
            Some(issuer) => {
                let driver = state.registry.driver().as_ref();
                token_endpoint::token(issuer, &state.auth, driver, &parts, &mut body).await
            }
            None => not_found(),
        },
        Ok(endpoint::Endpoint::Jwks) => match &state.auth.issuer {
            Some(issuer) => token_endpoint::jwks(issuer),
            None => not_found(),
        },
        Ok(ep) => {
            let needed = auth::required(&ep, &parts.method);
            let base = http_util::base_url(&state.options, &parts.headers);
            match state.auth.authorize(&parts.headers, &needed, &base).await {
                Ok(principal) => {
                    account = Some(principal.name().to_owned());
                    handlers::handle(state, ep, &parts, &mut body, &principal)
                        .await
                        .unwrap_or_else(IntoResponse::into_response)
                }
                Err(challenge) => challenge_response(challenge),
            }
        }
        Err(endpoint::RouteError::Invalid(e)) => error::oci_response(&e),
        Err(endpoint::RouteError::NotFound) => not_found(),
    };
    let (reusable, bytes_in) = body.finish().await;
    (close_unless(reusable, resp), account, bytes_in, logged)
}

/// Part of the body is still unread: the connection cannot carry another request, and the
/// client must know not to reuse it (see `body`).
fn close_unless(reusable: bool, mut resp: Response) -> Response {
    if !reusable {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
