"""Parsing the task's settings: every documented list form, and a clear refusal of the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.errors import ConfigError, TaskSettingsError
from agent.sms.client import open_client
from agent.sms.emulator import Emulator
from agent.sms.task import (
    TaskSettings,
    apply_settings,
    changes,
    parse_dir_list,
    parse_io_limit,
    parse_mode,
    parse_settings,
    read_task_settings,
)

from .sms_helpers import TOKEN, make_config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/path,/path/test", ("/path", "/path/test")),
        ("/a; /b ;", ("/a", "/b")),
        ("/a\n/b\r\n/c\n", ("/a", "/b", "/c")),
        ('["/a", "/b/"]', ("/a", "/b")),
        ("/a/./b/../c,/a/c,//a/c/", ("/a/c",)),
        ("/srv/my data,/srv/ünï", ("/srv/my data", "/srv/ünï")),
        ("", ()),
        ("  ", ()),
        ("[]", ()),
        ("/", ("/",)),
    ],
)
def test_dir_lists(value: str, expected: tuple[str, ...]) -> None:
    assert parse_dir_list("CONSISTENCY_DIR", value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("var/log", "'var/log' is not an absolute path"),
        ("/a,relative", "'relative' is not an absolute path"),
        ('["/a", 3]', "JSON array of directory paths"),
        ('["/a"', "not valid JSON"),
        ('{"dirs": ["/a"]}', "a JSON object is not a directory list"),
        ("/a|/b,~/c", "'~/c' is not an absolute path"),
    ],
)
def test_bad_dir_lists_name_key_and_value(value: str, message: str) -> None:
    with pytest.raises(TaskSettingsError) as caught:
        parse_dir_list("CONSISTENCY_DIR", value)
    assert f"the task's CONSISTENCY_DIR is {value!r}" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "mode"),
    [("quick", "quick"), (" FAST ", "quick"), ("content", "content"), ("checksum", "content")],
)
def test_modes(value: str, mode: str) -> None:
    assert parse_mode(value) == mode


def test_unknown_mode_and_io_limit_are_refused() -> None:
    with pytest.raises(TaskSettingsError, match="CONSISTENCY_MODE is 'sometimes'"):
        parse_mode("sometimes")
    assert parse_io_limit("50") == 50.0 and parse_io_limit("12.5 MB/s") == 12.5
    with pytest.raises(TaskSettingsError, match="LINUX_IO_LIMIT is 'fast'"):
        parse_io_limit("fast")


def test_parse_settings_merges_excludes_and_reads_addresses() -> None:
    settings = {
        "task_id": "T",
        "configurations": [
            {"config_key": "CONSISTENCY_DIR", "config_value": "/srv/a,/srv/b"},
            {"config_key": "MIGRATE_EXCLUDE_DIR", "config_value": "/srv/a/cache"},
            {"config_key": "SYNC_EXCLUDE_DIR", "config_value": "/srv/a/cache;/srv/b/tmp"},
            {"config_key": "CONSISTENCY_MODE", "config_value": "quick"},
            {"config_key": "CONSISTENCY_RECHECK", "config_value": "true"},
            {"config_key": "LINUX_CPU_LIMIT", "config_value": "50"},
        ],
    }
    task = {"migration_ip": "", "target_server": {"ip": "192.168.0.8"}}
    parsed = parse_settings("T", "http://x/v3/tasks/T/configuration-setting", 5.0, settings, task)
    assert parsed.directories == ("/srv/a", "/srv/b")
    assert parsed.excludes == ("/srv/a/cache", "/srv/b/tmp")
    assert (parsed.mode, parsed.recheck, parsed.io_limit_mb) == ("quick", True, None)
    assert parsed.target_host == "192.168.0.8"
    assert dict(parsed.values)["LINUX_CPU_LIMIT"] == "50"
    assert TaskSettings.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed
    with pytest.raises(TaskSettingsError, match="without a configurations list"):
        parse_settings("T", "http://x", 0.0, {"task_id": "T"})


def test_read_from_the_emulator_with_the_upload_auth(tmp_path: Path) -> None:
    settings = {"CONSISTENCY_DIR": "/a,/b", "MIGRATE_EXCLUDE_DIR": "/a/x"}
    with Emulator(token=TOKEN, settings=settings, migration_ip="10.0.0.8") as emu:
        client = open_client(make_config(tmp_path, emu.url))
        read = read_task_settings(client.get_json, client.task_url, "T", with_addresses=True)
        assert (read.directories, read.excludes, read.target_host) == (
            ("/a", "/b"),
            ("/a/x",),
            "10.0.0.8",
        )
        assert read.source == emu.url + "/v3/tasks/T/configuration-setting"
        assert [r.headers.get("X-Auth-Token") for r in emu.requests] == [TOKEN, TOKEN]
        with pytest.raises(TaskSettingsError, match="cannot read the settings of task nope: .*404"):
            read_task_settings(client.get_json, client.task_url, "nope", with_addresses=False)
        bad = open_client(make_config(tmp_path, emu.url, auth={"token": "wrong-token-123"}))
        with pytest.raises(TaskSettingsError, match="403") as caught:
            read_task_settings(bad.get_json, bad.task_url, "T", with_addresses=False)
        assert "wrong-token-123" not in str(caught.value)


def _config(**data: object) -> AgentConfig:
    return parse_config({"endpoint": "https://sms.example.com", "task_id": "T", **data}, source="t")


def _settings(**fields: object) -> TaskSettings:
    return TaskSettings(
        "T", "https://sms.example.com/v3/tasks/T/configuration-setting", 0.0, (), **fields
    )  # type: ignore[arg-type]


def test_from_task_in_the_config_and_its_defaults() -> None:
    config = _config(directories="from_task")
    assert config.directories_from_task and config.directories == ()
    assert config.excludes_from_task and config.target_from_task  # no target: the task's host
    assert config.target_root == "ssh://root@{task}/"
    mixed = _config(
        directories=["from_task", "/srv/extra"], exclude_from_task=False, target="/mnt/t"
    )
    assert mixed.directories_from_task and [d.path for d in mixed.directories] == ["/srv/extra"]
    assert not mixed.excludes_from_task and not mixed.target_from_task
    assert not mixed.with_overrides({"directories": ["/srv/x"]}).directories_from_task
    assert not _config(directories=["/a"]).reads_task
    with pytest.raises(ConfigError, match=r"target: \{task\} stands for the task's host"):
        _config(target="/mnt/{task}")


def test_apply_settings_adds_the_task_to_the_config() -> None:
    task = _settings(directories=("/srv/a", "/srv/b"), excludes=("/srv/a/cache", "/srv/a/x*y", "/other"),
                     migration_ip="fd00::8", io_limit_mb=20.0)  # fmt: skip
    config = _config(directories=["from_task", {"path": "/srv/b", "exclude": ["*.tmp"]}])
    applied = apply_settings(config, task)
    assert [(d.path, d.exclude) for d in applied.directories] == [
        ("/srv/a", ("/cache", "/x\\*y")),
        ("/srv/b", ("*.tmp",)),  # the YAML's own entry wins, and gains no exclude outside it
    ]
    assert applied.target == "ssh://root@[fd00::8]/"
    assert applied.limits.read_mb_per_s == 20.0
    stricter = apply_settings(_config(directories="from_task", limits={"read_mb_per_s": 5}), task)
    assert stricter.limits.read_mb_per_s == 5.0


@pytest.mark.parametrize(
    ("config", "task", "message"),
    [
        (
            _config(directories="from_task", target="/mnt"),
            _settings(),
            "lists no directories to verify",
        ),
        (
            _config(directories="from_task"),
            _settings(directories=("/a",)),
            "has neither migration_ip nor target_server.ip",
        ),
    ],
)
def test_apply_settings_refuses_what_cannot_be_verified(
    config: AgentConfig, task: TaskSettings, message: str
) -> None:
    with pytest.raises(TaskSettingsError, match=message):
        apply_settings(config, task)


def test_changes_name_what_was_added_and_removed() -> None:
    old = _settings(directories=("/a", "/b"), mode="content")
    new = _settings(directories=("/a", "/c"), mode="quick")
    assert changes(old, new) == [
        "directories added: /c",
        "directories removed: /b",
        "mode: content -> quick",
    ]
    assert changes(None, new) == []
