"""Decide when each directory is due for verification: pure arithmetic on times passed in.

Times are wall-clock seconds since the epoch (the quiet-hours window is a wall-clock notion);
the caller supplies `now` and the random fraction, so every decision here is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from ..config import ScheduleConfig

DAY_MINUTES = 24 * 60


def minute_of_day(when: float, tz: tzinfo | None = None) -> float:
    """Minutes after local midnight (fractional), in `tz` or the machine's local zone."""
    dt = datetime.fromtimestamp(when, tz)
    return dt.hour * 60 + dt.minute + (dt.second + dt.microsecond / 1e6) / 60


def in_window(when: float, window: tuple[int, int] | None, tz: tzinfo | None = None) -> bool:
    """True when `when` lies inside `[start, end)`; a window with start > end wraps midnight."""
    if window is None:
        return True
    start, end = window
    minute = minute_of_day(when, tz)
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def window_length(window: tuple[int, int]) -> float:
    """The window's length in seconds."""
    start, end = window
    return ((end - start) % DAY_MINUTES or DAY_MINUTES) * 60.0


def next_window_start(when: float, window: tuple[int, int], tz: tzinfo | None = None) -> float:
    """The first opening of the window strictly after `when`."""
    dt = datetime.fromtimestamp(when, tz)
    start = window[0] % DAY_MINUTES
    opening = dt.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)
    if opening <= dt:
        opening += timedelta(days=1)
    return opening.timestamp()


def next_due(
    schedule: ScheduleConfig,
    *,
    now: float,
    last_start: float | None = None,
    jitter_fraction: float = 0.0,
    tz: tzinfo | None = None,
) -> float:
    """When a directory last started at `last_start` is next due (never started: `now`).

    A run that outlasted its interval skips the slots it missed instead of starting again
    at once; the jitter (`jitter_fraction` of `schedule.jitter`) spreads a fleet; outside
    the window, the run moves to the window's next opening, still jittered but kept inside.
    """
    if last_start is None:
        due = now
    else:
        due = last_start + schedule.interval
        if due < now:
            due += math.ceil((now - due) / schedule.interval) * schedule.interval
        due += schedule.jitter * jitter_fraction
    window = schedule.window
    if window is None or in_window(due, window, tz):
        return due
    # Keep a jittered start inside the window even when the jitter is longer than the window.
    spread = min(schedule.jitter, window_length(window) / 2) * jitter_fraction
    return next_window_start(due, window, tz) + spread


@dataclass
class DirState:
    """What the daemon knows about one directory's verification."""

    path: str
    next_due: float
    last_start: float | None = None
    running: bool = False
    requested: bool = False  # the watcher saw a change: verify again, window or not


class Scheduler:
    """Per-directory due times; no threads and no clock of its own, the daemon drives it."""

    def __init__(
        self,
        schedule: ScheduleConfig,
        paths: Iterable[str],
        *,
        now: float,
        rand: Callable[[], float],
        tz: tzinfo | None = None,
    ):
        self.schedule = schedule
        self._rand = rand
        self._tz = tz
        self.states: dict[str, DirState] = {}
        self.reconfigure(schedule, paths, now=now)

    def reconfigure(self, schedule: ScheduleConfig, paths: Iterable[str], *, now: float) -> None:
        """Adopt a reloaded schedule and directory list; new directories are due at once."""
        self.schedule = schedule
        old = self.states
        self.states = {}
        for path in paths:
            state = old.get(path) or DirState(path=path, next_due=0.0)
            if not state.running:
                state.next_due = self._due(state.last_start, now)
            self.states[path] = state

    def due(self, now: float) -> list[str]:
        """Directories to verify now: idle and either due or changed."""
        return [
            s.path
            for s in self.states.values()
            if not s.running and (s.requested or s.next_due <= now)
        ]

    def start(self, paths: Iterable[str], now: float) -> None:
        for path in paths:
            state = self.states[path]
            state.running, state.requested, state.last_start = True, False, now

    def finish(self, paths: Iterable[str], now: float) -> None:
        """A batch ended; one jitter draw for the batch keeps its directories together."""
        fraction = self._rand()
        for path in paths:
            state = self.states.get(path)
            if state is None:  # dropped from the config while it ran
                continue
            state.running = False
            state.next_due = self._due(state.last_start, now, fraction)

    def request(self, path: str) -> bool:
        """The watcher saw a settled change under `path`; False when it is not configured."""
        state = self.states.get(path)
        if state is None:
            return False
        state.requested = True
        return True

    def next_wakeup(self) -> float | None:
        """The earliest due time among idle directories (requests count as due now)."""
        idle = [s for s in self.states.values() if not s.running]
        if not idle:
            return None
        if any(s.requested for s in idle):
            return -math.inf
        return min(s.next_due for s in idle)

    def _due(self, last_start: float | None, now: float, fraction: float | None = None) -> float:
        if fraction is None:
            fraction = self._rand()
        return next_due(
            self.schedule, now=now, last_start=last_start, jitter_fraction=fraction, tz=self._tz
        )
