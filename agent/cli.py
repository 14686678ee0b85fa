"""The `smsagent` command: a thin click layer that prints and turns errors into exit codes.

Exit codes: 0 all consistent, 1 differences found, 2 usage, configuration or a directory that
could not be verified, 3 results queued but not delivered.
"""

from __future__ import annotations

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

from . import __version__
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
) -> None:
    """Compare directories with the migrated target and report the four counts."""
    started = time.monotonic()
    config = _load(config_path).with_overrides(
        dirs=[_absolute(d) for d in dirs], target=target, exclude=exclude, state_dir=state_dir
    )
    if workers:
        config = replace(config, limits=replace(config.limits, workers=workers))
    report_file: IO[str] | None = None
    if report_path:
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
        if report_file:
            report_file.close()
    for result in results:
        for field_name in result.clamped_fields():
            click.echo(
                f"smsagent: warning: {result.dir_check}: {field_name} is above {MAX_COUNT:,}; "
                f"{MAX_COUNT:,} is sent, the true figure is in the local report",
                err=True,
            )
    upload_note = _upload_note(config, no_upload)
    if as_json:
        click.echo(json.dumps(_json_document(results, upload_note, started), ensure_ascii=False))
    else:
        _print_table(results, time.monotonic() - started)
        click.echo(upload_note["message"], err=True)
    for result in results:
        for note in result.notes[:10]:
            click.echo(f"smsagent: {result.dir_check}: {note}", err=True)
    sys.exit(_exit_code(results))


def _upload_note(config: AgentConfig, no_upload: bool) -> dict[str, Any]:
    if no_upload:
        return {"uploaded": False, "message": "Nothing uploaded (--no-upload)."}
    if not config.endpoint or not config.task_id:
        return {
            "uploaded": False,
            "message": "Nothing uploaded: no SMS endpoint and task_id are configured.",
        }
    return {"uploaded": False, "message": "Upload is not available in this version."}


def _exit_code(results: Sequence[DirResult]) -> int:
    if any(r.error for r in results):
        return EXIT_USAGE
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


def _print_table(results: Sequence[DirResult], elapsed: float) -> None:
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
    click.echo(line)
    for row in rows:
        click.echo("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                             for i, v in enumerate(row)))  # fmt: skip
    for r in results:
        if r.error:
            click.echo(f"{escape(r.dir_check)}: NOT VERIFIED: {r.error}")
    total_bytes = sum(r.counts.bytes_hashed for r in results)
    verdict = (
        "some directories could not be verified"
        if any(r.error for r in results)
        else "consistent"
        if all(r.counts.consistent for r in results)
        else "differences found"
    )
    click.echo(f"{verdict}; {_human_bytes(total_bytes)} hashed in {elapsed:.1f}s")


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
