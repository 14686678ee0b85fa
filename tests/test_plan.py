"""Each configured directory resolved once into a complete plan, before any helper starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.verify.plan import plan_directories, state_dir_rule
from agent.verify.targets import TargetSpec


def test_a_plan_holds_everything_the_engine_needs(tmp_path: Path) -> None:
    config = parse_config({
        "target": "ssh://root@h:2222/mnt",
        "exclude": ["*.tmp"],
        "one_file_system": True,
        "state_dir": str(tmp_path / "srv" / "state"),
        "directories": [{"path": str(tmp_path / "srv"), "exclude": ["/cache"]},
                        {"path": "/opt", "target": "/backup/opt"}],
    })  # fmt: skip
    srv, opt = plan_directories(config, config.directories)
    assert srv.dir_check == str(tmp_path / "srv") and srv.source == TargetSpec(
        path=bytes(tmp_path / "srv")
    )
    assert srv.target_text == f"ssh://root@h:2222/mnt{tmp_path}/srv"
    assert srv.target == TargetSpec(path=f"/mnt{tmp_path}/srv".encode(), host="h", user="root",
                                    port=2222)  # fmt: skip
    assert srv.rules.patterns == ("*.tmp", "/cache", "/state/")  # its own state, excluded
    assert srv.one_file_system
    assert srv.rules.excluded(b"state", True) and srv.rules.excluded(b"cache", True)
    assert (opt.target_text, opt.target) == ("/backup/opt", TargetSpec(path=b"/backup/opt"))
    assert opt.rules.patterns == ("*.tmp",)


def test_a_non_utf8_directory_keeps_its_bytes() -> None:
    config = parse_config({"target": "/t", "directories": [{"path": "/srv/caf\udce9"}]})
    [plan] = plan_directories(config, config.directories)
    assert plan.source.path == b"/srv/caf\xe9" and plan.target.path == b"/t/srv/caf\xe9"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"target": "/t"}, "no directories to verify"),
        ({"directories": [{"path": "/a", "target": "/t"}, {"path": "/b"}, {"path": "/c"}]},
         "no target for /b, /c"),
    ],
)  # fmt: skip
def test_a_plan_needs_directories_and_targets(raw: dict, message: str) -> None:
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=message):
        plan_directories(config, config.directories)


@pytest.mark.parametrize(
    ("state", "directory", "rule"),
    [
        ("/srv/app/state", "/srv", "/app/state/"),
        ("/srv/st[1]", "/srv/", "/st[[]1]/"),  # escaped: the rule names this one path
        ("/srv", "/srv", None),  # verifying the state directory itself excludes nothing
        ("/var/lib/smsagent", "/srv", None),
        ("/srvx/state", "/srv", None),
    ],
)
def test_state_dir_rule(state: str, directory: str, rule: str | None) -> None:
    assert state_dir_rule(Path(state), directory) == rule
