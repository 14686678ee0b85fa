"""The task drives the agent, end to end: `smsagent-emulator` serving a task's settings, and
`smsagent verify` / `smsagent run` with a config that names only endpoint, task_id, token and
`directories: from_task`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .sshd import Sshd, sshd_server  # noqa: F401 - the `sshd` fixture

EMULATOR = shutil.which("smsagent-emulator", path=os.path.dirname(sys.executable))


class Task:
    """A running `smsagent-emulator` whose task settings live in a JSON file it re-reads."""

    def __init__(self, tmp_path: Path, settings: dict[str, str], **addresses: str):
        self.file = tmp_path / "task.json"
        self.addresses = addresses
        self.write(settings)
        assert EMULATOR, "smsagent-emulator is not installed"
        self.proc = subprocess.Popen(
            [EMULATOR, "--port", "0", "--task-id", "T", "--token", "TOKEN",
             "--settings-file", str(self.file)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().split()[4]

    def write(self, settings: dict[str, str]) -> None:
        data = {"configurations": settings, **self.addresses}
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.file)

    def results(self) -> dict[str, dict[str, int]]:
        import urllib.request

        request = urllib.request.Request(self.url + "/v3/tasks/T/consistency-result")
        request.add_header("X-Auth-Token", "TOKEN")
        with urllib.request.urlopen(request, timeout=5) as response:
            items = [json.loads(i) for i in json.loads(response.read())["result_list"]]
        return {e["dir_check"]: e for item in items for e in item["consistency_result"]}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """src/{a,b,c} and their copy under tgt/ (a mounted root): a/cache was never migrated."""
    src, tgt = tmp_path / "src", tmp_path / "tgt" / str(tmp_path / "src").lstrip("/")
    for root in (src, tgt):
        for name in ("a", "b", "c"):
            (root / name).mkdir(parents=True)
            (root / name / "f.txt").write_text(f"{name} same")
    (src / "a" / "cache").mkdir()
    (src / "a" / "cache" / "big.bin").write_text("not migrated")
    (tgt / "a" / "cache").mkdir()
    (tgt / "a" / "cache" / "leftover").write_text("only on the target")
    (src / "b" / "changed.txt").write_text("one")
    (tgt / "b" / "changed.txt").write_text("two")
    return src, tmp_path / "tgt"


@pytest.fixture
def make_task(tmp_path: Path) -> Iterator[Callable[..., Task]]:
    started: list[Task] = []

    def make(settings: dict[str, str], **addresses: str) -> Task:
        started.append(Task(tmp_path, settings, **addresses))
        return started[-1]

    yield make
    for task in started:
        task.stop()


def write_config(tmp_path: Path, url: str, **extra: Any) -> Path:
    token = tmp_path / "token"
    token.write_text("TOKEN\n")
    token.chmod(0o600)
    config = {"endpoint": url, "task_id": "T", "auth": {"token_file": str(token)},
              "directories": "from_task", "state_dir": str(tmp_path / "state"), **extra}  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_verify_takes_directories_and_excludes_from_the_task(
    tmp_path: Path, trees: tuple[Path, Path], make_task: Callable[..., Task], run_cli: Any
) -> None:
    src, tgt = trees
    task = make_task(
        {"CONSISTENCY_DIR": f"{src}/a,{src}/b", "MIGRATE_EXCLUDE_DIR": f"{src}/a/cache"}
    )
    config = write_config(tmp_path, task.url, target=str(tgt))
    done = run_cli("verify", "--config", str(config), "--json")
    assert done.returncode == 1, done.stderr  # b differs
    document = json.loads(done.stdout)
    assert [d["dir_check"] for d in document["consistency_result"]] == [f"{src}/a", f"{src}/b"]
    counts = {d["dir_check"]: d for d in document["consistency_result"]}
    # a/cache is left out on both sides: neither missing (big.bin) nor more (leftover).
    assert counts[f"{src}/a"] == {"dir_check": f"{src}/a", "num_total_files": 1,
        "num_different_files": 0, "num_target_miss_files": 0, "num_target_more_files": 0}  # fmt: skip
    assert counts[f"{src}/b"]["num_different_files"] == 1
    assert document["upload"]["delivered"] == 2
    assert set(task.results()) == {f"{src}/a", f"{src}/b"}  # c is not in the task: not verified
    shown = run_cli("config", "check", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert (
        "# from the task" in shown.stdout
        and f"{task.url}/v3/tasks/T/configuration-setting" in shown.stdout
    )
    assert f"- {src}/a/cache" in shown.stdout and "read_at:" in shown.stdout


def test_verify_fails_with_exit_2_when_the_settings_cannot_be_read(
    tmp_path: Path, trees: tuple[Path, Path], make_task: Callable[..., Task], run_cli: Any
) -> None:
    src, tgt = trees
    task = make_task({"CONSISTENCY_DIR": f"{src}/a"})
    config = write_config(tmp_path, task.url, target=str(tgt), task_id="nope")
    done = run_cli("verify", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith(
        "smsagent: Task settings error: cannot read the settings of task nope"
    )
    assert "404" in done.stderr and "Traceback" not in done.stderr
    task.write({"CONSISTENCY_DIR": "relative/dir"})
    done = run_cli("verify", "--config", str(write_config(tmp_path, task.url, target=str(tgt))))
    assert done.returncode == 2
    assert (
        "the task's CONSISTENCY_DIR is 'relative/dir': 'relative/dir' is not an absolute path"
        in done.stderr
    )
    good = write_config(tmp_path, task.url, target=str(tgt))
    task.write({"CONSISTENCY_DIR": f"{src}/c"})
    assert run_cli("verify", "--config", str(good)).returncode == 0
    task.stop()
    done = run_cli("verify", "--config", str(config))
    assert done.returncode == 2 and "cannot read the settings of task" in done.stderr
    shown = run_cli(
        "config", "check", "--config", str(write_config(tmp_path, task.url, target=str(tgt)))
    )
    assert shown.returncode == 2 and "as last read (SMS cannot be read now)" in shown.stdout


def test_run_picks_up_a_directory_added_to_the_task(
    tmp_path: Path, trees: tuple[Path, Path], make_task: Callable[..., Task]
) -> None:
    src, tgt = trees
    task = make_task({"CONSISTENCY_DIR": f"{src}/a", "MIGRATE_EXCLUDE_DIR": f"{src}/a/cache"})
    config = write_config(tmp_path, task.url, target=str(tgt),
                          schedule={"interval": "1s", "jitter": 0}, upload={"backoff_max": "0.5s"})  # fmt: skip
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            [str(Path(sys.executable).with_name("smsagent")), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        wait_for(lambda: f"{src}/a" in task.results(), 30, "the first result")
        assert task.results()[f"{src}/a"]["num_target_more_files"] == 0  # the exclude applies
        task.write(
            {"CONSISTENCY_DIR": f"{src}/a\n{src}/c", "MIGRATE_EXCLUDE_DIR": f"{src}/a/cache"}
        )
        wait_for(lambda: f"{src}/c" in task.results(), 30, "the added directory's result")
        assert agent.poll() is None  # no restart
        text = log_path.read_text()
        assert f"directories added: {src}/c" in text
        task.stop()  # SMS unreachable: the agent warns and keeps the settings it read
        wait_for(lambda: "keeping the ones read at" in log_path.read_text(), 30, "the warning")
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    stored = json.loads((tmp_path / "state" / "task-settings.json").read_text())
    assert stored["directories"] == [f"{src}/a", f"{src}/c"]


def test_the_target_host_comes_from_the_task_over_ssh(
    tmp_path: Path,
    trees: tuple[Path, Path],
    make_task: Callable[..., Task],
    sshd: Sshd,
    run_cli: Any,
) -> None:
    src, tgt = trees
    task = make_task({"CONSISTENCY_DIR": f"{src}/a;{src}/b", "SYNC_EXCLUDE_DIR": f"{src}/a/cache"},
                     migration_ip="", target_server_ip="127.0.0.1")  # fmt: skip
    target = f"ssh://{sshd.user}@{{task}}:{sshd.port}{tgt}"
    config = write_config(
        tmp_path, task.url, target=target, ssh=sshd.ssh_section(python=sys.executable)
    )
    done = run_cli("verify", "--config", str(config), "--json")
    assert done.returncode == 1, done.stderr
    counts = {d["dir_check"]: d for d in json.loads(done.stdout)["consistency_result"]}
    assert counts[f"{src}/a"]["num_target_more_files"] == 0
    assert counts[f"{src}/a"]["num_target_miss_files"] == 0
    assert counts[f"{src}/b"]["num_different_files"] == 1


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
