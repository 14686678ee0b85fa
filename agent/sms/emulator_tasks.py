"""The migration tasks' own settings as the emulator serves them (configuration-setting, task).

The settings come from the command line, from a small JSON file that is read again whenever it
changes (so an operator can "add a directory in the console" while the emulator runs), or from
tests through `set_setting`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict

# The documented reply of GET /v3/tasks/{task_id}/configuration-setting names the migration type.
MIGRATE_TYPE = "MIGRATE_FILE"

Settings = Dict[str, str]


class SettingsFileError(ValueError):
    """The settings file cannot be read or does not have the documented shape."""


def read_settings_file(path: Path) -> tuple[Settings, str | None, str | None]:
    """The file's settings and addresses; its shape is in the README (Try it with the emulator)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsFileError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f"{path}: expected a JSON object")
    configurations = data.get("configurations", {})
    settings: Settings = {}
    if isinstance(configurations, dict):
        items = list(configurations.items())
    elif isinstance(configurations, list):  # the API's own shape, pasted from a real answer
        items = [
            (c.get("config_key"), c.get("config_value"))
            for c in configurations
            if isinstance(c, dict)
        ]
    else:
        raise SettingsFileError(f"{path}: configurations must be an object or a list")
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, str):
            raise SettingsFileError(f"{path}: config_key and config_value must be strings")
        settings[key] = value
    ips = [data.get(name) for name in ("migration_ip", "target_server_ip")]
    if any(ip is not None and not isinstance(ip, str) for ip in ips):
        raise SettingsFileError(f"{path}: migration_ip and target_server_ip must be strings")
    return settings, ips[0], ips[1]


class TaskBook:
    """Every task the emulator knows shares these settings and addresses."""

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        migration_ip: str | None = None,
        target_ip: str | None = None,
        settings_file: Path | None = None,
    ):
        self._lock = threading.Lock()
        self._overrides: Settings = dict(settings or {})  # command line and tests win
        self._migration_ip = migration_ip
        self._target_ip = target_ip
        self._file = settings_file
        self._file_stamp: tuple[int, int] | None = None
        self._from_file: tuple[Settings, str | None, str | None] = ({}, None, None)
        if settings_file is not None:
            self._reload()  # a bad file is an error at start, not at the first request

    def set_setting(self, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = value

    def set_addresses(self, migration_ip: str | None, target_ip: str | None) -> None:
        with self._lock:
            self._migration_ip, self._target_ip = migration_ip, target_ip

    def settings(self) -> Settings:
        with self._lock:
            self._reload()
            return {**self._from_file[0], **self._overrides}

    def addresses(self) -> tuple[str, str]:
        with self._lock:
            self._reload()
            migration = self._migration_ip or self._from_file[1] or ""
            target = self._target_ip or self._from_file[2] or ""
            return migration, target

    def _reload(self) -> None:
        if self._file is None:
            return
        try:
            st = os.stat(self._file)
        except OSError as exc:
            raise SettingsFileError(f"{self._file}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._file_stamp:
            self._from_file = read_settings_file(self._file)
            self._file_stamp = stamp


def settings_document(task_id: str, settings: Settings, key: str | None) -> dict[str, Any]:
    """The documented reply of GET configuration-setting (`?config_key=` keeps one key)."""
    return {
        "task_id": task_id,
        "migrate_type": MIGRATE_TYPE,
        "configurations": [
            {"config_key": k, "config_value": v, "config_status": "SUCCESS"}
            for k, v in settings.items()
            if key is None or k == key
        ],
    }


def task_document(task_id: str, migration_ip: str, target_ip: str) -> dict[str, Any]:
    """The part of GET /v3/tasks/{task_id} the agent reads, in the SDK's ShowTaskResponse shape."""
    return {
        "id": task_id,
        "name": f"emulated-{task_id}",
        "type": MIGRATE_TYPE,
        "os_type": "LINUX",
        "state": "RUNNING",
        "migration_ip": migration_ip,
        "target_server": {
            "id": f"target-{task_id}",
            "vm_id": f"vm-{task_id}",
            "name": f"target-{task_id}",
            "ip": target_ip,
            "os_type": "LINUX",
        },
    }
