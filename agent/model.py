"""Plain data for verification results and the entries posted to SMS, and the API's limits.

The limits and field names of POST /v3/tasks/{task_id}/consistency-result are defined here
once; the config, the client, the outbox and the emulator all check against these.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields

from .errors import ValidationError
from .names import escape

# Documented limits of POST /v3/tasks/{task_id}/consistency-result.
MAX_COUNT = 1_000_000
MAX_DIR_CHECK = 1024
MAX_ENTRIES_PER_REQUEST = 30
MAX_TASK_ID = 36
MAX_TOKEN = 16384


class Verdict(enum.Enum):
    """What one path turned out to be; the value is its mark in a report (rclone --combined)."""

    IDENTICAL = "="
    DIFFERENT = "*"
    MISSING = "+"  # only on the source: missing at the target
    MORE = "-"  # only on the target: more at the target
    ERROR = "!"  # could not be verified; counted as different


@dataclass(frozen=True)
class DirCounts:
    """The true counts for one verified directory, before any clamping to API limits."""

    total: int = 0
    identical: int = 0
    different: int = 0
    missing: int = 0
    more: int = 0
    errors: int = 0  # unreadable, vanished or changed while read; already inside `different`
    skipped_special: int = 0  # sockets, FIFOs, device nodes on the source
    bytes_hashed: int = 0
    files_hashed: int = 0
    cache_hits: int = 0

    @property
    def consistent(self) -> bool:
        return self.different == 0 and self.missing == 0 and self.more == 0


@dataclass(frozen=True)
class ConsistencyEntry:
    """One `ConsistencyResult` object as SMS receives it."""

    dir_check: str
    num_total_files: int
    num_different_files: int
    num_target_miss_files: int
    num_target_more_files: int

    def to_api(self) -> dict[str, object]:
        return asdict(self)


# The five field names of a ConsistencyResult, in the API's order: dir_check, then the counts.
ENTRY_FIELDS = tuple(f.name for f in fields(ConsistencyEntry))
COUNT_FIELDS = ENTRY_FIELDS[1:]


def task_id_problem(task_id: str) -> str | None:
    """Why SMS would refuse this task ID, or None."""
    if not 1 <= len(task_id) <= MAX_TASK_ID:
        return f"must be 1 to {MAX_TASK_ID} characters, not {len(task_id)}"
    return None


def dir_check_problem(dir_check: str) -> str | None:
    """Why SMS would refuse this `dir_check`, or None."""
    if len(dir_check) > MAX_DIR_CHECK:
        return f"is {len(dir_check)} characters; SMS accepts at most {MAX_DIR_CHECK}"
    return None


def validate_entry(entry: ConsistencyEntry) -> None:
    """Every documented limit of one entry; checked once, on its way into the outbox."""
    if not isinstance(entry.dir_check, str):
        raise ValidationError(f"dir_check {entry.dir_check!r} is not a string")
    problem = dir_check_problem(entry.dir_check)
    if problem:
        raise ValidationError(f"dir_check {entry.dir_check[:60]!r}... {problem}")
    for name in COUNT_FIELDS:
        value = getattr(entry, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise ValidationError(
                f"{entry.dir_check}: {name} is {value!r}; "
                f"SMS accepts whole numbers 0 to {MAX_COUNT}"
            )


@dataclass(frozen=True)
class DirResult:
    """The outcome of verifying one directory against its target."""

    dir_check: str
    target: str
    counts: DirCounts
    elapsed: float
    hash_algorithm: str = "xxh3-128"
    hash_via: str = ""  # how the target computed it: python-xxhash, libxxhash, xxh128sum or hashlib
    error: str | None = None  # set when the directory could not be verified as a whole
    notes: tuple[str, ...] = field(default_factory=tuple)
    mode: str = "content"  # or "quick": size and mtime compared, no content read
    modify_window: int = 0  # quick mode: seconds two mtimes may differ
    source: str = ""  # where it was read, as configured: its own path here, or ssh://…
    source_via: str = ""  # how the source computed the digests

    @property
    def uploadable(self) -> bool:
        """A directory that could not be verified is never posted as if it were."""
        return self.error is None

    def entry(self, limit: int = MAX_COUNT) -> ConsistencyEntry:
        """The API entry, with each count clamped to the documented maximum. Its `dir_check`
        is the path escaped as everywhere else, so a name that is not UTF-8 is sent too."""
        counts = (min(n, limit) for n in self._api_counts())
        return ConsistencyEntry(escape(self.dir_check), *counts)

    def clamped_fields(self, limit: int = MAX_COUNT) -> list[str]:
        """Names of the API fields whose true count is above the limit."""
        return [name for name, n in zip(COUNT_FIELDS, self._api_counts()) if n > limit]

    def _api_counts(self) -> tuple[int, int, int, int]:
        """The counts in the order of COUNT_FIELDS."""
        c = self.counts
        return c.total, c.different, c.missing, c.more
