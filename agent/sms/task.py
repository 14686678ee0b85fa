"""The migration task's own settings, read from SMS and parsed into what the agent uses.

In the console the operator picks the directories to verify (CONSISTENCY_DIR), the ones left
out of migration and sync (MIGRATE_EXCLUDE_DIR, SYNC_EXCLUDE_DIR), the check mode and an I/O
limit; SMS stores each as a `config_value` string "parsed on the agent side". Parsing accepts a
comma-, semicolon- or newline-separated list or a JSON array and refuses anything else by name:
a guess here would verify the wrong directories.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import TASK_HOST, AgentConfig, DirectoryConfig
from ..errors import ConfigError, TaskSettingsError, UploadError

log = logging.getLogger(__name__)

DIRS = "CONSISTENCY_DIR"
EXCLUDE_KEYS = ("MIGRATE_EXCLUDE_DIR", "SYNC_EXCLUDE_DIR")
MODE = "CONSISTENCY_MODE"
IO_LIMIT = "LINUX_IO_LIMIT"
RECHECK = "CONSISTENCY_RECHECK"
KNOWN_KEYS = (DIRS, *EXCLUDE_KEYS, MODE, IO_LIMIT, RECHECK)

# Console wording for the two modes; "fast check" compares size and modification time.
_MODES = {
    "quick": "quick",
    "fast": "quick",
    "size_mtime": "quick",
    "content": "content",
    "full": "content",
    "checksum": "content",
    "hash": "content",
}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}
_SEPARATORS = re.compile(r"[,;\r\n]")
_MB = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:mb/s|mbps|mb)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class TaskSettings:
    """What the task supplied, from where and when; `values` keeps every key as SMS sent it."""

    task_id: str
    source: str  # the URL the settings were read from
    read_at: float  # seconds since the epoch
    values: tuple[tuple[str, str], ...]
    directories: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    mode: str | None = None  # "quick" or "content"; None: the task does not say
    io_limit_mb: float | None = None
    recheck: bool | None = None
    migration_ip: str | None = None
    target_ip: str | None = None

    @property
    def target_host(self) -> str | None:
        """The target's address: migration_ip, else target_server.ip."""
        return self.migration_ip or self.target_ip or None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSettings:
        tuples = ("values", "directories", "excludes")
        fields: dict[str, Any] = {
            k: (tuple(map(_pair_or_str, v)) if k in tuples else v) for k, v in data.items()
        }
        return cls(**fields)


def _pair_or_str(item: Any) -> Any:
    return tuple(item) if isinstance(item, list) else item


def parse_dir_list(key: str, value: str) -> tuple[str, ...]:
    """A directory list: `/a,/b`, `/a;/b`, one a line, or `["/a", "/b"]`; normalised, unique."""
    text = value.strip()
    if text.startswith("{"):
        raise _bad(key, value, "a JSON object is not a directory list; use a JSON array")
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise _bad(key, value, "it starts like a JSON array but is not valid JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _bad(key, value, "a JSON array of directory paths (strings) is expected")
    else:
        items = _SEPARATORS.split(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if not item.startswith("/") or "\0" in item:
            raise _bad(key, value, f"{item!r} is not an absolute path")
        path = posixpath.normpath(item)
        path = "/" + path.lstrip("/")  # normpath keeps a leading "//"
        if path not in out:
            out.append(path)
    return tuple(out)


def parse_mode(value: str) -> str:
    mode = _MODES.get(value.strip().lower())
    if mode is None:
        choices = ", ".join(sorted(_MODES))
        raise _bad(MODE, value, f"the agent knows {choices}")
    return mode


def parse_io_limit(value: str) -> float:
    match = _MB.match(value)
    if match is None:
        raise _bad(IO_LIMIT, value, "a number of MB/s is expected (0: no limit)")
    return float(match.group(1))


def parse_bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in _TRUE | _FALSE:
        raise _bad(key, value, "true or false is expected")
    return text in _TRUE


def _bad(key: str, value: str, why: str) -> TaskSettingsError:
    shown = value if len(value) <= 200 else value[:200] + "..."
    return TaskSettingsError(f"the task's {key} is {shown!r}: {why}")


def parse_settings(
    task_id: str,
    source: str,
    read_at: float,
    settings: Any,
    task: Any = None,
) -> TaskSettings:
    """The documented answers (configuration-setting, and the task when asked) as TaskSettings."""
    configurations = settings.get("configurations") if isinstance(settings, dict) else None
    if not isinstance(configurations, list):
        raise TaskSettingsError(f"{source} answered without a configurations list")
    values: dict[str, str] = {}
    for item in configurations:
        if isinstance(item, dict) and isinstance(item.get("config_key"), str):
            value = item.get("config_value")
            values[item["config_key"]] = value if isinstance(value, str) else ""
    excludes: list[str] = []
    for key in EXCLUDE_KEYS:
        excludes += [p for p in parse_dir_list(key, values.get(key, "")) if p not in excludes]
    migration_ip, target_ip = _addresses(task)
    return TaskSettings(
        task_id=task_id,
        source=source,
        read_at=read_at,
        values=tuple(values.items()),
        directories=parse_dir_list(DIRS, values.get(DIRS, "")),
        excludes=tuple(excludes),
        mode=parse_mode(values[MODE]) if values.get(MODE, "").strip() else None,
        io_limit_mb=parse_io_limit(values[IO_LIMIT]) if values.get(IO_LIMIT, "").strip() else None,
        recheck=parse_bool(RECHECK, values[RECHECK]) if RECHECK in values else None,
        migration_ip=migration_ip,
        target_ip=target_ip,
    )


def _addresses(task: Any) -> tuple[str | None, str | None]:
    if not isinstance(task, dict):
        return None, None
    target = task.get("target_server")
    ip = target.get("ip") if isinstance(target, dict) else None
    migration = task.get("migration_ip")
    return (
        migration.strip() or None if isinstance(migration, str) else None,
        ip.strip() or None if isinstance(ip, str) else None,
    )


def read_task_settings(
    get_json: Callable[[str], Any],
    task_url: Callable[[str, str], str],
    task_id: str,
    *,
    with_addresses: bool,
    clock: Callable[[], float] = time.time,
) -> TaskSettings:
    """GET configuration-setting (and the task for its addresses) with the client's auth and TLS."""
    url = task_url(task_id, "/configuration-setting")
    try:
        settings = get_json(url)
        task = get_json(task_url(task_id, "")) if with_addresses else None
    except UploadError as exc:
        raise TaskSettingsError(f"cannot read the settings of task {task_id}: {exc}") from exc
    return parse_settings(task_id, url, clock(), settings, task)


# --- applying the settings to the configuration -------------------------------------------

STORED_NAME = "task-settings.json"


def exclude_pattern(path: str) -> str:
    """A path as an anchored exclude pattern that matches exactly it (no glob)."""
    return "/" + re.sub(r"([\\*?\[])", r"\\\1", path.lstrip("/"))


def _with_excludes(directory: DirectoryConfig, excludes: tuple[str, ...]) -> DirectoryConfig:
    """The task's excluded paths inside this directory, as its own anchored patterns: they
    were never migrated, so on the target they would all count as missing."""
    base = directory.path.rstrip("/") + "/"
    inside = [exclude_pattern(p[len(base) :]) for p in excludes if p.startswith(base)]
    added = tuple(p for p in inside if p not in directory.exclude)
    return replace(directory, exclude=directory.exclude + added) if added else directory


def apply_settings(config: AgentConfig, task: TaskSettings) -> AgentConfig:
    """The configuration a run uses: the task's directories, excludes, target and I/O limit
    added to what the YAML says (the YAML's own entries win for the same directory)."""
    changes: dict[str, Any] = {}
    if config.directories_from_task:
        own = {d.path for d in config.directories}
        from_task = tuple(DirectoryConfig(p) for p in task.directories if p not in own)
        if not from_task and not config.directories:
            raise TaskSettingsError(
                f"task {task.task_id} lists no directories to verify (its {DIRS} is empty) "
                "and the configuration names none"
            )
        changes["directories"] = from_task + config.directories
    if config.excludes_from_task and task.excludes:
        source = changes.get("directories", config.directories)
        changes["directories"] = tuple(_with_excludes(d, task.excludes) for d in source)
    if config.target_from_task:
        host = task.target_host
        if host is None:
            raise TaskSettingsError(
                f"the target is the task's host ({config.target_root or TASK_HOST}), but task "
                f"{task.task_id} has neither migration_ip nor target_server.ip; set target"
            )
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        root = config.target_root
        changes["target"] = root.replace(TASK_HOST, host) if root else None
        source = changes.get("directories", config.directories)
        changes["directories"] = tuple(
            replace(d, target=d.target.replace(TASK_HOST, host)) if d.target else d for d in source
        )
    if config.mode is None and task.mode is not None:  # the YAML or --quick wins
        changes["mode"] = task.mode
    if task.io_limit_mb:  # the stricter of the two limits
        mine = config.limits.read_mb_per_s
        limit = min(mine, task.io_limit_mb) if mine else task.io_limit_mb
        changes["limits"] = replace(config.limits, read_mb_per_s=limit)
    return replace(config, **changes)


def store(state_dir: Path, task: TaskSettings) -> None:
    """Keep the last settings read, for the daemon to fall back on and `config check` to show."""
    path = state_dir / STORED_NAME
    temporary = path.with_suffix(".tmp")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(task.to_json(), ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot keep the task's settings in %s: %s", path, exc.strerror)


def stored(state_dir: Path, task_id: str | None) -> TaskSettings | None:
    """The last settings read for this task, or None."""
    try:
        data = json.loads((state_dir / STORED_NAME).read_text(encoding="utf-8"))
        task = TaskSettings.from_json(data)
    except (OSError, ValueError, TypeError):
        return None
    return task if task.task_id == task_id else None


def describe_settings(task: TaskSettings) -> dict[str, Any]:
    """What the task supplied, from where and when, for `config check` and the logs."""
    return {
        "source": task.source,
        "read_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(task.read_at)),
        "directories": list(task.directories),
        "excludes": list(task.excludes),
        "mode": task.mode,
        "io_limit_mb_per_s": task.io_limit_mb,
        "recheck": task.recheck,
        "migration_ip": task.migration_ip,
        "target_server_ip": task.target_ip,
        "values": dict(task.values),
    }


def changes(old: TaskSettings | None, new: TaskSettings) -> list[str]:
    """What differs between two reads, one phrase each, for the daemon's log."""
    if old is None:
        return []
    out = []
    for name in ("directories", "excludes"):
        before, after = getattr(old, name), getattr(new, name)
        added = [p for p in after if p not in before]
        removed = [p for p in before if p not in after]
        if added:
            out.append(f"{name} added: {', '.join(added)}")
        if removed:
            out.append(f"{name} removed: {', '.join(removed)}")
    for name in ("mode", "io_limit_mb", "recheck", "target_host"):
        if getattr(old, name) != getattr(new, name):
            out.append(f"{name}: {getattr(old, name)} -> {getattr(new, name)}")
    return out


def resolve(
    config: AgentConfig, read: Callable[[AgentConfig], TaskSettings] | None = None
) -> tuple[AgentConfig, TaskSettings | None]:
    """Read the task's settings when the configuration asks for them, keep them in the state
    directory and apply them; raises TaskSettingsError (or ConfigError) when they cannot be read."""
    if not config.reads_task:
        return config, None
    task = (read or read_from_sms)(config)
    store(config.state_dir, task)
    return apply_settings(config, task), task


def applied(config: AgentConfig) -> AgentConfig:
    """`config` with the task's settings applied, when it takes any from the task."""
    resolved, settings = resolve(config)
    if settings is not None:
        log.info("task %s: directories %s", settings.task_id, ", ".join(settings.directories))
    return resolved


def read_from_sms(config: AgentConfig) -> TaskSettings:
    """GET the settings with the upload's client: the same auth, TLS rules and error mapping."""
    from .client import open_client  # requests is slow to load; only runs reading a task need it

    if not config.endpoint or not config.task_id:
        missing = "endpoint" if not config.endpoint else "task_id"
        raise ConfigError(
            f"{missing} is not set, and the configuration takes settings from the task",
            source=config.origin,
        )
    client = open_client(config)
    return read_task_settings(
        client.get_json, client.task_url, config.task_id, with_addresses=config.target_from_task
    )
