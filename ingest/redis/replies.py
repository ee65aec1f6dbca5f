"""The replies to a runner's reads, parsed from the bytes Redis sent.

hiredis makes a str for every field of every entry, and a batch decoder then walks them all:
together most of a consumer's time. Here the reply is split at its line ends with numpy, its
framing is checked line by line and each entry's fields become offsets into the one buffer
(`EntryLayout`), which a decoder reads as arrays. Anything this parser does not expect (an
error, a field holding a line end, a reply of another shape) makes it give up, and the bytes
go to hiredis as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]
# The longest header line read as a number: "$" and a length, "*" and a count, ":" and an int.
_NUMBER_WIDTH = 20
# The low n bytes of a little-endian word, for n from 0 to 8.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)
# The bulk string header of each length below 16 KiB, as a little-endian word.
_BULK_HEADERS = np.frombuffer(
    b"".join(f"${size}".encode().ljust(8, b"\0") for size in range(1 << 14)), "<u8"
)
# Bytes after the end of a reply's buffer: more than any window a decoder reads past a slice.
_SLACK = 64


@dataclass(frozen=True)
class EntryLayout:
    """Stream entries as offsets into `buffer`: entry i's ID is
    buffer[id_start[i]:id_start[i] + id_len[i]]; field pair f belongs to entry `field_entry[f]`
    (ascending), its name and value likewise."""

    buffer: Bytes
    id_start: Ints
    id_len: Ints
    field_entry: Ints
    name_start: Ints
    name_len: Ints
    value_start: Ints
    value_len: Ints

    def __len__(self) -> int:
        return len(self.id_start)

    @classmethod
    def concatenated(cls, layouts: Sequence[EntryLayout]) -> EntryLayout:
        """The entries of several layouts, in order, as one."""
        if len(layouts) == 1:
            return layouts[0]
        buffers: dict[int, tuple[int, Bytes]] = {}
        for layout in layouts:
            if id(layout.buffer) not in buffers:
                size = sum(len(buffer) for _, buffer in buffers.values())
                buffers[id(layout.buffer)] = (size, layout.buffer)
        shift = [buffers[id(layout.buffer)][0] for layout in layouts]
        entries = np.cumsum([0] + [len(layout) for layout in layouts])

        def shifted(name: str, by: Sequence[int]) -> Ints:
            return np.concatenate(
                [getattr(layout, name) + k for layout, k in zip(layouts, by, strict=True)]
            )

        return cls(
            np.concatenate([buffer for _, buffer in buffers.values()]),
            shifted("id_start", shift),
            shifted("id_len", [0] * len(layouts)),
            shifted("field_entry", entries[:-1].tolist()),
            shifted("name_start", shift),
            shifted("name_len", [0] * len(layouts)),
            shifted("value_start", shift),
            shifted("value_len", [0] * len(layouts)),
        )

    def last_id(self) -> str:
        start, length = int(self.id_start[-1]), int(self.id_len[-1])
        return self.buffer[start : start + length].tobytes().decode()

    def ids(self) -> list[str]:
        if not len(self):
            return []
        return joined(self.buffer, self.id_start, self.id_len, b" ").decode().split(" ")

    def entries(self) -> list[tuple[str, list[str]]]:
        """The entries as hiredis would give them: ID and flat fields."""
        data = self.buffer.tobytes()

        def text(start: int, length: int) -> str:
            return data[start : start + length].decode("utf-8", "surrogateescape")

        fields: list[list[str]] = [[] for _ in range(len(self))]
        columns = zip(
            self.field_entry.tolist(), self.name_start.tolist(), self.name_len.tolist(),
            self.value_start.tolist(), self.value_len.tolist(), strict=True,
        )  # fmt: skip
        for entry, name_at, name_len, value_at, value_len in columns:
            fields[entry] += [text(name_at, name_len), text(value_at, value_len)]
        return list(zip(self.ids(), fields, strict=True))


# An entry as hiredis gives it: ID and flat fields; no fields when its data was trimmed away.
RawEntry = tuple[str, Sequence[str] | None]


E = TypeVar("E", EntryLayout, list[RawEntry])


@dataclass(frozen=True)
class ReadReply(Generic[E]):
    """One read's MULTI: what the trim check counted as lost, the group's last-delivered ID
    before the read, the hand-over count, and the entries read: laid out in the reply's bytes,
    or as hiredis parsed them."""

    lost: int
    last_delivered: str
    handovers: int
    entries: E

    def __len__(self) -> int:
        return len(self.entries)

    def last_id(self) -> str:
        if isinstance(self.entries, EntryLayout):
            return self.entries.last_id()
        return self.entries[-1][0]

    def raw_entries(self) -> Sequence[RawEntry]:
        if isinstance(self.entries, EntryLayout):
            return self.entries.entries()
        return self.entries


def words(buffer: Bytes, starts: Ints, lengths: Ints, count: int) -> npt.NDArray[np.uint64]:
    """Each slice as `count` little-endian 8-byte words, zeros past its end (the buffer holds
    at least 8 bytes after every slice)."""
    windows = np.lib.stride_tricks.sliding_window_view(buffer, 8)
    found = np.empty((len(starts), count), np.uint64)
    for word in range(count):
        taken = windows[starts + 8 * word].view("<u8")[:, 0]
        found[:, word] = taken & _LOW_BYTES[np.clip(lengths - 8 * word, 0, 8)]
    return found


def joined(buffer: Bytes, starts: Ints, lengths: Ints, separator: bytes) -> bytes:
    """The slices of `buffer` at `starts` with `lengths`, one after another with a one-byte
    separator between them."""
    if not len(starts):
        return b""
    ends = np.cumsum(lengths + 1)
    origin = np.repeat(starts - (ends - lengths - 1), lengths + 1)
    positions = origin + np.arange(int(ends[-1]))
    taken = buffer[np.minimum(positions, len(buffer) - 1)]
    taken[ends - 1] = separator[0]
    return taken[:-1].tobytes()


class _Lines:
    """A reply split at its CRLFs; a field holding a CRLF makes its header disagree."""

    def __init__(self, data: bytes) -> None:
        # Zeros after the end, so that fixed-width windows read at any slice stay inside.
        self.buffer: Bytes = np.frombuffer(data + bytes(_SLACK), np.uint8)
        returns = np.flatnonzero(self.buffer == 13)
        ends = returns[self.buffer[returns + 1] == 10]
        self.start = np.empty(len(ends), np.int64)
        self.start[:1] = 0
        self.start[1:] = ends[:-1] + 2
        self.length = ends - self.start
        self.data = data
        self.at = 0

    def __len__(self) -> int:
        return len(self.start)

    def line(self, index: int) -> bytes:
        start = int(self.start[index])
        return self.data[start : start + int(self.length[index])]

    def peek(self) -> bytes | None:
        """The next line, not taken; None past the last."""
        return self.line(self.at) if self.at < len(self) else None

    def take(self) -> bytes:
        line = self.peek()
        if line is None:
            raise _Unexpected
        self.at += 1
        return line

    def expect(self, line: bytes) -> None:
        if self.take() != line:
            raise _Unexpected

    def number(self, kind: bytes) -> int:
        line = self.take()
        if line[:1] != kind:
            raise _Unexpected
        try:
            return int(line[1:])
        except ValueError:
            raise _Unexpected from None

    def null(self) -> bool:
        """Whether the next line is a null (RESP3's `_`, or RESP2's `$-1` or `*-1`), taken if so."""
        if self.peek() in (b"_", b"$-1", b"*-1"):
            self.at += 1
            return True
        return False

    def bulk(self) -> bytes | None:
        if self.null():
            return None
        size = self.number(b"$")
        if int(self.length[self.at]) != size:
            raise _Unexpected
        return self.take()

    def bulk_headers_agree(self, headers: Ints) -> bool:
        """Whether each of the `headers` lines is `$` and the length of the line after it."""
        sizes = self.length[headers + 1]
        usual = (sizes < len(_BULK_HEADERS)) & (self.length[headers] <= 8)
        if usual.all():
            found = words(self.buffer, self.start[headers], self.length[headers], 1)[:, 0]
            return bool((found == _BULK_HEADERS[sizes]).all())
        return bool((self.numbers(headers, ord("$")) == sizes).all())

    def numbers(self, lines: Ints, kind: int) -> Ints:
        """The numbers on header lines `lines`, each led by the byte `kind`; -1 for a line that
        is not such a header."""
        starts, lengths = self.start[lines] + 1, self.length[lines] - 1
        fits = (self.buffer[self.start[lines]] == kind) & (lengths > 0)
        fits &= lengths < _NUMBER_WIDTH
        lengths = np.where(fits, lengths, 0)
        values = np.zeros(len(lines), np.int64)
        for column in range(int(lengths.max(initial=0))):
            inside = column < lengths
            digit = self.buffer[np.where(inside, starts + column, 0)].astype(np.int64) - 48
            fits &= ~inside | ((digit >= 0) & (digit <= 9))
            values = np.where(inside, values * 10 + digit, values)
        return np.where(fits, values, -1)


class _Unexpected(Exception):
    """The reply is not the shape this parser reads."""


def parse_reads(data: bytes, reads: int, stream: str) -> list[ReadReply[EntryLayout]] | None:
    """The replies to `reads` MULTIs of trim check, GET and XREADGROUP, then one more reply (the
    ending `read_until` waited for); None when `data` is anything else."""
    try:
        lines = _Lines(data)
        replies = [_parse_read(lines, stream.encode()) for _ in range(reads)]
        lines.bulk()
        if lines.at != len(lines) or int(lines.start[-1] + lines.length[-1]) + 2 != len(data):
            return None
        return replies
    except _Unexpected:
        return None


def _parse_read(lines: _Lines, stream: bytes) -> ReadReply[EntryLayout]:
    lines.expect(b"+OK")
    for _ in range(3):
        lines.expect(b"+QUEUED")
    lines.expect(b"*3")
    lines.expect(b"*2")
    lost = lines.number(b":")
    last_delivered = lines.bulk()
    handovers = lines.bulk()
    if last_delivered is None:
        raise _Unexpected
    if lines.null():
        entries = _entries(lines, 0)
    else:
        # RESP3 sends the streams read as a map, RESP2 as an array of [stream, entries].
        if lines.take() not in (b"%1", b"*1"):
            raise _Unexpected
        if lines.peek() == b"*2":
            lines.at += 1
        if lines.bulk() != stream:
            raise _Unexpected
        entries = _entries(lines, lines.number(b"*"))
    return ReadReply(lost, last_delivered.decode(), int(handovers or 0), entries)


def _entries(lines: _Lines, count: int) -> EntryLayout:
    """`count` entries from the current line on, each `*2`, its ID, `*n` and n bulk strings."""
    first = lines.at
    if count == 0:
        empty = np.zeros(0, np.int64)
        return EntryLayout(lines.buffer, empty, empty, empty, empty, empty, empty, empty)
    if first + 4 > len(lines):
        raise _Unexpected
    # Entries usually have as many fields as the first: a guess the checks below confirm.
    fields = lines.numbers(np.array([first + 3]), ord("*"))
    per_entry = 4 + 2 * int(fields[0])
    starts = first + per_entry * np.arange(count)
    sizes = np.full(count, int(fields[0]), np.int64)
    if (
        int(starts[-1]) + per_entry > len(lines)
        or (lines.numbers(starts + 3, ord("*")) != fields[0]).any()
    ):
        starts, sizes = _walk_entries(lines, first, count)
    _check_array_headers(lines, starts)
    if (sizes % 2).any():
        raise _Unexpected
    # Bulk headers: each entry's ID, then its n fields, each followed by its content line.
    field_offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    within = np.arange(int(sizes.sum())) - field_offsets
    field_headers = np.repeat(starts, sizes) + 4 + 2 * within
    id_headers = starts + 1
    headers = np.concatenate([id_headers, field_headers])
    if not lines.bulk_headers_agree(headers):
        raise _Unexpected
    lines.at = int(starts[-1] + 4 + 2 * sizes[-1])
    names, values = field_headers[0::2] + 1, field_headers[1::2] + 1
    return EntryLayout(
        lines.buffer,
        lines.start[id_headers + 1],
        lines.length[id_headers + 1],
        np.repeat(np.arange(count), sizes // 2),
        lines.start[names],
        lines.length[names],
        lines.start[values],
        lines.length[values],
    )


def _walk_entries(lines: _Lines, first: int, count: int) -> tuple[Ints, Ints]:
    """Where each entry starts and how many fields it has, entry by entry."""
    starts, sizes = np.zeros(count, np.int64), np.zeros(count, np.int64)
    at = first
    for index in range(count):
        if at + 4 > len(lines):
            raise _Unexpected
        line = lines.line(at + 3)
        if line[:1] != b"*" or not line[1:].isdigit():
            raise _Unexpected
        starts[index], sizes[index] = at, int(line[1:])
        at += 4 + 2 * int(sizes[index])
    if at > len(lines):
        raise _Unexpected
    return starts, sizes


def _check_array_headers(lines: _Lines, starts: Ints) -> None:
    """Each entry's first line is `*2`."""
    if (lines.numbers(starts, ord("*")) != 2).any():
        raise _Unexpected
