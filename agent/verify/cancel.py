"""A cancel handle for one verification run: a stop request the engine sees between requests,
and a way to end the run's helpers at once when they are busy with one long request."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel import Channel

log = logging.getLogger(__name__)


class Cancel(threading.Event):
    """Set it to ask the run to stop; `terminate()` also ends every helper the run started.

    A helper finishes the file it is hashing before it reads its closed stdin, so a throttled
    read of a large file would hold a stop for minutes: `terminate()` is for that case, and for
    a reload, which replaces the configuration the run was started with."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "stop"  # or "reload": what the run's log says it was cut short by
        self._lock = threading.Lock()
        self._channels: list[Channel] = []
        self._terminated = False

    def adopt(self, channels: Iterable[Channel]) -> None:
        """Helpers the run has started; ended at once if the run was already terminated."""
        channels = list(channels)
        with self._lock:
            self._channels.extend(channels)
            terminated = self._terminated
        if terminated:
            _end(channels)

    def terminate(self, reason: str = "stop") -> None:
        self.reason = reason
        self.set()
        with self._lock:
            self._terminated = True
            channels, self._channels = self._channels, []
        _end(channels)


def _end(channels: Iterable[Channel]) -> None:
    for channel in channels:
        if channel.process.poll() is None:
            log.info("stopping helper process %d", channel.process.pid)
            with contextlib.suppress(OSError):
                channel.process.terminate()
