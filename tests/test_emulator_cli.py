"""`smsagent-emulator` as a command: it prints its URL, takes the documented flags, refuses a
bad settings file and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from .test_emulator import call


def test_command_line_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.sms.emulator_cli",
            "--port",
            "0",
            "--task-id",
            "T1",
            "--token",
            "X",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("SMS emulator listening on http://127.0.0.1:")
        url = line.split()[4]
        assert call(url + "/v3/tasks/T1/consistency-result", token="X")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_command_line_settings_and_documented_flags(tmp_path: Path) -> None:
    sk = tmp_path / "sk"
    sk.write_text("secret\n")
    (tmp_path / "task.json").write_text(json.dumps({"configurations": {"SYNC_EXCLUDE_DIR": "/x"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sms.emulator_cli", "--port", "0", "--token", "X",
         "--ak", "AK1", "--sk-file", str(sk), "--result-format", "objects",
         "--setting", "CONSISTENCY_DIR=/a;/b", "--settings-file", str(tmp_path / "task.json"),
         "--migration-ip", "10.0.0.9", "--target-ip", "10.0.0.10", "--max-clock-skew", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[4]
        data = call(url + "/v3/tasks/T/configuration-setting", "GET", token="X")[1]
        assert {c["config_key"]: c["config_value"] for c in data["configurations"]} == {
            "SYNC_EXCLUDE_DIR": "/x",
            "CONSISTENCY_DIR": "/a;/b",
        }
        task = call(url + "/v3/tasks/T", "GET", token="X")[1]
        assert (task["migration_ip"], task["target_server"]["ip"]) == ("10.0.0.9", "10.0.0.10")
        call(url + "/v3/tasks/T/consistency-result", token="X")
        result_list = call(url + "/v3/tasks/T/consistency-result", "GET", token="X")[1][
            "result_list"
        ]
        assert isinstance(result_list[0], dict)  # --result-format objects
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_command_line_rejects_a_bad_settings_file(tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text('{"configurations": 3}')
    done = subprocess.run(
        [sys.executable, "-m", "agent.sms.emulator_cli", "--port", "0", "--settings-file", str(tmp_path / "task.json")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "configurations must be an object or a list" in done.stderr
