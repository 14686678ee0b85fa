"""The installed `smsagent` command as a user runs it: output, exit codes, errors; and
`verify`, `flush` and `status` against the SMS emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sms.emulator import Emulator

from .conftest import smsagent_command, write_tree
from .sms_helpers import kill_once_posting

TREE = {"same": "s", "changed": "abc", "gone": "g", b"bin\xff": "b", "d/nested": "n"}
TARGET = {"same": "s", "changed": "abd", "extra": "e", b"bin\xff": "b", "d/nested": "n"}


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A source directory and a target root holding its migrated copy at root/<source>."""
    src = tmp_path / "data" / "src"
    root = tmp_path / "root"
    write_tree(src, TREE)
    write_tree(root / str(src).lstrip("/"), TARGET)
    return src, root


def test_verify_prints_the_table_and_exits_1_on_differences(run_cli, pair, tmp_path) -> None:
    src, root = pair
    done = run_cli("verify", "--dir", f"{src}/", "--target", str(root), "--state-dir",
                   str(tmp_path / "st"))  # fmt: skip
    assert done.returncode == 1, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split() == ["DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE", "ERRORS",
                              "HASHED", "TIME"]  # fmt: skip
    assert row.split()[:6] == [str(src), "5", "1", "1", "1", "0"]
    assert "Nothing uploaded: no SMS endpoint is configured." in done.stderr
    assert "Traceback" not in done.stderr


def test_json_is_what_would_be_posted(run_cli, pair, tmp_path) -> None:
    src, root = pair
    done = run_cli("verify", "--dir", str(src), "--target", str(root), "--json",
                   "--state-dir", str(tmp_path / "st"))  # fmt: skip
    document = json.loads(done.stdout)
    assert document["consistency_result"] == [{
        "dir_check": str(src), "num_total_files": 5, "num_different_files": 1,
        "num_target_miss_files": 1, "num_target_more_files": 1,
    }]  # fmt: skip
    detail = document["directories"][0]
    assert detail["num_identical_files"] == 3 and detail["num_error_files"] == 0
    assert detail["hash_algorithm"] == "xxh3-128"
    assert document["consistent"] is False


def test_report_lists_every_path_escaped(run_cli, pair, tmp_path) -> None:
    src, root = pair
    report = tmp_path / "report.txt"
    run_cli("verify", "--dir", str(src), "--target", str(root), "--report", str(report),
            "--state-dir", str(tmp_path / "st"))  # fmt: skip
    lines = sorted(report.read_text().splitlines())
    assert lines == sorted([
        f"= {src}/same", f"* {src}/changed", f"+ {src}/gone", f"- {src}/extra",
        f"= {src}/bin\\xff", f"= {src}/d/nested",
    ])  # fmt: skip


def test_consistent_tree_exits_0(run_cli, tmp_path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a": "1"})
    write_tree(tmp_path / "root" / str(src).lstrip("/"), {"a": "1"})
    done = run_cli("verify", "--dir", str(src), "--target", str(tmp_path / "root"),
                   "--no-upload", "--state-dir", str(tmp_path / "st"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "consistent" in done.stdout and "Nothing uploaded (--no-upload)" in done.stderr


def test_exclude_option(run_cli, pair, tmp_path) -> None:
    src, root = pair
    done = run_cli("verify", "--dir", str(src), "--target", str(root), "--json",
                   "--exclude", "changed", "--exclude", "gone", "--exclude", "extra",
                   "--state-dir", str(tmp_path / "st"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["consistency_result"][0]["num_total_files"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["verify", "--dir", "/x"], "no target for /x"),
    (["verify", "--target", "/t"], "no directories to verify"),
    (["verify", "--config", "nope.yaml"], "nope.yaml: file not found"),
    (["verify", "--dir", "/x", "--target", "ftp://h/x"], "--target: must be a local path"),
])  # fmt: skip
def test_usage_errors_exit_2_without_traceback(run_cli, args, message) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("smsagent: ")


def test_config_from_environment_and_its_errors(run_cli, tmp_path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("directories: [/var]\nschedule: {intervall: 5m}\n")
    done = run_cli("verify", env={"SMSAGENT_CONFIG": str(config)})
    assert done.returncode == 2
    assert f"{config}: schedule.intervall: unknown key (did you mean 'interval'?)" in done.stderr


def test_missing_source_directory_is_exit_2_and_others_still_verified(run_cli, tmp_path) -> None:
    good = tmp_path / "good"
    write_tree(good, {"a": "1"})
    write_tree(tmp_path / "root" / str(good).lstrip("/"), {"a": "1"})
    done = run_cli("verify", "--dir", str(tmp_path / "absent"), "--dir", str(good),
                   "--target", str(tmp_path / "root"), "--json",
                   "--state-dir", str(tmp_path / "st"))  # fmt: skip
    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert [e["dir_check"] for e in document["consistency_result"]] == [str(good)]
    assert "does not exist" in document["directories"][0]["error"]


def test_config_check_masks_secrets(run_cli, tmp_path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("endpoint: https://sms.example.com\ntask_id: t1\n"
                      "auth:\n  token: super-secret-token-value\n")  # fmt: skip
    config.chmod(0o600)
    done = run_cli("config", "check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "super-secret-token-value" not in done.stdout + done.stderr
    assert "token: '****'" in done.stdout


def test_cache_clear(run_cli, pair, tmp_path) -> None:
    src, root = pair
    state = tmp_path / "st"

    def cache_hits() -> int:
        done = run_cli("verify", "--dir", str(src), "--target", str(root), "--json",
                       "--state-dir", str(state))  # fmt: skip
        return json.loads(done.stdout)["directories"][0]["cache_hits"]

    time.sleep(2.1)  # files changed in the last two seconds are never cached (racy mtime)
    assert cache_hits() == 0  # the first run fills the cache
    assert cache_hits() > 0  # the second is answered from it
    done = run_cli("cache", "clear", "--state-dir", str(state))
    assert done.returncode == 0 and "Cleared" in done.stdout
    assert cache_hits() == 0  # nothing is left to answer from


def test_demo_from_the_readme(run_cli, tmp_path) -> None:
    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "examples", tmp_path / "examples", symlinks=True)
    done = run_cli("verify", "--config", str(tmp_path / "examples" / "demo.yaml"), "--no-upload")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1].split()[1:5] == ["6", "1", "2", "1"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to drop the capability to read every file",
)
def test_unreadable_file_is_different_with_its_reason(tmp_path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"open": "o", "closed": "c", "locked/inner": "i"})
    write_tree(tmp_path / "root" / str(src).lstrip("/"),
               {"open": "o", "closed": "c", "locked/inner": "i"})  # fmt: skip
    os.chmod(src / "closed", 0)
    os.chmod(src / "locked", 0)
    try:
        # Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH obeys file modes.
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             *smsagent_command(), "verify", "--dir", str(src), "--target", str(tmp_path / "root"),
             "--json", "--no-upload", "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.chmod(src / "locked", 0o755)
    assert done.returncode == 1, done.stderr
    detail = json.loads(done.stdout)["directories"][0]
    assert detail["num_error_files"] == 2 and detail["num_different_files"] == 2
    assert detail["num_total_files"] == 3  # open, closed, and the unlistable directory
    reasons = " ".join(detail["error_samples"])
    assert "closed: source: cannot open: Permission denied" in reasons
    assert "locked: source: cannot list: Permission denied" in reasons


def test_progress_only_on_a_terminal(pair, tmp_path) -> None:
    import pty

    src, root = pair
    args = [*smsagent_command(), "verify", "--dir", str(src), "--target", str(root),
            "--no-upload", "--state-dir", str(tmp_path / "st")]  # fmt: skip
    piped = subprocess.run(args, capture_output=True, timeout=60)
    assert b"\x1b[K" not in piped.stderr and b"files," not in piped.stderr
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(args, stdout=follower, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 1
    assert b"\r\x1b[K" in done.stderr  # the line is drawn, then cleared at the end
    assert b"files," in done.stderr and b"hashed" in done.stderr


# --- uploading: verify, flush and status against the emulator ---

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
    kill_once_posting(emu, proc, timeout=30)
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
