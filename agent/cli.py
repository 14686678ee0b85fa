"""The `smsagent` command: a thin click layer that prints and turns errors into exit codes.

Exit codes: 0 all consistent, 1 differences found, 2 usage, configuration or a directory that
could not be verified, 3 results queued but not delivered.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__, output, publish, terminal
from .config import AgentConfig, check_upload, normalise_dir
from .config_file import find_config, load_config, render, to_yaml
from .errors import AgentError, ConfigError
from .model import DirResult
from .names import escape
from .verify.report import ReportWriter, open_report
from .verify.runner import run_verification

if TYPE_CHECKING:
    from .sms.delivery import FlushReport  # loaded only when uploading: requests is slow

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
    "--source",
    metavar="ROOT",
    help="Where the source tree is, when not here: ssh://user@host[:port]/ or a mounted path.",
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
    help="Write a per-file list (rclone --combined style) to FILE; - for stdout.",
)
@click.option("--no-cache", is_flag=True, help="Hash every compared file, ignoring the cache.")
@click.option(
    "--quick",
    is_flag=True,
    help="Compare type, size and modification time only; read nothing (mode: quick).",
)
@click.option(
    "--modify-window",
    type=click.IntRange(0),
    metavar="SECONDS",
    help="Quick mode: mtimes this far apart still match (modify_window; default 0).",
)
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
    source: str | None,
    target: str | None,
    exclude: Sequence[str],
    no_upload: bool,
    as_json: bool,
    report_path: str | None,
    no_cache: bool,
    quick: bool,
    modify_window: int | None,
    workers: int | None,
    state_dir: str | None,
    endpoint: str | None,
    task_id: str | None,
) -> None:
    """Compare directories with the migrated target and report the four counts."""
    started = time.monotonic()
    if any(not d for d in dirs):
        # An empty path would silently mean the current directory.
        raise ConfigError("an empty path names no directory", source="--dir")
    config = _load(config_path).with_overrides({
        "directories": [_absolute(d) for d in dirs], "source": source, "target": target,
        "exclude": exclude,
        "state_dir": state_dir, "endpoint": endpoint, "task_id": task_id,
        "limits.workers": workers, "mode": "quick" if quick else None,
        "modify_window": modify_window,
    })  # fmt: skip
    if config.reads_task:
        from .sms import task  # imported here: requests is slow to load

        config = task.applied(config)
    if not no_upload:
        check_upload(config)
    report_file = open_report(report_path) if report_path else None
    writer = ReportWriter(report_file) if report_file else None
    if writer is not None and config.verify_mode == "quick":
        # The combined format's lines start with a mark; a quick check says so first.
        writer.comment(output.mode_line(config.modify_window))
    progress = terminal.Progress() if sys.stdout.isatty() and not as_json else None
    try:
        results = run_verification(
            config,
            config.directories,
            use_cache=not no_cache,
            report=writer,
            progress=progress,
        )
    finally:
        if progress:
            progress.clear()
        if writer:
            writer.finish(close=report_file is not sys.stdout)
    report_failed = writer is not None and _report_failed(writer, report_path or "")
    for warning in output.clamp_warnings(results):
        click.echo(f"smsagent: warning: {warning}", err=True)
    upload_note, flushed = publish.upload(config, results, no_upload)
    _write_metrics(config, results, flushed)
    with terminal.reader_may_leave():
        if as_json:
            document = output.verify_document(results, upload_note, time.monotonic() - started)
            click.echo(output.json_text(document))
        else:
            for line in output.verify_table(results, time.monotonic() - started):
                click.echo(line, err=report_path == "-")
            click.echo(upload_note["message"], err=True)
    for result in results:
        for note in result.notes[:10]:
            click.echo(f"smsagent: {escape(result.dir_check)}: {note}", err=True)
    undelivered = upload_note["pending"] > 0 or upload_note["dead"] > 0
    sys.exit(_exit_code(results, undelivered=undelivered, report_failed=report_failed))


def _report_failed(writer: ReportWriter, report_path: str) -> bool:
    """Whether the --report could not be written (said in one line). A reader of stdout that
    went away (`--report - | head`) is no failure, as for other Unix tools."""
    error = writer.error
    if error is None:
        return False
    if report_path == "-" and isinstance(error, BrokenPipeError):
        terminal.silence_stdout()
        return False
    why = error.strerror or str(error)
    click.echo(f"smsagent: Report error: --report {report_path}: cannot write: {why}; "
               "the report is incomplete (the table, --json and the upload are not)",
               err=True)  # fmt: skip
    return True


def _write_metrics(
    config: AgentConfig, results: Sequence[DirResult] = (), flushed: FlushReport | None = None
) -> None:
    """Update `metrics.textfile`; a file that cannot be written is a warning, not a failure."""
    if config.metrics.textfile is None:
        return  # without loading the module (and tempfile, random): 10 ms of every run
    from .service import metrics

    try:
        metrics.write(config, results, flushed)
    except AgentError as exc:
        click.echo(f"smsagent: warning: metrics not written: {exc}", err=True)


def _exit_code(
    results: Sequence[DirResult], undelivered: bool = False, report_failed: bool = False
) -> int:
    """2 beats 3 beats 1: an undelivered result needs attention even when files differ."""
    if any(r.error for r in results) or report_failed:
        return EXIT_USAGE
    if undelivered:
        return EXIT_UNDELIVERED
    if any(not r.counts.consistent for r in results):
        return EXIT_DIFFERENT
    return EXIT_OK


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
def config_check(config_path: str | None) -> None:
    """Validate a config file and print the effective configuration, secrets masked."""
    path = find_config(config_path)
    config = _load(config_path)
    check_upload(config)
    click.echo(f"# {path if path else 'no config file found: built-in defaults'}: valid")
    click.echo(render(config))
    if config.reads_task:
        _show_task(config)


def _show_task(config: AgentConfig) -> None:
    """What the task supplies, from where and when; the last stored copy if SMS cannot say."""
    from .sms import task

    try:
        _, settings = task.resolve(config)
    except AgentError:
        last = task.stored(config.state_dir, config.task_id)
        if last is not None:
            click.echo("# from the task, as last read (SMS cannot be read now)")
            click.echo(to_yaml({"task": task.describe_settings(last)}))
        raise
    if settings is not None:
        click.echo("# from the task")
        click.echo(to_yaml({"task": task.describe_settings(settings)}))


@main.group("cache")
def cache_group() -> None:
    """Manage the hash cache."""


@cache_group.command("clear")
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
def cache_clear(config_path: str | None, state_dir: str | None) -> None:
    """Forget every cached digest, so the next run reads every file again."""
    from .verify.cache import HashCache

    config = _load(config_path).with_overrides({"state_dir": state_dir})
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
    from .sms import delivery

    config = _load(config_path).with_overrides({"state_dir": state_dir})
    deadline = time.time() + wait if wait else None
    report = delivery.flush(config, deadline=deadline, force=True)
    _write_metrics(config, flushed=report)
    message = output.flush_message(report, config.task_id)
    click.echo(message, err=report.pending > 0)
    # A result SMS rejected for good (400, 404) is not delivered either.
    sys.exit(EXIT_UNDELIVERED if report.pending or report.dead else EXIT_OK)


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option("--state-dir", metavar="DIR", help="State directory (overrides state_dir).")
@click.option("--remote", is_flag=True, help="Also read back what SMS holds for the task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def status(config_path: str | None, state_dir: str | None, remote: bool, as_json: bool) -> None:
    """Show the last result per directory and what is pending or dead-lettered."""
    from .sms import delivery

    config = _load(config_path).with_overrides({"state_dir": state_dir})
    local = delivery.status(config)
    if as_json:
        remote_results = delivery.remote_status(config) if remote else None
        document = output.status_document(local, remote_results)
        click.echo(json.dumps(document, ensure_ascii=False))
        return
    for line in output.status_lines(local):  # first: still useful when SMS cannot be reached
        click.echo(line)
    if remote:
        for line in output.remote_lines(config.task_id, delivery.remote_status(config)):
            click.echo(line)


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Configuration file.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one line per event for journald; json: one object per line for log shippers.",
)
def run(config_path: str | None, log_format: str) -> None:
    """Run as a service: verify on schedule and on changes, deliver results, until SIGTERM.

    SIGHUP or an edit of the config file reloads it; an invalid one is logged and ignored.
    A verification in progress that the new one changes is cut short and started again.
    """
    from .service.daemon import Daemon
    from .service.logs import setup_logging

    setup_logging(
        log_format,
        level=min(logging.INFO, logging.getLogger().level or logging.INFO),
        replace_all=True,
    )
    path = find_config(config_path)
    config = load_config(path)
    sys.exit(Daemon(config, path).run())
