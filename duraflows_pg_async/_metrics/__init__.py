"""The collectors of ``duraflows_pg_async.metrics``: what they measure (``figures``), the
database snapshot their gauges read, and the Prometheus and OpenTelemetry back ends."""
