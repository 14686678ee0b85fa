"""The tasks' own settings as the emulator serves them: whole or by key, the task's addresses,
and a settings file read again whenever it changes."""

from __future__ import annotations

import json
from pathlib import Path

from agent.sms.emulator import Emulator

from .test_emulator import call


def test_task_settings_whole_and_by_key_and_task_addresses() -> None:
    settings = {"CONSISTENCY_DIR": "/a,/b", "CONSISTENCY_MODE": "quick"}
    with Emulator(token="TOK", settings=settings, migration_ip="10.0.0.8") as emu:
        status, data, headers = call(emu.url + "/v3/tasks/T/configuration-setting", "GET")
        assert status == 200 and data["task_id"] == "T" and data["migrate_type"]
        assert headers["X-Request-Id"]
        assert {c["config_key"]: c["config_value"] for c in data["configurations"]} == settings
        url = emu.url + "/v3/tasks/T/configuration-setting?config_key=CONSISTENCY_MODE"
        assert [c["config_value"] for c in call(url, "GET")[1]["configurations"]] == ["quick"]
        emu.set_setting("CONSISTENCY_MODE", None)
        assert call(url, "GET")[1]["configurations"] == []
        status, task, _ = call(emu.url + "/v3/tasks/T", "GET")
        assert (task["id"], task["migration_ip"], task["target_server"]["ip"]) == (
            "T",
            "10.0.0.8",
            "",
        )
        assert call(emu.url + "/v3/tasks/nope/configuration-setting", "GET")[0] == 404
        assert call(emu.url + "/v3/tasks/T/configuration-setting", "GET", token="no")[0] == 403
        assert call(emu.url + "/v3/tasks/T/configuration-setting")[0] == 404  # POST: no such API


def test_settings_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps({"configurations": {"CONSISTENCY_DIR": "/a"}, "migration_ip": "10.1.1.1"})
    )
    with Emulator(token="TOK", settings_file=path) as emu:
        url = emu.url + "/v3/tasks/T/configuration-setting"
        assert call(url, "GET")[1]["configurations"][0]["config_value"] == "/a"
        api_shape = [{"config_key": "CONSISTENCY_DIR", "config_value": "/a,/b"}]
        path.write_text(json.dumps({"configurations": api_shape, "target_server_ip": "10.2.2.2"}))
        assert call(url, "GET")[1]["configurations"][0]["config_value"] == "/a,/b"
        task = call(emu.url + "/v3/tasks/T", "GET")[1]
        assert (task["migration_ip"], task["target_server"]["ip"]) == ("", "10.2.2.2")
        path.write_text("{not json")
        status, data, _ = call(url, "GET")
        assert status == 500 and str(path) in data["error_msg"]
