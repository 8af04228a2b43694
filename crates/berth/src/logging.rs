//! Logging (and, when configured, trace export) set-up from the `log` and `telemetry`
//! sections.
//!
//! - `log.level` (or the old top-level `loglevel`), overridden by `RUST_LOG`;
//! - `log.formatter`: `text` (default) or `json` (`logstash` is taken as json), one object per
//!   line with the event's fields at the top level;
//! - `log.fields`: fields added to every line (`environment: staging`), as distribution does;
//! - trace export (`berth_server::telemetry`) as a second layer that sees only the spans of
//!   target `berth::otel`, which the log layer never sees.

use std::fmt;

use berth_server::config::Config;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The log level directive of the configuration.
fn level(cfg: &Config) -> &'static str {
    // Case as distribution reads it: `DEBUG` is `debug`.
    let level = cfg
        .log
        .level
        .as_deref()
        .or(cfg.loglevel.as_deref())
        .unwrap_or("info")
        .to_ascii_lowercase();
    match level.as_str() {
        "error" => "error",
        "warn" => "warn",
        "debug" => "debug",
        _ => "info",
    }
}

/// Installs the global subscriber. Returns the trace exporter when one was configured (to be
/// shut down, flushing its queue, before the process exits).
pub fn init(cfg: &Config) -> Result<Option<berth_server::telemetry::Exporter>, String> {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level(cfg).to_owned());
    // The exported spans are not log lines.
    let filter = EnvFilter::try_new(format!("{base},{}=off", berth_server::telemetry::TARGET))
        .or_else(|_| EnvFilter::try_new(level(cfg)))
        .map_err(|e| format!("log filter: {e}"))?;
    let json = matches!(cfg.log.formatter.as_deref(), Some("json" | "logstash"));
    let fields = Fields::new(cfg, json);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let log_layer = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .event_format(WithFields {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
                fields,
            })
            .with_filter(filter)
            .boxed()
    } else {
        fmt.event_format(WithFields {
            inner: tracing_subscriber::fmt::format(),
            fields,
        })
        .with_filter(filter)
        .boxed()
    };
    let registry = tracing_subscriber::registry().with(log_layer);
    let traces = cfg.telemetry.as_ref().map(|t| &t.traces);
    match berth_server::telemetry::build(traces)? {
        Some((exporter, layer)) => {
            let only_exported = tracing_subscriber::filter::Targets::new()
                .with_target(berth_server::telemetry::TARGET, tracing::Level::INFO);
            registry.with(layer.with_filter(only_exported)).init();
            Ok(Some(exporter))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}

/// `log.fields`, rendered once for the chosen format.
struct Fields {
    /// Text: ` key=value ...` appended to each line.
    text: String,
    /// JSON: `"key":value,` inserted after the opening brace.
    json: String,
    is_json: bool,
}

impl Fields {
    fn new(cfg: &Config, is_json: bool) -> Fields {
        let mut text = String::new();
        let mut json = String::new();
        for (k, v) in cfg.log.fields.iter().flatten() {
            let value = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let quoted = value.contains(char::is_whitespace) || value.is_empty();
            if quoted {
                text.push_str(&format!(" {k}={value:?}"));
            } else {
                text.push_str(&format!(" {k}={value}"));
            }
            let jv = match v {
                serde_yaml::Value::Bool(b) => serde_json::Value::Bool(*b),
                serde_yaml::Value::Number(n) => serde_json::from_str(&n.to_string())
                    .unwrap_or(serde_json::Value::String(value.clone())),
                _ => serde_json::Value::String(value.clone()),
            };
            json.push_str(&format!("{}:{jv},", serde_json::Value::String(k.clone())));
        }
        Fields {
            text,
            json,
            is_json,
        }
    }
}

/// An event format that adds `log.fields` to every line.
struct WithFields<F> {
    inner: F,
    fields: Fields,
}

impl<S, N, F> FormatEvent<S, N> for WithFields<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let extra = if self.fields.is_json {
            &self.fields.json
        } else {
            &self.fields.text
        };
        if extra.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if self.fields.is_json {
            match body.strip_prefix('{') {
                Some(rest) => writeln!(writer, "{{{extra}{rest}"),
                None => writeln!(writer, "{body}"),
            }
        } else {
            writeln!(writer, "{body}{extra}")
        }
    }
}
