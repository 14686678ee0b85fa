"""The Ansible role and verify.yml, run by ansible-core against this machine as a real host:
root over SSH to the loopback sshd, with a generated key and a vault-encrypted token.

The role's paths are pointed into tmp_path, so the test never touches /opt, /etc or the
machine's own systemd. ansible-core comes from $SMSAGENT_ANSIBLE_BIN (a folder holding
ansible-playbook, as .ci/run sets it), else PATH, else a venv made once under ~/.cache.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sms.emulator import Emulator

from .conftest import write_tree
from .sshd import SSHD, start_sshd

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "deploy" / "ansible"
TOKEN = "Vaulted-T0ken-7f3e9a"
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
    """One host (this machine over SSH), its inventory, and ansible-playbook to run on it."""

    def __init__(self, root: Path, bin_dir: Path, inventory: dict[str, Any]):
        self.root = root
        self.bin = bin_dir
        self.inventory = inventory
        self.host = inventory["smsagent"]["hosts"]["loopback"]
        self.password = root / "vault-password"
        self.password.write_text("vault-pass-for-the-test\n")

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
    line = next(x for x in output.splitlines() if x.startswith("loopback") and "ok=" in x)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


@pytest.fixture
def fleet(tmp_path: Path, ansible_bin: Path) -> Iterator[Fleet]:
    if SSHD is None:
        pytest.skip("no sshd binary (Debian package openssh-server) on this machine")
    if os.geteuid() != 0:
        pytest.skip("the role installs as root; run the tests as root")
    if not os.path.isdir("/run/sshd"):
        pytest.fail("sshd run as root needs its privilege separation directory: mkdir -p /run/sshd")
    write_tree(tmp_path / "src" / "data", {"same": "same", "changed": "old", "gone": "1"})
    write_tree(tmp_path / "tgt" / "data", {"same": "same", "changed": "new", "extra": "e"})
    for server in start_sshd(tmp_path / "sshd"):
        with Emulator(task_ids=["T"], token=TOKEN) as emu:
            host = {
                "ansible_host": "127.0.0.1",
                "ansible_port": server.port,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(server.identity),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={server.known_hosts} -o GlobalKnownHostsFile=/dev/null "
                    "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
                "smsagent_venv": str(tmp_path / "opt" / "smsagent"),
                "smsagent_config_dir": str(tmp_path / "etc" / "smsagent"),
                "smsagent_unit_dir": str(tmp_path / "etc" / "systemd" / "system"),
                "smsagent_bin_link": "",
                "smsagent_wheelhouse": str(tmp_path / "wheelhouse"),
                "smsagent_results_dir": str(tmp_path / "results"),
                "smsagent_endpoint": emu.url,
                "smsagent_task_id": "T",
                "smsagent_directories": [
                    {
                        "path": str(tmp_path / "src" / "data"),
                        "target": str(tmp_path / "tgt" / "data"),
                    }
                ],
                "smsagent_schedule": {"interval": "6h", "jitter": "30m"},
                "smsagent_limits": {"workers": 1},
                "smsagent_metrics_textfile": str(tmp_path / "textfile" / "smsagent.prom"),
                "smsagent_config_extra": {"state_dir": str(tmp_path / "state")},
                "smsagent_token": "{{ vault_smsagent_token }}",  # as inventory.example.yml
            }
            fleet = Fleet(tmp_path, ansible_bin, {"smsagent": {"hosts": {"loopback": host}}})
            fleet.vault("vault_smsagent_token", TOKEN)
            yield fleet


def test_the_role_installs_idempotently_and_reloads_on_a_config_change(fleet: Fleet) -> None:
    host, root = fleet.host, fleet.root
    first = fleet.playbook("site.yml")
    assert recap(first)["failed"] == 0 and recap(first)["changed"] > 0

    venv, etc = Path(host["smsagent_venv"]), Path(host["smsagent_config_dir"])
    version = subprocess.run([str(venv / "bin" / "smsagent"), "--version"],
                             capture_output=True, text=True)  # fmt: skip
    assert version.returncode == 0 and "smsagent" in version.stdout
    # The venv was filled from the copied wheelhouse only: the host needs no index.
    names = {p.name.split("-")[0].lower() for p in (venv / "wheelhouse").glob("*.whl")}
    assert {"click", "pip", "pyyaml", "requests", "smsagent", "watchdog", "xxhash"} <= names
    token = etc / "token"
    assert token.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    config = yaml.safe_load((etc / "agent.yaml").read_text())
    assert config["endpoint"] == host["smsagent_endpoint"] and config["task_id"] == "T"
    assert config["directories"] == host["smsagent_directories"]
    assert config["schedule"] == {"interval": "6h", "jitter": "30m"}
    assert config["metrics"] == {"textfile": host["smsagent_metrics_textfile"]}
    assert config["auth"] == {"token_file": f"{etc}/token"}  # the file, never the token
    assert TOKEN not in json.dumps(config)
    unit_dir = Path(host["smsagent_unit_dir"])
    assert (unit_dir / "smsagent.service").read_bytes() == (
        REPO / "systemd" / "smsagent.service"
    ).read_bytes()
    override = (unit_dir / "smsagent.service.d" / "ansible.conf").read_text()
    assert f"ExecStart={venv}/bin/smsagent run --config {etc}/agent.yaml" in override
    assert f"ReadWritePaths={root / 'textfile'}" in override
    # No systemd as PID 1 here: the service tasks and handlers are skipped, not failed.
    assert "Enable and start the service" in first

    second = fleet.playbook("site.yml")
    assert recap(second)["changed"] == 0, second
    assert "RUNNING HANDLER" not in second

    host["smsagent_exclude"] = ["*.tmp"]
    third = fleet.playbook("site.yml")
    assert recap(third)["changed"] == 1, third
    assert "RUNNING HANDLER [smsagent : Reload smsagent]" in third
    assert "RUNNING HANDLER [smsagent : Restart smsagent]" not in third
    assert yaml.safe_load((etc / "agent.yaml").read_text())["exclude"] == ["*.tmp"]

    # verify.yml: every host verified, the documents and one table on the controller.
    review = fleet.playbook("verify.yml")
    assert recap(review)["failed"] == 0, review
    document = json.loads((root / "results" / "loopback.json").read_text())
    [directory] = document["directories"]
    assert (directory["num_total_files"], directory["num_different_files"],
            directory["num_target_miss_files"], directory["num_target_more_files"]) == (3, 1, 1, 1)  # fmt: skip
    table = (root / "results" / "summary.txt").read_text().splitlines()
    assert table[0].split() == ["HOST", "DIRECTORY", "TOTAL", "DIFFERENT", "MISSING", "MORE",
                                "ERRORS", "STATE"]  # fmt: skip
    assert table[1].split() == ["loopback", host["smsagent_directories"][0]["path"],
                                "3", "1", "1", "1", "0", "DIFFERS"]  # fmt: skip
    assert table[-1] == "1 hosts: 0 directories consistent, 1 differ, 0 not verified"
    assert "DIFFERS" in review  # the table is shown in the play's output too
