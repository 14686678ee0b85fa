"""Single configuration values: durations, windows, directories, and the reader's messages."""

from __future__ import annotations

import pytest

from agent.config_values import (
    Reader,
    duration,
    format_window,
    join_target,
    normalise_dir,
    parse_duration,
    parse_window,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("7d", 604800.0),
    ("250ms", 0.25), (45, 45.0), ("x", None), ("-1", None), (True, None)])  # fmt: skip
def test_durations(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_windows() -> None:
    assert parse_window("01:00-05:00") == (60, 300)
    assert parse_window("22:30-02:00") == (1350, 120)
    assert parse_window("25:00-01:00") is None
    assert parse_window("01:00-01:00") is None
    assert format_window((1350, 120)) == "22:30-02:00"


@pytest.mark.parametrize(("given", "normal"), [
    ("/var/", "/var"), ("//srv//data/../www", "/srv/www"), ("/", "/"), ("//", "/")])  # fmt: skip
def test_normalise_dir(given: str, normal: str) -> None:
    assert normalise_dir(given) == normal


def test_join_target_percent_encodes_only_under_ssh() -> None:
    assert join_target("/mnt/t/", "/var") == "/mnt/t/var"
    assert join_target("/mnt/t", "/") == "/mnt/t"
    assert join_target("ssh://h/", "/a b#c?%") == "ssh://h/a%20b%23c%3F%25"


def test_a_reader_collects_every_problem() -> None:
    r = Reader("f.yaml")
    assert duration(minimum=1)(r, "0.5s", "schedule.interval") is None
    assert r.mapping({"intervall": 1}, "schedule", {"interval"}) == {}
    assert r.errors == [
        "schedule.interval: must be at least 1s, not '0.5s'",
        "schedule.intervall: unknown key (did you mean 'interval'?)",
    ]
