"""Write what the agent knows as a node_exporter textfile-collector file, for Prometheus.

The figures outlive the process that measured them: each directory's last outcome, the byte
counters and the last delivery are kept in `{state_dir}/metrics.json`, so a restarted service
or a one-off `smsagent verify` rewrites the whole file, not just what it saw itself. The file
is written to a temporary name in the same folder (ignored by the collector, which reads only
`*.prom`) and renamed over the old one, so a scrape never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

from .. import __version__
from ..config import AgentConfig
from ..errors import StateError
from ..model import DirResult
from ..sms.outbox import Outbox
from ..verify.report import escape

if TYPE_CHECKING:
    from ..sms.delivery import FlushReport  # the client behind it loads requests: slow

log = logging.getLogger(__name__)

STATE_FILE = "metrics.json"

Labels = Dict[str, str]
Sample = Tuple[Labels, float]


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver the outbox: how many POSTs, how many results acknowledged."""

    requests: int
    delivered: int
    ok: bool  # every request was acknowledged with a 2xx

    @classmethod
    def of(cls, report: FlushReport) -> Delivery:
        return cls(report.requests, report.delivered, ok=not report.errors)


@dataclass(frozen=True)
class Family:
    """One metric: its name, type, help text and samples."""

    name: str
    kind: str  # gauge or counter
    help: str
    samples: list[Sample]


def escape_label(value: str) -> str:
    """The exposition format's rule for a label value: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dir_label(dir_check: str) -> str:
    """A directory as every other output shows it (`report.escape`: a byte that is not UTF-8
    becomes `\\xHH`, a backslash is doubled), so the label is valid UTF-8 and unambiguous."""
    return escape(dir_check)


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def render(families: Sequence[Family]) -> str:
    """The text exposition format (version 0.0.4) for `families`."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            lines.append(f"{family.name}{{{text}}} {_number(value)}" if text else
                         f"{family.name} {_number(value)}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _record_result(record: dict[str, Any], result: DirResult, now: float) -> None:
    """Fold one directory's outcome into its stored record."""
    record["failed"] = result.error is not None
    record["hashed_bytes"] = record.get("hashed_bytes", 0) + result.counts.bytes_hashed
    record["mode"] = result.mode
    if result.error is not None:
        return  # the counts of the last successful verification stay
    c = result.counts
    record.update(
        total=c.total, different=c.different, missing=c.missing, more=c.more, errors=c.errors,
        success_at=now, duration=result.elapsed,
    )  # fmt: skip


# (metric suffix, record key, help) for the counts of a directory's last successful run.
_DIR_GAUGES = [
    ("source_files", "total", "Files and symlinks under the directory on the source."),
    ("different_files", "different", "Files that differ between source and target."),
    ("missing_files", "missing", "Files on the source that are missing at the target."),
    ("extra_files", "more", "Files at the target that are not on the source."),
    ("error_files", "errors", "Files that could not be read or changed while read."),
    ("last_success_timestamp_seconds", "success_at", "When the directory was last verified."),
    ("last_success_duration_seconds", "duration", "How long that verification took."),
]


def families(
    state: dict[str, Any], pending: int, dead: int, oldest_pending: float | None
) -> list[Family]:
    """Every metric, from the stored state and the outbox's current counts."""
    dirs = sorted(state.get("directories", {}).items())
    out = [
        Family(
            "smsagent_build_info", "gauge", "The agent's version.", [({"version": __version__}, 1)]
        )
    ]
    for suffix, key, text in _DIR_GAUGES:
        samples = [({"dir": dir_label(d)}, r[key]) for d, r in dirs if key in r]
        out.append(Family(f"smsagent_directory_{suffix}", "gauge", text, samples))
    out += [
        Family(
            "smsagent_directory_consistent", "gauge",
            "1 when the last successful verification found no difference.",
            [({"dir": dir_label(d)}, int(r["different"] == r["missing"] == r["more"] == 0))
             for d, r in dirs if "total" in r],
        ),
        Family(
            "smsagent_directory_last_verification_failed", "gauge",
            "1 when the last attempt could not verify the directory at all.",
            [({"dir": dir_label(d)}, int(r["failed"])) for d, r in dirs],
        ),
        Family(
            "smsagent_directory_mode_info", "gauge",
            "How the directory was last verified: content (hashes) or quick (size and mtime).",
            [({"dir": dir_label(d), "mode": r["mode"]}, 1) for d, r in dirs],
        ),
        Family(
            "smsagent_directory_hashed_bytes_total", "counter",
            "Bytes read and hashed while verifying the directory.",
            [({"dir": dir_label(d)}, r["hashed_bytes"]) for d, r in dirs],
        ),
        Family("smsagent_outbox_pending_results", "gauge",
               "Results waiting in the outbox for delivery to SMS.", [({}, pending)]),
        Family("smsagent_outbox_dead_letter_results", "gauge",
               "Results SMS refused or that waited longer than upload.max_age.", [({}, dead)]),
        Family("smsagent_outbox_oldest_pending_timestamp_seconds", "gauge",
               "When the oldest result still waiting for delivery was queued.",
               [({}, oldest_pending)] if oldest_pending is not None else []),
    ]  # fmt: skip
    delivery = state.get("delivery")
    if delivery:
        out += [
            Family("smsagent_last_delivery_timestamp_seconds", "gauge",
                   "When the agent last posted results to SMS.", [({}, delivery["at"])]),
            Family("smsagent_last_delivery_success", "gauge",
                   "1 when every request of the last delivery was acknowledged.",
                   [({}, int(delivery["ok"]))]),
            Family("smsagent_delivered_results_total", "counter",
                   "Results SMS acknowledged.", [({}, delivery["delivered"])]),
        ]  # fmt: skip
    return out


class MetricsWriter:
    """Keeps the stored figures and rewrites the textfile; safe across threads and processes."""

    def __init__(self, textfile: Path, state_dir: Path, clock: Callable[[], float] = time.time):
        self.textfile = textfile
        self.state_dir = state_dir
        self._clock = clock

    def update(
        self,
        results: Sequence[DirResult] = (),
        delivery: Delivery | None = None,
        keep: Sequence[str] | None = None,
    ) -> None:
        """Record `results` and `delivery`, drop directories not in `keep` (when given), and
        rewrite the file. Raises StateError naming the file when it cannot be written."""
        try:
            with self._locked():
                state = self._load()
                now = self._clock()
                dirs = state.setdefault("directories", {})
                for result in results:
                    _record_result(dirs.setdefault(result.dir_check, {}), result, now)
                if keep is not None:
                    wanted = set(keep)
                    state["directories"] = {d: r for d, r in dirs.items() if d in wanted}
                if delivery is not None and delivery.requests:
                    previous = state.get("delivery") or {"delivered": 0}
                    state["delivery"] = {
                        "at": now, "ok": delivery.ok,
                        "delivered": previous["delivered"] + delivery.delivered,
                    }  # fmt: skip
                _replace(self.state_dir / STATE_FILE, json.dumps(state, sort_keys=True), 0o600)
                with Outbox(self.state_dir) as box:
                    counts = box.counts()
                    oldest = min((p.created_at for p in box.pending()), default=None)
                text = render(families(state, counts.pending, counts.dead, oldest))
        except OSError as exc:
            raise StateError(f"{self.state_dir / STATE_FILE}: {exc.strerror or exc}") from None
        try:
            # Readable by all: node_exporter runs as another user than the agent.
            _replace(self.textfile, text, 0o644)
        except OSError as exc:
            raise StateError(f"metrics.textfile {self.textfile}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: the service and a `smsagent verify` run may share the state.
        The lock is on the directory itself: a lock file root created would be one the
        service's user could not open for writing."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.state_dir / STATE_FILE, encoding="utf-8") as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s is not valid JSON; metrics start afresh", self.state_dir / STATE_FILE)
            return {}
        return state if isinstance(state, dict) else {}


def _replace(path: Path, text: str, mode: int) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write(
    config: AgentConfig,
    results: Sequence[DirResult] = (),
    flushed: FlushReport | None = None,
    keep: Sequence[str] | None = None,
) -> None:
    """The hook for `run` and `verify`: update the file when `metrics.textfile` is set."""
    if config.metrics.textfile is None:
        return
    writer = MetricsWriter(config.metrics.textfile, config.state_dir)
    writer.update(results, Delivery.of(flushed) if flushed else None, keep)
