"""The shipped unit under a real systemd: installed as the README says, in a booted container.

One boot serves every check (the module-scoped `machine`). Inside it: the agent installed from
this checkout exactly as "Run as a service" says, the emulator and sshd on the container's
loopback, a local pair and an SSH pair of trees with root-only files, and the unit from
systemd/. Skips, saying why, where a container cannot be booted (see tests/nspawn.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import nspawn

pytestmark = pytest.mark.systemd_container

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
INSIDE = "/root/smsagent"  # where the checkout's wheel, config/ and systemd/ are put
PAIRS = {
    "/srv/local/src": "/srv/local/dst",
    "/srv/remote/src": "ssh://root@127.0.0.1/srv/remote/dst",
}
EXPECTED = {"num_total_files": 6, "num_different_files": 2,
            "num_target_miss_files": 1, "num_target_more_files": 1}  # fmt: skip
SLOW = {"/srv/slow/src": "/srv/slow/dst"}  # a 48 MB file each side: 12 s at 4 MB/s
RESTART_SEC = 30  # the unit's RestartSec=

TREES = r"""
pair() {  # $1: the pair's directory; root-only files in private/, one differing at equal size
  mkdir -p "$1/src/sub" "$1/dst/sub" "$1/src/private" "$1/dst/private"
  printf 'same\n' > "$1/src/same.txt"; cp "$1/src/same.txt" "$1/dst/same.txt"
  printf 'one\n' > "$1/src/changed.txt"; printf 'two\n' > "$1/dst/changed.txt"
  printf 'gone\n' > "$1/src/gone.txt"; printf 'extra\n' > "$1/dst/extra.txt"
  printf 'deep\n' > "$1/src/sub/deep.txt"; cp "$1/src/sub/deep.txt" "$1/dst/sub/deep.txt"
  printf 'secret-a\n' > "$1/src/private/key"; cp "$1/src/private/key" "$1/dst/private/key"
  printf 'secret-1\n' > "$1/src/private/changed"; printf 'secret-2\n' > "$1/dst/private/changed"
  chmod 0600 "$1"/*/private/*; chmod 0700 "$1"/*/private
}
pair /srv/local; pair /srv/remote
mkdir -p /srv/slow/src /srv/slow/dst
truncate -s 48M /srv/slow/src/big.bin /srv/slow/dst/big.bin
"""

SSH_KEYS = r"""
ssh-keygen -q -t ed25519 -N '' -f /etc/smsagent/id_ed25519
install -d -m 0700 /root/.ssh && cat /etc/smsagent/id_ed25519.pub >> /root/.ssh/authorized_keys
printf '127.0.0.1 %s\n' "$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" > /etc/smsagent/known_hosts
"""


def agent_yaml(
    dirs: dict[str, str] = PAIRS, *, mb_per_s: int = 0, known_hosts: bool = True, extra: str = ""
) -> str:
    lines = ["endpoint: http://127.0.0.1:8080", "task_id: T", "directories:"]
    lines += [f"  - {{path: {src}, target: '{dst}'}}" for src, dst in dirs.items()]
    options = '["UserKnownHostsFile=/etc/smsagent/known_hosts"]' if known_hosts else "[]"
    lines += ["ssh: {identity_file: /etc/smsagent/id_ed25519, options: " + options + "}",
              "schedule: {interval: 1h, jitter: 0s}", "upload: {backoff_max: 2s}",
              f"limits: {{read_mb_per_s: {mb_per_s}}}", extra]  # fmt: skip
    return "\n".join(lines) + "\n"


def readme_install() -> list[str]:
    """The commands under "Install it as a systemd service:" in the README, in order."""
    lines = README.read_text().split("Install it as a systemd service:", 1)[1].splitlines()
    block: list[str] = []
    for line in lines[1:]:
        if line.startswith("    "):
            block.append(line[4:])
        elif block:
            break
    assert any("/path/to/smsagent" in c for c in block), block
    assert "enable --now smsagent" in block[-1], block
    return block


def wheelhouse(into: Path) -> Path:
    """This checkout as a wheel, with its dependencies for bookworm's CPython 3.11.

    Built from a copy, so the checkout gets no build/ or egg-info; fetched here, with this
    machine's pip settings, since the booted container has no network."""
    source = into / "source"
    source.mkdir()
    shutil.copytree(REPO / "agent", source / "agent")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = into / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    (agent,) = wheels.glob("smsagent-*.whl")
    subprocess.run([*pip, "download", "--only-binary=:all:", "--implementation=cp",
                    "--python-version=3.11", f"--platform=manylinux2014_{os.uname().machine}",
                    "-d", str(wheels), str(agent)], check=True)  # fmt: skip
    return wheels


def ready_then_running(log: str) -> bool:
    """PID 1's debug log shows READY=1 arriving, then the unit leaving `start` for `running`."""
    ready = log.find("Got notification message from PID")
    ready = log.find("READY=1", max(ready, 0)) if ready >= 0 else -1
    return 0 <= log.find("-> start") < ready < log.find("Changed start -> running")


class Machine:
    """The booted container with smsagent installed, and the ways the checks look at it."""

    def __init__(self, container: nspawn.Container, token: str) -> None:
        self.ct = container
        self.token = token
        self.first = ""  # the journal's cursor just before the first start

    def sh(self, script: str, timeout: float = 120) -> str:
        return self.ct.sh(script, timeout=timeout).stdout

    def write_config(self, text: str, name: str = "agent.yaml") -> None:
        path = self.ct.root / "etc/smsagent" / name
        temporary = path.with_suffix(".new")
        temporary.write_text(text)  # then renamed: the agent's watcher never sees half a file
        temporary.chmod(0o644)
        os.replace(temporary, path)

    def show(self, unit: str = "smsagent") -> dict[str, str]:
        props = "ActiveState,SubState,Result,MainPID,NRestarts,StatusText,ExecMainStatus"
        out = self.sh(f"systemctl show {unit} -p {props}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        out = self.sh("journalctl -n 0 --show-cursor -q")
        return out.strip().split("cursor: ", 1)[1]

    def journal(self, since: str = "", unit: str = "smsagent") -> str:
        after = f"--after-cursor='{since}'" if since else ""
        return self.sh(f"journalctl -u {unit} -o cat --no-pager {after}")

    def wait_journal(self, since: str, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.journal(since))
            if found or time.monotonic() > deadline:
                assert found, f"no {pattern!r} in the journal:\n{self.journal(since)}"
                return found
            time.sleep(0.5)

    def start_ready(
        self, unit: str = "smsagent", verb: str = "start", command: str = ""
    ) -> tuple[bool, str]:
        """The readiness check: started, active (running), and only after it sent READY=1."""
        since = self.cursor()
        done = self.ct.sh(command or f"systemctl {verb} {unit}", check=False, timeout=120)
        state = self.show(unit)
        log = self.journal(since, unit)
        running = (state["ActiveState"], state["SubState"]) == ("active", "running")
        ok = done.returncode == 0 and running and ready_then_running(log)
        own = self.sh(f"journalctl _SYSTEMD_UNIT={unit}.service -o cat --after-cursor='{since}'")
        tail = "\n".join(own.splitlines()[-15:])  # what the service itself said
        return ok, f"{verb} {unit}: exit {done.returncode} {done.stderr.strip()}; {state}\n{tail}"

    def emulator(self, command: str = "start") -> None:
        if command == "stop":
            self.sh("systemctl stop sms-emulator")
            return
        self.sh(f"systemd-run --unit=sms-emulator --quiet /opt/smsagent/bin/smsagent-emulator "
                f"--port 8080 --task-id T --token {self.token}")  # fmt: skip
        self.sh("for i in $(seq 100); do python3 -c 'import socket; "
                "socket.create_connection((\"127.0.0.1\", 8080))' 2>/dev/null && exit 0; "
                "sleep 0.1; done; exit 1")  # fmt: skip

    def posted(self) -> list[dict[str, object]]:
        """Every consistency result the emulator accepted, oldest first."""
        script = (
            "import json, urllib.request as u; r = u.Request("
            "'http://127.0.0.1:8080/v3/tasks/T/consistency-result', "
            f"headers={{'X-Auth-Token': '{self.token}'}}); print(u.urlopen(r).read().decode())"
        )
        history = json.loads(self.sh(f'python3 -c "{script}"'))["result_list"]
        items = [json.loads(i) if isinstance(i, str) else i for i in history]  # the API's strings
        return [entry for item in items for entry in item["consistency_result"]]

    def status(self) -> dict[str, object]:
        return json.loads(self.sh("smsagent status --json"))  # type: ignore[no-any-return]

    def scans(self, since: str, directory: str) -> list[int]:
        """Bytes hashed by each finished verification of `directory` logged since `since`."""
        self.wait_journal(since, re.escape(directory) + ": total=")
        pattern = re.escape(directory) + r": total=\d+ .* hashed=(\d+)B"
        return [int(b) for b in re.findall(pattern, self.journal(since))]


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    missing = nspawn.missing_requirement()
    if missing:
        pytest.skip(f"no real systemd in a container here: {missing}")
    tree = nspawn.cached_tree()
    build = Path(tempfile.mkdtemp(prefix="smsagent-wheels-"))
    try:
        wheels = wheelhouse(build)

        def prepare(root: Path) -> None:
            shutil.copytree(wheels, root / INSIDE[1:] / "wheels")
            for name in ("config", "systemd"):
                shutil.copytree(REPO / name, root / INSIDE[1:] / name)

        with nspawn.booted(tree, prepare) as container:
            m = Machine(container, secrets.token_hex(16))
            yield from _installed(m)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _installed(m: Machine) -> Iterator[Machine]:
    (wheel,) = (m.ct.root / INSIDE[1:] / "wheels").glob("smsagent-*.whl")
    *install, enable = readme_install()
    (m.ct.root / INSIDE[1:] / "token").write_text(m.token)  # so no command line shows it
    env = (f"cd {INSIDE}; export PIP_NO_INDEX=1 PIP_FIND_LINKS={INSIDE}/wheels "
           f'SMS_TOKEN="$(cat {INSIDE}/token)"\n')  # fmt: skip
    script = "\n".join(install).replace("/path/to/smsagent", f"{INSIDE}/wheels/{wheel.name}")
    m.sh(env + script, timeout=300)
    m.sh(TREES + SSH_KEYS)
    m.write_config(agent_yaml())
    m.emulator()
    m.sh("systemd-analyze set-log-level debug")  # PID 1 then logs READY=1 and each state change
    m.first = m.cursor()
    ok, detail = m.start_ready(command=env + enable)
    assert ok, f"the shipped unit, installed as the README says, is not ready: {detail}"
    yield m


def test_active_running_only_after_ready(machine: Machine) -> None:
    log = machine.journal(machine.first)
    assert ready_then_running(log), log
    state = machine.show()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["StatusText"], state  # STATUS= was sent too


def test_counts_posted_include_root_only_files(machine: Machine) -> None:
    deadline = time.monotonic() + 60
    while {e["dir_check"] for e in machine.posted()} != set(PAIRS) and time.monotonic() < deadline:
        time.sleep(0.5)
    latest = {e["dir_check"]: e for e in machine.posted()}
    assert set(latest) == set(PAIRS), latest
    for directory, entry in latest.items():
        assert {k: entry[k] for k in EXPECTED} == EXPECTED, (directory, entry)


def test_token_comes_from_the_credential(machine: Machine) -> None:
    assert "token" not in (machine.ct.root / "etc/smsagent/agent.yaml").read_text()
    pid = machine.show()["MainPID"]
    environ = machine.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "CREDENTIALS_DIRECTORY=" in environ and machine.token not in environ
    credential = f"/proc/{pid}/root/run/credentials/smsagent.service/sms-token"
    assert machine.sh(f"cat {credential}").strip() == machine.token
    assert machine.posted()  # the emulator accepts nothing without the token
    assert machine.token not in machine.journal()  # nor in anything the agent logged


def test_reload_with_a_good_and_a_bad_config(machine: Machine) -> None:
    pid = machine.show()["MainPID"]
    since = machine.cursor()
    machine.write_config(agent_yaml(extra="exclude: ['*.swp']"))
    machine.sh("systemctl reload smsagent")
    # The agent also polls the file, and may take the change first: then SIGHUP finds it done.
    machine.wait_journal(since, r"SIGHUP: configuration (reloaded|unchanged)")
    machine.wait_journal(since, r"configuration reloaded from /etc/smsagent/agent.yaml")
    since = machine.cursor()
    machine.write_config(agent_yaml(extra="limits: {wrokers: 2}"))
    machine.sh("systemctl reload smsagent")
    machine.wait_journal(since, r"SIGHUP: configuration not reloaded, the previous one stays")
    state = machine.show()
    assert (state["ActiveState"], state["SubState"], state["MainPID"]) == ("active", "running", pid)
    machine.write_config(agent_yaml())
    machine.sh("systemctl reload smsagent")


def _timed_stop(machine: Machine) -> float:
    started = time.monotonic()
    done = machine.ct.sh("systemctl stop smsagent", check=False, timeout=60)
    elapsed = time.monotonic() - started
    state = machine.show()
    assert done.returncode == 0, done.stderr
    outcome = (state["Result"], state["ExecMainStatus"], state["ActiveState"])
    assert outcome == ("success", "0", "inactive"), state
    return elapsed


def test_stop_when_idle_exits_0_within_10s(machine: Machine) -> None:
    assert _timed_stop(machine) < 10
    ok, detail = machine.start_ready()
    assert ok, detail


def _mid_slow_scan(machine: Machine) -> str:
    """Restart on the slow tree; the journal's cursor before, once the scan is 3 s along."""
    machine.write_config(agent_yaml(SLOW, mb_per_s=4))
    since = machine.cursor()
    ok, detail = machine.start_ready(verb="restart")
    assert ok, detail
    machine.wait_journal(since, r"verifying 1 directory")
    time.sleep(3)
    return since


def test_stop_mid_scan_exits_0_within_10s(machine: Machine) -> None:
    since = _mid_slow_scan(machine)
    assert _timed_stop(machine) < 10
    log = machine.journal(since)
    assert "/srv/slow/src: total=" not in log, log  # it was stopped mid-scan, not after
    machine.write_config(agent_yaml())
    ok, detail = machine.start_ready()
    assert ok, detail


def test_reload_mid_scan_cancels_the_run_and_verifies_again_on_the_new_config(
    machine: Machine,
) -> None:
    since = _mid_slow_scan(machine)
    pid = machine.show()["MainPID"]
    helpers = machine.sh(f"cat /proc/{pid}/task/*/children").split()
    assert len(helpers) >= 2, helpers  # a source and a target helper, reading big.bin
    machine.write_config(agent_yaml(SLOW, mb_per_s=4, extra="exclude: [big.bin]"))
    machine.sh("systemctl reload smsagent")
    # The agent also polls the file, and may take the change first.
    machine.wait_journal(since, r"(SIGHUP|the config file changed): the verification in "
                         r"progress is cancelled", timeout=10)  # fmt: skip
    alive = "for p in " + " ".join(helpers) + "; do [ -e /proc/$p ] && echo $p; done; true"
    deadline = time.monotonic() + 5
    while machine.sh(alive).split() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not machine.sh(alive).split(), "a helper of the cancelled run is still there"
    machine.wait_journal(since, r"/srv/slow/src: total=0 ", timeout=30)  # on the new config
    log = machine.journal(since)
    assert "reloading: queueing the 0 directories verified before the reload" in log, log
    assert "/srv/slow/src: total=1 " not in log, log  # the old run never finished
    deadline = time.monotonic() + 20
    while not [e for e in machine.posted() if e["dir_check"] == "/srv/slow/src"]:
        assert time.monotonic() < deadline, "the new run's result never reached SMS"
        time.sleep(0.5)
    slow = [e for e in machine.posted() if e["dir_check"] == "/srv/slow/src"]
    assert all(e["num_total_files"] == 0 for e in slow), slow  # nothing of the old run
    since = machine.cursor()
    machine.write_config(agent_yaml())
    machine.sh("systemctl reload smsagent")
    machine.wait_journal(since, r"configuration reloaded from /etc/smsagent/agent.yaml")


def test_kill_9_is_followed_by_a_restart(machine: Machine) -> None:
    before = machine.show()
    machine.sh(f"kill -9 {before['MainPID']}")
    deadline = time.monotonic() + RESTART_SEC + 30
    state = machine.show()
    while time.monotonic() < deadline and not (
        state["SubState"] == "running" and state["MainPID"] not in ("0", before["MainPID"])
    ):
        time.sleep(1)
        state = machine.show()
    assert state["SubState"] == "running" and state["MainPID"] != before["MainPID"], state
    assert int(state["NRestarts"]) == int(before["NRestarts"]) + 1, state


def test_state_survives_a_restart(machine: Machine) -> None:
    first = machine.scans(machine.first, "/srv/local/src")
    assert first and first[0] > 0, first  # the first scan read the files
    machine.emulator("stop")
    since = machine.cursor()
    ok, detail = machine.start_ready(verb="restart")
    assert ok, detail
    assert machine.scans(since, "/srv/local/src") == [0]  # a new process, the same cache
    machine.wait_journal(since, r"upload failed")
    # Results are queued as each directory ends, so the first failed upload may come
    # before the last directory is queued: wait for all of them, not for one line.
    deadline = time.monotonic() + 30
    while machine.status()["pending"]["count"] != len(PAIRS):  # type: ignore[index]
        assert time.monotonic() < deadline, machine.status()
        time.sleep(0.5)
    # Restart on a config without those directories: what reaches SMS for them afterwards
    # can only come from the outbox the previous process left on disk.
    machine.write_config(agent_yaml(SLOW))
    ok, detail = machine.start_ready(verb="restart")
    assert ok, detail
    machine.emulator()
    deadline = time.monotonic() + 60
    while not set(PAIRS) <= {e["dir_check"] for e in machine.posted()}:
        assert time.monotonic() < deadline, machine.journal(since)
        time.sleep(0.5)
    for entry in machine.posted():
        if entry["dir_check"] in PAIRS:
            assert {k: entry[k] for k in EXPECTED} == EXPECTED, entry
    machine.write_config(agent_yaml())
    ok, detail = machine.start_ready(verb="restart")
    assert ok, detail


def test_a_dynamic_user_without_known_hosts_is_told_to_set_UserKnownHostsFile(
    machine: Machine,
) -> None:
    remote = {k: v for k, v in PAIRS.items() if v.startswith("ssh://")}
    machine.write_config(agent_yaml(remote, known_hosts=False), "unknown-host.yaml")
    done = machine.ct.sh(
        "systemd-run --wait --pipe --quiet -p DynamicUser=yes -p StateDirectory=smsagent-hint "
        "-p AmbientCapabilities=CAP_DAC_READ_SEARCH /opt/smsagent/bin/smsagent verify "
        "--config /etc/smsagent/unknown-host.yaml --no-upload",
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert 'set ssh.options: ["UserKnownHostsFile=/etc/smsagent/known_hosts"]' in out, out


def test_exposure_stays_at_or_below_1_6(machine: Machine) -> None:
    out = machine.sh("systemd-analyze security --no-pager smsagent.service")
    found = re.search(r"Overall exposure level for smsagent\.service: (\d+\.\d)", out)
    assert found and float(found.group(1)) <= 1.6, out  # the README's figure


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        (
            "broken-exec",
            "ExecStart=/usr/local/bin/smsagent",
            "ExecStart=/usr/local/bin/no-smsagent",
        ),
        ("broken-state", "StateDirectory=smsagent\n", ""),
    ],
)
def test_the_readiness_check_fails_a_broken_unit(
    machine: Machine, name: str, old: str, new: str
) -> None:
    shipped = (REPO / "systemd/smsagent.service").read_text()
    assert old in shipped  # the breakage below really changes the unit
    unit = f"smsagent-{name}"
    (machine.ct.root / f"etc/systemd/system/{unit}.service").write_text(shipped.replace(old, new))
    machine.sh("systemctl daemon-reload")
    try:
        ok, detail = machine.start_ready(unit)
        assert not ok, detail
    finally:
        machine.sh(f"systemctl stop {unit}; systemctl reset-failed {unit} || true")
