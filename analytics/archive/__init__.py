"""The raw readings kept past the stream's cap: Parquet files written by the `archive` group."""

EXPORT_FORMATS = ("parquet", "csv", "jsonl")
GROUP = "archive"
