//! Logging and tracing: `tracing` with a pretty format for people or JSON for log pipelines,
//! and, with the `otlp` feature and `telemetry.otlp_endpoint` set, OpenTelemetry export.
//!
//! Spans: one per socket (`conn`), one per enqueued turn (`enqueue_turn`, in the gateway) and one
//! per run of a turn (`turn`, in the worker). The turn's W3C trace context rides in its stream
//! entry ([`crate::trace`]), so the worker's span joins the gateway's trace.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::TelemetrySettings;

/// A setting the build cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "invalid setting `telemetry.otlp_endpoint`: this build has no OTLP exporter (build with `--features otlp`)"
    )]
    NoOtlp,
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes spans still buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter. A second call
/// (tests, `dev` running several roles) keeps the first subscriber.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if settings.format == "json" {
        fmt.json().flatten_event(true).with_current_span(true).boxed()
    } else {
        fmt.compact().boxed()
    };
    let provider = exporter(settings)?;
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("chatfleet"))
    });
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Ok(Telemetry { provider })
}

#[cfg(feature = "otlp")]
fn exporter(
    settings: &TelemetrySettings,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    if settings.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&settings.otlp_endpoint)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(Some(opentelemetry_sdk::trace::SdkTracerProvider::builder().with_batch_exporter(exporter).build()))
}

#[cfg(not(feature = "otlp"))]
fn exporter(
    settings: &TelemetrySettings,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, TelemetryError> {
    if settings.otlp_endpoint.is_empty() {
        Ok(None)
    } else {
        Err(TelemetryError::NoOtlp)
    }
}
