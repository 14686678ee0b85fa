"""Shared fixtures: real trees on disk, the installed `smsagent` command, and a leak check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.model import Verdict
from agent.sms.emulator import Emulator

from .sms_helpers import TOKEN


def smsagent_command() -> list[str]:
    """The installed console script, as a user would run it."""
    beside = Path(sys.executable).with_name("smsagent")
    found = str(beside) if beside.exists() else shutil.which("smsagent")
    if not found:
        pytest.fail("the smsagent command is not installed: run `pip install .` first")
    return [found]


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `smsagent ARGS` in a clean environment (no system config, a private state dir)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
        environ["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
        environ.pop("STATE_DIRECTORY", None)
        environ.pop("CREDENTIALS_DIRECTORY", None)
        environ.update(env or {})
        return subprocess.run(
            [*smsagent_command(), *args],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            env=environ,
            timeout=timeout,
            cwd=cwd or tmp_path,
        )

    return run


def empty_files(folder: Path, count: int, skip: int = 0) -> None:
    """`count` empty files e000000, e000001, … in `folder` (made if need be), fast enough
    for a directory larger than a helper's run; with `skip`, every skip-th from the 6th on
    is left out."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            if not (skip and i % skip == 5):
                os.close(os.open(f"e{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def write_tree(root: Path | bytes, spec: dict[bytes | str, object]) -> None:
    """Create files from a mapping: bytes/str content is a file, ("link", target) a symlink,
    ("dir",) an empty directory, ("fifo",) a FIFO. Keys are relative paths (bytes allowed)."""
    base = os.fsencode(root)
    os.makedirs(base, exist_ok=True)
    for rel, content in spec.items():
        path = os.path.join(base, os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, tuple):
            if content[0] == "link":
                os.symlink(os.fsencode(content[1]), path)
            elif content[0] == "dir":
                os.makedirs(path, exist_ok=True)
            elif content[0] == "fifo":
                os.mkfifo(path)
            else:
                raise ValueError(content)
        else:
            data = content.encode() if isinstance(content, str) else content
            with open(path, "wb") as handle:
                handle.write(data)  # type: ignore[arg-type]


@pytest.fixture
def make_tree() -> Callable[[Path | bytes, dict], None]:
    return write_tree


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """The SMS emulator on loopback, serving task T to the test token."""
    with Emulator(task_ids=["T"], token=TOKEN) as server:
        yield server


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fails a test that leaves a thread running (as watchdog's own conftest does).

    Used by the daemon's modules: `pytestmark = pytest.mark.usefixtures("no_leaked_threads")`.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


class ReportLines(list):
    """A report (verify.report.ReportSink) that keeps (verdict, rel, reason) per path, and
    the directories it was told about."""

    def __init__(self) -> None:
        super().__init__()
        self.dir_checks: set[str] = set()

    def __call__(self, dir_check: str, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        self.dir_checks.add(dir_check)
        self.append((verdict, rel, reason))

    def many(self, dir_check: str, verdict: Verdict, folder: bytes, names: str) -> None:
        prefix = folder + b"/" if folder else b""
        for name in names.split("/"):
            self(dir_check, verdict, prefix + name.encode("latin-1"), None)
