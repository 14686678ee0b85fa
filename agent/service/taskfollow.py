"""Keep the daemon's configuration in step with the task's settings in SMS.

The operator may add a directory in the console at any time: the daemon reads the task's
settings again before every verification and at least every TASK_POLL seconds, logs what
changed, and keeps the last settings it read (also in the state directory, for a restart while
SMS cannot be reached). It never goes on silently with nothing to verify.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..config import AgentConfig
from ..errors import AgentError
from ..sms import task
from ..sms.task import TaskSettings

log = logging.getLogger(__name__)

TASK_POLL = 60.0  # seconds: a directory added in the console is verified within a minute or so

Resolve = Callable[[AgentConfig], "tuple[AgentConfig, TaskSettings | None]"]


class TaskFollower:
    """The configuration a run uses: the file's, with the last task settings read applied."""

    def __init__(
        self,
        base: AgentConfig,
        *,
        resolve: Resolve = task.resolve,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._lock = threading.Lock()
        self._base = base
        self._resolve = resolve
        self._monotonic = monotonic
        self._settings = task.stored(base.state_dir, base.task_id)
        self._next_look = monotonic()  # read at once

    def current(self) -> AgentConfig:
        """No network: the file's configuration with the settings last read (or stored)."""
        with self._lock:
            base, settings = self._base, self._settings
        if settings is None:
            if base.directories_from_task and not base.directories:
                log.warning(
                    "task %s: its settings were never read yet, so there is nothing to verify "
                    "until SMS answers", base.task_id,
                )  # fmt: skip
            return base
        try:
            return task.apply_settings(base, settings)
        except AgentError as exc:
            log.warning("task %s: %s", base.task_id, exc)
            return base

    def rebase(self, base: AgentConfig) -> AgentConfig:
        """The config file was reloaded."""
        with self._lock:
            self._base = base
        return self.current()

    def next_look(self) -> float:
        """When the settings are due to be read again (monotonic seconds)."""
        return self._next_look

    def refresh(self) -> AgentConfig:
        """Read the task's settings now (network); on failure warn and keep the last ones."""
        with self._lock:
            base, old = self._base, self._settings
        poll = min(TASK_POLL, base.schedule.interval)
        self._next_look = self._monotonic() + poll
        try:
            _, settings = self._resolve(base)
        except AgentError as exc:
            if old is None:
                log.warning("cannot read the task's settings, and none were read before: "
                            "nothing to verify until they can be read (%s)", exc)  # fmt: skip
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(old.read_at))
                log.warning("cannot read the task's settings; keeping the ones read at %s: %s",
                            when, exc)  # fmt: skip
            return self.current()
        if settings is not None:
            for change in task.changes(old, settings):
                log.info("task %s: %s", settings.task_id, change)
            if old is None:
                log.info("task %s: directories %s", settings.task_id,
                         ", ".join(settings.directories) or "none")  # fmt: skip
            with self._lock:
                self._settings = settings
        return self.current()
