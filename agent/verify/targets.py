"""Where a tree lives: this machine, or a host reached over SSH; both are served by helpers.
A source and a target are reached the same way: only the side named in messages differs."""

from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..config import SshConfig
from .channel import Channel, Pool, bootstrap_command, greet, local_command, spawn, start_pool

ALGORITHMS = ("xxh3-128", "blake2b")  # preferred first; blake2b when a host has no xxh3
# A host that stops answering is given up after about a minute, not the TCP timeout.
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4


@dataclass(frozen=True)
class TargetSpec:
    """A parsed source or target: `host` is None for a local path."""

    path: bytes
    host: str | None = None
    user: str | None = None
    port: int | None = None

    @property
    def key(self) -> str:
        """Names the machine, so one connection serves every directory on it."""
        if self.host is None:
            return "local"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


def parse_target(text: str) -> TargetSpec:
    if text.startswith("ssh://"):
        parts = urlsplit(text)
        path = unquote(parts.path or "/", errors="surrogateescape") or "/"
        return TargetSpec(
            path=path.encode("utf-8", "surrogateescape"),
            host=parts.hostname,
            user=unquote(parts.username) if parts.username else None,
            port=parts.port,
        )
    return TargetSpec(path=text.encode("utf-8", "surrogateescape"))


def ssh_command(spec: TargetSpec, ssh: SshConfig) -> list[str]:
    """The OpenSSH client in batch mode: no password prompt, no unknown host key accepted.

    ssh keeps the first value it is given for an option, so BatchMode comes first (it is not
    negotiable), then the configured `ssh.options`, then our defaults, which they may override.
    ~/.ssh/config, agents and jump hosts still apply to whatever is not set here."""
    argv = ["ssh", "-o", "BatchMode=yes"]
    for option in ssh.options:
        argv += ["-o", option]
    argv += [
        "-o", f"ConnectTimeout={max(1, int(ssh.connect_timeout))}",
        "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL}",
        "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
        "-e", "none",
        "-T",
    ]  # fmt: skip
    if ssh.identity_file:
        argv += ["-i", str(ssh.identity_file)]
    port = spec.port or ssh.port
    if port:
        argv += ["-p", str(port)]
    destination = f"{spec.user}@{spec.host}" if spec.user else str(spec.host)
    remote = " ".join(shlex.quote(arg) for arg in bootstrap_command(ssh.python))
    return [*argv, "--", destination, remote]


def _no_home_hint() -> str:
    """For a user whose home is "/" or absent (systemd's DynamicUser=): ~/.ssh cannot hold keys."""
    home = os.path.expanduser("~")
    if home not in ("", "/", "~") and os.path.isdir(home):
        return ""
    return (
        "; this user has no home for ~/.ssh/known_hosts (the service's dynamic user): record "
        'the key in a file and set ssh.options: ["UserKnownHostsFile=/etc/smsagent/known_hosts"]'
    )


def _with_detail(cause: str, needle: str, line: str, lines: list[str]) -> str:
    detail = (line[len("ssh: ") :] if line.startswith("ssh: ") else line).rstrip(".")
    hint = ""
    if needle == "Host key verification failed":
        # The line before names the key type and the host:port that was looked up.
        detail = next((x.rstrip(".") for x in lines if "host key is known for" in x), "")
        hint = _no_home_hint()
    elif needle == "REMOTE HOST IDENTIFICATION HAS CHANGED":
        detail = next((x.rstrip(".") for x in lines if x.startswith("Offending")), "")
    return (f"{cause} ({detail})" if detail else cause) + hint


# What the OpenSSH client prints when a session fails, and the cause to name for it. The
# client's own words are kept in the message: they are what an operator searches for.
_SSH_CAUSES = (
    (
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "host key verification failed: the host's key "
        "has CHANGED since it was recorded in known_hosts",
    ),
    (
        "Host key verification failed",
        "host key verification failed: the host's key is not in known_hosts; an unknown key "
        "is never accepted (check its fingerprint, then add it)",
    ),
    ("Permission denied", "authentication failed"),
    ("Too many authentication failures", "authentication failed"),
    ("Could not resolve hostname", "cannot connect"),
    ("connect to host", "cannot connect"),
    ("during banner exchange", "cannot connect: the port is open but no SSH server answered"),
    ("not responding", "the {side} stopped answering keepalives"),
    ("closed by remote host", "connection closed by the {side}"),
    ("Connection closed by", "connection closed by the {side}"),
    ("Connection reset", "connection reset"),
    ("Broken pipe", "connection lost"),
)


def explain_ssh_failure(stderr: str, code: int | None, *, python: str, side: str = "target") -> str:
    """One line naming why an SSH session ended, from the client's stderr and exit status."""
    raw = [line.strip() for line in stderr.splitlines() if line.strip()]
    if code == 255 or code is None:
        for needle, cause in _SSH_CAUSES:
            for line in raw:
                if needle in line:
                    return _with_detail(cause.format(side=side), needle, line, raw)
    lines = [x for x in raw if not x.startswith(("@", "Warning: Permanently added"))]
    last = lines[-1] if lines else ""
    if code == 127:
        return (
            f"cannot start the helper: {python} is not found on the {side}; install Python 3 "
            f"there or point ssh.python at it ({last or 'command not found'})"
        )
    if code == 126:
        return f"cannot start the helper: {python} cannot be run on the {side} ({last})"
    if "Traceback" in stderr or "SyntaxError" in last:
        return f"the helper failed on the {side} (it needs Python 3.6 or later): {last}"
    if last:
        return last
    if code == 255:
        return f"the session ended without a word: the helper on the {side} was killed or lost"
    if code is None:
        return "connection lost"
    return f"helper exited with status {code}"


def spawn_local(workers: int) -> list[Channel]:
    """Local helpers started now and greeted later by open_pool."""
    return spawn(local_command(), label="local", workers=workers)


def open_pool(
    spec: TargetSpec,
    *,
    side: str,
    ssh: SshConfig,
    workers: int,
    algorithms: tuple[str, ...] = ALGORITHMS,
    read_limit: int = 0,
    started: list[Channel] | None = None,
) -> Pool:
    """Start the helpers for one machine (or take `started` local ones from spawn_local)
    and agree on the hash algorithm. A remote source is named as such in messages ("source
    ssh://root@old-db: authentication failed (…)"); a target keeps the host alone, as the
    README has always shown it."""
    if spec.host is None:
        return greet(
            started or spawn_local(workers),
            label="local",
            scope="local",
            algorithms=algorithms,
            read_limit=read_limit,
            timeout=60,
        )
    return start_pool(
        ssh_command(spec, ssh),
        label=f"source {spec.key}" if side == "source" else spec.key,
        scope=spec.key,  # the host's rows in the hash cache, whichever side it serves
        workers=1,  # one SSH session serves the whole run
        algorithms=algorithms,
        read_limit=read_limit,
        timeout=ssh.connect_timeout + 30,
        explain=functools.partial(explain_ssh_failure, python=ssh.python, side=side),
    )
