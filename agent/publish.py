"""Hand one `verify` run's results to SMS: queue them in the outbox, try once to deliver what
is due, and say what happened as a note for the table and `--json`.

It never raises: what was measured is shown whatever happens to the state directory or SMS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import output
from .config import AgentConfig
from .errors import AgentError
from .model import DirResult

if TYPE_CHECKING:
    from .sms.delivery import FlushReport  # loaded only when uploading: requests is slow


def upload(
    config: AgentConfig, results: Sequence[DirResult], no_upload: bool
) -> tuple[dict[str, Any], FlushReport | None]:
    """The note (`uploaded`, `delivered`, `pending`, `dead`, `message`) and the flush's
    report, None when nothing was sent."""
    note: dict[str, Any] = {"uploaded": False, "delivered": 0, "pending": 0, "dead": 0}
    if no_upload:
        return {**note, "message": "Nothing uploaded (--no-upload)."}, None
    from .sms import delivery  # imported here: requests is slow to load and --no-upload needs none

    if not config.endpoint or not config.task_id:
        missing = "endpoint" if not config.endpoint else "task_id"
        # Still remembered for `smsagent status`, where the state directory is usable.
        with contextlib.suppress(AgentError):
            delivery.enqueue(config, results)
        return {**note, "message": f"Nothing uploaded: no SMS {missing} is configured."}, None
    try:
        queued = delivery.enqueue(config, results)
    except AgentError as exc:
        waiting = sum(1 for r in results if r.uploadable)
        message = f"Nothing uploaded: the results could not be queued: {exc}"
        return {**note, "pending": waiting, "message": message}, None
    if queued.reason:
        return {**note, "message": f"Nothing uploaded: {queued.reason}."}, None
    try:
        report = delivery.flush(config)
    except AgentError as exc:
        message = f"{queued.queued} result(s) queued but not delivered: {exc}"
        return {**note, "pending": queued.queued, "message": message}, None
    note.update(
        uploaded=report.delivered > 0,
        delivered=report.delivered,
        pending=report.pending,
        dead=report.dead,
        message=output.flush_message(report, config.task_id),
    )
    return note, report
