"""Where a tree lives: this machine, or a host reached over SSH; both are served by helpers."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .channel import Pool, bootstrap_command, local_command, start_pool
from .config import SshConfig

ALGORITHMS = ("xxh3-128", "blake2b")  # preferred first; blake2b when a host has no xxh3


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A parsed target: `host` is None for a local path."""

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
    """The OpenSSH client in batch mode: no password prompt, no unknown host key accepted."""
    argv = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={max(1, int(ssh.connect_timeout))}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-e", "none",
        "-T",
    ]  # fmt: skip
    if ssh.identity_file:
        argv += ["-i", str(ssh.identity_file)]
    port = spec.port or ssh.port
    if port:
        argv += ["-p", str(port)]
    for option in ssh.options:
        argv += ["-o", option]
    destination = f"{spec.user}@{spec.host}" if spec.user else str(spec.host)
    remote = " ".join(shlex.quote(arg) for arg in bootstrap_command(ssh.python))
    return [*argv, "--", destination, remote]


def open_pool(
    spec: TargetSpec,
    *,
    ssh: SshConfig,
    workers: int,
    algorithms: tuple[str, ...] = ALGORITHMS,
    read_limit: int = 0,
) -> Pool:
    """Start the helpers for one machine and agree on the hash algorithm."""
    if spec.host is None:
        return start_pool(
            local_command(),
            label="local",
            scope="local",
            workers=workers,
            algorithms=algorithms,
            read_limit=read_limit,
            timeout=60,
        )
    return start_pool(
        ssh_command(spec, ssh),
        label=spec.key,
        scope=spec.key,
        workers=1,  # one SSH session serves the whole run
        algorithms=algorithms,
        read_limit=read_limit,
        timeout=ssh.connect_timeout + 30,
    )
