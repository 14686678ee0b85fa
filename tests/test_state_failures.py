"""A failing state directory, report file or upload never throws away what was measured:
real full filesystems, read-only bind mounts, corrupt and locked databases, names that are
not UTF-8, rejected results. Every case ends in one-line messages and the right exit
status, and no output of this module holds a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent import cli
from agent.config import parse_config
from agent.names import counted
from agent.sms import outbox
from agent.sms.emulator import Emulator
from agent.verify.cancel import Cancel
from agent.verify.helper import RACY_SECONDS
from agent.verify.runner import run_verification

from .conftest import smsagent_command, write_tree

TOKEN = "STATE-T0KEN-0123"
OUTPUTS: list[str] = []  # every stdout and stderr of this module, checked for tracebacks
needs_mount = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="needs root to mount a tmpfs or a read-only bind",
)
SPEC = {"same": "x", "d/changed": "old", "d/only-source": "s"}
TARGET_SPEC = {"same": "x", "d/changed": "new", "d/more": "m"}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(task_ids=["T"], token=TOKEN) as server:
        yield server


def pair(tmp_path: Path, name: str = "src") -> tuple[Path, Path]:
    """A source directory and the target root that holds its (different) copy."""
    src, root = tmp_path / name, tmp_path / "root"
    write_tree(src, SPEC)
    write_tree(root / str(src).lstrip("/"), TARGET_SPEC)
    return src, root


def verify(*args: str, state: Path, cwd: Path, endpoint: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """`smsagent verify ARGS` as the installed command; output kept as bytes."""
    argv = [*smsagent_command(), "verify", "--state-dir", str(state), *args]
    if endpoint:
        argv += ["--endpoint", endpoint, "--task-id", "T"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    environ["SMSAGENT_TOKEN"] = TOKEN
    done = subprocess.run(argv, capture_output=True, env=environ, cwd=cwd, timeout=timeout)
    record(done.stdout, done.stderr)
    return done


def record(*outputs: bytes | str) -> None:
    for out in outputs:
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        OUTPUTS.append(text)
        assert "Traceback" not in text, text


def document(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    return json.loads(done.stdout.decode("utf-8"))  # strict: --json is always valid UTF-8


def counts_of(doc: dict[str, Any]) -> list[int]:
    d = doc["directories"][0]
    keys = ("num_total_files", "num_different_files", "num_target_miss_files",
            "num_target_more_files")  # fmt: skip
    return [d[k] for k in keys]


EXPECTED = [3, 1, 1, 1]  # total, different, missing, more of SPEC against TARGET_SPEC


# --- names that are not UTF-8 or hold a newline ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"data\xff", "data\\xff"),
        (b"new\nline", "new\\nline"),
        (b"caf\xc3\xa9\xfe", "caf\xe9\\xfe"),
    ],
)
def test_a_directory_name_that_is_not_plain_text_is_escaped_everywhere(
    tmp_path: Path, emu: Emulator, name: bytes, shown: str
) -> None:
    src = os.fsencode(tmp_path) + b"/" + name
    root = tmp_path / "root"
    write_tree(src, SPEC)
    write_tree(os.fsencode(root) + src, TARGET_SPEC)
    dir_check = f"{tmp_path}/{shown}"
    state = tmp_path / "state"
    # With no endpoint: only printed (and remembered for status).
    done = verify("--dir", os.fsdecode(src), "--target", str(root), "--json", state=state,
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    doc = document(done)
    assert doc["directories"][0]["dir_check"] == dir_check and counts_of(doc) == EXPECTED
    # Posted to SMS: the same escaped text, as the table and report show it.
    report = tmp_path / "report"
    done = verify("--dir", os.fsdecode(src), "--target", str(root), "--report", str(report),
                  state=state, cwd=tmp_path, endpoint=emu.url)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert emu.received[-1][0]["dir_check"] == dir_check
    assert done.stdout.decode("utf-8").splitlines()[1].startswith(dir_check)
    lines = report.read_text(encoding="utf-8").splitlines()
    assert f"* {dir_check}/d/changed" in lines
    status = subprocess.run([*smsagent_command(), "status", "--state-dir", str(state)],
                            capture_output=True, timeout=60)  # fmt: skip
    record(status.stdout, status.stderr)
    assert status.returncode == 0 and dir_check.encode() in status.stdout


def test_not_verified_lines_escape_the_path(tmp_path: Path) -> None:
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone\nnewline\xff")
    done = verify("--dir", str(missing), "--target", str(tmp_path / "root"), "--no-upload",
                  state=tmp_path / "state", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    text = (done.stdout + done.stderr).decode("utf-8")
    lines = [line for line in text.splitlines() if "NOT VERIFIED" in line]
    assert lines and all("gone\\nnewline\\udcff" not in line for line in lines)
    assert any(f"{tmp_path}/gone\\nnewline\\xff: NOT VERIFIED" in line for line in lines)
    assert "\nnewline" not in text


# --- concurrent runs on one state directory ------------------------------------------------


def big_pair(tmp_path: Path) -> tuple[Path, Path]:
    src, root = tmp_path / "src", tmp_path / "root"
    spec = {f"d{i}/f{j}": "x" * (j * 31) for i in range(40) for j in range(40)}
    write_tree(src, spec)
    write_tree(root / str(src).lstrip("/"), spec)
    past = time.time() - 3600  # old enough for the cache to keep
    for path in [*src.rglob("f*"), *root.rglob("f*")]:
        os.utime(path, (past, past))
    return src, root


def test_concurrent_runs_on_one_state_directory_all_finish_right(tmp_path: Path) -> None:
    src, root = big_pair(tmp_path)
    state = tmp_path / "state"
    argv = [*smsagent_command(), "verify", "--dir", str(src), "--target", str(root),
            "--state-dir", str(state), "--no-upload", "--json"]  # fmt: skip
    for _round in ("cold cache", "warm cache"):
        runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(3)]  # fmt: skip
        for run in runs:
            out, err = run.communicate(timeout=120)
            record(out, err)
            assert run.returncode == 0, err
            detail = json.loads(out)["directories"][0]
            assert detail["num_total_files"] == 1600 and detail["num_identical_files"] == 1600


def test_a_verify_beside_the_daemon_on_one_state_directory(tmp_path: Path, emu: Emulator) -> None:
    src, root = big_pair(tmp_path)
    state = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({
        "endpoint": emu.url, "task_id": "T", "state_dir": str(state), "auth": {"token": TOKEN},
        "target": str(root), "directories": [{"path": str(src)}],
        "schedule": {"interval": 1, "jitter": 0},
    }))  # fmt: skip
    config.chmod(0o600)
    daemon = subprocess.Popen([*smsagent_command(), "run", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(3):
            done = verify("--config", str(config), "--json", state=state, cwd=tmp_path)
            # 3 when the daemon queued a newer result for the directory meanwhile.
            assert done.returncode in (0, 3), done.stderr
            assert document(done)["directories"][0]["num_identical_files"] == 1600
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=60)
        record(out, err)
    assert daemon.returncode == 0
    assert emu.received  # the daemon delivered too


# --- the report file -----------------------------------------------------------------------


def test_a_report_to_dev_full_is_one_line_and_the_results_still_go(
    tmp_path: Path, emu: Emulator
) -> None:
    src, root = pair(tmp_path)
    done = verify("--dir", str(src), "--target", str(root), "--report", "/dev/full",
                  state=tmp_path / "state", cwd=tmp_path, endpoint=emu.url)  # fmt: skip
    errors = [line for line in done.stderr.decode().splitlines() if "Report error" in line]
    assert errors == [
        "smsagent: Report error: --report /dev/full: cannot write: No space left on device; "
        "the report is incomplete (the table, --json and the upload are not)"
    ]
    assert done.stdout.decode().splitlines()[1].split()[1:5] == ["3", "1", "1", "1"]
    assert emu.received and emu.received[0][0]["num_total_files"] == 3
    assert done.returncode == 2


@contextlib.contextmanager
def full_tmpfs(where: Path, keep_free: int = 0) -> Iterator[Path]:
    """A 1 MiB tmpfs at `where`, filled up to `keep_free` bytes; always unmounted."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        filler = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(filler, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass  # full
        finally:
            os.close(filler)
        if keep_free:
            os.truncate(where / "filler", max(0, os.path.getsize(where / "filler") - keep_free))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_mount
def test_a_report_on_a_filesystem_that_fills_up_mid_run(tmp_path: Path, emu: Emulator) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    spec = {f"d{i}/a-rather-long-file-name-{j:04d}": "x" for i in range(20) for j in range(200)}
    write_tree(src, spec)
    write_tree(root / str(src).lstrip("/"), {})
    with full_tmpfs(tmp_path / "mnt", keep_free=64 << 10) as mnt:
        done = verify("--dir", str(src), "--target", str(root), "--report", str(mnt / "report"),
                      "--json", state=tmp_path / "state", cwd=tmp_path,
                      endpoint=emu.url)  # fmt: skip
        assert 0 < (mnt / "report").stat().st_size <= 64 << 10
    assert b"Report error" in done.stderr and b"No space left on device" in done.stderr
    assert document(done)["directories"][0]["num_target_miss_files"] == 4000
    assert emu.received and done.returncode == 2


def test_a_reader_that_stops_reading_the_report_is_no_error(tmp_path: Path) -> None:
    src, root = pair(tmp_path)
    write_tree(src, {f"many/f{i}": "x" for i in range(20000)})
    argv = [*smsagent_command(), "verify", "--dir", str(src), "--target", str(root), "--report",
            "-", "--no-upload", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # as `| head -1`
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    record(first, err)
    assert first[:2] in (b"= ", b"* ", b"+ ", b"- ")
    assert process.returncode == 1  # differences found, as without the pipe
    assert b"Broken pipe" not in err and b"Exception ignored" not in err
    assert b"DIRECTORY" in err  # the table still goes to stderr


# --- the hash cache ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["UPDATE digest_rows SET entries = 'text'", "UPDATE digest_rows SET dev = 'x'",
     "UPDATE digest_rows SET entries = x'0102'", "garbage file"],
)  # fmt: skip
def test_a_damaged_hash_cache_is_dropped_with_a_warning(tmp_path: Path, damage: str) -> None:
    src, root = big_pair(tmp_path)
    state = tmp_path / "state"
    args = ("--dir", str(src), "--target", str(root), "--no-upload", "--json")
    time.sleep(RACY_SECONDS)  # files changed (ctime) this recently are not cached
    assert verify(*args, state=state, cwd=tmp_path).returncode == 0
    db = state / "hashcache.db"
    if damage == "garbage file":
        for leftover in state.glob("hashcache.db-*"):
            leftover.unlink()
        db.write_bytes(b"this is not a database" * 100)
    else:
        with contextlib.closing(sqlite3.connect(db)) as connection:
            connection.execute(damage)
            connection.commit()
    done = verify(*args, state=state, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert document(done)["directories"][0]["num_identical_files"] == 1600
    assert b"WARNING" in done.stderr and b"dropped" in done.stderr
    again = verify(*args, state=state, cwd=tmp_path)  # rebuilt: warm, and quiet, again
    assert again.returncode == 0 and b"WARNING" not in again.stderr
    assert document(again)["directories"][0]["cache_hits"] > 0


# --- the outbox ----------------------------------------------------------------------------


def assert_results_kept(done: subprocess.CompletedProcess[bytes], why: bytes) -> None:
    """The table or JSON is there, the message says the results were not queued, exit 3."""
    assert done.returncode == 3, done.stderr
    doc = document(done)
    assert counts_of(doc) == EXPECTED
    assert "could not be queued" in doc["upload"]["message"]
    assert why in doc["upload"]["message"].encode()


@needs_mount
def test_a_full_state_filesystem_still_shows_the_results(tmp_path: Path, emu: Emulator) -> None:
    src, root = pair(tmp_path)
    with full_tmpfs(tmp_path / "state") as state:
        done = verify("--dir", str(src), "--target", str(root), "--json", state=state,
                      cwd=tmp_path, endpoint=emu.url)  # fmt: skip
        table = verify("--dir", str(src), "--target", str(root), state=state, cwd=tmp_path,
                       endpoint=emu.url)  # fmt: skip
    assert_results_kept(done, b"full")
    assert table.returncode == 3 and table.stdout.decode().splitlines()[1].split()[1] == "3"
    assert b"could not be queued" in table.stderr
    assert emu.received == []


@contextlib.contextmanager
def read_only_bind(source: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(where)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_mount
def test_a_read_only_state_directory_still_shows_results_and_status(
    tmp_path: Path, emu: Emulator
) -> None:
    src, root = pair(tmp_path)
    state = tmp_path / "state"
    args = ("--dir", str(src), "--target", str(root), "--json")
    first = verify(*args, state=state, cwd=tmp_path, endpoint=emu.url)
    assert first.returncode == 1, first.stderr
    with read_only_bind(state, tmp_path / "ro") as ro:
        done = verify(*args, state=ro, cwd=tmp_path, endpoint=emu.url)
        status = subprocess.run([*smsagent_command(), "status", "--state-dir", str(ro), "--json"],
                                capture_output=True, timeout=60)  # fmt: skip
        record(status.stdout, status.stderr)
    assert_results_kept(done, b"Read-only file system")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)["directories"]
    assert [d["dir_check"] for d in shown] == [str(src)] and shown[0]["state"] == "delivered"


def test_a_corrupt_outbox_still_shows_the_results(tmp_path: Path, emu: Emulator) -> None:
    src, root = pair(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.db").write_bytes(b"not sqlite at all " * 1000)
    done = verify("--dir", str(src), "--target", str(root), "--json", state=state, cwd=tmp_path,
                  endpoint=emu.url)  # fmt: skip
    assert_results_kept(done, b"not a database")
    assert (state / "agent.db").read_bytes().startswith(b"not sqlite")  # never deleted


@pytest.mark.parametrize("held_for", [1.0, None])
def test_a_locked_outbox(tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch,
                         held_for: float | None) -> None:  # fmt: skip
    """Another process holds the outbox's write lock: briefly (the run waits and queues), or
    longer than the wait (the results are shown, not queued, exit 3)."""
    src, root = pair(tmp_path)
    state = tmp_path / "state"
    monkeypatch.setattr(outbox, "BUSY_TIMEOUT", 3.0)
    outbox.Outbox(state).close()  # the database exists, in WAL mode
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
         "time.sleep(float(sys.argv[2]))\n", str(state / "agent.db"), str(held_for or 30)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        monkeypatch.setenv("SMSAGENT_TOKEN", TOKEN)
        result = CliRunner().invoke(cli.main, [
            "verify", "--dir", str(src), "--target", str(root), "--json", "--state-dir",
            str(state), "--endpoint", emu.url, "--task-id", "T"])  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    record(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    doc = json.loads(result.stdout)
    assert counts_of(doc) == EXPECTED
    if held_for:
        assert result.exit_code == 1 and doc["upload"]["delivered"] == 1
    else:
        assert result.exit_code == 3 and "database is locked" in doc["upload"]["message"]


# --- SMS rejects, half-configured uploads, bad options --------------------------------------


@pytest.mark.parametrize("case", ["unknown task", "wrong path prefix", "bad request"])
def test_a_result_sms_rejects_for_good_does_not_exit_0(
    tmp_path: Path, emu: Emulator, case: str
) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    write_tree(src, {"f": "same"})
    write_tree(root / str(src).lstrip("/"), {"f": "same"})
    endpoint, task = emu.url, "T"
    if case == "unknown task":
        task = "NO-SUCH-TASK"
    elif case == "wrong path prefix":
        endpoint += "/wrong/prefix"
    else:
        emu.fail_next(1, status=400, error_code="SMS.9999")
    argv = [*smsagent_command(), "verify", "--dir", str(src), "--target", str(root),
            "--state-dir", str(tmp_path / "state"), "--endpoint", endpoint, "--task-id", task]  # fmt: skip
    environ = {**os.environ, "SMSAGENT_TOKEN": TOKEN}
    done = subprocess.run(argv, capture_output=True, env=environ, timeout=60)
    record(done.stdout, done.stderr)
    assert done.returncode == 3, done.stderr
    assert b"dead letters" in done.stderr
    flushed = subprocess.run([*smsagent_command(), "flush", "--state-dir",
                              str(tmp_path / "state")], capture_output=True, env=environ,
                             timeout=60)  # fmt: skip
    record(flushed.stdout, flushed.stderr)
    assert flushed.returncode == 0  # nothing left to deliver: the dead letter was reported


def test_an_endpoint_without_a_task_id_is_a_configuration_error(tmp_path: Path) -> None:
    src, root = pair(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"endpoint": "http://127.0.0.1:9", "state_dir": str(tmp_path)}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    for argv in (["verify", "--config", str(config), "--dir", str(src), "--target", str(root)],
                 ["config", "check", "--config", str(config)]):  # fmt: skip
        done = subprocess.run([*smsagent_command(), *argv], capture_output=True, text=True,
                              env=environ, timeout=60)  # fmt: skip
        record(done.stdout, done.stderr)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"smsagent: Config error: {config}: task_id: endpoint is set")
    # With --no-upload the run needs no task, and with no endpoint at all it only prints.
    done = verify("--config", str(config), "--dir", str(src), "--target", str(root),
                  "--no-upload", state=tmp_path / "s1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    done = verify("--dir", str(src), "--target", str(root), state=tmp_path / "s2", cwd=tmp_path)
    assert done.returncode == 1 and b"no SMS endpoint is configured" in done.stderr


@pytest.mark.parametrize("dirs", [[""], ["/tmp", ""]])
def test_an_empty_dir_is_a_usage_error(tmp_path: Path, dirs: list[str]) -> None:
    args = [arg for d in dirs for arg in ("--dir", d)]
    done = verify(*args, "--target", str(tmp_path), state=tmp_path / "s", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == b"smsagent: Config error: --dir: an empty path names no directory\n"


# --- a requested stop --------------------------------------------------------------------


def test_a_requested_stop_is_logged_as_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, root = big_pair(tmp_path)
    config = parse_config({"directories": [{"path": str(src)}], "target": str(root),
                           "state_dir": str(tmp_path / "state")})  # fmt: skip
    stop = Cancel()
    with caplog.at_level(logging.INFO):
        (result,) = run_verification(config, config.directories, use_cache=False, stop=stop,
                                     progress=lambda *_: stop.set())  # fmt: skip
    assert result.error and "interrupted" in result.error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stopped on request" in r.getMessage() for r in caplog.records)
    assert counted(1, "directory", "directories") == "1 directory"
    assert counted(2, "directory", "directories") == "2 directories"


def test_no_output_of_this_module_holds_a_traceback() -> None:
    assert OUTPUTS, "the module's runs recorded no output"
    for text in OUTPUTS:
        assert "Traceback" not in text, text
