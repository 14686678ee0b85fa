"""The configuration's file: find it, read it (the I/O step, where read and YAML errors become a
`ConfigError` naming the file), and write the effective configuration back as YAML.

Checking the keys is `config.parse_config`'s job; this module owns the YAML library.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import AgentConfig, describe, parse_config
from .errors import ConfigError

SYSTEM_CONFIG = Path("/etc/smsagent/agent.yaml")
LOCAL_CONFIG = Path("config/agent.yaml")


def find_config(explicit: str | None) -> Path | None:
    """--config, then $SMSAGENT_CONFIG, then /etc/smsagent/agent.yaml, then config/agent.yaml."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("SMSAGENT_CONFIG")
    if from_env:
        return Path(from_env)
    for candidate in (SYSTEM_CONFIG, LOCAL_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None) -> AgentConfig:
    """Read and parse a config file; with no file, the defaults."""
    if path is None:
        return parse_config({}, source="<defaults>")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", source=str(path)) from None
    except PermissionError:
        raise ConfigError("permission denied while reading", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"not valid YAML{where}: {problem}", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("the top level must be a mapping of keys", source=str(path))
    config = parse_config(data, source=str(path), base=str(path.resolve().parent))
    if config.auth.token is not None and _readable_by_others(path):
        warning = (
            f"{path}: auth.token is written inline and the file is readable by group or others; "
            "prefer auth.token_file with mode 0600"
        )
        config = replace(config, warnings=config.warnings + (warning,))
    return config


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def render(config: AgentConfig) -> str:
    """The effective configuration as YAML, secrets masked."""
    return to_yaml(describe(config))


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()
