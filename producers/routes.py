"""The bridge's routes: which topics it subscribes to, and the device profile that decodes each.

Without a routes file the bridge takes `sensors/{sensor_id}/telemetry` and
`sensors/{sensor_id}/{metric}` as generic JSON (or the `--topic` templates given). A routes file
(TOML, `telemetry bridge --routes FILE`) lists `[[route]]` tables, tried in order:

    decoding = "lenient"                 # or "strict"; the default of every route

    [[route]]
    topic = "sensors/{site}/{sensor_id}/telemetry"   # {site} becomes a label
    profile = "json"                     # json (default), zigbee2mqtt, tasmota, shelly-gen2,
                                         # sparkplug; each has a default topic
    labels = { building = "north" }      # fixed labels of every sensor of the route
    rename = { "env.t" = "temp" }        # field path (dots or flattened) -> metric name
    scale = { temp = 0.1 }               # metric -> factor
    units = { temp = "°C" }              # metric -> unit, over the profile's own
    ignore = ["rssi"]                    # fields left out without counting them as dropped

    [[route]]
    profile = "sparkplug"
    groups = ["plant1"]                  # Sparkplug groups to take (default: every group)
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.contract.reading import METRIC_NAME, RESERVED
from ingest.errors import SettingsError
from ingest.labels import MAX_LABEL_VALUE_CHARS, label_problem
from producers.payload import (
    DECODINGS,
    DEFAULT_TOPICS,
    LENIENT,
    MAX_READINGS,
    Parsed,
    TopicTemplate,
    parse_matched,
    subscriptions,
)
from producers.profiles.base import JsonProfile
from producers.profiles.mapping import FieldMapping, RecentNotes
from producers.profiles.shelly import ShellyGen2
from producers.profiles.sparkplug.host import NAMESPACE, PROFILE, SparkplugHost
from producers.profiles.tasmota import Tasmota
from producers.profiles.zigbee2mqtt import Zigbee2Mqtt

JSON_PROFILES: dict[str, JsonProfile] = {
    p.name: p for p in (JsonProfile(), Zigbee2Mqtt(), Tasmota(), ShellyGen2())
}
PROFILES = (*JSON_PROFILES, PROFILE)
_ROUTE_KEYS = frozenset({"topic", "profile", "decoding", "labels", "rename", "scale", "units",
                         "ignore", "groups"})  # fmt: skip
MAX_ROUTES = 64


@dataclass(frozen=True)
class Route:
    profile: str
    # None for Sparkplug B, whose topics are its own.
    template: TopicTemplate | None
    decoding: str = LENIENT
    mapping: FieldMapping = field(default_factory=FieldMapping)
    groups: frozenset[str] = frozenset()

    def takes_sparkplug(self, levels: Sequence[str]) -> bool:
        return (len(levels) > 1 and levels[0] == NAMESPACE
                and (not self.groups or levels[1] in self.groups))  # fmt: skip


def default_routes(templates: Sequence[str] | None = None, decoding: str = LENIENT) -> list[Route]:
    """Generic JSON on the given topic templates (default: DEFAULT_TOPICS); ValueError for a
    template that is not one."""
    return [Route("json", TopicTemplate(t), decoding) for t in templates or DEFAULT_TOPICS]


class Router:
    """Finds each message's route and decodes it with the route's profile."""

    def __init__(self, routes: Sequence[Route], max_bytes: int,
                 max_readings: int = MAX_READINGS) -> None:  # fmt: skip
        self.routes = list(routes)
        self.max_bytes = max_bytes
        self.max_readings = max_readings
        self.sparkplug = SparkplugHost()
        # The topic labels each sensor was last given.
        self._labelled = RecentNotes()

    def subscriptions(self) -> list[str]:
        templated = [r.template for r in self.routes if r.template is not None]
        found = subscriptions(templated)
        if any(r.template is None for r in self.routes):
            found.append(f"{NAMESPACE}/#")
        return found

    def parse(self, topic: str, payload: bytes) -> Parsed:
        """The readings of one message; a message no route takes, or that cannot be read at
        all, is one refusal."""
        if len(payload) > self.max_bytes:
            return Parsed.unreadable(
                f"payload of {len(payload)} bytes is over the {self.max_bytes} limit"
            )
        levels = topic.split("/")
        for route in self.routes:
            if route.template is None:
                if route.takes_sparkplug(levels):
                    parsed = self.sparkplug.parse(topic, payload, route.decoding)
                    if not route.mapping.is_empty:
                        route.mapping.apply(parsed, PROFILE, lambda _names: {})
                    return parsed
                continue
            found = route.template.match_levels(levels)
            if found is not None:
                return self._templated(route, route.template, found, payload)
        if levels[0] == NAMESPACE:
            # Another host's or a group not routed here: not ours to refuse.
            return Parsed()
        return Parsed.unreadable(f"topic {topic[:200]!r} matches no configured topic")

    def _templated(self, route: Route, template: TopicTemplate, found: dict[str, str],
                   payload: bytes) -> Parsed:  # fmt: skip
        if "metric" in found or (route.profile == "json" and route.mapping.is_empty):
            parsed = parse_matched(template, found, payload, self.max_readings, route.decoding,
                                   topic_labels=False)  # fmt: skip
        else:
            profile = JSON_PROFILES[route.profile]
            parsed = profile.parse(found["sensor_id"], payload, route.decoding, route.mapping,
                                   self.max_readings)  # fmt: skip
        if template.label_levels and parsed.readings:
            self._note_topic_labels(parsed, template.labels(found))
        return parsed

    def _note_topic_labels(self, parsed: Parsed, labels: dict[str, str]) -> None:
        """Note the topic's labels for the sensors of the readings, unless they were noted the
        same lately (RecentNotes)."""
        now = time.monotonic()
        for fields in parsed.readings:
            sensor_id = fields["sensor_id"]
            if self._labelled.due(sensor_id, labels, now):
                parsed.note(sensor_id).labels.update(labels)


def load_routes(path: str | Path, decoding: str = LENIENT) -> list[Route]:
    """The routes of a routes file; SettingsError names the file, the route and what to fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the routes file: {exc.strerror}") from None
    return parse_routes(text, str(path), decoding)


def parse_routes(text: str, source: str = "<routes>", decoding: str = LENIENT) -> list[Route]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(document) - {"route", "decoding"}
    if unknown:
        raise SettingsError(f"{source}: unknown top-level key {sorted(unknown)[0]!r}; "
                            "expected decoding and [[route]] tables")  # fmt: skip
    decoding = document.get("decoding", decoding)
    if decoding not in DECODINGS:
        raise SettingsError(f"{source}: decoding must be one of {', '.join(DECODINGS)}")
    tables = document.get("route")
    if not isinstance(tables, list) or not tables:
        raise SettingsError(f"{source}: no [[route]] tables; add one per topic pattern")
    if len(tables) > MAX_ROUTES:
        raise SettingsError(f"{source}: {len(tables)} routes, over the {MAX_ROUTES} limit")
    return [_route(table, f"{source}: route {i + 1}", decoding) for i, table in enumerate(tables)]


def _route(table: Any, where: str, decoding: str) -> Route:
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: must be a table")
    unknown = set(table) - _ROUTE_KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown key {sorted(unknown)[0]!r}; known keys are "
                            f"{', '.join(sorted(_ROUTE_KEYS))}")  # fmt: skip
    profile = table.get("profile", "json")
    if profile not in PROFILES:
        raise SettingsError(f"{where}: unknown profile {profile!r}; profiles are "
                            f"{', '.join(PROFILES)}")  # fmt: skip
    decoding = table.get("decoding", decoding)
    if decoding not in DECODINGS:
        raise SettingsError(f"{where}: decoding must be one of {', '.join(DECODINGS)}")
    mapping = FieldMapping.of(
        rename=_strings(table, "rename", where, names=True),
        scale=_factors(table, where),
        units=_strings(table, "units", where),
        labels=_labels(table, where),
        ignore=_list(table, "ignore", where),
    )
    if profile == PROFILE:
        if "topic" in table:
            raise SettingsError(f"{where}: a sparkplug route takes spBv1.0/#; choose groups with "
                                "groups = [...] instead of topic")  # fmt: skip
        return Route(profile, None, decoding, mapping, frozenset(_list(table, "groups", where)))
    if "groups" in table:
        raise SettingsError(f"{where}: groups is for the sparkplug profile only")
    topic = table.get("topic", JSON_PROFILES[profile].default_topic)
    if not isinstance(topic, str):
        raise SettingsError(f"{where}: topic must be a string")
    try:
        template = TopicTemplate(topic)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return Route(profile, template, decoding, mapping)


def _strings(table: Mapping[str, Any], key: str, where: str,
             names: bool = False) -> dict[str, str]:  # fmt: skip
    found = table.get(key, {})
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= MAX_LABEL_VALUE_CHARS
        for k, v in found.items()
    ):
        raise SettingsError(f"{where}: {key} must be a table of non-empty strings")
    if names:
        for name in found.values():
            if METRIC_NAME.fullmatch(name) is None or name in RESERVED:
                raise SettingsError(f"{where}: rename target {name[:40]!r} is not a metric name")
    return dict(found)


def _factors(table: Mapping[str, Any], where: str) -> dict[str, float]:
    found = table.get("scale", {})
    if not isinstance(found, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in found.values()
    ):
        raise SettingsError(f"{where}: scale must be a table of numbers")
    return {str(k): float(v) for k, v in found.items()}


def _labels(table: Mapping[str, Any], where: str) -> dict[str, str]:
    labels = _strings(table, "labels", where)
    for name, value in labels.items():
        problem = label_problem(name, value)
        if problem:
            raise SettingsError(f"{where}: {problem}")
    return labels


def _list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    found = table.get(key, [])
    if not isinstance(found, list) or not all(isinstance(v, str) and v for v in found):
        raise SettingsError(f"{where}: {key} must be a list of non-empty strings")
    return list(found)
