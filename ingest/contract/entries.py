"""Stream entries as a consumer group runner hands them over: a batch decoded at once.

A decoder turns a batch of raw entries (IDs and flat field lists) into something its handler
works on, and names the entries that break its contract. `per_entry` makes one from a function
of one entry, for handlers that want an object per entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, Self, TypeVar

from ingest.errors import InvalidEntry
from ingest.redis.replies import EntryLayout

V = TypeVar("V")
# An entry's fields as Redis sends them: name, value, name, value, ...
FlatFields = Sequence[str]
# Entries a decoder refuses: position in the batch and the reason.
Refused = list[tuple[int, str]]


class Decoded(Protocol):
    """A decoded batch: its entries' IDs in stream order, and runs of it for splitting."""

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice) -> Self: ...


D = TypeVar("D", bound=Decoded)
BatchDecoder = Callable[[Sequence[str], Sequence[FlatFields]], tuple[D, Refused]]
# Decodes a batch of entries laid out in the bytes of read replies (see `resp`), in order; None
# to leave the batch to a BatchDecoder.
ReplyDecoder = Callable[[Sequence[EntryLayout]], D | None]


class Inadmissible(NamedTuple):
    """An entry a group's limits keep out: its place in the batch, why (naming the limit), and
    its fields for the dead letter."""

    position: int
    reason: str
    fields: Mapping[str, str]


# A group's limits: the part of a decoded batch they let in, and the entries they keep out.
Admission = Callable[[D], tuple[D, list[Inadmissible]]]


def as_mapping(flat: FlatFields) -> dict[str, str]:
    """Flat fields as a dict; a name repeated in one entry keeps its last value."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class Entry(NamedTuple, Generic[V]):
    id: str
    value: V


@dataclass(frozen=True)
class Entries(Generic[V]):
    """A batch decoded entry by entry."""

    ids: list[str]
    values: list[V]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> Entries[V]:
        return Entries(self.ids[rows], self.values[rows])

    def __iter__(self) -> Iterator[Entry[V]]:
        return map(Entry, self.ids, self.values)


def per_entry(decode: Callable[[str, Mapping[str, str]], V]) -> BatchDecoder[Entries[V]]:
    """A batch decoder that calls `decode(entry_id, fields)` for each entry; InvalidEntry
    refuses the entry with its reason."""

    def decode_batch(
        ids: Sequence[str], fields: Sequence[FlatFields]
    ) -> tuple[Entries[V], Refused]:
        kept = Entries[V]([], [])
        refused: Refused = []
        for position, (entry_id, flat) in enumerate(zip(ids, fields, strict=True)):
            try:
                kept.values.append(decode(entry_id, as_mapping(flat)))
                kept.ids.append(entry_id)
            except InvalidEntry as exc:
                refused.append((position, exc.reason))
        return kept, refused

    return decode_batch
