"""Plain data for verification results and the entries posted to SMS."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

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

    @property
    def uploadable(self) -> bool:
        """A directory that could not be verified is never posted as if it were."""
        return self.error is None

    def entry(self, limit: int = MAX_COUNT) -> ConsistencyEntry:
        """The API entry, with each count clamped to the documented maximum."""
        c = self.counts
        return ConsistencyEntry(
            dir_check=self.dir_check,
            num_total_files=min(c.total, limit),
            num_different_files=min(c.different, limit),
            num_target_miss_files=min(c.missing, limit),
            num_target_more_files=min(c.more, limit),
        )

    def clamped_fields(self, limit: int = MAX_COUNT) -> list[str]:
        """Names of the API fields whose true count is above the limit."""
        c = self.counts
        pairs = [
            ("num_total_files", c.total),
            ("num_different_files", c.different),
            ("num_target_miss_files", c.missing),
            ("num_target_more_files", c.more),
        ]
        return [name for name, value in pairs if value > limit]
