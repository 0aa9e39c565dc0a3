"""The Faust worker: ingest into per-patient state, scoring through Triton, alerting, the sink to
storage, and the Kafka plumbing it runs on (``kafka/``)."""
