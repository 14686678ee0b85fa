"""The helper's answers as typed values: the one place the agent reads its wire format.

A frame from the helper is a list, [status, request id, values...] (see helper.py); past this
module the agent sees a Reply with named fields, a scan as DirScan, a hash answer as Digests
and a listing as compare.Entry values.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, List, NamedTuple

from .compare import Entry, Kind

if TYPE_CHECKING:
    from .channel import Channel


class Reply:
    """One answer from a helper. `channel` is who answered; `ident` is the request's id, or
    None when the helper died; `error` says why the request failed (None when it did not),
    and `values` are the rest of the answer, decoded by the functions below."""

    __slots__ = ("channel", "ident", "error", "values")

    def __init__(self, channel: Channel, message: list[Any] | None):
        self.channel = channel
        self.ident: int | None = None
        self.error: str | None = None
        self.values: list[Any] = []
        if message is not None:
            self.ident = message[1]
            if message[0] == "ok":
                self.values = message[2:]
            else:
                self.error = str(message[2])


class DirScan(NamedTuple):
    """One directory as a helper's scan saw it (the summary the helper sends, by name)."""

    complete: bool  # every file has its digest and nothing failed
    dev: int
    files_read: int
    bytes_read: int
    cache_hits: int
    files: str  # the names of its files and links, joined by "/" (which no name holds)
    subdirs: list[str]
    specials: int
    new_row: bool  # `row` is the hash cache row to store
    listing: bytes  # its entries as JSON text: compared whole, decoded only when needed
    row: bytes
    # A huge directory's listing comes in chunks: `listing` is the first, and this numbers
    # the rest, asked for with "next" requests (0: there is no more; None: not chunked).
    stream: int | None = None


class ScanFailure(NamedTuple):
    """Why a directory could not be scanned."""

    why: str
    gone: bool = False  # it vanished since it was listed


class Digests(NamedTuple):
    """A hash request's answer, per file of the request: its digest or why it failed."""

    digests: list[str | None]
    errors: dict[int, str]
    stats: list[Any]  # per file, when asked: [ino, size, mtime_ns, ctime_ns, cacheable]
    bytes_read: int


def scans_of(reply: Reply, count: int) -> list[DirScan | ScanFailure]:
    """A scan request's answer for its `count` directories: each one's scan, or why it
    could not be scanned (a failed request fails them all)."""
    if reply.error is not None:
        return [ScanFailure(reply.error)] * count
    summaries, blobs = reply.values[0], reply.values[1:]
    out: list[DirScan | ScanFailure] = []
    for summary, listing, row in zip(summaries, blobs[0::2], blobs[1::2]):
        if "error" in summary:
            out.append(ScanFailure(summary["error"], bool(summary.get("gone"))))
            continue
        out.append(
            DirScan(
                complete=summary["complete"],
                dev=summary["dev"],
                files_read=summary["read"],
                bytes_read=summary["bytes"],
                cache_hits=summary["hits"],
                files=summary["files"],
                subdirs=summary["subdirs"],
                specials=summary["specials"],
                new_row=summary["new_row"],
                listing=listing,
                row=row,
                stream=summary.get("stream"),
            )
        )
    return out


def digests_of(reply: Reply) -> Digests:
    """A hash request's answer (one that did not fail as a whole: see `reply.error`)."""
    digests, errors, stats, nbytes = reply.values
    return Digests(digests, {int(k): v for k, v in errors.items()}, stats, nbytes)


def chunk_of(reply: Reply) -> tuple[bytes, bool]:
    """A "next" request's answer: the listing's next entries as JSON text, and whether they
    are its last."""
    head, listing = reply.values
    return listing, bool(head["end"])


_KINDS = {kind.value: kind for kind in Kind}


# A listed entry as the helper sends it: [name, kind letter, size, value(, mtime)]. Lists of
# them are kept as they come while a streamed listing waits to be merged, and typed only
# where the merge has to look at single entries.
Row = List[Any]


def rows_of(listing: bytes) -> list[Row]:
    """A listing's entries, sorted by name (row[0]), as the helper sent them."""
    rows: list[Row] = json.loads(listing)
    return rows


def entries_of(listing: bytes) -> list[Entry]:
    """A scan's listing as typed entries."""
    return typed(rows_of(listing))


def typed(rows: list[Row]) -> list[Entry]:
    """Rows as typed entries: the one place the helper's lists become Entry."""
    kinds, new = _KINDS, tuple.__new__
    # tuple.__new__ straight: Entry(...) costs twice as much, once per entry of a tree.
    return [new(Entry, (e[0], kinds[e[1]], e[2], e[3], e[4] if len(e) > 4 else 0)) for e in rows]


def same_files(src: list[Row], tgt: list[Row], quick: bool) -> str | None:
    """When two runs of rows are equal and hold only files and symlinks that are identical
    for being equal (files with their digest; in quick mode, any with its size and mtime),
    their names joined by "/"; else None. The common case of a huge directory's chunks,
    settled without a Python step per entry."""
    if src != tgt:
        return None
    names = [e[0] for e in src if e[1] == "l" or (e[1] == "f" and (quick or e[3] is not None))]
    return "/".join(names) if len(names) == len(src) else None
