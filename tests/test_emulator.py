"""The emulator keeps the documented contract, so tests against it mean something."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.secret import Secret
from agent.sms.emulator import Emulator
from agent.sms.signer import sign_request

from .sms_helpers import entry

GOOD = {"consistency_result": [entry("/var", 3).to_api()]}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(task_ids=["T"], token="TOK", iam_users={"u": "pw"}, token_ttl=0.3) as server:
        yield server


def call(
    url: str, method: str = "POST", body: Any = GOOD, token: str | None = "TOK"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    request.add_header("Content-Type", "application/json;charset=UTF-8")
    if token is not None:
        request.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_post_then_get(emu: Emulator) -> None:
    url = emu.url + "/v3/tasks/T/consistency-result"
    assert call(url)[:2] == (200, {})
    status, data, _ = call(url, "GET")
    assert status == 200 and data["task_id"] == "T"
    # The documented form (the SDK's list[str]): each item is a JSON object in a string.
    assert all(isinstance(item, str) for item in data["result_list"])
    item = json.loads(data["result_list"][0])
    assert item["consistency_result"] == GOOD["consistency_result"]
    assert {"finished_time", "check_result"} <= item.keys()
    assert emu.received == [GOOD["consistency_result"]]
    assert emu.results("T") == {"/var": entry("/var", 3).to_api()}


def _with(**change: Any) -> dict[str, Any]:
    return {"consistency_result": [{**entry().to_api(), **change}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        ({}, "missing"),
        ({"consistency_result": {}}, "not a list"),
        ({"consistency_result": [entry(f"/{i}").to_api() for i in range(31)]}, "at most 30"),
        ({"consistency_result": ["x"]}, "not an object"),
        (_with(dir_check="/" + "a" * 1024), "dir_check"),
        (_with(num_total_files=-1), "out of range"),
        (_with(num_different_files=1_000_001), "out of range"),
        (_with(num_target_miss_files="3"), "not an integer"),
        (_with(num_target_more_files=True), "not an integer"),
        ({"consistency_result": [{"dir_check": "/a"}]}, "num_total_files is missing"),
    ],
)
def test_bad_bodies_get_400(emu: Emulator, body: Any, message: str) -> None:
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", body=body)
    assert status == 400 and data["error_code"].startswith("SMS.")
    assert message in data["error_msg"]
    assert emu.received == []


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_gets_documented_403(emu: Emulator, token: str | None) -> None:
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", token=token)
    assert status == 403
    assert set(data) == {
        "error_code",
        "error_msg",
        "encoded_authorization_message",
        "error_param",
        "details",
    }
    assert data["details"][0]["error_code"] == data["error_code"] == "SMS.9004"


def test_unknown_task_and_path_get_404(emu: Emulator) -> None:
    assert call(emu.url + "/v3/tasks/nope/consistency-result")[0] == 404
    assert call(emu.url + "/v3/other")[0] == 404


def test_fail_next_with_retry_after(emu: Emulator) -> None:
    emu.fail_next(2, status=503, retry_after=12)
    url = emu.url + "/v3/tasks/T/consistency-result"
    for _ in range(2):
        status, data, headers = call(url)
        assert status == 503 and headers["Retry-After"] == "12" and "error_code" in data
    assert call(url)[0] == 200


def test_stall_then_answer(emu: Emulator) -> None:
    emu.stall_next(1, seconds=0.2)
    started = time.time()
    assert call(emu.url + "/v3/tasks/T/consistency-result")[0] == 200
    assert time.time() - started >= 0.2


def test_iam_tokens_expire(emu: Emulator) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "u", "password": "pw", "domain": {"name": "d"}}},
            },
            "scope": {"domain": {"name": "d"}},
        }
    }
    status, data, headers = call(emu.url + "/v3/auth/tokens", body=body, token=None)
    assert status == 201 and data["token"]["expires_at"].endswith("Z")
    token = headers["X-Subject-Token"]
    assert call(emu.url + "/v3/tasks/T/consistency-result", token=token)[0] == 200
    time.sleep(0.35)
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", token=token)
    assert status == 401 and data["error_code"] == "APIGW.0301"
    body["auth"]["identity"]["password"]["user"]["password"] = "nope"  # type: ignore[index]
    assert call(emu.url + "/v3/auth/tokens", body=body, token=None)[0] == 401


def test_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Emulator("0.0.0.0")


def test_command_line_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.sms.emulator_cli",
            "--port",
            "0",
            "--task-id",
            "T1",
            "--token",
            "X",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("SMS emulator listening on http://127.0.0.1:")
        url = line.split()[4]
        assert call(url + "/v3/tasks/T1/consistency-result", token="X")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


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


@pytest.mark.parametrize(
    ("skew", "expired"), [(-16 * 60, True), (16 * 60, True), (-14 * 60, False), (14 * 60, False)]
)
def test_signature_dated_more_than_15_minutes_away_is_refused(skew: float, expired: bool) -> None:
    with Emulator(token=None, ak="AK1", sk="sk") as emu:
        url = emu.url + "/v3/tasks/T/consistency-result"
        moment = datetime.now(timezone.utc) + timedelta(seconds=skew)
        body = json.dumps(GOOD).encode()
        headers = sign_request(
            "POST",
            url,
            {"Content-Type": "application/json"},
            body,
            ak="AK1",
            sk=Secret("sk"),
            now=moment,
        )
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, data = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, data = exc.code, json.loads(exc.read())
    if not expired:
        assert (status, data) == (200, {})
        return
    assert status == 401 and set(data) == {"error_msg", "error_code", "request_id"}
    assert data["error_code"] == "APIGW.0301"
    assert data["error_msg"].startswith(
        "Incorrect IAM authentication information: signature expired"
    )
    assert "signature time:" + moment.strftime("%Y%m%dT%H%M%SZ") in data["error_msg"]


def test_command_line_settings_and_documented_flags(tmp_path: Path) -> None:
    sk = tmp_path / "sk"
    sk.write_text("secret\n")
    (tmp_path / "task.json").write_text(json.dumps({"configurations": {"SYNC_EXCLUDE_DIR": "/x"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sms.emulator_cli", "--port", "0", "--token", "X",
         "--ak", "AK1", "--sk-file", str(sk), "--result-format", "objects",
         "--setting", "CONSISTENCY_DIR=/a;/b", "--settings-file", str(tmp_path / "task.json"),
         "--migration-ip", "10.0.0.9", "--target-ip", "10.0.0.10", "--max-clock-skew", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[4]
        data = call(url + "/v3/tasks/T/configuration-setting", "GET", token="X")[1]
        assert {c["config_key"]: c["config_value"] for c in data["configurations"]} == {
            "SYNC_EXCLUDE_DIR": "/x",
            "CONSISTENCY_DIR": "/a;/b",
        }
        task = call(url + "/v3/tasks/T", "GET", token="X")[1]
        assert (task["migration_ip"], task["target_server"]["ip"]) == ("10.0.0.9", "10.0.0.10")
        call(url + "/v3/tasks/T/consistency-result", token="X")
        result_list = call(url + "/v3/tasks/T/consistency-result", "GET", token="X")[1][
            "result_list"
        ]
        assert isinstance(result_list[0], dict)  # --result-format objects
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_command_line_rejects_a_bad_settings_file(tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text('{"configurations": 3}')
    done = subprocess.run(
        [sys.executable, "-m", "agent.sms.emulator_cli", "--port", "0", "--settings-file", str(tmp_path / "task.json")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "configurations must be an object or a list" in done.stderr
