"""Compose `smsagent run`: schedule verifications, watch for changes, deliver, reload, stop.

Threads: the main thread runs the control loop and owns the scheduler, the watcher and every
decision; one job thread verifies at a time (so `limits.read_mb_per_s` and `limits.workers`
hold for the whole agent, and no directory is verified twice at once); one delivery thread
flushes the outbox. Signals only set flags and wake the loop through a self-pipe.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Callable

from ..config import AgentConfig
from ..config_file import load_config
from ..errors import AgentError
from ..model import DirResult
from ..names import counted
from ..sms import delivery
from ..sms.outbox import Outbox
from ..verify.plan import check_targets
from ..verify.runner import run_verification
from . import metrics
from .job import Job, Verify
from .notify import Notifier, watchdog_interval
from .scheduler import Scheduler
from .taskfollow import TaskFollower
from .wakeup import Waker, install_signals

if TYPE_CHECKING:
    from .watch import WatchControl

log = logging.getLogger(__name__)

CONFIG_POLL = 2.0  # seconds between looks at the config file's mtime
WATCH_CHECK = 5.0  # seconds between watcher health checks
IDLE_FLUSH = 300.0  # the delivery loop looks at the outbox at least this often
MAX_SLEEP = 60.0  # re-read the wall clock at least this often (it can jump)
STOP_BUDGET = 7.0  # SIGTERM to exit within 10 s, even if a helper is slow to quit
STOP_GRACE = 2.0  # then the helpers still hashing are terminated through their pools


def config_signature(path: Path | None) -> tuple[int, ...] | None:
    """What changes when the config file is rewritten, renamed over, or touched."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _ConfigFile:
    """Looks at the config file every CONFIG_POLL seconds for a change to reload."""

    def __init__(self, path: Path | None, now: float):
        self.path = path
        self.signature = config_signature(path)
        # No file, no look: a deadline that never comes never cuts the loop's sleep short.
        self.next_look = now + CONFIG_POLL if path is not None else math.inf

    def changed(self, now: float) -> bool:
        if now < self.next_look:
            return False
        self.next_look = now + CONFIG_POLL
        current = config_signature(self.path)
        return current is not None and current != self.signature

    def reload_reason(self, now: float, hup: bool) -> str | None:
        """Why to reload now (SIGHUP, or the file changed), or None; the file is then taken
        as read."""
        reason = "the config file changed" if self.changed(now) else None
        if hup:
            reason = "SIGHUP"
        if reason:
            self.signature = config_signature(self.path)
        return reason


def write_metrics(
    config: AgentConfig,
    results: Sequence[DirResult] = (),
    flushed: delivery.FlushReport | None = None,
) -> None:
    """Update the metrics textfile, if one is configured; a failure is only a warning.
    Called from the job and delivery threads; the writer takes its own lock."""
    try:
        metrics.write(config, results, flushed, keep=[d.path for d in config.directories])
    except AgentError as exc:
        log.warning("metrics not written: %s", exc)


def validate_for_daemon(config: AgentConfig) -> AgentConfig:
    """What `run` needs beyond a parseable file: directories, each with a target."""
    if not (config.directories_from_task or config.target_from_task):
        check_targets(config, config.directories)  # else they come with the task, each cycle
    return config


class _Deliverer:
    """The delivery thread: flushes the outbox when asked, when a retry is due, and at least
    every IDLE_FLUSH seconds. Its config is swapped on reload."""

    def __init__(self, config: AgentConfig, stop: threading.Event, clock: Callable[[], float]):
        self.config = config
        self.pending = 0  # results awaiting delivery after the last flush
        self._stop = stop
        self._clock = clock
        self._now = threading.Event()
        # A daemon thread: after STOP_BUDGET the process exits even if it is stuck in I/O; the
        # outbox loses nothing, since an entry leaves it only after SMS acknowledged it.
        self.thread = threading.Thread(target=self._loop, name="smsagent-deliver", daemon=True)

    def flush_now(self) -> None:
        self._now.set()

    def join(self, deadline: float, monotonic: Callable[[], float]) -> None:
        if self.thread.is_alive():
            self.thread.join(max(0.1, deadline - monotonic()))
            if self.thread.is_alive():
                log.warning("%s did not stop in time; exiting anyway", self.thread.name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._now.clear()
            wait = IDLE_FLUSH
            try:
                report = delivery.flush(self.config, stop_event=self._stop)
                self.pending = report.pending
                write_metrics(self.config, flushed=report)
                if report.next_try is not None:
                    wait = min(wait, report.next_try - self._clock())
            except AgentError as exc:
                log.warning("delivery failed, results stay queued: %s", exc)
            except Exception:
                log.exception("delivery failed, results stay queued")
            self._now.wait(max(0.2, wait))


def follow_task(
    task: TaskFollower | None, config: AgentConfig, monotonic: Callable[[], float]
) -> tuple[TaskFollower | None, AgentConfig]:
    """Who reads the task's settings for `config` (None when it reads none), and `config` with
    the settings last read applied."""
    if not config.reads_task:
        return None, config
    if task is None:
        task = TaskFollower(config, monotonic=monotonic)
        return task, task.current()
    return task, task.rebase(config)


def announce(config: AgentConfig) -> None:
    for warning in config.warnings:
        log.warning("%s", warning)
    s = config.schedule
    log.info(
        "%s, every %gs (jitter %gs)%s%s; state in %s",
        counted(len(config.directories), "directory", "directories"), s.interval, s.jitter,
        " inside the window" if s.window else "",
        f", watching changes (debounce {s.debounce:g}s)" if s.watch else "",
        config.state_dir,
    )  # fmt: skip
    if not config.endpoint or not config.task_id:
        log.warning("endpoint or task_id is not set: results are kept locally, not uploaded")


def log_next(scheduler: Scheduler, now: float) -> None:
    wake = scheduler.next_wakeup()
    if wake is not None and wake > now:
        log.info("next verification at %s", datetime.fromtimestamp(wake).isoformat(" ", "seconds"))


class Daemon:
    """The long-running agent: the control loop and its decisions; `run()` returns the exit
    code. Stop it with `request_stop()` (or SIGTERM), reload with `request_reload()` (SIGHUP)."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None,
        *,
        verify: Verify = run_verification,
        load: Callable[[Path | None], AgentConfig] = load_config,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ):
        environ = os.environ if environ is None else environ
        # With directories, excludes or target from the task, self.config has them applied.
        self._task, self.config = follow_task(None, validate_for_daemon(config), monotonic)
        self.config_path = config_path
        self._load = load
        self.notifier = notifier or Notifier.from_env(environ)
        self._ping_every = watchdog_interval(environ)
        self._clock = clock
        self._monotonic = monotonic
        self.stop = stop or threading.Event()
        self._waker = Waker()
        self._term = False
        self._hup = False
        self._job = Job(verify, self._waker.wake, monotonic,
                        queued=lambda results: write_metrics(self.config, results))  # fmt: skip
        self._deliverer = _Deliverer(self.config, self.stop, clock)
        self._watch: WatchControl | None = None  # made when first watching: watchdog loads then
        self._last_summary = "no verification yet"
        self.scheduler = Scheduler(
            config.schedule, [d.path for d in config.directories], now=clock(), rand=rand
        )

    # --- entry points for other threads and signal handlers ---

    def request_stop(self) -> None:
        self._term = True
        self._waker.wake()

    def request_reload(self) -> None:
        self._hup = True
        self._waker.wake()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: the loop acts on them, so no lock is ever taken inside a handler.
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._term = True

    # --- the control loop ---

    def run(self, *, handle_signals: bool = True) -> int:
        restore = install_signals(self._on_signal, self._waker.w) if handle_signals else None
        try:
            with Outbox(self.config.state_dir):  # READY promises the state is usable
                pass
            write_metrics(self.config)
            announce(self.config)
            self._deliverer.thread.start()
            self._watch_for(self.config)
            self.notifier.ready(f"started; {self._last_summary}")
            log_next(self.scheduler, self._clock())
            self._loop()
        finally:
            self._shut_down()
            if restore:
                restore()
            self.notifier.close()
            self._waker.close()
        log.info("stopped")
        return 0

    def _shut_down(self) -> None:
        self.notifier.stopping("stopping")
        self.stop.set()
        self._deliverer.flush_now()
        deadline = self._monotonic() + STOP_BUDGET
        if self._watch is not None:
            self._watch.close()
        self._job.stop(STOP_GRACE, deadline)
        self._deliverer.join(deadline, self._monotonic)

    def _loop(self) -> None:
        start = self._monotonic()
        # A timer that does not apply waits forever, so it never cuts the sleep short.
        next_ping = start if self._ping_every is not None else math.inf
        config_file = _ConfigFile(self.config_path, start)
        next_watch_check = start + WATCH_CHECK
        while not self._term:
            mono = self._monotonic()
            if self._ping_every is not None and mono >= next_ping:
                self.notifier.watchdog()
                next_ping = mono + self._ping_every
            hup, self._hup = self._hup, False
            reload_reason = config_file.reload_reason(mono, hup)
            if reload_reason:
                self._reload(reload_reason)
            if self._watch is not None:
                if mono >= next_watch_check:
                    next_watch_check = mono + WATCH_CHECK
                    self._watch.check()
                self._watch.adopt()
            self._collect()
            self._maybe_start()
            self._waker.wait(self._sleep_time(next_ping, config_file.next_look, next_watch_check))

    def _sleep_time(self, *monotonic_deadlines: float) -> float:
        mono = self._monotonic()
        candidates = [MAX_SLEEP]
        candidates += [d - mono for d in monotonic_deadlines]
        if not self._job.busy:
            wake = self.scheduler.next_wakeup()
            if wake is not None:
                candidates.append(wake - self._clock())
            if self._task is not None:
                candidates.append(self._task.next_look() - mono)
        return max(0.0, min(candidates))

    def _collect(self) -> None:
        for path in self._watch.take_changed() if self._watch else ():
            self.scheduler.request(path)
        finished = self._job.finished()
        if finished is not None:
            self.scheduler.finish(finished.paths, self._clock())
            for path in finished.superseded:  # cut short by a reload: again, on the new config
                self.scheduler.request(path)
            fresh = finished.config  # the task's settings, unless a reload came since
            if fresh is not None and not finished.superseded and fresh != self.config:
                self._adopt(self.config, fresh)
            if finished.summary is None:
                return
            when = datetime.fromtimestamp(self._clock())
            self._last_summary = f"last run {when:%H:%M:%S}: {finished.summary}"
            if finished.queued:
                self._deliverer.flush_now()
            self.notifier.status(self._status_text())
            log_next(self.scheduler, self._clock())

    def _maybe_start(self) -> None:
        if self._job.busy or self.stop.is_set():
            return
        due = self.scheduler.due(self._clock())
        look = self._task is not None and self._monotonic() >= self._task.next_look()
        if not due and not look:
            return
        by_path = {d.path: d for d in self.config.directories}
        directories = [by_path[p] for p in due if p in by_path]
        self.scheduler.start(due, self._clock())
        if directories:
            what = counted(len(directories), "directory", "directories")
            self.notifier.status(f"verifying {what}; {self._last_summary}")
        self._job.start(self.config, directories, self._task)

    def _status_text(self) -> str:
        return f"{self._last_summary}; {self._deliverer.pending} result(s) awaiting delivery"

    # --- configuration and the watcher ---

    def _reload(self, reason: str) -> None:
        self.notifier.reloading()
        try:
            new = validate_for_daemon(self._load(self.config_path))
        except AgentError as exc:
            log.error("%s: configuration not reloaded, the previous one stays in force: %s",
                      reason, exc)  # fmt: skip
            self.notifier.ready(f"reload rejected; {self._status_text()}")
            return
        self._task, new = follow_task(self._task, new, self._monotonic)
        if new == self.config:
            log.info("%s: configuration unchanged", reason)  # a run in progress goes on
        else:
            self._job.supersede(self.config, new, reason)  # unless it does the same on `new`
            self._adopt(self.config, new)
            log.info("%s: configuration reloaded from %s", reason, new.origin)
        self.notifier.ready(self._status_text())

    def _adopt(self, old: AgentConfig, new: AgentConfig) -> None:
        """Run with a new configuration: a reloaded file, or the task's settings changed."""
        self.config = self._deliverer.config = new
        announce(new)
        self.scheduler.reconfigure(
            new.schedule, [d.path for d in new.directories], now=self._clock()
        )
        self._watch_for(new, old)

    def _watch_for(self, config: AgentConfig, old: AgentConfig | None = None) -> None:
        if self._watch is None:
            if not config.schedule.watch:
                return
            from .watch import WatchControl  # watchdog is loaded only when watching

            self._watch = WatchControl(self._waker.wake)
        self._watch.follow(config, old)
