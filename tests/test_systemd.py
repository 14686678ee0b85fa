"""The shipped unit: systemd accepts it, and its hardening is what the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "smsagent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_smsagent() -> str:
    beside = Path(sys.executable).parent / "smsagent"
    found = str(beside) if beside.exists() else shutil.which("smsagent")
    if not found:
        pytest.skip("the smsagent command is not installed (pip install -e .)")
    return found


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists: point a copy at the installed command.
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/smsagent run --config /etc/smsagent/agent.yaml" in text
    copy = tmp_path / "smsagent.service"
    copy.write_text(text.replace("/usr/local/bin/smsagent", installed_smsagent()))
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "smsagent.service" not in proc.stderr, proc.stderr  # no warnings about our unit


@needs_analyze
def test_unit_exposure_score() -> None:
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for smsagent\.service: (\d+\.\d)", proc.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score units offline: {proc.stderr.strip()}")
    score = float(match.group(1))
    print(f"exposure score: {score}")
    assert score <= 1.6, proc.stdout  # the README's figure; raise it only on purpose


def test_unit_keeps_the_promised_settings() -> None:
    s = settings()
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "StateDirectory": "smsagent",
        "LoadCredential": "sms-token:/etc/smsagent/token",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_DAC_READ_SEARCH",
        "IOSchedulingClass": "idle",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert "WatchdogSec" in s and "Nice" in s and "SystemCallFilter" in s
    assert "ReadWritePaths" not in s  # the state directory is the only writable place
