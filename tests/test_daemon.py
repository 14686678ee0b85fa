"""`smsagent run` as a real subprocess of the installed command, against the SMS emulator;
and the control loop in-process, with a stand-in for the engine held open by the test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import ScheduleConfig, parse_config
from agent.model import DirCounts, DirResult
from agent.service.daemon import Daemon
from agent.service.notify import Notifier
from agent.sms.emulator import Emulator
from agent.sms.outbox import Outbox

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def smsagent() -> str:
    beside = Path(sys.executable).parent / "smsagent"
    found = str(beside) if beside.exists() else shutil.which("smsagent")
    if not found:
        pytest.skip("the smsagent command is not installed (pip install -e .)")
    return found


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Agent:
    """One `smsagent run` process with its config, trees and log in tmp_path."""

    def __init__(self, tmp_path: Path, endpoint: str, **overrides: Any):
        self.root = tmp_path
        self.src = tmp_path / "src"
        self.dst = tmp_path / "dst"
        for tree in (self.src, self.dst):
            (tree / "sub").mkdir(parents=True, exist_ok=True)
            (tree / "cache").mkdir(exist_ok=True)
            (tree / "sub" / "a.txt").write_text("same")
            (tree / "b.txt").write_text("same too")
        self.state = tmp_path / "state"
        (tmp_path / "token").write_text("TOKEN\n")
        (tmp_path / "token").chmod(0o600)
        self.settings: dict[str, Any] = {
            "endpoint": endpoint,
            "task_id": "T",
            "state_dir": str(self.state),
            "directories": [{"path": str(self.src), "target": str(self.dst)}],
            "exclude": ["cache/"],
            "auth": {"token_file": str(tmp_path / "token")},
            "schedule": {"interval": "2s", "jitter": 0},
            "upload": {"backoff_max": "0.5s"},
        }
        self.settings.update(overrides)
        self.config = tmp_path / "agent.yaml"
        self.write_config()
        self.log_path = tmp_path / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, text: str | None = None) -> None:
        self.config.write_text(text if text is not None else yaml.safe_dump(self.settings))

    def start(self, env: dict[str, str] | None = None, *args: str) -> Agent:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [smsagent(), "run", "--config", str(self.config), *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; the exit code and how long it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(token="TOKEN") as emu:
        yield emu


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def results_for(emu: Emulator, path: Path) -> list[dict[str, Any]]:
    return [e for batch in emu.received for e in batch if e["dir_check"] == str(path)]


def test_results_arrive_at_start_and_on_every_interval(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, emulator.url)
    agents.append(agent.start())
    first = wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    assert first[0] == {
        "dir_check": str(agent.src),
        "num_total_files": 2,
        "num_different_files": 0,
        "num_target_miss_files": 0,
        "num_target_more_files": 0,
    }
    wait_for(lambda: len(results_for(emulator, agent.src)) >= 3, 10, "two more intervals")
    code, took = agent.terminate()
    assert code == 0 and took < 10, agent.log()
    assert "verified" in agent.log() and "Traceback" not in agent.log()


def test_a_change_is_verified_again_after_debounce_but_not_an_excluded_one(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    # The state dir sits inside the watched tree: its own writes must not trigger a loop.
    agent = Agent(
        tmp_path,
        emulator.url,
        schedule={"interval": "1h", "jitter": 0, "watch": True, "debounce": "0.5s"},
    )
    agent.settings["state_dir"] = str(agent.src / ".smsagent-state")
    agent.write_config()
    agents.append(agent.start())
    wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    wait_for(lambda: "watching 1 directory for changes" in agent.log(), 5, "the watcher")

    (agent.src / "cache" / "scratch").write_text("excluded")
    (agent.src / "sub" / "cache").mkdir()
    (agent.src / "sub" / "cache" / "deeper").write_text("excluded too")
    time.sleep(0.5 + 2.5)
    assert len(results_for(emulator, agent.src)) == 1, agent.log()

    changed_at = time.monotonic()
    (agent.src / "sub" / "a.txt").write_text("changed on the source")
    second = wait_for(
        lambda: results_for(emulator, agent.src)[1:], 0.5 + 5, "a result after the change"
    )
    assert time.monotonic() - changed_at >= 0.5
    assert second[0]["num_different_files"] == 1
    code, _ = agent.terminate()
    assert code == 0, agent.log()


def test_sigterm_exits_promptly_and_keeps_the_outbox(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    emulator.fail_next(1000, status=503)
    agent = Agent(tmp_path, emulator.url, schedule={"interval": "1h", "jitter": 0})
    agents.append(agent.start())
    wait_for(lambda: emulator.requests, 10, "a first upload attempt")
    code, took = agent.terminate()
    assert code == 0 and took < 10, agent.log()
    with Outbox(agent.state) as box:
        assert [p.entry.dir_check for p in box.pending()] == [str(agent.src)]


def test_sigterm_stops_a_verification_in_progress(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, emulator.url, limits={"read_mb_per_s": 1})
    big = os.urandom(1 << 20) * 40  # 40 MB at 1 MB/s: a run of about a minute per side
    (agent.src / "big.bin").write_bytes(big)
    (agent.dst / "big.bin").write_bytes(big)
    agents.append(agent.start())
    wait_for(lambda: "1 directory, every" in agent.log(), 10, "start-up")
    time.sleep(1.5)
    code, took = agent.terminate()
    assert code == 0 and took < 10, agent.log()
    assert emulator.received == []
    assert "queueing the 0 directories verified before the stop" in agent.log()
    # A requested stop is no fault: INFO, not ERROR.
    stopped = [line for line in agent.log().splitlines() if "not verified" in line]
    assert stopped and all("ERROR" not in line and "stopped on request" in line
                           for line in stopped), stopped  # fmt: skip


def helper_pids(pid: int) -> set[int]:
    """The helper processes `pid` has started (its children running agent/verify/helper.py)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children = [int(x) for x in fh.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as fh:
                    if b"helper" in fh.read():
                        found.add(child)
            except FileNotFoundError:
                continue
    return found


def alive(pids: set[int]) -> set[int]:
    def running(p: int) -> bool:
        try:
            with open(f"/proc/{p}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    return {p for p in pids if running(p)}


def test_sighup_mid_scan_cancels_the_run_and_verifies_again_on_the_new_config(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, emulator.url, limits={"read_mb_per_s": 1},
                  schedule={"interval": "1h", "jitter": 0})  # fmt: skip
    big = os.urandom(1 << 20) * 40  # 40 MB at 1 MB/s: a run of about a minute per side
    (agent.src / "big.bin").write_bytes(big)
    (agent.dst / "big.bin").write_bytes(big[:-1] + b"X")  # differs, but only in its last byte
    agents.append(agent.start())
    assert agent.proc is not None
    helpers = wait_for(lambda: helper_pids(agent.proc.pid), 10, "the helpers")
    time.sleep(1.5)  # hashing big.bin, slowly
    helpers |= helper_pids(agent.proc.pid)
    assert len(helpers) >= 2, helpers  # a source and a target side
    agent.settings["exclude"] = ["cache/", "big.bin"]
    agent.write_config()
    hup = time.monotonic()
    agent.signal(signal.SIGHUP)
    wait_for(lambda: not alive(helpers), 5, "the cut-short run's helpers to end")
    assert time.monotonic() - hup < 5
    got = wait_for(lambda: results_for(emulator, agent.src), 10, "the new run's result")
    # The first result SMS got is the new run's, without big.bin: nothing of the run cut short
    # (which had not read big.bin to its end) was posted, and none was queued either.
    assert got[0]["num_total_files"] == 2 and got[0]["num_different_files"] == 0, got
    log = agent.log()
    assert "SIGHUP: the verification in progress is cancelled; its 1 directory" in log, log
    assert "reloading: queueing the 0 directories verified before the reload" in log, log
    assert log.count("verified in") == 1, log  # only the new run finished
    code, _ = agent.terminate()
    assert code == 0
    with Outbox(agent.state) as box:
        assert [r.entry.num_total_files for r in box.last_results() if r.entry] == [2]
        assert box.pending() == []


def test_sigkill_then_restart_delivers_everything(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    # Nothing listens on this port: the first process can only queue.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    agent = Agent(tmp_path, f"http://127.0.0.1:{dead_port}",
                  schedule={"interval": "1h", "jitter": 0})  # fmt: skip
    agents.append(agent.start())
    wait_for(lambda: "upload failed" in agent.log(), 10, "a failed upload")
    agent.kill()  # SIGKILL: no chance to clean up
    with Outbox(agent.state) as box:
        assert len(box.pending()) == 1

    # The restart may not verify (outside its window), so what arrives came from the outbox.
    far = time.localtime(time.time() + 12 * 3600)
    window = f"{far.tm_hour:02d}:00-{far.tm_hour:02d}:01"
    agent.settings.update(endpoint=emulator.url,
                          schedule={"interval": "1h", "jitter": 0, "window": window})  # fmt: skip
    agent.write_config()
    agent.start()
    got = wait_for(lambda: results_for(emulator, agent.src), 10, "the queued result")
    assert got[0]["num_total_files"] == 2

    def outbox_empty() -> bool:  # SMS answers before the outbox records the delivery
        with Outbox(agent.state) as box:
            return box.pending() == []

    wait_for(outbox_empty, 5, "the outbox to record the delivery")
    code, _ = agent.terminate()
    assert code == 0
    assert agent.log().count("verified in") == 1, "the restart must not have verified"


def test_sighup_with_a_broken_config_keeps_the_old_one(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, emulator.url)
    agents.append(agent.start())
    wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    agent.write_config("schedule: {interval: [not a duration\n")
    agent.signal(signal.SIGHUP)
    wait_for(lambda: "previous one stays in force" in agent.log(), 5, "the rejection")
    before = len(results_for(emulator, agent.src))
    wait_for(lambda: len(results_for(emulator, agent.src)) > before, 10, "the old schedule")
    assert agent.proc is not None and agent.proc.poll() is None
    code, _ = agent.terminate()
    assert code == 0


def test_editing_the_config_file_reloads_it(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, emulator.url, schedule={"interval": "1h", "jitter": 0})
    agents.append(agent.start())
    wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    extra = tmp_path / "extra"
    (extra / "x").mkdir(parents=True)
    agent.settings["directories"].append({"path": str(extra), "target": str(agent.dst / "sub")})
    agent.write_config()
    got = wait_for(lambda: results_for(emulator, extra), 10, "the added directory's result")
    assert got[0]["num_target_more_files"] == 1  # a.txt is only on that target
    assert "the config file changed: configuration reloaded" in agent.log()
    code, _ = agent.terminate()
    assert code == 0


def test_notify_socket_gets_ready_status_watchdog_and_stopping(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain() -> list[str]:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except socket.timeout:  # TimeoutError only from Python 3.10
            return messages

    try:
        agent = Agent(tmp_path, emulator.url)
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
        agents.append(agent.start(env))
        wait_for(lambda: any("verified" in m for m in drain()), 10, "a STATUS after a run")
        wait_for(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 3, 5, "watchdog pings")
        code, _ = agent.terminate()
        drain()
    finally:
        sock.close()
    assert code == 0
    assert messages[0].startswith("READY=1")
    assert any(m.startswith("STATUS=last run") and "1 consistent" in m for m in messages)
    assert "STOPPING=1" in messages[-1]
    assert messages.index(next(m for m in messages if "STOPPING=1" in m)) > 0


def test_a_config_without_directories_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    proc = subprocess.run(
        [smsagent(), "run", "--config", str(config)], capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 2
    assert "Config error" in proc.stderr and "no directories" in proc.stderr


def test_json_logs_are_one_object_per_line(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    import json

    agent = Agent(tmp_path, emulator.url)
    agents.append(agent.start(None, "--log-format", "json"))
    wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    agent.terminate()
    records = [json.loads(line) for line in agent.log().splitlines()]
    summary = next(r for r in records if r.get("queued") == 1)
    assert summary["level"] == "info"
    assert summary["results"][0]["directory"] == str(agent.src)
    assert summary["results"][0]["total"] == 2 and summary["results"][0]["error"] is None
    assert "TOKEN" not in agent.log()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) is not installed")
def test_running_out_of_inotify_watches_falls_back_to_the_interval(
    tmp_path: Path, emulator: Emulator, agents: list[Agent]
) -> None:
    agent = Agent(
        tmp_path, emulator.url, schedule={"interval": "2s", "jitter": 0, "watch": True,
                                          "debounce": "0.5s"}
    )  # fmt: skip
    for i in range(40):
        (agent.src / "many" / str(i)).mkdir(parents=True)
        (agent.dst / "many" / str(i)).mkdir(parents=True)
    # A user namespace has its own watch limit: tiny here, the host's stays as it is.
    script = 'echo 20 > /proc/sys/user/max_inotify_watches && exec "$@"'
    with open(agent.log_path, "ab") as log:
        agent.proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh",
             smsagent(), "run", "--config", str(agent.config)],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    agents.append(agent)
    try:
        wait_for(lambda: len(results_for(emulator, agent.src)) >= 2, 15, "interval results")
    except AssertionError:
        if "Operation not permitted" in agent.log() or "unshare" in agent.log():
            pytest.skip(f"user namespaces are not available: {agent.log()[-300:]}")
        raise
    code, _ = agent.terminate()
    assert code == 0, agent.log()
    assert agent.log().count("WARNING agent.service.watch") == 1, agent.log()
    assert "max_user_watches is reached" in agent.log()
    assert "Traceback" not in agent.log()


def test_an_idle_daemon_sleeps(tmp_path: Path, emulator: Emulator, agents: list[Agent]) -> None:
    """Between runs the control loop must block, not spin: measure its CPU time."""
    agent = Agent(tmp_path, emulator.url, schedule={"interval": "1h", "jitter": 0})
    agents.append(agent.start())
    wait_for(lambda: results_for(emulator, agent.src), 10, "the first result")
    assert agent.proc is not None
    stat = Path(f"/proc/{agent.proc.pid}/stat")

    def cpu_ticks() -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    time.sleep(0.5)
    before = cpu_ticks()
    time.sleep(2)
    used = (cpu_ticks() - before) / os.sysconf("SC_CLK_TCK")
    assert used < 0.2, f"{used:.2f}s of CPU in 2s of idling"
    code, _ = agent.terminate()
    assert code == 0


# --- the control loop in-process ---


class GatedEngine:
    """Stands in for run_verification: each run waits until the test lets it finish (or the
    run is stopped), and records overlaps."""

    def __init__(self) -> None:
        self.running = 0
        self.overlaps = 0
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.started = threading.Semaphore(0)
        self.finish = threading.Semaphore(0)

    def __call__(self, config, directories, *, stop=None, **_: object) -> list[DirResult]:
        with self.lock:
            self.running += 1
            self.overlaps += self.running > 1
            self.calls.append([d.path for d in directories])
        self.started.release()
        try:
            assert stop is not None
            while not self.finish.acquire(timeout=0.01) and not stop.is_set():
                pass
            return [DirResult(d.path, "/t" + d.path, DirCounts(total=1, identical=1), 0.0)
                    for d in directories]  # fmt: skip
        finally:
            with self.lock:
                self.running -= 1


def test_a_run_longer_than_the_interval_is_never_started_twice(tmp_path: Path) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "target": "/t",
            "directories": ["/a", "/b"],
        }
    )
    # Shorter than the file allows (1 s), to keep the test quick.
    config = replace(config, schedule=ScheduleConfig(interval=0.1, jitter=0))
    engine = GatedEngine()
    daemon = Daemon(config, None, verify=engine, notifier=Notifier(None), environ={})
    runner = threading.Thread(target=daemon.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        for run in range(1, 4):
            assert engine.started.acquire(timeout=10), f"run {run} never started"
            # Five intervals pass while this run is held: none of them starts another.
            time.sleep(0.5)
            assert len(engine.calls) == run and engine.running == 1
            engine.finish.release()
        assert engine.started.acquire(timeout=10), "the run after the third never started"
    finally:
        daemon.request_stop()  # the fourth run ends through its stop handle
        runner.join(10)
    assert not runner.is_alive()
    assert engine.overlaps == 0
    assert engine.calls == [["/a", "/b"]] * 4
