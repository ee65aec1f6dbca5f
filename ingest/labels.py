"""Labels of a sensor (`site=gh-3`) and selectors over them (`site=gh-*,kind!=test`); pure.

A label name is a metric name (`[A-Za-z_][A-Za-z0-9_]{0,63}`); a value is 1-128 printable
characters. A selector is comma-separated terms, each `name=value` or `name!=value`, where the
value may be a glob (`*`, `?`, `[...]`); `name=` alone asks for a sensor without that label.
A sensor matches when every term does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from ingest.contract.reading import METRIC_NAME

MAX_LABEL_VALUE_CHARS = 128
# Labels and units one sensor keeps in the registry; more are not added.
MAX_LABELS = 32
MAX_UNITS = 256
MAX_SELECTOR_TERMS = 16


def label_value_ok(value: str) -> bool:
    return 0 < len(value) <= MAX_LABEL_VALUE_CHARS and value.isprintable()


def label_name_problem(name: str) -> str | None:
    """What is wrong with a label's name, or None."""
    if METRIC_NAME.fullmatch(name) is None:
        return f"label name {name[:40]!r} must be [A-Za-z_][A-Za-z0-9_]{{0,63}}"
    return None


def label_problem(name: str, value: str) -> str | None:
    """What is wrong with a label, or None."""
    if problem := label_name_problem(name):
        return problem
    if not label_value_ok(value):
        return (f"label {name} must have a value of 1-{MAX_LABEL_VALUE_CHARS} printable "
                f"characters, got {value[:40]!r}")  # fmt: skip
    return None


def parse_labels(pairs: list[str]) -> tuple[dict[str, str], list[str]]:
    """`name=value` pairs as labels to set, and `name=` as labels to remove; ValueError for
    anything else."""
    setting: dict[str, str] = {}
    removing: list[str] = []
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"expected name=value (or name= to remove), got {pair[:40]!r}")
        problem = label_name_problem(name) if value == "" else label_problem(name, value)
        if problem:
            raise ValueError(problem)
        if value == "":
            removing.append(name)
        else:
            setting[name] = value
    return setting, removing


@dataclass(frozen=True)
class Term:
    name: str
    value: str
    equal: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name)
        if self.value == "":
            found = have is None
        else:
            found = have is not None and fnmatch.fnmatchcase(have, self.value)
        return found == self.equal


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(f"{t.name}{'=' if t.equal else '!='}{t.value}" for t in self.terms)


def parse_selector(text: str) -> Selector:
    """A selector from its text (see module docs); ValueError saying what to fix."""
    text = text.strip()
    if not text:
        return Selector()
    parts = text.split(",")
    if len(parts) > MAX_SELECTOR_TERMS:
        raise ValueError(f"a selector has at most {MAX_SELECTOR_TERMS} terms, got {len(parts)}")
    terms = []
    for part in parts:
        name, sep, value = part.partition("!=")
        equal = not sep
        if equal:
            name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or METRIC_NAME.fullmatch(name) is None:
            raise ValueError(f"expected label=value or label!=value, got {part.strip()[:40]!r}")
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise ValueError(f"selector value for {name} is over {MAX_LABEL_VALUE_CHARS} chars")
        terms.append(Term(name, value, equal))
    return Selector(tuple(terms))
