"""When a group's unread backlog puts it at risk of losing entries to MAXLEN trimming."""

from __future__ import annotations


def backlog_warning(lag: int, maxlen: int, ratio: float) -> str | None:
    """A warning once the entries a group has not read reach `ratio` of the stream's cap."""
    if lag < ratio * maxlen:
        return None
    return (
        f"{lag} unread entries are {lag / maxlen:.0%} of MAXLEN {maxlen}: "
        "trimming will drop entries it has not read unless it catches up"
    )
