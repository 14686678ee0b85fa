"""The Ansible role and verify.yml, run by ansible-core against a real host over SSH, with a
generated key and the token in a vault file.

The host is a booted container with a real systemd where one can be booted (tests/nspawn.py):
there the role installs to its default paths, and the service is really enabled, started and
reloaded. Elsewhere it is this machine through the loopback sshd, with the role's paths pointed
into tmp_path (so the test never touches /opt, /etc or the machine's own systemd) and the
service tasks skipped. ansible-core comes from $SMSAGENT_ANSIBLE_BIN (a folder holding
ansible-playbook, as .ci/run sets it), else PATH, else a venv made once under ~/.cache.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sms.emulator import Emulator

from . import nspawn
from .conftest import write_tree
from .sshd import SSHD, start_sshd

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "deploy" / "ansible"
TOKEN = "Vaulted-T0ken-7f3e9a"
HOST = "host1"  # its name in the inventory
ANSIBLE_VENV = Path.home() / ".cache" / "smsagent-tests" / "ansible"


def _controller_python() -> str | None:
    """ansible-core 2.19 wants Python 3.11 or later on the controller, whatever runs the tests."""
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        found = shutil.which(name)
        if found:
            probe = subprocess.run(
                [found, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                capture_output=True, text=True,
            )  # fmt: skip
            if probe.stdout.strip() == "True":
                return found
    return None


@pytest.fixture(scope="session")
def ansible_bin() -> Path:
    explicit = os.environ.get("SMSAGENT_ANSIBLE_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("ansible-playbook")
    if on_path:
        return Path(on_path).parent
    if not (ANSIBLE_VENV / "bin" / "ansible-playbook").exists():
        python = _controller_python()
        if python is None:
            pytest.skip("ansible-core needs Python 3.11 or later; none found on PATH")
        made = subprocess.run(
            f"{python} -m venv {ANSIBLE_VENV} && {ANSIBLE_VENV}/bin/pip install -q ansible-core",
            shell=True, capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            shutil.rmtree(ANSIBLE_VENV, ignore_errors=True)
            pytest.skip(f"cannot install ansible-core from PyPI: {made.stderr.strip()[-300:]}")
    return ANSIBLE_VENV / "bin"


class Fleet:
    """One host, its inventory, and ansible-playbook to run on it."""

    def __init__(
        self, root: Path, bin_dir: Path, inventory: dict[str, Any],
        container: nspawn.Container | None = None,
    ) -> None:  # fmt: skip
        self.root = root
        self.bin = bin_dir
        self.inventory = inventory
        self.host = inventory["smsagent"]["hosts"][HOST]
        self.container = container  # None: this machine, with no systemd to manage the service
        self.password = root / "vault-password"
        self.password.write_text("vault-pass-for-the-test\n")

    def path(self, name: str) -> Path:
        """A path of the host, as this process reaches it."""
        return self.container.root / name.lstrip("/") if self.container else Path(name)

    def sh(self, script: str) -> str:
        """Run a shell script on the host, as root; its output."""
        if self.container:
            return self.container.sh(script).stdout
        return subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    def close(self) -> None:
        """End the SSH connections Ansible keeps open (ControlPersist), as a host going away
        would not wait for them: a container's shutdown otherwise waits until they time out."""
        for socket in (self.root / "ansible-cp").glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", HOST],
                           capture_output=True, timeout=30)  # fmt: skip

    def vault(self, name: str, secret: str) -> None:
        """A vault file in group_vars, as the README has an operator keep the token."""
        vault = self.root / "inventory" / "group_vars" / "smsagent" / "vault.yml"
        vault.parent.mkdir(parents=True, exist_ok=True)
        vault.write_text(yaml.safe_dump({name: secret}))
        self.run_tool("ansible-vault", "encrypt", "--vault-password-file", str(self.password),
                      str(vault))  # fmt: skip
        assert secret not in vault.read_text()

    def run_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin / tool), *args], capture_output=True, text=True, cwd=self.root,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
                 "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-tmp"),
                 "ANSIBLE_HOME": str(self.root / "ansible-home"),
                 "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.root / "ansible-cp"),
                 # One SSH operation a task instead of three; the test sshd has no sftp.
                 "ANSIBLE_PIPELINING": "1", "ANSIBLE_SSH_TRANSFER_METHOD": "piped"},
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return done

    def playbook(self, name: str, *args: str) -> str:
        # The inventory and its group_vars live in root; the playbooks stay in the checkout.
        (self.root / "inventory" / "hosts.yml").write_text(yaml.safe_dump(self.inventory))
        done = self.run_tool(
            "ansible-playbook", "-v", "-i", str(self.root / "inventory" / "hosts.yml"),
            "--vault-password-file", str(self.password), str(PLAYBOOKS / name), *args,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert TOKEN not in output  # the token is never printed, even with -v
        return output


def recap(output: str) -> dict[str, int]:
    line = next(x for x in output.splitlines() if x.startswith(HOST) and "ok=" in x)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


def task_status(output: str, header: str) -> str:
    """What a task (`TASK [...]`) or handler (`RUNNING HANDLER [...]`) did: ok, changed, skipping."""
    after = output.split(header, 1)[1].splitlines()[1:]
    return next(line for line in after if line.strip()).split(":")[0]


def host_vars(src: str, tgt: str, endpoint: str) -> dict[str, Any]:
    """What an operator's inventory gives a host; the fixtures add how to reach it."""
    return {
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "smsagent_endpoint": endpoint,
        "smsagent_task_id": "T",
        "smsagent_directories": [{"path": src, "target": tgt}],
        "smsagent_schedule": {"interval": "6h", "jitter": "30m"},
        "smsagent_limits": {"workers": 1},
        "smsagent_metrics_textfile": "/var/lib/node_exporter/textfile_collector/smsagent.prom",
        "smsagent_token": "{{ vault_smsagent_token }}",  # as inventory.example.yml
    }


@pytest.fixture
def fleet(tmp_path: Path, ansible_bin: Path) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("the role installs as root; run the tests as root")
    controller = {"smsagent_wheelhouse": str(tmp_path / "wheelhouse"),
                  "smsagent_results_dir": str(tmp_path / "results")}  # fmt: skip
    if nspawn.missing_requirement() is None:
        yield from _in_a_container(tmp_path, ansible_bin, controller)
    else:
        yield from _on_this_machine(tmp_path, ansible_bin, controller)


def _pair(root: Path) -> None:
    write_tree(root / "src" / "data", {"same": "same", "changed": "old", "gone": "1"})
    write_tree(root / "tgt" / "data", {"same": "same", "changed": "new", "extra": "e"})


def _in_a_container(tmp_path: Path, bin_dir: Path, controller: dict[str, str]) -> Iterator[Fleet]:
    """A Debian host with systemd as PID 1, reached by running its sshd in its namespaces."""
    identity = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(identity)],
                   check=True)  # fmt: skip
    with nspawn.booted(nspawn.cached_tree()) as ct:
        _pair(ct.root / "srv")
        dot_ssh = ct.root / "root" / ".ssh"
        dot_ssh.mkdir(mode=0o700, exist_ok=True)
        (dot_ssh / "authorized_keys").write_bytes(Path(f"{identity}.pub").read_bytes())
        host_key = (ct.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(" ".join(["smsagent-ct", *host_key]) + "\n")
        # The container has only its own loopback: ssh talks to an sshd started inside it.
        proxy = (
            f"nsenter -t {ct.pid1} -a -- /bin/sh -c 'mkdir -p /run/sshd; exec /usr/sbin/sshd -i'"
        )
        host = {
            **host_vars("/srv/src/data", "/srv/tgt/data", "http://127.0.0.1:9"),  # SMS down
            **controller,
            "ansible_host": "smsagent-ct",
            "ansible_ssh_private_key_file": str(identity),
            "ansible_ssh_common_args": (
                f'-o ProxyCommand="{proxy}" -o UserKnownHostsFile={known_hosts} '
                "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes "
                "-o IdentitiesOnly=yes"
            ),
        }
        fleet = Fleet(tmp_path, bin_dir, {"smsagent": {"hosts": {HOST: host}}}, ct)
        fleet.vault("vault_smsagent_token", TOKEN)
        try:
            yield fleet
        finally:
            fleet.close()


def _on_this_machine(tmp_path: Path, bin_dir: Path, controller: dict[str, str]) -> Iterator[Fleet]:
    """This machine over the loopback sshd, every path the role writes inside tmp_path."""
    if SSHD is None:
        pytest.skip("no sshd binary (Debian package openssh-server) on this machine")
    if not os.path.isdir("/run/sshd"):
        pytest.fail("sshd run as root needs its privilege separation directory: mkdir -p /run/sshd")
    _pair(tmp_path)
    for server in start_sshd(tmp_path / "sshd"):
        with Emulator(task_ids=["T"], token=TOKEN) as emu:
            src, tgt = tmp_path / "src" / "data", tmp_path / "tgt" / "data"
            host = {
                **host_vars(str(src), str(tgt), emu.url),
                **controller,
                "ansible_host": "127.0.0.1",
                "ansible_port": server.port,
                "ansible_ssh_private_key_file": str(server.identity),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={server.known_hosts} -o GlobalKnownHostsFile=/dev/null "
                    "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                ),
                "smsagent_venv": str(tmp_path / "opt" / "smsagent"),
                "smsagent_config_dir": str(tmp_path / "etc" / "smsagent"),
                "smsagent_unit_dir": str(tmp_path / "etc" / "systemd" / "system"),
                "smsagent_bin_link": "",
                "smsagent_metrics_textfile": str(tmp_path / "textfile" / "smsagent.prom"),
                "smsagent_metrics_group": "root",  # no new group on this machine
                "smsagent_config_extra": {"state_dir": str(tmp_path / "state")},
            }
            fleet = Fleet(tmp_path, bin_dir, {"smsagent": {"hosts": {HOST: host}}})
            fleet.vault("vault_smsagent_token", TOKEN)
            try:
                yield fleet
            finally:
                fleet.close()


def service(fleet: Fleet) -> dict[str, str]:
    shown = fleet.sh("systemctl show -p ActiveState -p UnitFileState -p MainPID smsagent")
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def wait_for_journal(fleet: Fleet, text: str, since: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        log = fleet.sh(f"journalctl -q -o cat -u smsagent --since '{since}'")
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def test_the_role_installs_idempotently_and_reloads_on_a_config_change(fleet: Fleet) -> None:
    host, root = fleet.host, fleet.root
    systemd = fleet.container is not None
    first = fleet.playbook("site.yml")
    assert recap(first)["failed"] == 0 and recap(first)["changed"] > 0

    venv = host.get("smsagent_venv", "/opt/smsagent")
    etc = host.get("smsagent_config_dir", "/etc/smsagent")
    assert "smsagent" in fleet.sh(f"{venv}/bin/smsagent --version")
    # The venv was filled from the copied wheelhouse only: the host needs no index.
    wheels = fleet.path(venv) / "wheelhouse"
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"click", "pip", "pyyaml", "requests", "smsagent", "watchdog", "xxhash"} <= names
    token = fleet.path(etc) / "token"
    assert token.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    config = yaml.safe_load((fleet.path(etc) / "agent.yaml").read_text())
    assert config["endpoint"] == host["smsagent_endpoint"] and config["task_id"] == "T"
    assert config["directories"] == host["smsagent_directories"]
    assert config["schedule"] == {"interval": "6h", "jitter": "30m"}
    assert config["metrics"] == {"textfile": host["smsagent_metrics_textfile"]}
    assert config["auth"] == {"token_file": f"{etc}/token"}  # the file, never the token
    assert TOKEN not in json.dumps(config)
    unit_dir = fleet.path(host.get("smsagent_unit_dir", "/etc/systemd/system"))
    assert (unit_dir / "smsagent.service").read_bytes() == (
        REPO / "systemd" / "smsagent.service"
    ).read_bytes()
    override = (unit_dir / "smsagent.service.d" / "ansible.conf").read_text()
    assert f"ExecStart={venv}/bin/smsagent run --config {etc}/agent.yaml" in override
    textfile_dir = os.path.dirname(host["smsagent_metrics_textfile"])
    assert f"ReadWritePaths={textfile_dir}" in override
    group = host.get("smsagent_metrics_group", "smsagent-metrics")
    assert f"SupplementaryGroups={group}" in override
    if systemd:
        before = service(fleet)
        assert (before["UnitFileState"], before["ActiveState"]) == ("enabled", "active"), before
        # The service, a dynamic user, writes the textfile at start through the group.
        textfile = fleet.path(host["smsagent_metrics_textfile"])
        deadline = time.monotonic() + 30
        while not textfile.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "smsagent_build_info{" in textfile.read_text()
        assert textfile.stat().st_uid != 0, "written by the service, not by root"
    else:  # the service tasks and handlers are skipped, not failed
        assert task_status(first, "TASK [smsagent : Enable and start the service]") == "skipping"

    second = fleet.playbook("site.yml")
    assert recap(second)["changed"] == 0, second
    assert "RUNNING HANDLER" not in second

    host["smsagent_exclude"] = ["*.tmp"]
    since = fleet.sh("date '+%Y-%m-%d %H:%M:%S'").strip() if systemd else ""
    third = fleet.playbook("site.yml")
    assert "RUNNING HANDLER [smsagent : Restart smsagent]" not in third
    reload = task_status(third, "RUNNING HANDLER [smsagent : Reload smsagent]")
    assert reload == ("changed" if systemd else "skipping"), third
    assert recap(third)["changed"] == (2 if systemd else 1), third  # agent.yaml (+ the reload)
    assert yaml.safe_load((fleet.path(etc) / "agent.yaml").read_text())["exclude"] == ["*.tmp"]
    if systemd:  # reloaded in place: the same process got SIGHUP and runs with the new file
        assert service(fleet) == before
        log = wait_for_journal(fleet, "SIGHUP: configuration", since)
        assert "Reloaded smsagent.service" in log and "SIGHUP: configuration" in log, log
        # The agent may see the file change before the signal comes; either way, it is read.
        assert "configuration reloaded from /etc/smsagent/agent.yaml" in log, log
        assert "Permission denied" not in log, log

    # verify.yml: every host verified, the documents and one table on the controller.
    review = fleet.playbook("verify.yml")
    assert recap(review)["failed"] == 0, review
    document = json.loads((root / "results" / f"{HOST}.json").read_text())
    [directory] = document["directories"]
    assert (directory["num_total_files"], directory["num_different_files"],
            directory["num_target_miss_files"], directory["num_target_more_files"]) == (3, 1, 1, 1)  # fmt: skip
    table = (root / "results" / "summary.txt").read_text().splitlines()
    assert table[0].split() == ["HOST", "DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE",
                                "ERRORS", "STATE"]  # fmt: skip
    assert table[1].split() == [HOST, host["smsagent_directories"][0]["path"],
                                "3", "1", "1", "1", "0", "DIFFERS"]  # fmt: skip
    assert table[-1] == "1 hosts: 0 directories consistent, 1 differ, 0 not verified"
    assert "DIFFERS" in review  # the table is shown in the play's output too
