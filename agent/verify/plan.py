"""Each configured directory resolved once, before any helper starts, into what verifying
it needs: where its source and target are and which paths are excluded."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import AgentConfig, DirectoryConfig
from ..errors import ConfigError
from .excludes import ExcludeRules
from .targets import TargetSpec, parse_target


@dataclass(frozen=True)
class DirPlan:
    """One directory to verify, complete: the engine needs nothing else."""

    dir_check: str  # the configured path, as reported to SMS
    source: bytes  # the same path on this machine
    target_text: str  # the target as configured, for results and messages
    target: TargetSpec
    rules: ExcludeRules  # the configured excludes and the agent's own state directory
    one_file_system: bool
    quick: int | None = None  # quick mode's modify window in seconds; None: compare content


def check_targets(config: AgentConfig, directories: Sequence[DirectoryConfig]) -> None:
    if not directories:
        raise ConfigError(
            "no directories to verify: give --dir or list them under `directories:`",
            source=config.source,
        )
    lacking = [d.path for d in directories if config.target_for(d) is None]
    if lacking:
        raise ConfigError(
            f"no target for {', '.join(lacking)}: give --target or set `target:`",
            source=config.source,
        )


def state_dir_rule(state_dir: Path, directory: str) -> str | None:
    """An anchored exclude for the agent's own state when it lies inside `directory`."""
    state = os.path.realpath(state_dir)
    base = os.path.realpath(directory)
    if state == base:
        return None
    if not state.startswith(base.rstrip("/") + "/"):
        return None
    rel = state[len(base.rstrip("/")) + 1 :]
    return "/" + glob.escape(rel) + "/"


def exclude_rules(config: AgentConfig, directory: DirectoryConfig) -> ExcludeRules:
    patterns = list(config.exclude) + list(directory.exclude)
    own = state_dir_rule(config.state_dir, directory.path)
    if own:
        patterns.append(own)
    return ExcludeRules(patterns, base=directory.path)


def plan_directories(config: AgentConfig, directories: Sequence[DirectoryConfig]) -> list[DirPlan]:
    """A plan per directory, in order; a directory without a target is a ConfigError."""
    check_targets(config, directories)
    plans = []
    for directory in directories:
        target_text = config.target_for(directory) or ""
        plans.append(
            DirPlan(
                dir_check=directory.path,
                source=os.fsencode(directory.path),
                target_text=target_text,
                target=parse_target(target_text),
                rules=exclude_rules(config, directory),
                one_file_system=config.one_file_system,
                quick=config.modify_window if config.verify_mode == "quick" else None,
            )
        )
    return plans
