"""The upload service for the CLI and the daemon: queue results, flush the outbox, report status."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, TypeVar

from ..config import AgentConfig
from ..errors import AuthError, ConfigError, UploadError, ValidationError
from ..model import MAX_ENTRIES_PER_REQUEST, DirResult
from ..names import escape
from .client import (
    Disposition,
    RemoteResult,
    SmsClient,
    backoff_delay,
    disposition,
    open_client,
)
from .outbox import Counts, LastResult, Outbox, Pending

if TYPE_CHECKING:
    import requests  # only for annotations: upload.py owns the library

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EnqueueReport:
    queued: int
    not_uploaded: tuple[str, ...] = ()  # directories that could not be verified
    reason: str | None = None  # why nothing was queued at all


@dataclass(frozen=True)
class FlushReport:
    delivered: int = 0  # entries acknowledged with a 2xx
    requests: int = 0  # POSTs sent
    dead: int = 0  # entries moved to dead letters during this flush
    pending: int = 0  # entries still queued afterwards
    next_try: float | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    last_results: tuple[LastResult, ...]
    counts: Counts


def batches(
    items: Sequence[T],
    size: int = MAX_ENTRIES_PER_REQUEST,
    key: Callable[[T], Hashable] = lambda item: item.dir_check,  # type: ignore[attr-defined]
) -> list[list[T]]:
    """Chunks of at most `size`; a directory appears once, with its latest item, in first place."""
    latest: dict[Hashable, T] = {}
    for item in items:
        latest[key(item)] = item  # a re-assigned key keeps its first position
    ordered = list(latest.values())
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def enqueue(
    config: AgentConfig, results: Iterable[DirResult], clock: Callable[[], float] = time.time
) -> EnqueueReport:
    """Write results to the outbox before any POST; without endpoint/task_id, only remember them."""
    results = list(results)
    good = [r for r in results if r.uploadable]
    failed = tuple(r.dir_check for r in results if not r.uploadable)
    entries = [r.entry() for r in good]
    with Outbox(config.state_dir, clock) as box:
        for r in results:
            if not r.uploadable:
                box.record(escape(r.dir_check), None, "error", r.error)
        if not config.endpoint or not config.task_id:
            missing = "endpoint" if not config.endpoint else "task_id"
            for entry in entries:
                box.record(entry.dir_check, entry, "not-uploaded", f"{missing} not set")
            return EnqueueReport(0, failed, f"{missing} is not configured: nothing was uploaded")
        queued = box.add(config.task_id, entries)
    log.info("queued %d result(s) for task %s", queued, config.task_id)
    return EnqueueReport(queued, failed)


def flush(
    config: AgentConfig,
    stop_event: threading.Event | None = None,
    deadline: float | None = None,
    *,
    force: bool = False,
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
) -> FlushReport:
    """Deliver what is due. Without a deadline: one try per due entry. With one (a Unix time):
    keep trying, sleeping out the backoff, until all is delivered, the deadline or `stop_event`.
    `force` tries everything once now, ignoring stored backoff (an operator's `smsagent flush`).
    """
    stop = stop_event or threading.Event()
    with Outbox(config.state_dir, clock) as box:
        dead = len(box.expire(config.upload.max_age))
        if dead:
            log.error("%d result(s) pending longer than upload.max_age moved to dead letters",
                      dead)  # fmt: skip
        tally = _Tally(dead=dead)
        if not box.pending():
            return _report(box, tally)
        if not config.endpoint:
            tally.errors.append("endpoint is not configured: nothing was uploaded")
            return _report(box, tally)
        client = open_client(config, session)
        while not stop.is_set():
            due = box.due(float("inf") if force else None)
            force = False  # forcing is for the first pass only
            if not due:
                wake = box.next_try()
                if wake is None or deadline is None or wake > deadline:
                    break
                stop.wait(max(0.0, min(wake, deadline) - clock()))
                continue
            for task_id, group in groupby(due, key=lambda p: p.task_id):
                for batch in batches(list(group), key=lambda p: p.entry.dir_check):
                    if stop.is_set() or not _send(box, client, config, task_id, batch, tally,
                                                  clock, rand):  # fmt: skip
                        break  # the rest of this task waits with the failed batch
            if deadline is None or clock() >= deadline:
                break
        return _report(box, tally)


@dataclass
class _Tally:
    delivered: int = 0
    requests: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


def _send(
    box: Outbox,
    client: SmsClient,
    config: AgentConfig,
    task_id: str,
    batch: list[Pending],
    tally: _Tally,
    clock: Callable[[], float],
    rand: Callable[[], float],
) -> bool:
    """POST one batch and record the outcome; False when the task's other batches must wait."""
    tally.requests += 1
    try:
        client.post_results(task_id, [p.entry for p in batch])
    except (UploadError, ValidationError) as exc:
        kind = classify(exc)
        tally.errors.append(str(exc))
        if kind is Disposition.PERMANENT and isinstance(exc, UploadError):
            tally.dead += box.kill(task_id, batch, "rejected", exc.status, exc.error_code,
                                   exc.error_msg)  # fmt: skip
            log.error("%d result(s) moved to dead letters: %s", len(batch), exc)
            return True
        attempts = max(p.attempts for p in batch) + 1
        if kind is Disposition.SLOW:
            delay = config.upload.backoff_max
        else:
            retry_after = exc.retry_after if isinstance(exc, UploadError) else None
            delay = backoff_delay(attempts, cap=config.upload.backoff_max,
                                  retry_after=retry_after, rand=rand)  # fmt: skip
        box.defer(task_id, batch, clock() + delay, str(exc))
        log.warning("upload failed (try %d), next try in %.3gs: %s", attempts, delay, exc)
        return False
    tally.delivered += box.delivered(task_id, batch)
    log.info("delivered %d result(s) to task %s", len(batch), task_id)
    return True


def classify(exc: UploadError | ValidationError) -> Disposition:
    """Like `disposition`, but credentials and local limits are never a reason to drop results."""
    if isinstance(exc, ValidationError):
        return Disposition.SLOW  # e.g. an oversized token: the operator must fix it
    kind = disposition(exc.status)
    if isinstance(exc, AuthError) and (exc.status is None or kind is Disposition.PERMANENT):
        return Disposition.SLOW  # no token configured, IAM refusing the login, ...
    return kind


def _report(box: Outbox, tally: _Tally) -> FlushReport:
    counts = box.counts()
    return FlushReport(
        delivered=tally.delivered,
        requests=tally.requests,
        dead=tally.dead,
        pending=counts.pending,
        next_try=counts.next_try,
        errors=tuple(tally.errors),
    )


def status(config: AgentConfig) -> StatusReport:
    """The last result per directory, and pending and dead-letter counts with their last error."""
    with Outbox(config.state_dir, read_only=True) as box:
        return StatusReport(tuple(box.last_results()), box.counts())


def remote_status(
    config: AgentConfig, session: requests.Session | None = None
) -> list[RemoteResult]:
    """What SMS holds for the configured task (GET consistency-result)."""
    if not config.task_id:
        raise ConfigError("task_id is not set", source=config.origin)
    return open_client(config, session).get_results(config.task_id)
