"""A private OpenSSH server on a random loopback port, for tests of ssh:// targets.

It runs as the current user with its own host key, a generated client key, an
authorized_keys file and a pid file, all in one temporary directory; it never reads or
writes ~/.ssh or /etc/ssh (the client is given `UserKnownHostsFile` and an identity file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SSHD = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
)
STARTUP_TIMEOUT = 10.0


@dataclass
class Sshd:
    """A running sshd and what a client needs to reach it."""

    port: int
    home: Path  # the temporary directory with keys and config
    identity: Path  # the client's private key, authorized by the server
    known_hosts: Path  # holds the server's host key
    process: subprocess.Popen[bytes]
    user: str

    def url(self, path: Path | str | bytes) -> str:
        """An ssh:// target for a local path (the server is this machine)."""
        from urllib.parse import quote

        raw = os.fsencode(path)
        return f"ssh://{self.user}@127.0.0.1:{self.port}{quote(raw, safe='/')}"

    def ssh_section(self, **overrides: Any) -> dict[str, Any]:
        """The `ssh:` config section that trusts only this server's host key."""
        section: dict[str, Any] = {
            "identity_file": str(self.identity),
            "options": [
                f"UserKnownHostsFile={self.known_hosts}",
                "GlobalKnownHostsFile=/dev/null",
                "StrictHostKeyChecking=yes",
                "IdentitiesOnly=yes",  # an ssh-agent of the developer is not consulted
            ],
            "connect_timeout": 5,
        }
        section.update(overrides)
        return section

    def children(self) -> list[int]:
        """Pids of every process below the listener: session processes and what they run."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
        found: list[int] = []
        frontier = [self.process.pid]
        while frontier:
            pid = frontier.pop()
            kids = [child for child, parent in parents.items() if parent == pid]
            found += kids
            frontier += kids
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "smsagent-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def start_sshd(home: Path) -> Iterator[Sshd]:
    """Start sshd in `home`, yield it, and stop it (a generator for a pytest fixture)."""
    assert SSHD is not None
    home.mkdir(parents=True, exist_ok=True)
    host_key, user_key = home / "host_key", home / "user_key"
    keygen(host_key)
    keygen(user_key)
    authorized = home / "authorized_keys"
    authorized.write_bytes(user_key.with_suffix(".pub").read_bytes())
    authorized.chmod(0o600)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    log = home / "sshd.log"
    for _attempt in range(3):  # the port is free when chosen, but may be taken before use
        port = free_port()
        config = home / "sshd_config"
        config.write_text(
            f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {home / "sshd.pid"}
AuthorizedKeysFile {authorized}
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
MaxStartups 50
LogLevel VERBOSE
"""
        )
        with open(log, "ab") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        if _wait_listening(process, port):
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError(f"sshd did not start; its log:\n{log.read_text(errors='replace')}")
    public = host_key.with_suffix(".pub").read_text().split()
    known_hosts = home / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    server = Sshd(
        port=port,
        home=home,
        identity=user_key,
        known_hosts=known_hosts,
        process=process,
        user=user,
    )
    try:
        yield server
    finally:
        for pid in server.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", name="sshd")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One OpenSSH server for the whole session, reachable only on 127.0.0.1.

    Imported by the test modules that use it (not in conftest.py, so that only they start it).
    """
    if SSHD is None:
        pytest.skip("no sshd binary (Debian package openssh-server) on this machine")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        # Compiled into Debian's sshd and checked at start when run as root; the package's
        # service creates it, a container without systemd may not. Not ours to create.
        pytest.fail("sshd run as root needs its privilege separation directory: mkdir -p /run/sshd")
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))
