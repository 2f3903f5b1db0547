-- kyu-trio schema, version 11: tracing (the `otel` extra).

-- The trace context of the span that enqueued the job, as the JSON text of the carrier
-- OpenTelemetry's propagator filled in (W3C `traceparent`, and `tracestate` or baggage when
-- there are some), e.g. {"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}.
-- NULL when the producer traced nothing (no `otel` extra, or no span to record). A worker
-- reads it with its claim, and each run's span is a child of that span, so the request
-- that enqueued a job and every run of it are one trace, across processes.
-- Text, not jsonb: it is only ever handed back to the propagator, never queried, and a
-- claim then parses nothing it does not use. Nullable without a default: adding it
-- rewrites nothing, however large the table.
ALTER TABLE kyu_jobs ADD COLUMN trace_context text;
