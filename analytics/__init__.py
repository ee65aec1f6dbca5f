"""Analysis of the stream: rolling aggregates per sensor and metric, and the query side."""
