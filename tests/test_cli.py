"""The installed `smsagent` command as a user runs it: output, exit codes, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import smsagent_command, write_tree

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
    run_cli("verify", "--dir", str(src), "--target", str(root), "--state-dir", str(state))
    done = run_cli("cache", "clear", "--state-dir", str(state))
    assert done.returncode == 0 and "Cleared" in done.stdout


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
