"""What the commands show: tables, JSON documents and messages, built as plain values.

Nothing here prints; `cli.py` does. Keeping the shapes here lets them be tested as data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .model import MAX_COUNT, DirResult
from .verify.report import escape
from .verify.targets import ALGORITHMS, parse_target

if TYPE_CHECKING:  # delivery pulls in requests, which `verify --no-upload` never needs
    from .sms.delivery import FlushReport, StatusReport


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def when(moment: float | None) -> str:
    if moment is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
    except (OverflowError, ValueError, OSError):  # a time SMS sent that no calendar holds
        return f"(not a valid time: {moment:g})"


def when_ms(milliseconds: int) -> str:
    try:
        return when(milliseconds / 1000)
    except OverflowError:  # too large even for a float
        return f"(not a valid time: {milliseconds})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> list[str]:
    """Aligned columns: those in `left` are left-aligned, the others (numbers) right."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    return [
        "  ".join(v.ljust(widths[i]) if i in left else v.rjust(widths[i])
                  for i, v in enumerate(row)).rstrip()
        for row in (headers, *rows)
    ]  # fmt: skip


# --- verify ---------------------------------------------------------------------------


def verify_table(results: Sequence[DirResult], elapsed: float) -> list[str]:
    headers = ("DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE", "ERRORS", "HASHED", "TIME")
    rows = []
    for r in results:
        c = r.counts
        if r.error:
            rows.append((escape(r.dir_check), "-", "-", "-", "-", "-", "-", f"{r.elapsed:.1f}s"))
            continue
        rows.append((
            escape(r.dir_check), f"{c.total:,}", f"{c.different:,}", f"{c.missing:,}",
            f"{c.more:,}", f"{c.errors:,}", human_bytes(c.bytes_hashed), f"{r.elapsed:.1f}s",
        ))  # fmt: skip
    lines = table(headers, rows, left={0})
    lines += [f"{escape(r.dir_check)}: NOT VERIFIED: {r.error}" for r in results if r.error]
    quick = [r for r in results if r.mode == "quick"]
    if quick:
        lines.append(mode_line(quick[0].modify_window))
    for side, machine, algorithm, via in hashing([r for r in results if r.mode != "quick"]):
        fallback = (
            " (fallback: no xxh3 there: no xxhash module, libxxhash or xxh128sum)"
            if algorithm != ALGORITHMS[0]
            else ""
        )
        which = " (source)" if side == "source" else ""
        lines.append(f"hashing on {escape(machine)}{which}: {algorithm} via {via}{fallback}")
    total_bytes = sum(r.counts.bytes_hashed for r in results)
    if any(r.error for r in results):
        verdict = "some directories could not be verified"
    elif all(r.counts.consistent for r in results):
        verdict = "consistent"
    else:
        verdict = "differences found"
    lines.append(f"{verdict}; {human_bytes(total_bytes)} hashed in {elapsed:.1f}s")
    return lines


def mode_line(window: int) -> str:
    """What a quick check compared, said wherever its result is shown."""
    when = "in the same second" if window == 0 else f"at most {window} s apart"
    return f"mode: quick (same type and size, modification times {when}; no content read)"


def hashing(results: Sequence[DirResult]) -> list[tuple[str, str, str, str]]:
    """(side, machine, algorithm, via) for each machine that was reached, in order: every
    target, and each source that is not this machine."""
    seen: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    for r in results:
        if not r.hash_algorithm:
            continue
        sides = [("target", r.target, r.hash_via)]
        if parse_target(r.source).host is not None:
            sides.append(("source", r.source, r.source_via))
        for side, where, via in sides:
            machine = parse_target(where).key
            seen.setdefault((side, machine), (side, machine, r.hash_algorithm, via))
    return list(seen.values())


def verify_document(
    results: Sequence[DirResult], upload: dict[str, Any], elapsed: float
) -> dict[str, Any]:
    """`verify --json`: `consistency_result` is exactly what is (or would be) posted."""
    return {
        "consistency_result": [r.entry().to_api() for r in results if r.uploadable],
        "directories": [result_document(r) for r in results],
        "consistent": all(r.uploadable and r.counts.consistent for r in results),
        "mode": "quick" if results and all(r.mode == "quick" for r in results) else "content",
        "hashing": [
            {side: machine, "hash_algorithm": algorithm, "hash_via": via}
            for side, machine, algorithm, via in hashing(results)
        ],
        "upload": upload,
        "elapsed_seconds": round(elapsed, 3),
    }


def result_document(r: DirResult) -> dict[str, Any]:
    c = r.counts
    return {
        "dir_check": escape(r.dir_check),
        "source": escape(r.source or r.dir_check),
        "target": escape(r.target),
        "num_total_files": c.total,
        "num_identical_files": c.identical,
        "num_different_files": c.different,
        "num_target_miss_files": c.missing,
        "num_target_more_files": c.more,
        "num_error_files": c.errors,
        "num_skipped_special": c.skipped_special,
        "files_hashed": c.files_hashed,
        "bytes_hashed": c.bytes_hashed,
        "cache_hits": c.cache_hits,
        "hash_algorithm": r.hash_algorithm,
        "hash_via": r.hash_via,
        "mode": r.mode,
        "modify_window": r.modify_window,
        "elapsed_seconds": round(r.elapsed, 3),
        "error": r.error,
        "error_samples": list(r.notes),
        "clamped_fields": r.clamped_fields(),
    }


def clamp_warnings(results: Sequence[DirResult]) -> list[str]:
    """One line per count above what SMS accepts: the true figure stays in the local report."""
    return [
        f"{escape(r.dir_check)}: {name} is above {MAX_COUNT:,}; {MAX_COUNT:,} is sent, "
        "the true figure is in the local report"
        for r in results
        for name in r.clamped_fields()
    ]


def json_text(document: dict[str, Any]) -> str:
    """The document as JSON that is always valid UTF-8: names are escaped before they get
    here, and anything that slipped through is written as a \\u escape, never a raw byte."""
    text = json.dumps(document, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(document, ensure_ascii=True)
    return text


def progress_line(dir_check: str, files: int, nbytes: int, seconds: float) -> str:
    rate = nbytes / max(seconds, 1e-6)
    return (
        f"{escape(dir_check)}: {files:,} files, {human_bytes(nbytes)} hashed, "
        f"{human_bytes(int(rate))}/s"
    )


# --- delivery -------------------------------------------------------------------------


def flush_message(report: FlushReport, task_id: str | None) -> str:
    if report.requests == 0 and report.pending == 0 and report.dead == 0:
        return "Nothing to deliver."
    parts = []
    if report.delivered:
        parts.append(
            f"Uploaded {report.delivered} result(s) to SMS task {task_id} "
            f"in {report.requests} request(s)."
        )
    if report.dead:
        parts.append(
            f"{report.dead} result(s) rejected for good and moved to dead letters "
            "(see `smsagent status`)."
        )
    if report.pending:
        why = f": {report.errors[-1]}" if report.errors else ""
        parts.append(
            f"{report.pending} result(s) queued but not delivered{why}. They are retried "
            "by `smsagent flush` and by the daemon."
        )
    return "\n".join(parts)


def status_lines(local: StatusReport) -> list[str]:
    lines: list[str] = []
    if not local.last_results:
        lines.append("No results recorded yet.")
    else:
        headers = ("DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE", "STATE", "CHECKED")
        rows = []
        for r in local.last_results:
            e = r.entry
            counts = (
                (f"{e.num_total_files:,}", f"{e.num_different_files:,}",
                 f"{e.num_target_miss_files:,}", f"{e.num_target_more_files:,}")
                if e else ("-", "-", "-", "-")
            )  # fmt: skip
            state = r.state if not r.detail else f"{r.state} ({r.detail})"
            rows.append((r.dir_check, *counts, state, when(r.checked_at)))  # stored escaped
        lines += table(headers, rows, left={0, 5, 6})
    c = local.counts
    line = f"Pending: {c.pending}"
    if c.pending:
        line += f", next try {when(c.next_try)}"
        if c.last_pending_error:
            line += f"; last error: {c.last_pending_error}"
    lines.append(line)
    line = f"Dead letters: {c.dead}"
    if c.dead and c.last_dead_error:
        line += f"; last: {c.last_dead_error}"
    lines.append(line)
    return lines


def remote_lines(task_id: str | None, remote: Sequence[Any]) -> list[str]:
    lines = [f"SMS task {task_id}: {len(remote)} result(s) on record"]
    for item in remote:
        if item.raw is not None:
            lines.append(f"  {item.raw}")
            continue
        finished = "-" if item.finished_time is None else when_ms(item.finished_time)
        lines.append(f"  finished {finished}, check_result {item.check_result or '-'}")
        lines += [f"    not readable as documented: {problem}" for problem in item.problems]
        for e in item.entries:
            lines.append(
                f"    {escape(e.dir_check)}: total {e.num_total_files:,}, different "
                f"{e.num_different_files:,}, missing {e.num_target_miss_files:,}, "
                f"more {e.num_target_more_files:,}"
            )
    return lines


def status_document(local: StatusReport, remote: Sequence[Any] | None) -> dict[str, Any]:
    c = local.counts
    doc: dict[str, Any] = {
        "directories": [
            {
                "dir_check": r.dir_check,
                "task_id": r.task_id,
                "result": r.entry.to_api() if r.entry else None,
                "state": r.state,
                "detail": r.detail,
                "checked_at": r.checked_at,
                "delivered_at": r.delivered_at,
            }
            for r in local.last_results
        ],
        "pending": {"count": c.pending, "next_try": c.next_try, "last_error": c.last_pending_error},
        "dead_letters": {"count": c.dead, "last_error": c.last_dead_error},
    }
    if remote is not None:
        doc["remote"] = [
            {
                "finished_time": item.finished_time,
                "check_result": item.check_result,
                "consistency_result": [e.to_api() for e in item.entries],
                "raw": item.raw,
                "problems": list(item.problems),
            }
            for item in remote
        ]
    return doc
