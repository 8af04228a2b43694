//! Trace export over OTLP/HTTP, strictly opt-in.
//!
//! Nothing here runs unless `telemetry.traces.enabled` is true: no exporter is built, no
//! thread started, no connection opened, whatever `OTEL_*` variables say. (distribution 3
//! exported by default and logged an ERROR per request for a collector nobody ran.) When
//! enabled, the `OTEL_*` variables refine the exporter: endpoint and headers where the config
//! leaves them out, batch sizes and delays (`OTEL_BSP_*`), resource attributes;
//! `OTEL_SDK_DISABLED=true` turns an enabled exporter off again.
//!
//! Spans are the `tracing` spans with target `berth::otel`: one per request (server kind, with
//! route, status and repository), one per storage driver call, one per upstream request of the
//! pull-through cache. They are created cheaply when export is off (no subscriber is
//! interested in that target). A W3C `traceparent` on a request continues the caller's trace.
//!
//! Export runs on the SDK's batch thread with a client on its own one-thread runtime, so a
//! slow or absent collector never holds a request. A failing export logs one WARN per minute
//! with the count of failures since the last one, never an ERROR per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::config::schema::Traces;

/// The tracing target of exported spans.
pub const TARGET: &str = "berth::otel";

/// Set once export is running (incoming `traceparent` headers are then honoured).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How often a failing export may log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A running exporter. [`Exporter::shutdown`] flushes what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes queued spans (bounded by the export timeout) and stops the batch thread.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::SeqCst);
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("trace exporter shutdown: {e}");
        }
    }
}

/// The `tracing` layer that turns spans into exported OpenTelemetry spans.
pub type Layer<S> =
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>;

/// The endpoint to post to: the configured base URL with `/v1/traces` unless it has a path.
fn traces_url(base: &str) -> String {
    let after_scheme = base.split_once("://").map(|(_, r)| r).unwrap_or(base);
    match after_scheme.find('/') {
        Some(i) if after_scheme[i..] != *"/" => base.to_owned(),
        _ => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

/// Builds the exporter and the `tracing` layer that feeds it, when `cfg` enables it.
/// `Ok(None)`: export is off.
pub fn build<S>(cfg: Option<&Traces>) -> Result<Option<(Exporter, Layer<S>)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Some(cfg) = cfg.filter(|c| c.enabled) else {
        return Ok(None);
    };
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        eprintln!("berth: telemetry.traces is enabled but OTEL_SDK_DISABLED=true: not exporting");
        return Ok(None);
    }
    let timeout = match &cfg.timeout {
        Some(t) => crate::config::parse_duration(t)?,
        None => Duration::from_secs(10),
    };
    let client = Client::new(timeout)?;
    let protocol = match cfg.protocol.as_deref() {
        Some("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(protocol)
        .with_timeout(timeout);
    if let Some(e) = cfg.endpoint.as_deref().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(traces_url(e));
    }
    if let Some(h) = &cfg.headers {
        builder = builder.with_headers(h.clone().into_iter().collect());
    }
    let otlp = builder
        .build()
        .map_err(|e| format!("telemetry.traces: {e}"))?;
    let exporter = Reporting {
        inner: otlp,
        failures: AtomicU64::new(0),
        last_warn: Mutex::new(None),
    };
    let mut resource = Resource::builder();
    if let Some(name) = cfg.servicename.as_deref().filter(|n| !n.is_empty()) {
        resource = resource.with_service_name(name.to_owned());
    } else if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("berth");
    }
    let ratio = cfg.samplingratio.unwrap_or(1.0);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("berth");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false);
    ENABLED.store(true, Ordering::SeqCst);
    Ok(Some((Exporter { provider }, layer)))
}

/// Continues the caller's trace when the request carries a W3C `traceparent` and export is on.
pub fn set_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !ENABLED.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return;
    }
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// The OTLP exporter, reporting failures at most once a minute.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    failures: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let failed = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                *last = Some(Instant::now());
                self.failures.store(0, Ordering::Relaxed);
                tracing::warn!(
                    spans = n,
                    failed_exports = failed,
                    "trace export failed: {e}; hint: check telemetry.traces.endpoint and that the collector accepts OTLP/HTTP (this warning repeats at most once a minute)"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// The exporter's HTTP client: Berth's reqwest on a runtime of its own (the SDK's batch
/// thread is not a tokio thread).
#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Client {
    fn new(timeout: Duration) -> Result<Client, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("berth-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("telemetry: starting the export runtime: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("telemetry: HTTP client: {e}"))?;
        Ok(Client {
            http,
            runtime: Arc::new(runtime),
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut req = http.request(parts.method, parts.uri.to_string());
            req = req.headers(parts.headers).body(body);
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        match task.await {
            Ok(r) => r.map_err(|e| Box::new(e) as opentelemetry_http::HttpError),
            Err(e) => Err(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn endpoint_gets_the_traces_path_unless_it_has_one() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }
}
