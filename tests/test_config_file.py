"""The configuration file: found, read, its read and YAML errors naming it, relative paths taken
from its folder, and a warning for an inline token others can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config_file import find_config, load_config
from agent.errors import ConfigError


def test_inline_token_in_a_world_readable_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("auth:\n  token: s3cret-value\n")
    path.chmod(0o644)
    config = load_config(path)
    assert any("readable by group or others" in w for w in config.warnings)
    assert "s3cret-value" not in repr(config)
    path.chmod(0o600)
    assert not load_config(path).warnings


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("directories: [/var\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line 2"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_relative_paths_in_a_file_are_from_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "agent.yaml"
    path.parent.mkdir()
    path.write_text("directories:\n  - path: demo/src\n    target: demo/dst\nstate_dir: st\n")
    config = load_config(path)
    assert config.directories[0].path == str(tmp_path / "conf" / "demo" / "src")
    assert config.directories[0].target == str(tmp_path / "conf" / "demo" / "dst")
    assert config.state_dir == tmp_path / "conf" / "st"


def test_an_explicit_file_then_the_environment_name_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMSAGENT_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config(str(tmp_path / "given.yaml")) == tmp_path / "given.yaml"
    assert find_config(None) == tmp_path / "env.yaml"


def test_no_file_means_the_defaults() -> None:
    config = load_config(None)
    assert config.origin == "<defaults>" and config.directories == ()
