"""`smsagent verify`, `flush` and `status` as the installed command, against the emulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sms.emulator import Emulator

SMSAGENT = shutil.which("smsagent", path=os.path.dirname(sys.executable)) or "smsagent"
TOKEN = "CLI-T0KEN-abcdef"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(task_ids=["T"], token=TOKEN) as server:
        yield server


def write_config(tmp_path: Path, endpoint: str | None, ndirs: int = 2, **extra: str) -> Path:
    dirs = []
    for i in range(ndirs):
        src, tgt = tmp_path / "src" / f"d{i}", tmp_path / "tgt" / f"d{i}"
        src.mkdir(parents=True)
        tgt.mkdir(parents=True)
        (src / "same").write_text("x")
        (tgt / "same").write_text("x")
        dirs.append({"path": str(src), "target": str(tgt)})
    config = {
        "task_id": "T",
        "state_dir": str(tmp_path / "state"),
        "auth": {"token": TOKEN},
        "directories": dirs,
        "upload": {"connect_timeout": 1, "read_timeout": 30, "backoff_max": 0.05},
        **extra,
    }
    if endpoint:
        config["endpoint"] = endpoint
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    path.chmod(0o600)
    return path


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMSAGENT, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_verify_uploads_and_status_shows_it(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu.url)
    done = run("verify", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "Uploaded 2 result(s) to SMS task T in 1 request(s)." in done.stderr
    assert [len(b) for b in emu.received] == [2]
    status = run("status", "--config", config, "--remote")
    assert status.returncode == 0
    assert status.stdout.count("delivered") == 2 and "Pending: 0" in status.stdout
    assert "SMS task T: 1 result(s) on record" in status.stdout
    as_json = json.loads(run("status", "--config", config, "--json").stdout)
    assert {d["state"] for d in as_json["directories"]} == {"delivered"}


def test_verify_exits_3_when_queued_then_flush_delivers(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu.url)
    emu.fail_next(1, status=503)
    done = run("verify", "--config", config, "--json")
    assert done.returncode == 3
    upload = json.loads(done.stdout)["upload"]
    assert upload["pending"] == 2 and "queued but not delivered" in upload["message"]
    status = run("status", "--config", config)
    assert "Pending: 2" in status.stdout and "SMS answered 503" in status.stdout
    flushed = run("flush", "--config", config)
    assert flushed.returncode == 0 and "Uploaded 2 result(s)" in flushed.stdout
    assert run("flush", "--config", config).stdout.strip() == "Nothing to deliver."


def test_flush_exits_3_while_server_is_down(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu.url)
    emu.fail_next(2, status=500)
    assert run("verify", "--config", config).returncode == 3
    flushed = run("flush", "--config", config)
    assert flushed.returncode == 3 and "queued but not delivered" in flushed.stderr
    assert run("flush", "--config", config, "--wait", "5").returncode == 0


def test_no_upload_and_no_endpoint(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a", emu.url)
    done = run("verify", "--config", config, "--no-upload")
    assert done.returncode == 0 and "Nothing uploaded (--no-upload)." in done.stderr
    config = write_config(tmp_path / "b", None)
    done = run("verify", "--config", config)
    assert done.returncode == 0
    assert "Nothing uploaded: no SMS endpoint is configured." in done.stderr
    assert emu.requests == []


def test_remote_status_error_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    done = run("status", "--config", config, "--remote")
    assert done.returncode == 2
    assert done.stderr.startswith("smsagent: Upload error: cannot reach http://127.0.0.1:9/")
    assert "Traceback" not in done.stderr
    assert "No results recorded yet." in done.stdout


def test_sigkill_during_verify_upload_then_flush(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu.url, ndirs=35)
    emu.stall_next(1)  # the first POST never gets an answer
    proc = subprocess.Popen(
        [SMSAGENT, "verify", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while not emu.requests and time.time() < deadline:
        time.sleep(0.02)
    assert emu.requests, "verify never posted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert emu.received == []
    flushed = run("flush", "--config", config)
    assert flushed.returncode == 0, flushed.stderr
    assert len(emu.results("T")) == 35
    assert [len(b) for b in emu.received] == [30, 5]
    assert TOKEN not in flushed.stdout + flushed.stderr


def test_endpoint_task_and_token_from_the_command_line_and_environment(
    emu: Emulator, tmp_path: Path, run_cli
) -> None:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f")
    root = tmp_path / "root"
    (root / str(src).lstrip("/") / "sub").mkdir(parents=True)
    (root / str(src).lstrip("/") / "sub" / "f").write_text("f")
    done = run_cli(
        "verify", "--dir", str(src), "--target", str(root), "--endpoint", emu.url,
        "--state-dir", str(tmp_path / "state"), "--json",
        env={"SMSAGENT_TASK_ID": "T", "SMSAGENT_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    posted = [entry for batch in emu.received for entry in batch]
    assert posted == json.loads(done.stdout)["consistency_result"]
    assert posted[0]["dir_check"] == str(src) and posted[0]["num_total_files"] == 1
    assert TOKEN not in done.stdout + done.stderr


def test_status_remote_shows_odd_answers_as_clear_lines(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu.url)
    good = {"dir_check": "/ok", "num_total_files": 2, "num_different_files": 0,
            "num_target_miss_files": 0, "num_target_more_files": 0}  # fmt: skip
    emu.record(
        "T", {"finished_time": 1e22, "check_result": "success", "consistency_result": [good]}
    )
    emu.record(
        "T", {"finished_time": 1, "consistency_result": [{**good, "num_total_files": "n/a"}]}
    )
    emu.record(
        "T", {"finished_time": 2, "consistency_result": json.dumps([{**good, "dir_check": "/s"}])}
    )
    done = run("status", "--config", config, "--remote")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    out = done.stdout
    assert "SMS task T: 3 result(s) on record" in out
    assert "finished (not a valid time: 1e+19)" in out
    assert "/ok: total 2," in out and "/s: total 2," in out
    assert "not readable as documented: /ok: not whole numbers (num_total_files is 'n/a')" in out
    as_json = json.loads(run("status", "--config", config, "--remote", "--json").stdout)
    assert as_json["remote"][0]["finished_time"] == 10**22
    assert as_json["remote"][2]["consistency_result"][0]["dir_check"] == "/s"
    assert "n/a" in as_json["remote"][1]["problems"][0]
