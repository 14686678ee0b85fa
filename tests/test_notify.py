"""The notify protocol against a real datagram socket bound by the test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service.notify import Notifier, socket_address, watchdog_interval

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.ready("config loaded")
    assert sock.recv(4096) == b"READY=1\nSTATUS=config loaded"
    assert notifier.status("3 directories\nconsistent")  # one line: a newline would split it
    assert sock.recv(4096) == b"STATUS=3 directories consistent"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket() -> None:
    name = f"smsagent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_no_socket_is_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier.from_env({}).ready()
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.ready() and not gone.watchdog()
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
    gone.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@abc", b"\0abc"), ("", None), ("x", None)],
)
def test_socket_address(value: str, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1234"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "999"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=1234) == expected
