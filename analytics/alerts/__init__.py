"""Alerts: rules read from a file, evaluated by the `alerts` consumer group, changes on a stream."""
