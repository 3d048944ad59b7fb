//! W3C trace context across the queue: the gateway's trace continues in the worker.
//!
//! `enqueue_turn` runs inside a span of the gateway; its `traceparent` rides in the turn's stream
//! entry (and turn hash, for reclaims), and the worker's `turn` span adopts it as parent. With an
//! OpenTelemetry layer installed (see [`crate::telemetry`]) both spans land in one trace; without
//! one, the same `traceparent` is still logged on both sides for correlation.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of `span`; a fresh random one when no OpenTelemetry layer records it, so
/// logs can still be joined across gateway and worker.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        if let Some(tp) = carrier.remove("traceparent") {
            return tp;
        }
    }
    let ids = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{ids}-{span_id}-01")
}

/// Makes `span` a child of the remote `traceparent` (no-op when absent or malformed).
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent.filter(|t| !t.is_empty()) else { return };
    let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_traceparent_without_a_tracer_is_still_well_formed() {
        let tp = super::traceparent_of(&tracing::Span::none());
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[1].len(), parts[2].len(), parts[3]), (4, "00", 32, 16, "01"));
    }
}
