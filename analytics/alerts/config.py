"""A whole rules file: its `[[rule]]` tables (rules.py) and its `[[notify]]` targets
(notifications.py), checked together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from analytics.alerts.notifications import Notification, parse_notifications
from analytics.alerts.rules import Rule, parse_toml, read_rules_file, rules_of


@dataclass(frozen=True)
class AlertConfig:
    rules: list[Rule]
    notifications: list[Notification]


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AlertConfig:
    """Read and check a rules file; RulesError names the line that is wrong and why."""
    text, source = read_rules_file(path)
    return parse_config(text, source, environ)


def parse_config(
    text: str, source: str = "<rules>", environ: Mapping[str, str] | None = None
) -> AlertConfig:
    document = parse_toml(text, source)
    return AlertConfig(
        rules_of(document, text, source),
        parse_notifications(document, text, source, environ),
    )
