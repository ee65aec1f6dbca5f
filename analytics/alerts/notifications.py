"""Where alert changes reach people: `[[notify]]` tables of the rules file, each one target of
the notification library apprise (Slack, Teams, e-mail, ntfy, PagerDuty, Telegram, ...).

```toml
[[notify]]
name = "ops-slack"                   # how logs and metrics name the target, never by its URL
url = "${SLACK_OPS_WEBHOOK}"          # an apprise URL; ${NAME} is read from the environment
severities = ["critical"]            # default: every severity
rules = ["too-hot", "door-*"]        # rule name globs (default: every rule)
sensors = "greenhouse-*"             # sensor id glob (default "*")
states = ["raised", "resolved"]      # which changes (default); also acknowledged, silenced
title = "[$severity] $rule on $sensor_id"
body = "$message ($time)"
```
Templates take `$name` or `${name}` of a change's fields (TEMPLATE_FIELDS); `$$` is a dollar.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analytics.alerts.rules import SEVERITIES, RulesError, TableReader, table_starts
from analytics.times import iso

MAX_ROUTES = 32
MAX_TEMPLATE = 2000
MAX_GLOBS = 64
ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ALERT_STATES = ("raised", "resolved", "acknowledged")
STATES = (*ALERT_STATES, "silenced", "unsilenced")
TEMPLATE_FIELDS = frozenset({
    "sensor_id", "rule", "kind", "severity", "metric", "state", "time", "ts", "value", "score",
    "limit", "message", "reading", "raised_ts", "by", "comment", "until", "labels", "id",
})  # fmt: skip
DEFAULT_TITLE = "[$severity] $rule $state on $sensor_id"
DEFAULT_BODY = "$message ($time)"
_SETTINGS = frozenset({"name", "url", "severities", "rules", "sensors", "states", "title", "body"})
_ENVIRONMENT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# apprise's notification types set each service's colour and icon.
_TYPES = {"critical": "failure", "warning": "warning", "info": "info"}
# apprise logs the URLs it cannot use, and a URL is often the secret (Slack's, Teams'): its log
# goes nowhere. A failed send's reason comes back with the result (fanout.NotifyTarget).
_APPRISE_LOG = logging.getLogger("apprise")
_APPRISE_LOG.propagate = False
_APPRISE_LOG.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Notification:
    """One `[[notify]]` table: a target and which alert changes it is sent."""

    name: str
    url: str
    severities: frozenset[str]
    rules: tuple[str, ...]
    sensors: str
    states: frozenset[str]
    title: string.Template
    body: string.Template

    def wants(self, change: Mapping[str, str]) -> bool:
        # Silences have no severity: they concern every severity.
        severity = change.get("severity")
        return (
            change.get("state", "") in self.states
            and (severity is None or severity in self.severities)
            and any(fnmatch.fnmatchcase(change.get("rule", ""), glob) for glob in self.rules)
            and fnmatch.fnmatchcase(change.get("sensor_id", ""), self.sensors)
        )

    def message(self, change: Mapping[str, str]) -> tuple[str, str, str]:
        """Title, body and apprise notification type of one change."""
        fields = dict.fromkeys(TEMPLATE_FIELDS, "") | dict(change)
        ts = change.get("ts", "")
        fields["time"] = iso(int(ts)) if ts.isdigit() else ""
        kind = "success" if change.get("state") == "resolved" else _TYPES.get(
            change.get("severity", ""), "info")  # fmt: skip
        return self.title.safe_substitute(fields), self.body.safe_substitute(fields), kind


def parse_notifications(
    document: Mapping[str, Any], text: str, source: str,
    environ: Mapping[str, str] | None = None,
) -> list[Notification]:  # fmt: skip
    """The `[[notify]]` tables of a parsed rules file, checked; RulesError names the line."""
    tables = document.get("notify", [])
    if not isinstance(tables, list):
        raise RulesError(f"{source}:1: notify must be [[notify]] tables")
    if len(tables) > MAX_ROUTES:
        raise RulesError(f"{source}:1: at most {MAX_ROUTES} [[notify]] tables, got {len(tables)}")
    starts = table_starts(text, "notify")
    routes: list[Notification] = []
    for index, table in enumerate(tables):
        reader = TableReader(table, source, text, starts[index] if index < len(starts) else 1)
        route = _route(reader, os.environ if environ is None else environ)
        if any(r.name == route.name for r in routes):
            raise reader.fail("name", f"notify name {route.name!r} is used twice")
        routes.append(route)
    return routes


def _route(table: TableReader, environ: Mapping[str, str]) -> Notification:
    for key in table.table:
        if key not in _SETTINGS:
            raise table.fail(key, f"{key!r} is not a setting of a [[notify]] table; "
                                  f"use {', '.join(sorted(_SETTINGS))}")  # fmt: skip
    name = table.text("name")
    if ROUTE_NAME.fullmatch(name) is None:
        raise table.fail("name", f"name must be 1-64 chars of A-Z a-z 0-9 _ . -, got {name!r}")
    url = _expand(table, environ)
    # apprise takes a fifth of a second to load: only a rules file with targets pays for it.
    import apprise  # noqa: PLC0415

    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        # The URL itself may be a secret: the message names the table, not the URL.
        raise table.fail("url", f"notify {name}: url is not a notification URL apprise knows "
                                "(see https://appriseit.com/services/)")  # fmt: skip
    severities = _choices(table, "severities", SEVERITIES)
    states = _choices(table, "states", STATES, default=("raised", "resolved"))
    return Notification(
        name=name,
        url=url,
        severities=frozenset(severities),
        rules=tuple(table.texts("rules", ["*"], MAX_GLOBS)),
        sensors=table.text("sensors", "*"),
        states=frozenset(states),
        title=_template(table, "title", DEFAULT_TITLE),
        body=_template(table, "body", DEFAULT_BODY),
    )


def _expand(table: TableReader, environ: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise table.fail("url", f"url needs the environment variable {name}, which is not set")
        return environ[name]

    return _ENVIRONMENT.sub(value, table.text("url"))


def _choices(
    table: TableReader, key: str, allowed: Sequence[str], default: Sequence[str] | None = None
) -> list[str]:
    chosen = table.texts(key, list(default or allowed), len(allowed))
    for item in chosen:
        if item not in allowed:
            raise table.fail(key, f"{key}: {item!r} is not one of {', '.join(allowed)}")
    return chosen


def _template(table: TableReader, key: str, default: str) -> string.Template:
    text = table.text(key, default)
    if len(text) > MAX_TEMPLATE:
        raise table.fail(key, f"{key} is longer than {MAX_TEMPLATE} characters")
    template = string.Template(text)
    if not template.is_valid():
        raise table.fail(key, f"{key}: a $ must start a field name such as $sensor_id ($$ for $)")
    unknown = sorted(set(template.get_identifiers()) - TEMPLATE_FIELDS)
    if unknown:
        raise table.fail(key, f"{key}: no field {unknown[0]!r}; fields are "
                              f"{', '.join(sorted(TEMPLATE_FIELDS))}")  # fmt: skip
    return template
