"""One error tree for the analytics package, under the ingest package's: a command reports any
of them in one line."""

from __future__ import annotations

from ingest.errors import IngestError


class AnalyticsError(IngestError):
    """Base of every error the analytics package raises."""


class QueryError(AnalyticsError, ValueError):
    """A question that cannot be answered as asked (unknown tier, window beyond retention)."""
