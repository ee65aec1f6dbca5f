"""The `telemetry` command: one entry point for every job, wiring the packages together."""
