"""Read the agent's YAML configuration and turn it into a validated, frozen `AgentConfig`.

The dataclasses below are the table of keys: each key is declared once, as a field made with
`v.key(default, reader, ...)` (its default, the reader from `config_values` that checks it,
how `describe()` shows it, the command-line option that overrides it). Parsing, `describe()`
and `with_overrides` all walk these fields, so adding a key is one line here, plus a reader
in `config_values` if none fits and a rule in `_check` if it depends on other keys.

Two steps, as in pypa/build: `config_file.load_config` only does I/O and turns read and parse
errors into `ConfigError` naming the file; `parse_config` here is pure and checks every key,
reporting all problems at once, each with its dotted key and a "did you mean" hint for typos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import config_values as v
from .config_values import Reader
from .config_values import is_loopback as is_loopback
from .config_values import join_target as join_target
from .config_values import normalise_dir as normalise_dir
from .config_values import parse_duration as parse_duration
from .config_values import parse_window as parse_window
from .errors import ConfigError
from .secret import Secret

SYSTEM_STATE_DIR = Path("/var/lib/smsagent")
# `directories: from_task` (or an item of the list) takes the task's CONSISTENCY_DIR at each run.
FROM_TASK = "from_task"
# In an ssh:// target, the host taken from the task (migration_ip, else target_server.ip).
TASK_HOST = "{task}"
# The target when directories come from the task and no target is set: the task's own.
TASK_TARGET = "ssh://root@{task}/"
# content: same size and the same xxh3-128 digest; quick: same size and mtime, nothing read.
MODES = ("content", "quick")


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/smsagent for root, else the user's state home."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "smsagent"


def _port(r: Reader, value: Any, key: str) -> int | None:
    return v.integer(minimum=1, maximum=65535)(r, value, key) if value else None  # 0: unset


def _secret(r: Reader, value: Any, key: str) -> Secret | None:
    text = v.string(r, value, key)
    return Secret(text) if text else None


def _show_window(value: Any, config: AgentConfig) -> Any:
    return v.format_window(value)


def _show_directories(value: Any, config: AgentConfig) -> Any:
    own = [
        {
            "path": d.path,
            "source": config.source_for(d),
            "target": config.target_for(d),
            "exclude": list(d.exclude),
        }
        for d in value
    ]
    return [FROM_TASK, *own] if config.directories_from_task else own


def _mode(r: Reader, value: Any, key: str) -> str | None:
    text = v.string(r, value, key)
    if text is not None and text not in MODES:
        r.error(key, f"must be {' or '.join(MODES)}, not {text!r}")
        return None
    return text


@dataclass(frozen=True)
class DirectoryConfig:
    """One directory to verify, with its own target and excludes."""

    path: str = v.key(read=v.directory, required="is required")  # the `dir_check` sent to SMS
    source: str | None = v.key(read=v.target)  # None: derived from the global source root
    target: str | None = v.key(read=v.target)  # None: derived from the global target root
    exclude: tuple[str, ...] = v.key((), v.patterns)


@dataclass(frozen=True)
class IamConfig:
    endpoint: str = v.key("", v.string, required="is required for IAM password login")
    domain: str = v.key("", v.string, required="is required for IAM password login")
    user: str = v.key("", v.string, required="is required for IAM password login")
    password_file: Path = v.key(Path(), v.path, required="is required for IAM password login")
    project: str | None = v.key(read=v.string)


@dataclass(frozen=True)
class AuthConfig:
    token: Secret | None = v.key(read=_secret)  # inline in the YAML (discouraged)
    token_file: Path | None = v.key(read=v.path)
    iam: IamConfig | None = v.section(IamConfig, optional=True)
    ak: str | None = v.key(read=v.string)
    sk_file: Path | None = v.key(read=v.path)
    domain_id: str | None = v.key(read=v.string)
    project_id: str | None = v.key(read=v.string)


@dataclass(frozen=True)
class TlsConfig:
    ca_bundle: Path | None = v.key(read=v.path)


@dataclass(frozen=True)
class SshConfig:
    identity_file: Path | None = v.key(read=v.path)
    port: int | None = v.key(read=_port)
    options: tuple[str, ...] = v.key((), v.patterns)
    connect_timeout: float = v.key(10.0, v.duration())
    python: str = v.key("python3", v.string)


@dataclass(frozen=True)
class ScheduleConfig:
    interval: float = v.key(6 * 3600.0, v.duration(minimum=1))
    jitter: float = v.key(300.0, v.duration())
    # minutes after midnight: (start, end)
    window: tuple[int, int] | None = v.key(read=v.window, show=_show_window)
    watch: bool = v.key(False, v.boolean)
    debounce: float = v.key(60.0, v.duration())


@dataclass(frozen=True)
class LimitsConfig:
    workers: int = v.key(0, v.integer(minimum=0), cli="--workers")  # 0: from the CPU count
    read_mb_per_s: float = v.key(0.0, v.number())  # 0: unlimited


@dataclass(frozen=True)
class UploadConfig:
    connect_timeout: float = v.key(5.0, v.duration(minimum=0.001))
    read_timeout: float = v.key(30.0, v.duration(minimum=0.001))
    max_age: float = v.key(7 * 86400.0, v.duration(minimum=1))  # then moved to dead letters
    backoff_max: float = v.key(600.0, v.duration(minimum=0.01))


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = v.key(True, v.boolean)
    max_entries: int = v.key(5_000_000, v.integer(minimum=1000))


@dataclass(frozen=True)
class MetricsConfig:
    textfile: Path | None = v.key(read=v.path)  # a node_exporter textfile-collector file


def _directories(r: Reader, value: Any, key: str) -> tuple[DirectoryConfig, ...]:
    """A list of paths or of {path, target, exclude} mappings, each path listed once."""
    seen: set[str] = set()
    out = []
    for index, item in enumerate(v.listed(r, value, key, "directories")):
        item_key = f"{key}[{index}]"
        if item == FROM_TASK:  # a marker, taken out by _take_from_task
            out.append(DirectoryConfig(FROM_TASK))
            continue
        if isinstance(item, Mapping):
            directory = v.read_section(r, DirectoryConfig, item, item_key)
        else:
            path = v.directory(r, item, item_key)
            directory = DirectoryConfig(path) if path is not None else None
        if directory is None or not directory.path:
            continue
        if directory.path in seen:
            r.error(item_key, f"{directory.path} is listed twice")
            continue
        seen.add(directory.path)
        out.append(directory)
    return tuple(out)


@dataclass(frozen=True)
class AgentConfig:
    origin: str = "<defaults>"  # the file it came from, for messages; not a key
    endpoint: str | None = v.key(read=v.string, cli="--endpoint")
    task_id: str | None = v.key(read=v.task_id, cli="--task-id")
    allow_insecure_http: bool = v.key(False, v.boolean)
    state_dir: Path = v.key(read=v.path, factory=default_state_dir, cli="--state-dir")
    # None: each directory is read at its own path on this machine.
    source: str | None = v.key(read=v.target, cli="--source")
    target: str | None = v.key(read=v.target, cli="--target")
    one_file_system: bool = v.key(False, v.boolean)
    exclude: tuple[str, ...] = v.key((), v.patterns, cli="--exclude", cli_extends=True)
    # A --dir replaces the configured list, so per-directory targets go with it.
    directories: tuple[DirectoryConfig, ...] = v.key(
        (), _directories, show=_show_directories, cli="--dir"
    )
    # Set by `directories: from_task`; not a key of its own.
    directories_from_task: bool = False
    exclude_from_task: bool | None = v.key(read=v.boolean)  # None: as directories_from_task
    mode: str | None = v.key(read=_mode, cli="--quick")  # None: the task's, else content
    # Seconds two mtimes may differ in quick mode, as rsync's --modify-window (0: same second).
    modify_window: int = v.key(0, v.integer(minimum=0), cli="--modify-window")
    auth: AuthConfig = v.section(AuthConfig)
    tls: TlsConfig = v.section(TlsConfig)
    ssh: SshConfig = v.section(SshConfig)
    schedule: ScheduleConfig = v.section(ScheduleConfig)
    limits: LimitsConfig = v.section(LimitsConfig)
    upload: UploadConfig = v.section(UploadConfig)
    cache: CacheConfig = v.section(CacheConfig)
    metrics: MetricsConfig = v.section(MetricsConfig)
    warnings: tuple[str, ...] = ()  # not a key

    def source_for(self, directory: DirectoryConfig) -> str:
        """Where a directory is read: its own `source`, the global root with the path
        appended, or the path itself on this machine."""
        if directory.source is not None:
            return directory.source
        if self.source is None:
            return directory.path
        return join_target(self.source, directory.path)

    def target_for(self, directory: DirectoryConfig) -> str | None:
        """The target of one directory: its own, or the global root with the path appended."""
        if directory.target is not None:
            return directory.target
        if self.target is None:
            return None
        return join_target(self.target, directory.path)

    @property
    def verify_mode(self) -> str:
        return self.mode or MODES[0]

    @property
    def excludes_from_task(self) -> bool:
        if self.exclude_from_task is None:
            return self.directories_from_task
        return self.exclude_from_task

    @property
    def target_root(self) -> str | None:
        """The global target, TASK_TARGET when the task gives directories and none is set."""
        if self.target is None and self.directories_from_task:
            return TASK_TARGET
        return self.target

    @property
    def target_from_task(self) -> bool:
        targets = [self.target_root, *(d.target for d in self.directories)]
        return any(t is not None and TASK_HOST in t for t in targets)

    @property
    def reads_task(self) -> bool:
        """Whether a run must first read the task's settings from SMS."""
        return self.directories_from_task or self.excludes_from_task or self.target_from_task

    def with_overrides(self, options: Mapping[str, Any]) -> AgentConfig:
        """Apply command-line options, given by dotted key (`limits.workers`); None or an
        empty list means not given. They are validated like the file's keys."""
        r = Reader("command line")
        updated = self
        for dotted, value in options.items():
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            if dotted == "directories":  # --dir replaces the list, the task's included
                updated = replace(updated, directories_from_task=False)
            updated = _take_from_task(v.override(r, updated, dotted, value))
        r.raise_if_errors()
        _check(r, updated)
        r.raise_if_errors()
        return updated


def _take_from_task(config: AgentConfig) -> AgentConfig:
    """The `from_task` marker out of the list, into directories_from_task."""
    own = tuple(d for d in config.directories if d.path != FROM_TASK)
    if len(own) == len(config.directories):
        return config
    return replace(config, directories=own, directories_from_task=True)


def _check(r: Reader, config: AgentConfig) -> None:
    """The rules that span keys."""
    for dotted, where in [("target", config.target)] + [
        (f"directories ({d.path})", d.target) for d in config.directories
    ]:
        if where and TASK_HOST in where and not where.startswith("ssh://"):
            r.error(dotted, f"{TASK_HOST} stands for the task's host in an ssh:// URL only")
    if config.schedule.watch:
        _check_watchable(r, config)
    auth = config.auth
    if (auth.ak is None) != (auth.sk_file is None):
        r.error("auth.ak" if auth.ak is None else "auth.sk_file",
                "auth.ak and auth.sk_file go together")  # fmt: skip
    # A token or password never travels over plain HTTP, except to this machine or when
    # explicitly allowed.
    iam = auth.iam
    if iam is not None and iam.endpoint:
        parts = urlsplit(iam.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.error("auth.iam.endpoint", f"must be an https:// URL, not {iam.endpoint!r}")
        elif _plain_http_elsewhere(config, parts.scheme, parts.hostname):
            r.error("auth.iam.endpoint", f"{iam.endpoint} is plain HTTP: the password "
                    "would travel unencrypted; use https://")  # fmt: skip
    if not config.endpoint:
        return
    parts = urlsplit(config.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.error("endpoint", f"must be an https:// URL, not {config.endpoint!r}")
    elif _plain_http_elsewhere(config, parts.scheme, parts.hostname):
        r.error(
            "endpoint",
            f"{config.endpoint} is plain HTTP to another host, which would expose the token; "
            "use https:// or set allow_insecure_http: true",
        )


def _check_watchable(r: Reader, config: AgentConfig) -> None:
    """inotify sees this machine's files only: a source read elsewhere cannot be watched."""
    if config.source is not None and config.source.startswith("ssh://"):
        r.error("schedule.watch", f"cannot watch the remote source {config.source}: "
                "inotify sees only this machine's files; set schedule.watch: false "
                "(schedule.interval verifies it)")  # fmt: skip
        return
    for directory in config.directories:
        source = config.source_for(directory)
        if source == directory.path:
            continue
        where = "the remote source" if source.startswith("ssh://") else "the source"
        r.error("schedule.watch", f"cannot watch {where} {source} of {directory.path}: "
                "only a directory read at its own path on this machine can be watched; "
                "set schedule.watch: false (schedule.interval verifies it)")  # fmt: skip
        return


def check_upload(config: AgentConfig) -> None:
    """An endpoint without a task_id is a half-configured upload: a configuration error, not
    a quiet "nothing uploaded". No endpoint at all means verify and print only."""
    if config.endpoint and not config.task_id:
        raise ConfigError(
            "endpoint is set but task_id is not: set task_id (or --task-id, "
            "$SMSAGENT_TASK_ID), or remove endpoint to verify and print only",
            source=config.origin,
            key="task_id",
        )


def _plain_http_elsewhere(config: AgentConfig, scheme: str, host: str) -> bool:
    return scheme == "http" and not config.allow_insecure_http and not is_loopback(host)


def parse_config(
    data: Mapping[str, Any], *, source: str = "<config>", base: str | None = None
) -> AgentConfig:
    """Validate a parsed YAML mapping; raises one ConfigError listing every problem.
    `base` is the folder relative paths are taken from (the config file's)."""
    r = Reader(source, base)
    config = _take_from_task(replace(v.read_section(r, AgentConfig, data, ""), origin=source))
    _check(r, config)
    r.raise_if_errors()
    warnings = []
    if config.allow_insecure_http and config.endpoint and config.endpoint.startswith("http://"):
        warnings.append(
            f"{source}: allow_insecure_http is on: the token travels unencrypted"
            f" to {config.endpoint}"
        )
    return replace(config, warnings=tuple(warnings))


def describe(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked, for `config check`."""
    return {"config_file": config.origin, **v.show_section(config, config)}
