//! Prometheus metrics, rendered in the text exposition format on the debug listener
//! (`http.debug.prometheus`).
//!
//! Request metrics are recorded by [`Metrics::observe`] when a response has been sent (its body
//! finished or the client went away). Everything else is read at scrape time from the counters
//! the other parts keep anyway: the blob-descriptor cache's hits and misses, the storage
//! wrapper's operations ([`berth_storage::StorageStats`]), refused tokens and credentials
//! ([`crate::auth::Refusals`]), upstream requests and Docker Hub's quota (berth-proxy), and the
//! process's own memory, CPU and file descriptors from `/proc`.
//!
//! Label cardinality is bounded: routes are the fixed set of [`crate::endpoint::Endpoint`]
//! routes, methods the HTTP methods the API knows (anything else is `other`), statuses the
//! handful of codes the API answers with. Repository names are never labels.
//!
//! Beside Berth's `berth_*` series, the endpoint exposes distribution's (`registry_*`, named
//! and labelled as distribution 2.8/3.x emit them through docker/go-metrics), so dashboards and
//! alerts built for distribution keep working: per-handler HTTP metrics (handler names are
//! distribution's route names with `_`, methods lower case, `code` the status), storage driver
//! action latencies, and the blob-descriptor cache counters in both versions' forms. They are
//! derived from the same counters as Berth's own series; see docs/ARCHITECTURE.md for what
//! differs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_storage::instrumented::Op;
use berth_storage::StorageStats;
use http::Method;

use crate::AppState;

/// Upper bounds of the request latency buckets, in seconds.
/// They include every bound of distribution's `registry_http_request_duration_seconds`
/// ([`DIST_DURATION_BUCKETS`]), which is read off the same histogram.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
    60.0,
];

/// docker/go-metrics' request duration buckets (distribution's HTTP metrics).
const DIST_DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
];

/// docker/go-metrics' request and response size buckets: 1 KiB to 2 GiB, doubling.
const SIZE_BUCKETS: usize = 22;

/// distribution's HTTP handler names (its route names, `-` as `_`), in the order of
/// [`Metrics::handler_in_flight`].
const HANDLERS: [&str; 7] = [
    "base",
    "blob",
    "blob_upload",
    "blob_upload_chunk",
    "catalog",
    "manifest",
    "tags",
];

/// The distribution handler that serves a Berth route, if distribution has one.
fn handler_index(route: &str) -> Option<usize> {
    let handler = match route {
        "upload_start" => "blob_upload",
        "upload" => "blob_upload_chunk",
        other => other,
    };
    HANDLERS.iter().position(|h| *h == handler)
}

/// A size histogram with [`SIZE_BUCKETS`] bounds.
#[derive(Debug, Default)]
struct SizeHistogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; SIZE_BUCKETS + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

impl SizeHistogram {
    fn bound(i: usize) -> u64 {
        1024 << i
    }

    fn observe(&self, bytes: u64) {
        let i = (0..SIZE_BUCKETS)
            .position(|i| bytes <= Self::bound(i))
            .unwrap_or(SIZE_BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(bytes, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// distribution's per-handler metrics that Berth's series cannot be turned into.
#[derive(Debug, Default)]
struct HandlerStats {
    in_flight: AtomicI64,
    request_size: SizeHistogram,
    response_size: SizeHistogram,
}

/// A latency histogram with fixed buckets, lock-free.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one `(route, method, status)`.
#[derive(Debug, Default)]
struct Series {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// One finished request, as [`Metrics::observe`] records it.
pub struct Observation {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    /// The request line and headers (distribution counts them in the request size).
    pub head_bytes: u64,
    pub bytes_out: u64,
    pub duration: Duration,
}

/// The request metrics of this process.
/// `(route, method, status)`.
type SeriesKey = (&'static str, &'static str, u16);

#[derive(Debug, Default)]
pub struct Metrics {
    series: RwLock<HashMap<SeriesKey, Arc<Series>>>,
    latency: RwLock<HashMap<(&'static str, &'static str), Arc<Histogram>>>,
    in_flight: AtomicI64,
    /// Per distribution handler, in the order of [`HANDLERS`].
    handlers: [HandlerStats; HANDLERS.len()],
    /// Set by the server set-up: the storage wrapper's counters.
    storage: RwLock<Option<Arc<StorageStats>>>,
}

/// The metric label of a method.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Looks a key up under the read lock; inserts under the write lock only the first time.
fn entry<K, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: K) -> Arc<V>
where
    K: std::hash::Hash + Eq + Copy,
    V: Default,
{
    if let Some(v) = map.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

impl Metrics {
    pub fn set_storage(&self, stats: Arc<StorageStats>) {
        *self.storage.write().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// The storage wrapper's statistics, once set.
    pub fn storage(&self) -> Option<Arc<StorageStats>> {
        self.storage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A request for `route` has started (the in-flight gauges).
    pub fn started(&self, route: &'static str) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = handler_index(route) {
            self.handlers[i].in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests started and not finished yet (the drain reports those it drops).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request has finished: its response was sent, or the client went away.
    pub fn observe(&self, o: &Observation) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = handler_index(o.route) {
            let h = &self.handlers[i];
            h.in_flight.fetch_sub(1, Ordering::Relaxed);
            h.request_size.observe(o.head_bytes + o.bytes_in);
            h.response_size.observe(o.bytes_out);
        }
        let s = entry(&self.series, (o.route, o.method, o.status));
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.bytes_in.fetch_add(o.bytes_in, Ordering::Relaxed);
        s.bytes_out.fetch_add(o.bytes_out, Ordering::Relaxed);
        entry(&self.latency, (o.route, o.method)).observe(o.duration);
    }
}

/// The text exposition being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// Renders every metric of `state`'s process.
pub fn render(state: &AppState) -> String {
    let mut out = Out(String::with_capacity(16 * 1024));
    let m = &state.metrics;
    http_metrics(&mut out, m);
    upload_metrics(&mut out, m);
    cache_metrics(&mut out, state);
    if let Some(storage) = m.storage.read().unwrap_or_else(|p| p.into_inner()).clone() {
        storage_metrics(&mut out, &storage);
    }
    auth_metrics(&mut out, state);
    if let Some(proxy) = &state.proxy {
        proxy_metrics(&mut out, proxy);
    }
    if let Some(n) = &state.notifier {
        notification_metrics(&mut out, n.endpoints());
    }
    process_metrics(&mut out);
    distribution_http_metrics(&mut out, m);
    if let Some(storage) = m.storage.read().unwrap_or_else(|p| p.into_inner()).clone() {
        distribution_storage_metrics(&mut out, &storage);
    }
    distribution_cache_metrics(&mut out, state);
    out.0
}

/// A bucket bound as the Go client writes it (`strconv.FormatFloat(v, 'g', -1, 64)`): plain
/// below 1e6 and above 1e-4, else `1.048576e+06`, so `le` selectors written for distribution
/// match.
fn go_float(v: f64) -> String {
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return v.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        v.to_string()
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// promhttp's method label: lower case, `unknown` for a method it does not know.
fn dist_method(method: &str) -> &'static str {
    match method {
        "GET" => "get",
        "HEAD" => "head",
        "PUT" => "put",
        "POST" => "post",
        "PATCH" => "patch",
        "DELETE" => "delete",
        "OPTIONS" => "options",
        _ => "unknown",
    }
}

/// distribution's `registry_http_*` series (docker/go-metrics `NewDefaultHttpMetrics`, one set
/// per route). Label names are written in the order the Go client writes them (sorted).
fn distribution_http_metrics(out: &mut Out, m: &Metrics) {
    // Requests, from Berth's (route, method, status) counters.
    let mut requests: HashMap<(&'static str, u16, &'static str), u64> = HashMap::new();
    for ((route, method, status), s) in sorted(&m.series) {
        if let Some(i) = handler_index(route) {
            *requests
                .entry((HANDLERS[i], status, dist_method(method)))
                .or_default() += s.requests.load(Ordering::Relaxed);
        }
    }
    let mut requests: Vec<_> = requests.into_iter().collect();
    requests.sort();
    out.family(
        "registry_http_requests_total",
        "counter",
        "HTTP requests answered, by status code, handler and method (distribution's series).",
    );
    for ((handler, code, method), n) in requests {
        out.sample(
            "registry_http_requests_total",
            &[
                ("code", &code.to_string()),
                ("handler", handler),
                ("method", method),
            ],
            n,
        );
    }

    // Latency, read off Berth's histogram (its bounds include distribution's).
    let mut latency: HashMap<(&'static str, &'static str), ([u64; BUCKETS.len() + 1], u64, u64)> =
        HashMap::new();
    for ((route, method), h) in sorted(&m.latency) {
        if let Some(i) = handler_index(route) {
            let e = latency
                .entry((HANDLERS[i], dist_method(method)))
                .or_insert(([0; BUCKETS.len() + 1], 0, 0));
            for (acc, b) in e.0.iter_mut().zip(h.buckets.iter()) {
                *acc += b.load(Ordering::Relaxed);
            }
            e.1 += h.sum_nanos.load(Ordering::Relaxed);
            e.2 += h.count.load(Ordering::Relaxed);
        }
    }
    let mut latency: Vec<_> = latency.into_iter().collect();
    latency.sort_by_key(|(k, _)| *k);
    let name = "registry_http_request_duration_seconds";
    out.family(
        name,
        "histogram",
        "HTTP request latencies in seconds, to the last byte of the response (distribution's series).",
    );
    for ((handler, method), (buckets, sum_nanos, count)) in latency {
        let mut cumulative = 0;
        let mut next = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += buckets[i];
            if DIST_DURATION_BUCKETS.get(next) == Some(bound) {
                next += 1;
                out.sample(
                    &format!("{name}_bucket"),
                    &[
                        ("handler", handler),
                        ("method", method),
                        ("le", &go_float(*bound)),
                    ],
                    cumulative,
                );
            }
        }
        out.sample(
            &format!("{name}_bucket"),
            &[("handler", handler), ("method", method), ("le", "+Inf")],
            count,
        );
        out.sample(
            &format!("{name}_sum"),
            &[("handler", handler), ("method", method)],
            secs(sum_nanos),
        );
        out.sample(
            &format!("{name}_count"),
            &[("handler", handler), ("method", method)],
            count,
        );
    }

    for (name, help, pick) in [
        (
            "registry_http_request_size_bytes",
            "HTTP request sizes in bytes: request line, headers and body (distribution's series).",
            (|h: &HandlerStats| &h.request_size) as fn(&HandlerStats) -> &SizeHistogram,
        ),
        (
            "registry_http_response_size_bytes",
            "HTTP response body sizes in bytes (distribution's series).",
            |h: &HandlerStats| &h.response_size,
        ),
    ] {
        out.family(name, "histogram", help);
        for (handler, stats) in HANDLERS.iter().zip(m.handlers.iter()) {
            let h = pick(stats);
            let count = h.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for i in 0..SIZE_BUCKETS {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                out.sample(
                    &format!("{name}_bucket"),
                    &[
                        ("handler", handler),
                        ("le", &go_float(SizeHistogram::bound(i) as f64)),
                    ],
                    cumulative,
                );
            }
            out.sample(
                &format!("{name}_bucket"),
                &[("handler", handler), ("le", "+Inf")],
                count,
            );
            out.sample(
                &format!("{name}_sum"),
                &[("handler", handler)],
                h.sum.load(Ordering::Relaxed),
            );
            out.sample(&format!("{name}_count"), &[("handler", handler)], count);
        }
    }

    out.family(
        "registry_http_in_flight_requests",
        "gauge",
        "HTTP requests being served now, by handler (distribution's series).",
    );
    for (handler, stats) in HANDLERS.iter().zip(m.handlers.iter()) {
        out.sample(
            "registry_http_in_flight_requests",
            &[("handler", handler)],
            stats.in_flight.load(Ordering::Relaxed),
        );
    }
}

/// distribution's storage action for a Berth driver operation (distribution times these seven
/// calls of its driver base; Berth's other operations have no counterpart there).
fn dist_action(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::GetContent => "GetContent",
        Op::PutContent => "PutContent",
        Op::Stat | Op::StatObject => "Stat",
        Op::List => "List",
        Op::Move => "Move",
        Op::Delete => "Delete",
        Op::RedirectUrl => "RedirectURL",
        _ => return None,
    })
}

/// `registry_storage_action_seconds{action,driver}`, from the storage wrapper's histograms.
fn distribution_storage_metrics(out: &mut Out, s: &StorageStats) {
    use berth_storage::instrumented::LATENCY_BUCKETS;
    // distribution's name for its S3 driver.
    let driver = match s.driver {
        "s3" => "s3aws",
        other => other,
    };
    let mut actions: Vec<(&'static str, [u64; LATENCY_BUCKETS.len() + 1], u64)> = Vec::new();
    for op in Op::ALL {
        let Some(action) = dist_action(op) else {
            continue;
        };
        let st = s.op(op);
        let i = match actions.iter().position(|(a, ..)| *a == action) {
            Some(i) => i,
            None => {
                actions.push((action, [0; LATENCY_BUCKETS.len() + 1], 0));
                actions.len() - 1
            }
        };
        for (acc, b) in actions[i].1.iter_mut().zip(st.latency.iter()) {
            *acc += b.load(Ordering::Relaxed);
        }
        actions[i].2 += st.nanos.load(Ordering::Relaxed);
    }
    actions.sort_by_key(|(a, ..)| *a);
    let name = "registry_storage_action_seconds";
    out.family(
        name,
        "histogram",
        "Seconds taken by storage driver actions, by action and driver (distribution's series).",
    );
    for (action, buckets, nanos) in actions {
        let count: u64 = buckets.iter().sum();
        if count == 0 {
            continue;
        }
        let labels = [("action", action), ("driver", driver)];
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += buckets[i];
            out.sample(
                &format!("{name}_bucket"),
                &[labels[0], labels[1], ("le", &go_float(*bound))],
                cumulative,
            );
        }
        out.sample(
            &format!("{name}_bucket"),
            &[labels[0], labels[1], ("le", "+Inf")],
            count,
        );
        out.sample(&format!("{name}_sum"), &labels, secs(nanos));
        out.sample(&format!("{name}_count"), &labels, count);
    }
}

/// The blob-descriptor cache counters in distribution 3.x's form
/// (`registry_storage_cache_{requests,hits,errors}_total`) and 2.8's
/// (`registry_storage_cache_total{type="Request|Hit|Miss"}`).
fn distribution_cache_metrics(out: &mut Out, state: &AppState) {
    let stats = state.registry.cache().stats();
    let hits = stats.hits.load(Ordering::Relaxed);
    let misses = stats.misses.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "registry_storage_cache_requests_total",
            "Blob-descriptor cache lookups (distribution 3.x's series).",
            hits + misses,
        ),
        (
            "registry_storage_cache_hits_total",
            "Blob-descriptor cache lookups answered by the cache (distribution 3.x's series).",
            hits,
        ),
        (
            "registry_storage_cache_errors_total",
            "Blob-descriptor cache calls that failed (distribution 3.x's series).",
            errors,
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[], v);
    }
    let name = "registry_storage_cache_total";
    out.family(
        name,
        "counter",
        "Blob-descriptor cache lookups, hits and misses, by type (distribution 2.8's series).",
    );
    for (t, v) in [("Hit", hits), ("Miss", misses), ("Request", hits + misses)] {
        out.sample(name, &[("type", t)], v);
    }
}

fn sorted<K: Ord + Copy, V>(map: &RwLock<HashMap<K, Arc<V>>>) -> Vec<(K, Arc<V>)> {
    let mut v: Vec<(K, Arc<V>)> = map
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

fn http_metrics(out: &mut Out, m: &Metrics) {
    let series = sorted(&m.series);
    let status_labels = |(route, method, status): (&'static str, &'static str, u16)| {
        (route, method, status.to_string())
    };
    out.family(
        "berth_http_requests_total",
        "counter",
        "Requests answered, by route, method and status.",
    );
    for (k, s) in &series {
        let (route, method, status) = status_labels(*k);
        out.sample(
            "berth_http_requests_total",
            &[("route", route), ("method", method), ("status", &status)],
            s.requests.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_http_request_body_bytes_total",
        "counter",
        "Request body bytes read, by route, method and status.",
    );
    for (k, s) in &series {
        let (route, method, status) = status_labels(*k);
        out.sample(
            "berth_http_request_body_bytes_total",
            &[("route", route), ("method", method), ("status", &status)],
            s.bytes_in.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_http_response_body_bytes_total",
        "counter",
        "Response body bytes sent, by route, method and status.",
    );
    for (k, s) in &series {
        let (route, method, status) = status_labels(*k);
        out.sample(
            "berth_http_response_body_bytes_total",
            &[("route", route), ("method", method), ("status", &status)],
            s.bytes_out.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_http_request_duration_seconds",
        "histogram",
        "Time from the request's arrival to the last byte of its response, by route and method.",
    );
    for ((route, method), h) in sorted(&m.latency) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_owned()))
            .enumerate()
        {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            out.sample(
                "berth_http_request_duration_seconds_bucket",
                &[("route", route), ("method", method), ("le", &bound)],
                cumulative,
            );
        }
        out.sample(
            "berth_http_request_duration_seconds_sum",
            &[("route", route), ("method", method)],
            secs(h.sum_nanos.load(Ordering::Relaxed)),
        );
        out.sample(
            "berth_http_request_duration_seconds_count",
            &[("route", route), ("method", method)],
            h.count.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_http_requests_in_flight",
        "gauge",
        "Requests being served now.",
    );
    out.sample(
        "berth_http_requests_in_flight",
        &[],
        m.in_flight.load(Ordering::Relaxed),
    );
}

/// Upload sessions, from the requests that start, finish and cancel them (an upload may be
/// started on one replica and finished on another: each counts what it served).
fn upload_metrics(out: &mut Out, m: &Metrics) {
    let (mut started, mut completed, mut cancelled) = (0, 0, 0);
    for ((route, method, status), s) in sorted(&m.series) {
        let n = s.requests.load(Ordering::Relaxed);
        match (route, method, status) {
            ("upload_start", "POST", 202) => started += n,
            // A monolithic upload or a mount completes in the POST itself.
            ("upload_start", "POST", 201) | ("upload", "PUT", 201) => completed += n,
            ("upload", "DELETE", 204) => cancelled += n,
            _ => {}
        }
    }
    for (event, n) in [
        ("started", started),
        ("completed", completed),
        ("cancelled", cancelled),
    ] {
        let name = format!("berth_upload_sessions_{event}_total");
        out.family(&name, "counter", &format!("Blob upload sessions {event}."));
        out.sample(&name, &[], n);
    }
}

fn cache_metrics(out: &mut Out, state: &AppState) {
    let stats = state.registry.cache().stats();
    for (what, v, help) in [
        (
            "hits",
            &stats.hits,
            "Blob-descriptor cache lookups answered by the cache.",
        ),
        (
            "misses",
            &stats.misses,
            "Blob-descriptor cache lookups that went to storage.",
        ),
        (
            "errors",
            &stats.errors,
            "Blob-descriptor cache calls that failed (Redis down or slow).",
        ),
    ] {
        let name = format!("berth_blob_descriptor_cache_{what}_total");
        out.family(&name, "counter", help);
        out.sample(&name, &[], v.load(Ordering::Relaxed));
    }
}

fn storage_metrics(out: &mut Out, s: &StorageStats) {
    let driver = s.driver;
    out.family(
        "berth_storage_operations_total",
        "counter",
        "Storage driver calls, by driver and operation.",
    );
    for op in Op::ALL {
        out.sample(
            "berth_storage_operations_total",
            &[("driver", driver), ("operation", op.as_str())],
            s.op(op).calls.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_storage_errors_total",
        "counter",
        "Storage driver calls that failed (not counting \"not found\"), by driver and operation.",
    );
    for op in Op::ALL {
        out.sample(
            "berth_storage_errors_total",
            &[("driver", driver), ("operation", op.as_str())],
            s.op(op).errors.load(Ordering::Relaxed),
        );
    }
    out.family(
        "berth_storage_operation_seconds_total",
        "counter",
        "Time spent in storage driver calls, by driver and operation.",
    );
    for op in Op::ALL {
        out.sample(
            "berth_storage_operation_seconds_total",
            &[("driver", driver), ("operation", op.as_str())],
            secs(s.op(op).nanos.load(Ordering::Relaxed)),
        );
    }
    for (what, v) in [("read", &s.bytes_read), ("written", &s.bytes_written)] {
        let name = format!("berth_storage_bytes_{what}_total");
        out.family(
            &name,
            "counter",
            &format!("Bytes {what} by the storage driver."),
        );
        out.sample(&name, &[("driver", driver)], v.load(Ordering::Relaxed));
    }
}

fn auth_metrics(out: &mut Out, state: &AppState) {
    out.family(
        "berth_auth_refusals_total",
        "counter",
        "Refused tokens and credentials, by kind (token, basic, issuer) and reason.",
    );
    for ((kind, reason), n) in state.auth.refusals.snapshot() {
        out.sample(
            "berth_auth_refusals_total",
            &[("kind", kind), ("reason", reason)],
            n,
        );
    }
}

fn proxy_metrics(out: &mut Out, proxy: &berth_proxy::Proxy) {
    out.family(
        "berth_proxy_upstream_requests_total",
        "counter",
        "Requests sent to upstream registries, by upstream, method, kind and status (0: no answer).",
    );
    for u in proxy.upstreams() {
        let label = u.config.label();
        for ((method, kind, status), n) in u.requests.snapshot() {
            out.sample(
                "berth_proxy_upstream_requests_total",
                &[
                    ("upstream", label),
                    ("method", method),
                    ("kind", kind),
                    ("status", &status.to_string()),
                ],
                n,
            );
        }
    }
    for (what, help) in [
        ("remaining", "Pulls left in the upstream's rate-limit window (Docker Hub's ratelimit-remaining); absent until reported."),
        ("limit", "The upstream's pull limit per window (ratelimit-limit); absent until reported."),
    ] {
        let name = format!("berth_proxy_upstream_ratelimit_{what}");
        out.family(&name, "gauge", help);
        for u in proxy.upstreams() {
            let v = match what {
                "remaining" => u.rate_limit.remaining.load(Ordering::Relaxed),
                _ => u.rate_limit.limit.load(Ordering::Relaxed),
            };
            if v >= 0 {
                out.sample(&name, &[("upstream", u.config.label())], v);
            }
        }
    }
}

/// Per notification endpoint: Berth's `berth_notifications_*` and distribution's
/// `registry_notifications_*` (its `events` by type, `pending`, and answers by `status`).
fn notification_metrics(out: &mut Out, endpoints: &[std::sync::Arc<crate::notify::EndpointStats>]) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    type Get = fn(&crate::notify::EndpointStats) -> u64;
    let families: [(&str, &str, &str, Get); 4] = [
        ("berth_notifications_pending_events", "gauge", "Events queued for the endpoint and not yet delivered (this replica's queue and the queues it adopted).", |s| s.pending.load(Ordering::Relaxed)),
        ("berth_notifications_delivered_total", "counter", "Events the endpoint accepted (2xx or 3xx).", |s| s.delivered.load(Ordering::Relaxed)),
        ("berth_notifications_failed_attempts_total", "counter", "POSTs that failed (an error status, a timeout, no connection); their events are retried.", |s| s.failed_attempts.load(Ordering::Relaxed)),
        ("berth_notifications_queued_total", "counter", "Events queued for the endpoint (after its ignore rules).", |s| s.events.load(Ordering::Relaxed)),
    ];
    for (name, kind, help, get) in families {
        out.family(name, kind, help);
        for s in endpoints {
            out.sample(name, &[("endpoint", &s.name)], get(s));
        }
    }
    out.family(
        "berth_notifications_dropped_total",
        "counter",
        "Events dropped undelivered: over maxpending, older than maxage, or (pulls only) while the journal writer was overloaded.",
    );
    for s in endpoints {
        for (reason, v) in [
            ("maxpending", &s.dropped_maxpending),
            ("maxage", &s.dropped_maxage),
            ("overload", &s.dropped_overload),
        ] {
            out.sample(
                "berth_notifications_dropped_total",
                &[("endpoint", &s.name), ("reason", reason)],
                load(v),
            );
        }
    }
    out.family(
        "berth_notifications_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest undelivered event (0 when nothing is pending).",
    );
    for s in endpoints {
        let age = s.oldest_age().map_or(0.0, |d| d.as_secs_f64());
        out.sample(
            "berth_notifications_oldest_pending_age_seconds",
            &[("endpoint", &s.name)],
            age,
        );
    }
    out.family(
        "berth_notifications_failing_seconds",
        "gauge",
        "How long the endpoint has been failing (0 while it delivers).",
    );
    for s in endpoints {
        let f = s.failing_for().map_or(0.0, |d| d.as_secs_f64());
        out.sample(
            "berth_notifications_failing_seconds",
            &[("endpoint", &s.name)],
            f,
        );
    }
    out.family(
        "registry_notifications_events_total",
        "counter",
        "The number of total events",
    );
    for s in endpoints {
        for (typ, v) in [
            ("Events", load(&s.events)),
            ("Successes", load(&s.delivered)),
            ("Failures", load(&s.failures)),
            ("Errors", load(&s.errors)),
        ] {
            out.sample(
                "registry_notifications_events_total",
                &[("endpoint", &s.name), ("type", typ)],
                v,
            );
        }
    }
    out.family(
        "registry_notifications_pending",
        "gauge",
        "The gauge of pending events in queue",
    );
    for s in endpoints {
        out.sample(
            "registry_notifications_pending",
            &[("endpoint", &s.name)],
            load(&s.pending),
        );
    }
    out.family(
        "registry_notifications_status_total",
        "counter",
        "The number of status code",
    );
    for s in endpoints {
        let statuses = s.statuses.lock().map(|m| m.clone()).unwrap_or_default();
        for (code, n) in statuses {
            out.sample(
                "registry_notifications_status_total",
                &[("code", &code), ("endpoint", &s.name)],
                n,
            );
        }
    }
}

/// The standard `process_*` metrics, from `/proc/self` (Linux; elsewhere they are left out).
fn process_metrics(out: &mut Out) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f[0]` is field 3 (state): utime is field 14, stime 15, starttime 22, rss 24.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // Linux reports CPU times in clock ticks: 100 per second on every platform Berth runs on.
    const TICKS: f64 = 100.0;
    const PAGE: u64 = 4096;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        out.family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        out.sample("process_cpu_seconds_total", &[], (u + s) as f64 / TICKS);
    }
    if let Some(rss) = field(24) {
        out.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        out.sample("process_resident_memory_bytes", &[], rss * PAGE);
    }
    if let Some(start) = field(22) {
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if let Some(boot) = boot {
            out.family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
            );
            out.sample(
                "process_start_time_seconds",
                &[],
                boot as f64 + start as f64 / TICKS,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.family("process_open_fds", "gauge", "Open file descriptors.");
        out.sample("process_open_fds", &[], fds.count());
    }
    out.family(
        "berth_build_info",
        "gauge",
        "Always 1; the version in a label.",
    );
    out.sample(
        "berth_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line of the exposition `text` that starts with `needle`.
    fn line_starting(text: &str, needle: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .to_owned()
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::default();
        for ms in [0, 3, 3, 700, 100_000] {
            m.started("manifest");
            m.observe(&Observation {
                route: "manifest",
                method: "GET",
                status: 200,
                bytes_in: 0,
                head_bytes: 100,
                bytes_out: 10,
                duration: Duration::from_millis(ms),
            });
        }
        let mut out = Out(String::new());
        http_metrics(&mut out, &m);
        let text = out.0;
        let line = |needle: &str| line_starting(&text, needle);
        assert!(line(
            "berth_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"}"
        )
        .ends_with(" 5"));
        assert!(line("berth_http_response_body_bytes_total{route=\"manifest\"").ends_with(" 50"));
        assert!(line("berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",le=\"0.0005\"}").ends_with(" 1"));
        assert!(line("berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",le=\"0.005\"}").ends_with(" 3"));
        assert!(line("berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",le=\"1\"}").ends_with(" 4"));
        assert!(line("berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",le=\"60\"}").ends_with(" 4"));
        assert!(line("berth_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",le=\"+Inf\"}").ends_with(" 5"));
        assert!(line("berth_http_request_duration_seconds_count{").ends_with(" 5"));
        assert!(line("berth_http_requests_in_flight").ends_with(" 0"));

        // The same requests in distribution's series.
        let mut out = Out(String::new());
        m.started("upload");
        distribution_http_metrics(&mut out, &m);
        let text = out.0;
        let line = |needle: &str| line_starting(&text, needle);
        assert!(line(
            "registry_http_requests_total{code=\"200\",handler=\"manifest\",method=\"get\"}"
        )
        .ends_with(" 5"));
        let dur =
            "registry_http_request_duration_seconds_bucket{handler=\"manifest\",method=\"get\"";
        assert!(line(&format!("{dur},le=\"0.005\"}}")).ends_with(" 3"));
        assert!(line(&format!("{dur},le=\"1\"}}")).ends_with(" 4"));
        assert!(line(&format!("{dur},le=\"60\"}}")).ends_with(" 4"));
        assert!(line(&format!("{dur},le=\"+Inf\"}}")).ends_with(" 5"));
        assert!(
            !text.contains(&format!("{dur},le=\"0.001\"")),
            "only distribution's bounds"
        );
        assert!(
            line("registry_http_request_size_bytes_bucket{handler=\"manifest\",le=\"1024\"}")
                .ends_with(" 5")
        );
        assert!(
            line("registry_http_response_size_bytes_sum{handler=\"manifest\"}").ends_with(" 50")
        );
        assert!(
            line("registry_http_in_flight_requests{handler=\"blob_upload_chunk\"}").ends_with(" 1")
        );
        assert!(line("registry_http_in_flight_requests{handler=\"manifest\"}").ends_with(" 0"));
    }

    #[test]
    fn bounds_are_written_as_go_writes_them() {
        for (v, want) in [
            (0.005, "0.005"),
            (1.0, "1"),
            (60.0, "60"),
            (1024.0, "1024"),
            (524288.0, "524288"),
            (1048576.0, "1.048576e+06"),
            (2147483648.0, "2.147483648e+09"),
            (0.00005, "5e-05"),
        ] {
            assert_eq!(go_float(v), want);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out(String::new());
        out.sample("x", &[("a", "q\"b\\c\nd")], 1);
        assert_eq!(out.0, "x{a=\"q\\\"b\\\\c\\nd\"} 1\n");
    }
}
