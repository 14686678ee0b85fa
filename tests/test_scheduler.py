"""The schedule's arithmetic: due times, jitter, missed slots and the quiet-hours window."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent.config import ScheduleConfig
from agent.service.scheduler import Scheduler, in_window, next_due, next_window_start

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def at(hhmm: str, day: int = 1) -> float:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2026, 1, day, h, m, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("when", "window", "inside"),
    [
        ("03:00", (60, 300), True),
        ("01:00", (60, 300), True),
        ("05:00", (60, 300), False),  # the end is exclusive
        ("00:59", (60, 300), False),
        ("23:30", (22 * 60, 2 * 60), True),  # wraps midnight
        ("01:59", (22 * 60, 2 * 60), True),
        ("02:00", (22 * 60, 2 * 60), False),
        ("12:00", (22 * 60, 2 * 60), False),
        ("12:00", None, True),
        ("23:59", (0, 1440), True),
    ],
)
def test_in_window(when: str, window: tuple[int, int] | None, inside: bool) -> None:
    assert in_window(at(when), window, timezone.utc) is inside


@pytest.mark.parametrize(
    ("when", "window", "opening"),
    [
        ("12:00", (60, 300), at("01:00", day=2)),
        ("00:30", (60, 300), at("01:00")),
        ("01:00", (60, 300), at("01:00", day=2)),  # strictly after
        ("21:00", (22 * 60, 120), at("22:00")),
    ],
)
def test_next_window_start(when: str, window: tuple[int, int], opening: float) -> None:
    assert next_window_start(at(when), window, timezone.utc) == opening


@pytest.mark.parametrize(
    ("schedule", "now", "last_start", "fraction", "expected"),
    [
        # never run: due at once, no jitter
        (ScheduleConfig(interval=3600, jitter=300), at("12:00"), None, 0.5, at("12:00")),
        # the interval plus the drawn share of the jitter
        (ScheduleConfig(interval=3600, jitter=300), at("12:00"), at("12:00"), 0.5,
         at("13:00") + 150),
        (ScheduleConfig(interval=3600, jitter=0), at("12:10"), at("12:00"), 0.9, at("13:00")),
        # a run that took 2.5 intervals skips the missed slots instead of starting at once
        (ScheduleConfig(interval=3600, jitter=0), at("14:30"), at("12:00"), 0.0, at("15:00")),
        # outside the window: the next opening, jitter kept inside the window
        (ScheduleConfig(interval=3600, jitter=60, window=(60, 300)), at("12:00"), None, 0.5,
         at("01:00", day=2) + 30),
        (ScheduleConfig(interval=3600, jitter=0, window=(60, 300)), at("04:30"), at("04:30"),
         0.0, at("01:00", day=2)),
        (ScheduleConfig(interval=3600, jitter=0, window=(60, 300)), at("02:00"), at("02:00"),
         0.0, at("03:00")),
        # a jitter longer than the window is squeezed into its first half
        (ScheduleConfig(interval=86400, jitter=7200, window=(60, 120)), at("12:00"), None, 1.0,
         at("01:00", day=2) + 1800),
    ],
)  # fmt: skip
def test_next_due(
    schedule: ScheduleConfig, now: float, last_start: float | None, fraction: float, expected: float
) -> None:
    assert next_due(
        schedule, now=now, last_start=last_start, jitter_fraction=fraction, tz=timezone.utc
    ) == (expected)


def test_a_running_directory_is_never_due_twice() -> None:
    sched = Scheduler(ScheduleConfig(interval=10, jitter=0), ["/a", "/b"], now=0, rand=lambda: 0.0)
    assert sched.due(0) == ["/a", "/b"]
    sched.start(["/a"], 0)
    assert sched.due(100) == ["/b"]
    sched.request("/a")  # a change while it runs is remembered, not started in parallel
    assert "/a" not in sched.due(100)
    sched.finish(["/a"], 105)
    assert sched.due(105) == ["/a", "/b"]
    assert sched.states["/a"].next_due == 110


def test_requests_bypass_the_window_and_unknown_paths_are_refused() -> None:
    schedule = ScheduleConfig(interval=3600, jitter=0, window=(60, 120))
    sched = Scheduler(schedule, ["/a"], now=at("12:00"), rand=lambda: 0.0, tz=timezone.utc)
    assert sched.due(at("12:00")) == []
    assert sched.next_wakeup() == at("01:00", day=2)
    assert sched.request("/a") and not sched.request("/elsewhere")
    assert sched.due(at("12:00")) == ["/a"]


def test_one_jitter_draw_per_batch_keeps_directories_together() -> None:
    draws = iter([0.0, 0.0, 0.25, 0.75])
    sched = Scheduler(ScheduleConfig(interval=100, jitter=40), ["/a", "/b"], now=0,
                      rand=lambda: next(draws))  # fmt: skip
    sched.start(["/a", "/b"], 0)
    sched.finish(["/a", "/b"], 5)
    assert sched.states["/a"].next_due == sched.states["/b"].next_due == 110


def test_reconfigure_adds_and_drops_directories() -> None:
    sched = Scheduler(ScheduleConfig(interval=10, jitter=0), ["/a"], now=0, rand=lambda: 0.0)
    sched.start(["/a"], 0)
    sched.finish(["/a"], 1)
    sched.reconfigure(ScheduleConfig(interval=50, jitter=0), ["/a", "/b"], now=2)
    assert sched.states["/a"].next_due == 50
    assert sched.due(2) == ["/b"]
    sched.reconfigure(ScheduleConfig(interval=50, jitter=0), ["/b"], now=3)
    assert list(sched.states) == ["/b"]
