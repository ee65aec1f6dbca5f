"""When a group's unread backlog puts it at risk of losing entries to MAXLEN trimming, and what
writers do about it (`BACKLOG_POLICIES`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# backpressure: writers hold back while a group's backlog is at the limit; trim: they write on,
# and MAXLEN trims the oldest entries whether the groups read them or not.
BACKLOG_POLICIES = ("backpressure", "trim")


def parse_backlog_policy(text: str) -> str:
    if text not in BACKLOG_POLICIES:
        raise ValueError(f"expected one of {', '.join(BACKLOG_POLICIES)}, got {text!r}")
    return text


@dataclass(frozen=True)
class Backlog:
    """The group furthest behind: its entries not yet read, plus those read and not yet
    acknowledged (trimming takes both)."""

    group: str
    entries: int

    def explain(self, maxlen: int) -> str:
        return (
            f"group {self.group} has {self.entries} entries unread or unacknowledged, "
            f"{self.entries / maxlen:.0%} of MAXLEN {maxlen}: writes wait for it to catch up "
            "(TELEMETRY_BACKLOG_POLICY=trim writes on and lets trimming drop them)"
        )


def largest_backlog(groups: Sequence[object]) -> Backlog | None:
    """From XINFO GROUPS, each group as Redis sends it (a flat name, value list) or as redis-py
    makes it (a dict). A group whose lag Redis cannot tell (after XDEL) counts its pending
    entries alone."""
    found = None
    for group in groups:
        if isinstance(group, Mapping):
            info = {_text(k): v for k, v in group.items()}
        elif isinstance(group, list):
            info = {_text(group[i]): group[i + 1] for i in range(0, len(group) - 1, 2)}
        else:
            continue
        lag = info.get("lag")
        entries = int(str(info.get("pending") or 0)) + (int(str(lag)) if lag is not None else 0)
        if found is None or entries > found.entries:
            found = Backlog(_text(info.get("name") or ""), entries)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def backlog_warning(lag: int, maxlen: int, ratio: float) -> str | None:
    """A warning once the entries a group has not read reach `ratio` of the stream's cap."""
    if lag < ratio * maxlen:
        return None
    return (
        f"{lag} unread entries are {lag / maxlen:.0%} of MAXLEN {maxlen}: "
        "unless it catches up, writers hold back (TELEMETRY_BACKLOG_POLICY=backpressure) or "
        "trimming drops entries it has not read (trim)"
    )
