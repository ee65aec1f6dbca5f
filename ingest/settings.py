"""One typed settings object, read once at start from the environment and command-line flags.

Each setting has an environment variable and a flag; a flag wins over the environment, which wins
over the default. No other module reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.backlog import parse_backlog_policy
from ingest.durability import parse_durability
from ingest.durations import parse_tier_spec
from ingest.errors import SettingsError
from ingest.keys import DEFAULT_ALERTS_STREAM, DEFAULT_STREAM


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise ValueError(f"expected a TCP port (1-65535), got {text!r}")
    return value


def _token(text: str) -> str:
    if not text or text != text.strip() or not text.isprintable():
        # An empty token would let an empty bearer through.
        raise ValueError("expected a token of printable characters without surrounding spaces")
    return text


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number between 0 and 1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _has_password(urls: str) -> bool:
    return any(urllib.parse.urlsplit(url.strip()).password for url in urls.split(","))


def _scheme_of(url: str) -> str:
    """What a URL starts with, for an error message: never the rest, which may hold a
    password."""
    scheme = url.partition(":")[0]
    return f"{scheme[:20]!r}" if scheme != url else "no scheme"


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {_scheme_of(text)}")
    return text


def _mqtt_url(text: str) -> str:
    if not text.startswith(("mqtt://", "mqtts://")):
        raise ValueError(f"expected an mqtt:// or mqtts:// URL, got {_scheme_of(text)}")
    return text


def _readable_file(text: str) -> str:
    if not os.access(text, os.R_OK) or not os.path.isfile(text):
        raise ValueError(f"no readable file at {text!r}")
    return text


def _yes_no(text: str) -> bool:
    if text.lower() not in {"yes", "no"}:
        raise ValueError(f"expected yes or no, got {text!r}")
    return text.lower() == "yes"


def _stream_name(text: str) -> str:
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"expected a stream name without spaces, got {text!r}")
    return text


def _webhooks(text: str) -> str:
    for url in text.split(","):
        if urllib.parse.urlsplit(url.strip()).scheme not in ("http", "https"):
            raise ValueError(f"expected http:// or https:// URLs, got {_scheme_of(url.strip())}")
    return text


def _tiers(text: str) -> str:
    parse_tier_spec(text)
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected one of DEBUG, INFO, WARNING, ERROR, got {text!r}")
    return level


def _setting(
    default: Any,
    env: str,
    parse: Callable[[str], Any],
    help: str,
    metavar: str = "",
    *,
    secret: str = "",
) -> Any:
    """`secret`: "whole" for a setting taken from the environment only (a flag shows in every
    local user's process list), "password" for a URL that may carry one: refused as a flag
    when it does."""
    return field(
        default=default,
        metadata={"env": env, "parse": parse, "help": help, "metavar": metavar, "secret": secret},
    )


@dataclass(frozen=True)
class Settings:
    redis_url: str = _setting(
        "redis://localhost:6379/0",
        "REDIS_URL",
        _redis_url,
        "Redis to use",
        "URL",
        secret="password",
    )
    redis_cluster: bool = _setting(
        False,
        "TELEMETRY_REDIS_CLUSTER",
        _yes_no,
        "yes: REDIS_URL names a node of a Redis Cluster (or several, comma-separated); each"
        " shard's work goes to the node serving its slot, found again after a failover",
        "yes|no",
    )
    mqtt_url: str | None = _setting(
        None,
        "MQTT_URL",
        _mqtt_url,
        "MQTT broker for the bridge (mqtt://user:pass@host:1883)",
        "URL",
        secret="password",
    )
    mqtt_ca_file: str | None = _setting(
        None,
        "MQTT_CA_FILE",
        _readable_file,
        "CA certificate that signed the broker's (mqtts://)",
        "FILE",
    )
    mqtt_cert_file: str | None = _setting(
        None, "MQTT_CERT_FILE", _readable_file, "client certificate for mqtts://", "FILE"
    )
    mqtt_key_file: str | None = _setting(
        None, "MQTT_KEY_FILE", _readable_file, "client key for mqtts://", "FILE"
    )
    stream: str = _setting(DEFAULT_STREAM, "TELEMETRY_STREAM", _stream_name, "readings stream")
    shard_count: int = _setting(
        1,
        "TELEMETRY_SHARDS",
        _positive_int,
        "streams the readings are spread over by sensor id (app:event:{0}...); every process"
        " of a deployment needs the same number",
        "N",
    )
    maxlen: int = _setting(
        1_000_000, "TELEMETRY_MAXLEN", _positive_int, "cap of the stream (XADD MAXLEN ~ N)", "N"
    )
    dead_letter_maxlen: int = _setting(
        1_000_000, "TELEMETRY_DEAD_LETTER_MAXLEN", _positive_int, "cap of the dead-letter stream"
    )
    write_batch: int = _setting(
        1000, "TELEMETRY_WRITE_BATCH", _positive_int, "writer flushes after this many entries"
    )
    read_batch: int = _setting(
        2000, "TELEMETRY_READ_BATCH", _positive_int, "entries a consumer reads at a time"
    )
    reads_per_batch: int = _setting(
        5,
        "TELEMETRY_READS_PER_BATCH",
        _positive_int,
        "reads a worker sends at once and joins into one batch while a backlog waits (sent ahead"
        " of the batch in hand)",
    )
    block_ms: int = _setting(
        1000, "TELEMETRY_BLOCK_MS", _positive_int, "XREADGROUP BLOCK time", "MS"
    )
    claim_idle_ms: int = _setting(
        30_000,
        "TELEMETRY_CLAIM_IDLE_MS",
        _positive_int,
        "claim pending entries idle this long from other consumers",
        "MS",
    )
    max_deliveries: int = _setting(
        5,
        "TELEMETRY_MAX_DELIVERIES",
        _positive_int,
        "dead-letter an entry delivered more often than this",
    )
    trim_warn_ratio: float = _setting(
        0.8,
        "TELEMETRY_TRIM_WARN_RATIO",
        _ratio,
        "warn when a group's unread backlog exceeds this share of MAXLEN",
        "R",
    )
    backlog_policy: str = _setting(
        "backpressure",
        "TELEMETRY_BACKLOG_POLICY",
        parse_backlog_policy,
        "when a group's backlog reaches TELEMETRY_TRIM_WARN_RATIO of MAXLEN: backpressure"
        " (writers wait, the bridge holds messages unacknowledged, the API answers 429) or trim"
        " (write on; trimming drops the oldest entries, read or not)",
        "POLICY",
    )
    durability: str = _setting(
        "everysec",
        "TELEMETRY_DURABILITY",
        parse_durability,
        "what a Redis crash may lose: everysec (up to about a second of acknowledged writes) or"
        " always (nothing acknowledged; writers refuse a Redis not set up for it)",
        "MODE",
    )
    tiers: str = _setting(
        "10s:6h,1m:7d,1h:90d",
        "TELEMETRY_TIERS",
        _tiers,
        "aggregate window tiers as BUCKET:RETENTION,...",
        "SPEC",
    )
    alerts_stream: str = _setting(
        DEFAULT_ALERTS_STREAM, "TELEMETRY_ALERTS_STREAM", _stream_name, "alert changes stream"
    )
    alerts_maxlen: int = _setting(
        100_000, "TELEMETRY_ALERTS_MAXLEN", _positive_int, "cap of the alerts stream", "N"
    )
    rules: str | None = _setting(
        None, "TELEMETRY_ALERT_RULES", str, "alert rules file (TOML)", "FILE"
    )
    webhooks: str | None = _setting(
        None,
        "TELEMETRY_ALERT_WEBHOOKS",
        _webhooks,
        "URLs (comma-separated) that receive every alert change as a JSON POST",
        "URLS",
        secret="password",
    )
    max_metrics_per_reading: int = _setting(
        64, "TELEMETRY_MAX_METRICS_PER_READING", _positive_int,
        "readings with more metrics are dead-lettered by the aggregates group", "N",
    )  # fmt: skip
    max_metric_names: int = _setting(
        1000, "TELEMETRY_MAX_METRIC_NAMES", _positive_int,
        "distinct metric names the aggregates keep; readings with more are dead-lettered", "N",
    )  # fmt: skip
    max_sensors: int = _setting(
        100_000, "TELEMETRY_MAX_SENSORS", _positive_int,
        "sensors the aggregates keep; readings of more are dead-lettered", "N",
    )  # fmt: skip
    archive_dir: str = _setting(
        "archive", "TELEMETRY_ARCHIVE_DIR", str,
        "folder of the raw readings' Parquet archive (a folder per stream, one per day)", "DIR",
    )  # fmt: skip
    archive_flush_ms: int = _setting(
        10_000, "TELEMETRY_ARCHIVE_FLUSH_MS", _positive_int,
        "the archive writes a file at least this often while readings arrive", "MS",
    )  # fmt: skip
    archive_flush_readings: int = _setting(
        100_000, "TELEMETRY_ARCHIVE_FLUSH_READINGS", _positive_int,
        "or once this many readings wait", "N",
    )  # fmt: skip
    api_port: int = _setting(8000, "TELEMETRY_API_PORT", _port, "HTTP API port", "PORT")
    api_host: str = _setting(
        "127.0.0.1", "TELEMETRY_API_HOST", str, "HTTP API address to listen on", "HOST"
    )
    api_token: str | None = _setting(
        None, "API_TOKEN", _token,
        "admin token of the API: everything, dead letters and replays included", secret="whole",
    )  # fmt: skip
    api_write_token: str | None = _setting(
        None,
        "API_WRITE_TOKEN",
        _token,
        "API token that may read and POST readings",
        secret="whole",
    )
    api_read_token: str | None = _setting(
        None, "API_READ_TOKEN", _token, "API token that may only read", secret="whole"
    )
    api_hosts: str | None = _setting(
        None, "TELEMETRY_API_HOSTS", str,
        "host names (comma-separated) the API answers to; default: loopback names and the "
        "listening address", "HOSTS",
    )  # fmt: skip
    api_origins: str | None = _setting(
        None,
        "TELEMETRY_API_ORIGINS",
        str,
        "origins (comma-separated) allowed to open websockets besides the API's own",
        "ORIGINS",
    )
    api_streams: str | None = _setting(
        None, "TELEMETRY_API_STREAMS", str,
        "more streams the live tail /stream/{name} serves: globs, comma-separated, such as "
        "test,lab:* (a stream may be watched before its first entry)", "GLOBS",
    )  # fmt: skip
    api_max_body: int = _setting(
        1_048_576, "TELEMETRY_API_MAX_BODY", _positive_int, "largest POST body in bytes", "BYTES"
    )
    metrics_port: int | None = _setting(
        None, "TELEMETRY_METRICS_PORT", _port, "serve Prometheus metrics on this port", "PORT"
    )
    metrics_host: str = _setting(
        "127.0.0.1", "TELEMETRY_METRICS_HOST", str, "address the metrics port listens on", "HOST"
    )
    log_level: str = _setting("INFO", "TELEMETRY_LOG_LEVEL", _log_level, "log level", "LEVEL")

    @property
    def webhook_urls(self) -> list[str]:
        return [url.strip() for url in self.webhooks.split(",")] if self.webhooks else []

    @property
    def socket_timeout_s(self) -> float:
        """Longer than a blocking read, so a quiet stream is never mistaken for a dead server."""
        return self.block_ms / 1000 + 2.0

    @classmethod
    def load(cls, env: Mapping[str, str], flags: argparse.Namespace | None = None) -> Settings:
        """Build from the environment, then flags given on the command line (None = not given)."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            parse = spec.metadata["parse"]
            flag_value = getattr(flags, spec.name, None) if flags is not None else None
            if flag_value is not None:
                source, raw = "--" + spec.name.replace("_", "-"), str(flag_value)
                if spec.metadata["secret"] and _has_password(raw):
                    raise SettingsError(
                        f"{source}: a password on the command line is visible to every local "
                        f"user; set {spec.metadata['env']} in the environment instead"
                    )
            elif spec.metadata["env"] in env:
                source, raw = spec.metadata["env"], env[spec.metadata["env"]]
            else:
                continue
            try:
                values[spec.name] = parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{source}: {exc}") from None
        return cls(**values)

    @property
    def backlog_limit(self) -> int | None:
        """Entries a group may have unread or unacknowledged before writers wait; None under
        the trim policy."""
        if self.backlog_policy == "trim":
            return None
        return max(1, int(self.trim_warn_ratio * self.maxlen))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# The settings each kind of command uses, so that a command offers flags for those alone (every
# setting still comes from the environment, which child processes share).
CONNECTION = ("redis_url", "redis_cluster", "log_level")
# The names of the streams: what every command that reads them needs.
STREAM_NAMING = ("stream", "shard_count")
STREAM = (*STREAM_NAMING, "maxlen", "dead_letter_maxlen")
WRITING = ("write_batch", "durability", "backlog_policy")
MQTT = ("mqtt_url", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
WORKER = ("read_batch", "reads_per_batch", "block_ms", "claim_idle_ms", "max_deliveries",
          "trim_warn_ratio", "metrics_port", "metrics_host")  # fmt: skip
AGGREGATES = ("tiers",)
AGGREGATE_LIMITS = ("max_metrics_per_reading", "max_metric_names", "max_sensors")
ALERTS = ("alerts_stream", "alerts_maxlen")
ARCHIVE = ("archive_dir", "archive_flush_ms", "archive_flush_readings")
ALERT_WORKER = (*ALERTS, "rules", "webhooks")
API = ("api_port", "api_host", "api_token", "api_write_token", "api_read_token", "api_hosts",
       "api_origins", "api_streams", "api_max_body", "block_ms", "trim_warn_ratio")  # fmt: skip


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    names: Sequence[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per setting in `names` (default: all); each defaults to None so the
    environment can fill it in. `defaults` says what a command does instead of a setting's
    default, where it does something else."""
    group = parser.add_argument_group("settings (flags override environment variables)")
    wanted = set(names) if names is not None else None
    for spec in dataclasses.fields(Settings):
        if (wanted is not None and spec.name not in wanted) or spec.metadata["secret"] == "whole":
            continue
        group.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            default=None,
            metavar=spec.metadata["metavar"] or None,
            help=f"{spec.metadata['help']} (env {spec.metadata['env']}, default "
            f"{(defaults or {}).get(spec.name, 'no' if spec.default is False else spec.default)})",
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load these same settings."""
    env = {}
    for spec in dataclasses.fields(Settings):
        value = getattr(settings, spec.name)
        if isinstance(value, bool):
            env[spec.metadata["env"]] = "yes" if value else "no"
        elif value is not None:
            env[spec.metadata["env"]] = str(value)
    return env
