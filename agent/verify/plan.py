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
    source_text: str  # the source as configured (the path itself when it is read here)
    source: TargetSpec
    target_text: str  # the target as configured, for results and messages
    target: TargetSpec
    rules: ExcludeRules  # the configured excludes and the agent's own state directory
    one_file_system: bool
    quick: int | None = None  # quick mode's modify window in seconds; None: compare content


def check_targets(config: AgentConfig, directories: Sequence[DirectoryConfig]) -> None:
    if not directories:
        raise ConfigError(
            "no directories to verify: give --dir or list them under `directories:`",
            source=config.origin,
        )
    lacking = [d.path for d in directories if config.target_for(d) is None]
    if lacking:
        raise ConfigError(
            f"no target for {', '.join(lacking)}: give --target or set `target:`",
            source=config.origin,
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


def exclude_rules(
    config: AgentConfig, directory: DirectoryConfig, sides: Sequence[TargetSpec] = ()
) -> ExcludeRules:
    """The configured patterns, and the agent's own state directory where it lies inside
    the tree of a side on this machine (`sides`; by default the directory's own path)."""
    patterns = list(config.exclude) + list(directory.exclude)
    local = [os.fsdecode(s.path) for s in sides if s.host is None] if sides else [directory.path]
    for path in local:
        own = state_dir_rule(config.state_dir, path)
        if own and own not in patterns:
            patterns.append(own)
    return ExcludeRules(patterns, base=directory.path)


def plan_directories(config: AgentConfig, directories: Sequence[DirectoryConfig]) -> list[DirPlan]:
    """A plan per directory, in order; a directory without a target is a ConfigError."""
    check_targets(config, directories)
    plans = []
    for directory in directories:
        source_text = config.source_for(directory)
        target_text = config.target_for(directory) or ""
        source, target = parse_target(source_text), parse_target(target_text)
        plans.append(
            DirPlan(
                dir_check=directory.path,
                source_text=source_text,
                source=source,
                target_text=target_text,
                target=target,
                rules=exclude_rules(config, directory, (source, target)),
                one_file_system=config.one_file_system,
                quick=config.modify_window if config.verify_mode == "quick" else None,
            )
        )
    return plans
