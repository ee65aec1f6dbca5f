"""The file formats `telemetry import` reads, named apart from their readers (backfill.py) so
that the command line offers them without loading pyarrow."""

FORMATS = ("csv", "jsonl", "parquet", "influx")
SUFFIXES = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".lp": "influx", ".influx": "influx", ".line": "influx",
}  # fmt: skip
# Influx timestamps per unit: divided by this to get milliseconds (0: seconds, multiplied).
PRECISIONS = {"ns": 1_000_000, "us": 1_000, "ms": 1, "s": 0}
