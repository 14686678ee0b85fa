"""Shared helpers for the upload-side tests: configs pointing at a loopback emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig, parse_config
from agent.model import ConsistencyEntry, DirCounts, DirResult

if TYPE_CHECKING:
    from agent.sms.emulator import Emulator

TOKEN = "TOKEN-s3cr3t-0123456789"


def make_config(state_dir: Path, url: str | None, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "task_id": "T",
        "state_dir": str(state_dir),
        "auth": {"token": TOKEN},
        "upload": {"connect_timeout": 1, "read_timeout": 2, "backoff_max": 0.05},
    }
    if url is not None:
        data["endpoint"] = url
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return parse_config(data, source="test")


def results(n: int, prefix: str = "/d") -> list[DirResult]:
    return [
        DirResult(
            f"{prefix}{i:03d}", f"/t{prefix}{i:03d}", DirCounts(total=i, different=i % 3), 0.1
        )
        for i in range(n)
    ]


def entry(dir_check: str = "/var", total: int = 1, **counts: int) -> ConsistencyEntry:
    values = {
        "num_total_files": total,
        "num_different_files": 0,
        "num_target_miss_files": 0,
        "num_target_more_files": 0,
    }
    values.update(counts)
    return ConsistencyEntry(dir_check=dir_check, **values)


def kill_once_posting(emu: Emulator, proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGKILL `proc` as soon as its first request has reached the emulator."""
    deadline = time.time() + timeout
    while not emu.requests and time.time() < deadline:
        time.sleep(0.02)
    assert emu.requests, "no request reached SMS before the kill"
    os.kill(proc.pid, signal.SIGKILL)
