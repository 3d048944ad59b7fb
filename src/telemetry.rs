//! Logging: `tracing` with a pretty format for people and JSON for log pipelines.
//!
//! Spans: one per socket (`conn`) and one per turn (`turn`, carrying `turn_id`), so one turn can
//! be followed across gateway and worker logs.

use tracing_subscriber::{fmt, EnvFilter};

use crate::settings::TelemetrySettings;

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter. Safe to call more
/// than once (later calls are ignored), so tests and `dev` can share it.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if settings.format == "json" {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.compact().try_init()
    };
}
