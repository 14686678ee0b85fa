"""The `smsagent` command: a thin click layer that prints and turns errors into exit codes.

Exit codes: 0 all consistent, 1 differences found, 2 usage, configuration or a directory that
could not be verified, 3 results queued but not delivered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import click

from . import __version__, delivery
from .config import AgentConfig, find_config, load_config, normalise_dir, render
from .errors import AgentError
from .model import MAX_COUNT, DirResult
from .report import ReportWriter, escape
from .verify import run_verification

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_UNDELIVERED = 0, 1, 2, 3
log = logging.getLogger("agent")


class AgentGroup(click.Group):
    """Turns every AgentError into `smsagent: Kind: message` and exit 2, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentError as exc:
            click.echo(f"smsagent: {exc.kind}: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("smsagent: interrupted", err=True)
            sys.exit(130)


@click.group(cls=AgentGroup)
@click.version_option(__version__, prog_name="smsagent")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Verify that a migrated server holds the same files as its source, and report to SMS."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _load(config_path: str | None) -> AgentConfig:
    config = load_config(find_config(config_path))
    for warning in config.warnings:
        click.echo(f"smsagent: warning: {warning}", err=True)
    return config


def _absolute(path: str) -> str:
    return normalise_dir(path if path.startswith("/") else os.path.abspath(path))


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    metavar="DIR",
    help="Directory to verify (repeatable); replaces the configured list.",
)
@click.option(
    "--target",
    metavar="ROOT",
    help="Where the target tree is: a mounted path or ssh://user@host[:port]/path.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Gitignore-style pattern to leave out on both sides (repeatable).",
)
@click.option("--no-upload", is_flag=True, help="Verify and print; do not post to SMS.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option(
    "--report",
    "report_path",
    metavar="FILE",
    help="Write a per-file list (rclone --combined style) to FILE.",
)
@click.option("--no-cache", is_flag=True, help="Hash every compared file, ignoring the cache.")
@click.option("--workers", type=click.IntRange(1, 64), help="Helpers per side (limits.workers).")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
@click.option(
    "--endpoint",
    envvar="SMSAGENT_ENDPOINT",
    metavar="URL",
    help="SMS endpoint (overrides endpoint; also $SMSAGENT_ENDPOINT).",
)
@click.option(
    "--task-id",
    envvar="SMSAGENT_TASK_ID",
    metavar="ID",
    help="SMS task ID (overrides task_id; also $SMSAGENT_TASK_ID).",
)
def verify(
    config_path: str | None,
    dirs: Sequence[str],
    target: str | None,
    exclude: Sequence[str],
    no_upload: bool,
    as_json: bool,
    report_path: str | None,
    no_cache: bool,
    workers: int | None,
    state_dir: str | None,
    endpoint: str | None,
    task_id: str | None,
) -> None:
    """Compare directories with the migrated target and report the four counts."""
    started = time.monotonic()
    config = _load(config_path).with_overrides(
        dirs=[_absolute(d) for d in dirs], target=target, exclude=exclude, state_dir=state_dir,
        endpoint=endpoint, task_id=task_id,
    )  # fmt: skip
    if workers:
        config = replace(config, limits=replace(config.limits, workers=workers))
    report_file: IO[str] | None = None
    if report_path == "-":
        report_file = sys.stdout  # the table then goes to stderr
    elif report_path:
        try:
            report_file = open(report_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise AgentError(f"--report {report_path}: {exc.strerror}") from None
    progress = _Progress() if sys.stdout.isatty() and not as_json else None
    stop = threading.Event()
    try:
        results = run_verification(
            config,
            config.directories,
            use_cache=not no_cache,
            stop=stop,
            report=ReportWriter(report_file) if report_file else None,
            progress=progress,
        )
    finally:
        if progress:
            progress.clear()
        if report_file and report_file is not sys.stdout:
            report_file.close()
    for result in results:
        for field_name in result.clamped_fields():
            click.echo(
                f"smsagent: warning: {result.dir_check}: {field_name} is above {MAX_COUNT:,}; "
                f"{MAX_COUNT:,} is sent, the true figure is in the local report",
                err=True,
            )
    upload_note = _upload(config, results, no_upload)
    if as_json:
        click.echo(json.dumps(_json_document(results, upload_note, started), ensure_ascii=False))
    else:
        _print_table(results, time.monotonic() - started, err=report_path == "-")
        click.echo(upload_note["message"], err=True)
    for result in results:
        for note in result.notes[:10]:
            click.echo(f"smsagent: {result.dir_check}: {note}", err=True)
    sys.exit(_exit_code(results, undelivered=upload_note["pending"] > 0))


def _upload(config: AgentConfig, results: Sequence[DirResult], no_upload: bool) -> dict[str, Any]:
    """Queue the results in the outbox, then try once to deliver what is due."""
    note: dict[str, Any] = {"uploaded": False, "delivered": 0, "pending": 0, "dead": 0}
    if no_upload:
        return {**note, "message": "Nothing uploaded (--no-upload)."}
    if not config.endpoint or not config.task_id:
        missing = "endpoint" if not config.endpoint else "task_id"
        # Still remembered for `smsagent status`, where the state directory is usable.
        with contextlib.suppress(AgentError):
            delivery.enqueue(config, results)
        return {**note, "message": f"Nothing uploaded: no SMS {missing} is configured."}
    queued = delivery.enqueue(config, results)
    if queued.reason:
        return {**note, "message": f"Nothing uploaded: {queued.reason}."}
    report = delivery.flush(config)
    note.update(
        uploaded=report.delivered > 0,
        delivered=report.delivered,
        pending=report.pending,
        dead=report.dead,
        message=_flush_message(report, config),
    )
    return note


def _flush_message(report: delivery.FlushReport, config: AgentConfig) -> str:
    if report.requests == 0 and report.pending == 0 and report.dead == 0:
        return "Nothing to deliver."
    parts = []
    if report.delivered:
        parts.append(
            f"Uploaded {report.delivered} result(s) to SMS task {config.task_id} "
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


def _exit_code(results: Sequence[DirResult], undelivered: bool = False) -> int:
    """2 beats 3 beats 1: an undelivered result needs attention even when files differ."""
    if any(r.error for r in results):
        return EXIT_USAGE
    if undelivered:
        return EXIT_UNDELIVERED
    if any(not r.counts.consistent for r in results):
        return EXIT_DIFFERENT
    return EXIT_OK


def _json_document(
    results: Sequence[DirResult], upload: dict[str, Any], started: float
) -> dict[str, Any]:
    return {
        "consistency_result": [r.entry().to_api() for r in results if r.uploadable],
        "directories": [_json_result(r) for r in results],
        "consistent": all(r.uploadable and r.counts.consistent for r in results),
        "upload": upload,
        "elapsed_seconds": round(time.monotonic() - started, 3),
    }


def _json_result(r: DirResult) -> dict[str, Any]:
    c = r.counts
    return {
        "dir_check": r.dir_check,
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
        "elapsed_seconds": round(r.elapsed, 3),
        "error": r.error,
        "error_samples": list(r.notes),
        "clamped_fields": r.clamped_fields(),
    }


def _print_table(results: Sequence[DirResult], elapsed: float, err: bool = False) -> None:
    headers = ("DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE", "ERRORS", "HASHED", "TIME")
    rows = []
    for r in results:
        c = r.counts
        if r.error:
            rows.append((escape(r.dir_check), "-", "-", "-", "-", "-", "-", f"{r.elapsed:.1f}s"))
            continue
        rows.append((
            escape(r.dir_check), f"{c.total:,}", f"{c.different:,}", f"{c.missing:,}",
            f"{c.more:,}", f"{c.errors:,}", _human_bytes(c.bytes_hashed), f"{r.elapsed:.1f}s",
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                     for i, h in enumerate(headers))  # fmt: skip
    click.echo(line, err=err)
    for row in rows:
        click.echo("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                             for i, v in enumerate(row)), err=err)  # fmt: skip
    for r in results:
        if r.error:
            click.echo(f"{escape(r.dir_check)}: NOT VERIFIED: {r.error}", err=err)
    total_bytes = sum(r.counts.bytes_hashed for r in results)
    verdict = (
        "some directories could not be verified"
        if any(r.error for r in results)
        else "consistent"
        if all(r.counts.consistent for r in results)
        else "differences found"
    )
    click.echo(f"{verdict}; {_human_bytes(total_bytes)} hashed in {elapsed:.1f}s", err=err)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


class _Progress:
    """A one-line progress display on stderr, refreshed at most five times a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, dir_check: str, files: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = nbytes / max(now - self.started, 1e-6)
        text = (
            f"{escape(dir_check)}: {files:,} files, {_human_bytes(nbytes)} hashed, "
            f"{_human_bytes(int(rate))}/s"
        )
        sys.stderr.write("\r\x1b[K" + text[:200])
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
def config_check(config_path: str | None) -> None:
    """Validate a config file and print the effective configuration, secrets masked."""
    path = find_config(config_path)
    config = _load(config_path)
    click.echo(f"# {path if path else 'no config file found: built-in defaults'}: valid")
    click.echo(render(config))


@main.group("cache")
def cache_group() -> None:
    """Manage the hash cache."""


@cache_group.command("clear")
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
def cache_clear(config_path: str | None, state_dir: str | None) -> None:
    """Forget every cached digest, so the next run reads every file again."""
    from .cache import HashCache

    config = _load(config_path).with_overrides(state_dir=state_dir)
    cache = HashCache(Path(config.state_dir), max_entries=config.cache.max_entries)
    try:
        dropped = cache.clear()
    finally:
        cache.close()
    click.echo(f"Cleared {dropped:,} cached digests from {cache.path}.")


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0,
    metavar="SECONDS",
    help="Keep retrying with backoff for up to SECONDS until everything is delivered.",
)
def flush(config_path: str | None, state_dir: str | None, wait: float) -> None:
    """Deliver the queued results now, ignoring their backoff; exit 3 if some stay queued."""
    config = _load(config_path).with_overrides(state_dir=state_dir)
    deadline = time.time() + wait if wait else None
    report = delivery.flush(config, deadline=deadline, force=True)
    message = _flush_message(report, config)
    click.echo(message, err=report.pending > 0)
    sys.exit(EXIT_UNDELIVERED if report.pending else EXIT_OK)


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
@click.option("--remote", is_flag=True, help="Also read back what SMS holds for the task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def status(config_path: str | None, state_dir: str | None, remote: bool, as_json: bool) -> None:
    """Show the last result per directory and what is pending or dead-lettered."""
    config = _load(config_path).with_overrides(state_dir=state_dir)
    local = delivery.status(config)
    if as_json:
        remote_results = delivery.remote_status(config) if remote else None
        click.echo(json.dumps(_status_document(local, remote_results), ensure_ascii=False))
        return
    _print_status(local)  # first: still useful when SMS cannot be reached
    if remote:
        _print_remote(config, delivery.remote_status(config))


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _print_status(local: delivery.StatusReport) -> None:
    if not local.last_results:
        click.echo("No results recorded yet.")
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
            rows.append((escape(r.dir_check), *counts, state, _when(r.checked_at)))
        _echo_table(headers, rows)
    c = local.counts
    line = f"Pending: {c.pending}"
    if c.pending:
        line += f", next try {_when(c.next_try)}"
        if c.last_pending_error:
            line += f"; last error: {c.last_pending_error}"
    click.echo(line)
    line = f"Dead letters: {c.dead}"
    if c.dead and c.last_dead_error:
        line += f"; last: {c.last_dead_error}"
    click.echo(line)


def _print_remote(config: AgentConfig, remote: Sequence[Any]) -> None:
    click.echo(f"SMS task {config.task_id}: {len(remote)} result(s) on record")
    for item in remote:
        if item.raw is not None:
            click.echo(f"  {item.raw}")
            continue
        finished = _when(item.finished_time / 1000) if item.finished_time else "-"
        click.echo(f"  finished {finished}, check_result {item.check_result or '-'}")
        for e in item.entries:
            click.echo(
                f"    {escape(e.dir_check)}: total {e.num_total_files:,}, different "
                f"{e.num_different_files:,}, missing {e.num_target_miss_files:,}, "
                f"more {e.num_target_more_files:,}"
            )


def _status_document(local: delivery.StatusReport, remote: Sequence[Any] | None) -> dict[str, Any]:
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
            }
            for item in remote
        ]
    return doc


def _echo_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo(
            "  ".join(
                v.ljust(widths[i]) if i in (0, len(row) - 2, len(row) - 1) else v.rjust(widths[i])
                for i, v in enumerate(row)
            ).rstrip()
        )
